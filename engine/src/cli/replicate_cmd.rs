//! `strata replicate`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ltx::PageEncoding;
use strata::capture::{CaptureOptions, Replication};
use strata::config::{Config, DbConfig, parse_interval};
use strata::storage::{Replica, ReplicaUrl};

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The database to replicate (with REPLICA), unless --config is given.
    db: Option<PathBuf>,
    /// Where to replicate it: a directory, file:///path, or s3://bucket/prefix?endpoint=...
    replica: Option<String>,
    /// A YAML file listing databases; Litestream's keys (dbs, path, replica with url or
    /// type/path, levels, snapshot, l0-retention) are accepted, so litestream.yml works.
    #[arg(short, long, conflicts_with_all = ["db", "replica"])]
    config: Option<PathBuf>,
    /// How often committed transactions become an L0 file [default: 1s].
    #[arg(long, value_parser = parse_interval)]
    sync_interval: Option<Duration>,
    /// Use the config file as written: no $VAR expansion (Litestream's flag).
    #[arg(long = "no-expand-env", alias = "no_expand_env", requires = "config")]
    no_expand_env: bool,
    /// Write pages as per-page LZ4 frames, which Litestream releases before 0.5.15 also read
    /// (newer ones read both).
    #[arg(long)]
    legacy_frames: bool,
}

pub async fn run(args: ReplicateArgs) -> anyhow::Result<ExitCode> {
    // Signals are caught from here on: one that arrives while databases are still being
    // opened stops them cleanly once they are, instead of killing the process midway.
    let mut shutdown = Shutdown::new()?;
    let mut shutdown_timeout = None;
    let mut compaction = strata::compact::CompactionOptions::default();
    let dbs = match (&args.config, &args.db, &args.replica) {
        (Some(path), _, _) => {
            let config = Config::load(path, !args.no_expand_env)?;
            shutdown_timeout = config.shutdown_sync_timeout;
            compaction = config.compaction_options();
            config.dbs
        }
        (None, Some(db), Some(url)) => vec![DbConfig {
            path: db.clone(),
            replica: ReplicaUrl::parse(url)?,
            sync_interval: None,
            checkpoint_interval: None,
            min_checkpoint_pages: None,
            truncate_pages: None,
        }],
        _ => bail!("give a database and a replica URL (strata replicate DB URL), or --config FILE"),
    };
    if dbs.is_empty() {
        bail!("the config lists no databases");
    }
    // One database has one capture: two entries naming the same file (by any spelling) are
    // a mistake to report, not two captures to race each other.
    // The same file is the same device and inode, whatever the spelling, symlink or hard link.
    let mut seen: Vec<((u64, u64), usize)> = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let meta = match std::fs::metadata(&db.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("cannot replicate {}: no database here", db.path.display())
            }
            Err(e) => bail!("cannot replicate {}: {e}", db.path.display()),
        };
        let id = (meta.dev(), meta.ino());
        if let Some((_, first)) = seen.iter().find(|(seen, _)| *seen == id) {
            bail!(
                "database {} is listed twice (entries {} and {} are the same file): a database has one capture and one replica",
                db.path.display(),
                first + 1,
                i + 1,
            );
        }
        seen.push((id, i));
    }
    let mut running = Vec::new();
    for db in &dbs {
        let mut options = CaptureOptions::default();
        if let Some(i) = args.sync_interval.or(db.sync_interval) {
            options.sync_interval = i;
        }
        if let Some(i) = db.checkpoint_interval {
            options.checkpoint.interval = i;
        }
        if let Some(n) = db.min_checkpoint_pages {
            options.checkpoint.min_pages = n;
        }
        if let Some(n) = db.truncate_pages {
            options.checkpoint.truncate_pages = n;
        }
        if let Some(t) = shutdown_timeout {
            options.shutdown_timeout = t;
        }
        if args.legacy_frames {
            options.encoding = PageEncoding::Frame;
        }
        let mut compaction = compaction.clone();
        compaction.encoding = options.encoding;
        options.compaction = Some(compaction);
        let replica = Replica::create(&db.replica)?;
        let replication = Replication::start(&db.path, replica, options)
            .await
            .with_context(|| format!("cannot replicate {}", db.path.display()))?;
        eprintln!("replicating {} to {}", db.path.display(), db.replica);
        running.push(replication);
    }

    let failure = futures::future::select_all(running.iter().map(|r| Box::pin(r.failed())));
    let mut failed = tokio::select! {
        () = shutdown.wait() => false,
        (message, i, _) = failure => {
            eprintln!("{}: {message}; stopping", running[i].db().display());
            true
        }
    };
    eprintln!("stopping: final sync and upload (another signal stops at once)");
    // Every database stops at once, each within the shutdown timeout.
    let stops = futures::future::join_all(running.into_iter().map(|r| async move {
        let db = r.db().display().to_string();
        let compaction = r.compaction_status();
        (db, compaction, r.stop().await)
    }));
    let stopped = tokio::select! {
        stopped = stops => stopped,
        () = shutdown.wait() => {
            eprintln!("signal during shutdown: exiting now; files not yet uploaded stay staged");
            return Ok(ExitCode::FAILURE);
        }
    };
    for (db, compaction, result) in stopped {
        if let Some(c) = compaction {
            let levels: Vec<String> = c
                .levels
                .iter()
                .filter(|(_, l)| l.files_written > 0)
                .map(|(level, l)| {
                    format!(
                        "{level} {} files, {}",
                        l.files_written,
                        super::format_bytes(l.bytes_written)
                    )
                })
                .collect();
            if !levels.is_empty() || c.deleted > 0 {
                eprintln!(
                    "{db}: compacted {}; retention deleted {} files",
                    if levels.is_empty() {
                        "nothing".to_owned()
                    } else {
                        levels.join(", ")
                    },
                    c.deleted
                );
            }
        }
        match result {
            Ok(s) => eprintln!(
                "{db}: replicated through TXID {} ({} full {})",
                s.uploaded,
                s.full_copies,
                if s.full_copies == 1 { "copy" } else { "copies" }
            ),
            Err(e) => {
                failed = true;
                eprintln!("{db}: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Ctrl-C or SIGTERM, caught from the moment this is made.
struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn new() -> anyhow::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
