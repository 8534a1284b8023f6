//! The report of a running `strata replicate`: what it serves at `/status`, and what
//! `strata status` prints of it.

use std::fmt::Write as _;

use strata::storage::Level;
use strata::store::DbStatus;

use super::format_bytes;

/// The report a running process serves at `/status`.
pub fn render(databases: &[DbStatus], now: jiff::Timestamp) -> String {
    let mut out = String::new();
    if databases.is_empty() {
        out.push_str("no databases\n");
    }
    for db in databases {
        let _ = writeln!(out, "{}", db.path.display());
        if let Some(failed) = &db.failed {
            let _ = writeln!(out, "  FAILED: {failed}");
        }
        let Some(capture) = &db.capture else {
            let _ = writeln!(out, "  disabled");
            continue;
        };
        let _ = writeln!(
            out,
            "  staged TXID {}, last sync {}, {} syncs ({} failed), {} full copies",
            capture.staged,
            ago(capture.last_sync, now),
            capture.syncs,
            capture.failed_syncs,
            capture.full_copies
        );
        if let Some(e) = &capture.sync_error {
            let _ = writeln!(out, "  last sync error: {e}");
        }
        for r in &capture.replicas {
            let _ = writeln!(out, "  replica {}", r.replica);
            let _ = writeln!(
                out,
                "    TXID {}, lag {:.1} s, last upload {}, {} uploads ({} failed)",
                r.uploaded,
                r.lag(now).as_secs_f64(),
                ago(r.last_upload, now),
                r.uploads,
                r.failed_uploads
            );
            if let Some(e) = &r.stopped {
                let _ = writeln!(out, "    STOPPED: {e}");
            }
            if let Some(e) = &r.upload_error {
                let _ = writeln!(out, "    last upload error: {e}");
            }
            let q = &r.requests;
            let _ = writeln!(
                out,
                "    requests: {} LIST, {} GET, {} PUT, {} DELETE",
                q.list, q.get, q.put, q.delete
            );
            for (level, files) in &r.levels {
                let compaction = r
                    .compaction
                    .as_ref()
                    .and_then(|c| c.levels.get(level))
                    .map(|l| {
                        let mut s = format!(
                            "; compacted {} files, last pass {}",
                            l.files_written,
                            ago(l.last_run, now)
                        );
                        if let Some(e) = &l.error {
                            let _ = write!(s, ", error: {e}");
                        }
                        s
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {:<9} {:>6} files {:>11}{compaction}",
                    level_name(*level),
                    files.files,
                    format_bytes(files.bytes)
                );
            }
            if let Some(c) = &r.compaction {
                let _ = writeln!(
                    out,
                    "    retention: {} passes ({} failed), {} files deleted",
                    c.retention_passes, c.failed_retention_passes, c.deleted
                );
                if let Some(e) = &c.retention_error {
                    let _ = writeln!(out, "    last retention error: {e}");
                }
            }
        }
    }
    out
}

/// `strata status URL`: the replica's levels and newest state, from listings alone.
pub(super) fn level_name(level: Level) -> String {
    if level == Level::SNAPSHOT {
        "snapshots".to_owned()
    } else {
        level.to_string()
    }
}

pub(super) fn ago(t: Option<jiff::Timestamp>, now: jiff::Timestamp) -> String {
    match t {
        None => "never".to_owned(),
        Some(t) => {
            let secs = now.duration_since(t).as_secs_f64().max(0.0);
            format!("{secs:.1} s ago")
        }
    }
}
