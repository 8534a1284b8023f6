//! Command-line parsing and dispatch.

mod compact_cmd;
mod control_cmd;
mod control_socket;
mod databases_cmd;
mod follow_status;
mod go_flags;
mod heartbeat;
mod local_status;
mod ltx_cmd;
mod pending_dbs;
mod replicate_cmd;
mod reset_cmd;
mod restore_cmd;
mod serve;
mod status_cmd;
mod status_report;

/// Where Litestream looks for its config when a command is given none.
const LITESTREAM_CONFIG: &str = "/etc/litestream.yml";

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// strata: LTX replication, compaction and restore for SQLite (Litestream 0.5 compatible).
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    /// Log filter (also STRATA_LOG), e.g. debug or strata=trace (Litestream's -log-level
    /// too).
    #[arg(long, global = true, alias = "log-level")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and check LTX files and replicas; with a replica URL (or a database and
    /// --config) and no subcommand, list its files as Litestream's `ltx` does.
    Ltx(ltx_cmd::LtxArgs),
    /// Restore a database from a replica, at the latest point, a TXID or a time.
    Restore(restore_cmd::RestoreArgs),
    /// Capture every committed transaction of live databases into replicas, until stopped
    /// with Ctrl-C or SIGTERM.
    Replicate(replicate_cmd::ReplicateArgs),
    /// Run every compaction level that is due once, then retention, against a replica with
    /// no live database.
    Compact(compact_cmd::CompactArgs),
    /// Show what a running `strata replicate` is doing (through its `addr:`), or what a
    /// replica holds.
    Status(status_cmd::StatusArgs),
    /// List the databases a config file names, and the kind of each one's replica
    /// (Litestream's `databases`).
    Databases(databases_cmd::DatabasesArgs),
    /// List the databases a running `strata replicate` captures, asked over its control
    /// socket (Litestream's `list`).
    List(control_cmd::ListArgs),
    /// What a running `strata replicate` is: version, PID, uptime, databases (Litestream's
    /// `info`, over the control socket).
    Info(control_cmd::InfoArgs),
    /// Have a running `strata replicate` sync a database now; with --wait, return once its
    /// replica holds everything committed (Litestream's `sync`, over the control socket).
    Sync(control_cmd::SyncArgs),
    /// Have a running `strata replicate` start replicating a database it stopped
    /// (Litestream's `start`, over the control socket).
    Start(control_cmd::ChangeArgs),
    /// Have a running `strata replicate` stop replicating a database after a final sync,
    /// keeping it listed (Litestream's `stop`, over the control socket).
    Stop(control_cmd::ChangeArgs),
    /// Have a running `strata replicate` replicate one more database, to --replica URL,
    /// until it stops or re-reads its config (Litestream's `register`).
    Register(control_cmd::RegisterArgs),
    /// Have a running `strata replicate` stop replicating a database after a final sync and
    /// forget it (Litestream's `unregister`).
    Unregister(control_cmd::ChangeArgs),
    /// Clear a database's local replication state (its staging directory), so that the
    /// next replication starts with a full copy; refused while it is being replicated
    /// (Litestream's `reset`).
    Reset(reset_cmd::ResetArgs),
    /// Print the version (Litestream's `version`: the number alone).
    Version,
}

