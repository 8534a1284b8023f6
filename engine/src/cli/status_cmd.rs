//! `strata status`: each configured database's local state (Litestream's form), what a
//! running `strata replicate` is doing (asked over its `addr:` endpoint), or what a replica
//! holds (read from the replica alone).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use strata::config::Config;
use strata::storage::{Level, Replica, ReplicaUrl};

use super::local_status;
use super::status_report::{ago, level_name};
use super::{format_bytes, format_time};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A database the config lists (its row alone, as Litestream's `status DB`), or a
    /// replica URL: its levels, newest TXID and age, from the replica's listing alone (file
    /// names and sizes; a restore is what reads and checks the bytes).
    target: Option<String>,
    /// The config file: each database's local state, as Litestream's `status` prints it
    /// [default: /etc/litestream.yml, as Litestream, when no replica and no --addr is given].
    #[arg(short, long, conflicts_with = "addr")]
    config: Option<PathBuf>,
    /// The `addr:` of a running `strata replicate` (host:port): ask it what it is doing.
    #[arg(long, conflicts_with = "target")]
    addr: Option<String>,
    /// Print the local state as JSON: an array of {"database", "status", "local_txid",
    /// "wal_size"} (Litestream's fields).
    #[arg(long, conflicts_with = "addr")]
    json: bool,
    /// Use the config file as written: no $VAR expansion (Litestream's flag).
    #[arg(long = "no-expand-env")]
    no_expand_env: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = &args.addr {
        return process_status(addr).await;
    }
    // Without a config, a URL or an existing directory (a file replica) is a replica.
    let replica = args.config.is_none()
        && args
            .target
            .as_deref()
            .is_some_and(|t| t.contains("://") || Path::new(t).is_dir());
    if let (true, Some(url)) = (replica, &args.target) {
        if args.json {
            bail!(
                "-json prints databases' local state: give a config (-config FILE), not a replica URL"
            );
        }
        return replica_status(url).await;
    }
    let path = args
        .config
        .unwrap_or_else(|| super::LITESTREAM_CONFIG.into());
    let config = Config::load(&path, !args.no_expand_env)?;
    let rows = local_status::rows(&config, args.target.as_deref().map(Path::new))?;
    if args.json {
        print!("{}", local_status::json(&rows));
    } else {
        print!("{}", local_status::table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the `strata replicate` at `addr` for its report.
async fn process_status(addr: &str) -> anyhow::Result<ExitCode> {
    let url = format!("http://{}/status", super::serve::connect_addr(addr));
    let client = super::http_client(Duration::from_secs(10))?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("no strata replicate answered at {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let text = response.text().await?;
    print!("{text}");
    // The report says which databases failed; so does the exit code.
    Ok(if text.contains("\n  FAILED") {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn replica_status(url: &str) -> anyhow::Result<ExitCode> {
    let replica = Replica::open(&ReplicaUrl::parse(url)?)?;
    let files = replica.list_all().await?;
    let now = jiff::Timestamp::now();
    println!("replica {}", replica.name());
    if files.is_empty() {
        println!("  empty: no LTX files");
        return Ok(ExitCode::FAILURE);
    }
    let mut plan = strata::restore::plan(&replica, strata::restore::RestorePoint::Latest)
        .await
        .map_err(|e| e.to_string());
    let newest = files.iter().max_by_key(|f| f.modified).expect("not empty");
    // The planned files' headers (100 bytes each) say whether they are of one history; the
    // newest file of each level says which histories the replica holds.
    if let Ok(p) = &plan {
        let headers = read_headers(&replica, &p.files).await?;
        if let Err(e) = ltx::common_node_id(headers.iter()) {
            plan = Err(format!("the plan joins {e}"));
        }
    }
    let newest_per_level: Vec<_> = Level::all()
        .filter_map(|l| {
            files
                .iter()
                .filter(|f| f.level == l)
                .max_by_key(|f| f.range)
        })
        .cloned()
        .collect();
    let mut histories: Vec<u64> = read_headers(&replica, &newest_per_level)
        .await?
        .iter()
        .map(|h| h.node_id)
        .filter(|id| *id != 0)
        .collect();
    histories.sort_unstable();
    histories.dedup();
    match &plan {
        // From the listing alone: the bytes are read and checked only by a restore.
        Ok(plan) => println!(
            "  restores to TXID {} from {} files ({}) by their names; newest file written {} ({})",
            plan.txid,
            plan.files.len(),
            format_bytes(plan.bytes()),
            format_time(newest.modified),
            ago(Some(newest.modified), now)
        ),
        Err(e) => println!("  DOES NOT RESTORE: {e}"),
    }
    if histories.len() > 1 {
        let ids: Vec<String> = histories.iter().map(|h| format!("{h:016x}")).collect();
        println!(
            "  files of {} histories ({}): a database replaced (retention removes the old files in time), or another database replicated here",
            histories.len(),
            ids.join(", ")
        );
    }
    for level in Level::all() {
        let in_level: Vec<_> = files.iter().filter(|f| f.level == level).collect();
        let (Some(first), Some(last)) = (
            in_level.iter().map(|f| f.range.min).min(),
            in_level.iter().map(|f| f.range.max).max(),
        ) else {
            continue;
        };
        let bytes = in_level.iter().map(|f| f.size).sum();
        let newest = in_level
            .iter()
            .map(|f| f.modified)
            .max()
            .expect("not empty");
        println!(
            "  {:<9} {:>6} files {:>11}  TXIDs {first}-{last}, newest {}",
            level_name(level),
            in_level.len(),
            format_bytes(bytes),
            ago(Some(newest), now)
        );
    }
    Ok(if plan.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The headers of `files`, a few reads at a time.
async fn read_headers(
    replica: &Replica,
    files: &[strata::storage::FileInfo],
) -> anyhow::Result<Vec<ltx::Header>> {
    use futures::{StreamExt, TryStreamExt};
    Ok(
        futures::stream::iter(files.iter().map(|f| replica.read_header(f)))
            .buffered(8)
            .try_collect()
            .await?,
    )
}
