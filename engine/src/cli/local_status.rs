//! `strata status [-config FILE] [-json] [DB]`: each configured database's local state, as
//! Litestream 0.5.17's `status` prints it (database, status, local TXID, WAL size). Read
//! from the files alone: it works whether or not `strata replicate` runs.

use std::path::{Path, PathBuf};

use strata::config::Config;

/// One database's row: Litestream's four fields, as strings.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LocalStatus {
    database: String,
    status: &'static str,
    local_txid: String,
    wal_size: String,
}

/// The rows of every database the config lists (each database a directory entry finds
/// now, for `dir:` entries), or only `only`'s.
pub(super) fn rows(config: &Config, only: Option<&Path>) -> anyhow::Result<Vec<LocalStatus>> {
    let only = only.map(std::path::absolute).transpose()?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for db in &config.dbs {
        match &db.dir {
            None => paths.push(std::path::absolute(&db.path)?),
            Some(source) => {
                let found = strata::store::scan(&db.path, source)?;
                paths.extend(found.into_iter().map(|(path, _)| path));
            }
        }
    }
    Ok(paths
        .iter()
        .filter(|p| only.as_ref().is_none_or(|o| o == *p))
        .map(|p| of(p))
        .collect())
}

/// Litestream's rules: "no database" if the file is missing; "ok" with the newest TXID
/// captured beside it; "not initialized" if nothing was; "error" if that cannot be read.
fn of(db: &Path) -> LocalStatus {
    let mut row = LocalStatus {
        database: db.display().to_string(),
        status: "unknown",
        local_txid: "-".into(),
        wal_size: "-".into(),
    };
    if !db.exists() {
        row.status = "no database";
        return row;
    }
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::metadata(&wal) {
        Ok(m) => row.wal_size = si_bytes(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => row.wal_size = "0 B".into(),
        Err(_) => {}
    }
    match strata::capture::local_txid(db) {
        Ok(Some(txid)) => {
            row.status = "ok";
            row.local_txid = txid.to_string();
        }
        Ok(None) => row.status = "not initialized",
        Err(_) => row.status = "error",
    }
    row
}

/// A size as Litestream prints it (go-humanize's `Bytes`: powers of 1000, one decimal
/// below 10).
fn si_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exp = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = ((n as f64) / 1000f64.powi(exp as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

/// Litestream's table: a header and a row per database, columns two spaces apart.
pub(super) fn table(rows: &[LocalStatus]) -> String {
    let mut cells = vec![vec![
        "database".to_owned(),
        "status".to_owned(),
        "local txid".to_owned(),
        "wal size".to_owned(),
    ]];
    cells.extend(rows.iter().map(|r| {
        vec![
            r.database.clone(),
            r.status.to_owned(),
            r.local_txid.clone(),
            r.wal_size.clone(),
        ]
    }));
    super::columns(&cells)
}

/// Litestream's JSON: an array of objects with its field names.
pub(super) fn json(rows: &[LocalStatus]) -> String {
    let objects: Vec<Vec<(&str, String)>> = rows
        .iter()
        .map(|r| {
            vec![
                ("database", super::json_string(&r.database)),
                ("status", super::json_string(r.status)),
                ("local_txid", super::json_string(&r.local_txid)),
                ("wal_size", super::json_string(&r.wal_size)),
            ]
        })
        .collect();
    super::json_objects(&objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_printed_as_go_humanize_prints_them() {
        for (n, s) in [
            (0, "0 B"),
            (9, "9 B"),
            (10, "10 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (4_564_992, "4.6 MB"),
            (82_854_982, "83 MB"),
            (9_960_000, "10 MB"),
        ] {
            assert_eq!(si_bytes(n), s, "{n}");
        }
    }

    #[test]
    fn a_database_missing_uncaptured_or_captured_gets_litestreams_status() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        assert_eq!(of(&db).status, "no database");
        std::fs::write(&db, b"").unwrap();
        let row = of(&db);
        assert_eq!(
            (row.status, row.local_txid.as_str()),
            ("not initialized", "-")
        );
        assert_eq!(row.wal_size, "0 B");
        let l0 = dir.path().join(".a.db-strata/ltx/0");
        std::fs::create_dir_all(&l0).unwrap();
        std::fs::write(l0.join("0000000000000001-0000000000000003.ltx"), b"").unwrap();
        std::fs::write(dir.path().join("a.db-wal"), vec![0; 4120]).unwrap();
        let row = of(&db);
        assert_eq!(
            (row.status, row.local_txid.as_str(), row.wal_size.as_str()),
            ("ok", "0000000000000003", "4.1 kB")
        );
    }
}
