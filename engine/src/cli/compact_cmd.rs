//! `strata compact`: one pass of every level that is due, and retention, against a replica
//! with no live database (a primary that is gone, or a replica kept by another tool).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use strata::compact::{CompactionOptions, Compactor, Outcome};
use strata::compact::{LevelIndex, SharedIndex};
use strata::config::Config;
use strata::storage::{Replica, ReplicaUrl};

use super::format_bytes;

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Replica URL: a directory, file:///path, or s3://bucket/prefix?endpoint=...
    url: String,
    /// Take levels, snapshot and retention settings from this YAML file (its databases
    /// are ignored) instead of Litestream's defaults.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Compact only; delete nothing.
    #[arg(long)]
    no_retention: bool,
}

pub async fn run(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let mut options = match &args.config {
        Some(path) => Config::load_settings(path)?.compaction_options(),
        None => CompactionOptions::default(),
    };
    if args.no_retention {
        options.retention.enabled = false;
    }
    let url = ReplicaUrl::parse(&args.url)?;
    let Some((compactor, scratch)) = offline_compactor(&url, options.clone()).await? else {
        anyhow::bail!("{url} holds no LTX files");
    };

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut failed = false;
    for (level, _) in options.schedule() {
        let read = compactor.bytes_read();
        let ticker = bar.clone().map(|bar| {
            tokio::spawn(async move {
                loop {
                    let n = read.load(Ordering::Relaxed);
                    bar.set_message(format!("{level}: {} read", format_bytes(n)));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        let outcome = compactor.run_level(level, jiff::Timestamp::now()).await;
        if let Some(t) = ticker {
            t.abort();
        }
        let line = match &outcome {
            Ok(Outcome::Compacted { file, inputs, read }) => format!(
                "{level}: wrote {} ({}) from {inputs} files ({} read)",
                file.range.file_name(),
                format_bytes(file.size),
                format_bytes(*read)
            ),
            Ok(Outcome::TooEarly) => {
                format!("{level}: too early (it has a file from after its last boundary)")
            }
            Ok(Outcome::Nothing) => format!("{level}: nothing to compact"),
            Err(e) => {
                failed = true;
                format!("{level}: failed: {e}")
            }
        };
        match &bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    for (level, status) in compactor.status().levels {
        for gap in status.gaps {
            failed = true;
            eprintln!("{level}: {gap}, and the level below no longer holds the files to repair it");
        }
    }
    match compactor.run_retention(jiff::Timestamp::now()).await {
        Ok(0) => {}
        Ok(n) => eprintln!("retention: deleted {n} files"),
        Err(e) => {
            failed = true;
            eprintln!("retention failed: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A compactor of the replica at `url` with no live database, its index listed now, and
/// the scratch directory it writes in (the caller removes it). `None` if the replica holds
/// no LTX files.
pub(super) async fn offline_compactor(
    url: &ReplicaUrl,
    options: CompactionOptions,
) -> anyhow::Result<Option<(Compactor, PathBuf)>> {
    let replica = Replica::open(url)?.detect_layout().await?;
    let files = replica
        .list_all()
        .await
        .with_context(|| format!("cannot list {}", replica.name()))?;
    if files.is_empty() {
        return Ok(None);
    }
    // With no process watching the replica, a file counts as seen when the store says it
    // was written: the grace period runs from there.
    let mut index = LevelIndex::default();
    let now = jiff::Timestamp::now();
    for f in files {
        let seen = f.modified.min(now);
        index.insert(f, seen);
    }
    let scratch = std::env::temp_dir().join(format!(
        "strata-compact-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    let compactor = Compactor::new(replica, SharedIndex::new(index), options, scratch.clone());
    Ok(Some((compactor, scratch)))
}

/// Tells apart the scratch directories of one process's compactors.
static SCRATCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