/// Parses the command line, runs the command, and turns its outcome into an exit code.
pub fn run() -> ExitCode {
    // Litestream's Go-style single-dash long flags (`-config x`) are taken as well.
    let args = go_flags::double_dashed(
        &<Cli as clap::CommandFactory>::command(),
        std::env::args_os(),
    );
    let cli = Cli::parse_from(args);
    // A long-running service says what it does; one-shot commands only what goes wrong.
    let default_log = match cli.command {
        Command::Replicate(_) => "strata=info,warn",
        _ => "warn",
    };
    init_logging(cli.log.as_deref(), default_log);
    if !matches!(
        cli.command,
        Command::Replicate(_) | Command::Restore(_) | Command::Compact(_)
    ) {
        // Commands that print reports end quietly when their reader goes away (`| head`),
        // as other Unix tools do, instead of panicking on a broken pipe. (Not the
        // long-running ones, `replicate`, `restore -f` and `compact`: they must never be
        // killed by a peer closing a socket.)
        // SAFETY: called before any thread is started, restoring the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Ltx(cmd) => ltx_cmd::run(cmd),
        Command::Restore(args) => runtime().and_then(|rt| rt.block_on(restore_cmd::run(args))),
        Command::Replicate(args) => runtime().and_then(|rt| rt.block_on(replicate_cmd::run(args))),
        Command::Compact(args) => runtime().and_then(|rt| rt.block_on(compact_cmd::run(args))),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(status_cmd::run(args))),
        Command::Databases(args) => databases_cmd::run(args),
        Command::List(args) => runtime().and_then(|rt| rt.block_on(control_cmd::list(args))),
        Command::Info(args) => runtime().and_then(|rt| rt.block_on(control_cmd::info(args))),
        Command::Sync(args) => runtime().and_then(|rt| rt.block_on(control_cmd::sync(args))),
        Command::Start(args) => {
            runtime().and_then(|rt| rt.block_on(control_cmd::change("start", args)))
        }
        Command::Stop(args) => {
            runtime().and_then(|rt| rt.block_on(control_cmd::change("stop", args)))
        }
        Command::Register(args) => {
            runtime().and_then(|rt| rt.block_on(control_cmd::register(args)))
        }
        Command::Unregister(args) => {
            runtime().and_then(|rt| rt.block_on(control_cmd::change("unregister", args)))
        }
        Command::Reset(args) => reset_cmd::run(args),
        Command::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: many of strata's errors already
/// say their cause in their own message, and context added on the way does not.
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

/// Litestream's name for the kind of replica.
fn replica_type(url: &strata::storage::ReplicaUrl) -> &'static str {
    match url {
        strata::storage::ReplicaUrl::File { .. } => "file",
        strata::storage::ReplicaUrl::S3 { .. } => "s3",
        #[cfg(feature = "gcs")]
        strata::storage::ReplicaUrl::Gcs { .. } => "gs",
        #[cfg(feature = "azure")]
        strata::storage::ReplicaUrl::Azure { .. } => "abs",
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An array of objects as Go's `json.MarshalIndent(v, "", "  ")` prints it for Litestream
/// (`[]` when empty), each field's value already a JSON literal; with a final newline.
fn json_objects(objects: &[Vec<(&str, String)>]) -> String {
    let items: Vec<String> = objects.iter().map(|o| json_object(o, 1)).collect();
    json_array(&items, 0) + "\n"
}

/// An object as Go's `json.MarshalIndent` prints it at nesting `depth` (its fields
/// indented one level more), each field's value already a JSON literal.
fn json_object(fields: &[(&str, String)], depth: usize) -> String {
    let inner = "  ".repeat(depth + 1);
    let fields: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{inner}{}: {value}", json_string(name)))
        .collect();
    format!("{{\n{}\n{}}}", fields.join(",\n"), "  ".repeat(depth))
}

/// An array as Go's `json.MarshalIndent` prints it at nesting `depth`, its items already
/// printed at `depth + 1` (`[]` when empty).
fn json_array(items: &[String], depth: usize) -> String {
    if items.is_empty() {
        return "[]".to_owned();
    }
    let inner = "  ".repeat(depth + 1);
    let items: Vec<String> = items.iter().map(|i| format!("{inner}{i}")).collect();
    format!("[\n{}\n{}]", items.join(",\n"), "  ".repeat(depth))
}

/// Rows as Go's tabwriter lays them out for Litestream (each column as wide as its widest
/// cell, two spaces between, the last one unpadded).
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Blocking work (SQLite, files, the directory backend) runs on a bounded pool: a burst
    // (hundreds of databases starting at once) would otherwise leave hundreds of threads
    // that every later task keeps alive by waking them in turn.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()?)
}

/// An HTTP client for the command's own requests (status, heartbeat): rustls with ring,
/// as the storage clients use.
pub fn http_client(timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    // Fails only if a provider is already installed, which is what is wanted anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().timeout(timeout).build()?)
}

fn init_logging(filter: Option<&str>, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("STRATA_LOG").ok())
        .unwrap_or_else(|| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A TXID as 1 to 16 hex digits (file names use 16).
pub fn parse_txid(s: &str) -> Result<ltx::Txid, String> {
    if s.is_empty() || s.len() > 16 {
        return Err(format!("{s:?} is not a TXID: 1 to 16 hex digits"));
    }
    match u64::from_str_radix(s, 16) {
        Ok(0) => Err("TXID 0 is no transaction: TXIDs start at 1".to_owned()),
        Ok(n) => Ok(ltx::Txid::new(n)),
        Err(_) => Err(format!("{s:?} is not a TXID: 1 to 16 hex digits")),
    }
}

/// A byte size: a number with an optional KiB, MiB or GiB suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4MiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} is not a usable size")),
        Some(v) => Ok(v),
    }
}

/// Bytes in a short human form.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// RFC 3339 in UTC with milliseconds.
pub fn format_time(t: jiff::Timestamp) -> String {
    format!("{t:.3}")
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::error_chain;

    /// An error that says its cause in its own message, as most of strata's do.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot replicate a.db: {source}")]
    struct Start {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let told = anyhow::Error::new(Start {
            source: std::io::Error::other("LIST on s3://b: no credentials"),
        });
        assert_eq!(
            error_chain(&told),
            "cannot replicate a.db: LIST on s3://b: no credentials"
        );
        let untold: anyhow::Result<()> = Err(std::io::Error::other("disk full")).context("staging");
        assert_eq!(error_chain(&untold.unwrap_err()), "staging: disk full");
    }
}
