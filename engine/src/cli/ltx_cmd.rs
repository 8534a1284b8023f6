//! `strata ltx`: `verify`, `dump` and `ls`, and Litestream's form (`ltx [-level N|all]
//! [-json] URL`, or a database with `-config`).

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ltx::{Decoded, Decoder, Header, Validation, page_checksum};
use strata::storage::{Level, Replica, ReplicaUrl};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LtxArgs {
    #[command(subcommand)]
    command: Option<LtxCommand>,
    /// A replica URL, or with --config a database's path: its files, as Litestream's
    /// `ltx` lists them.
    #[arg(required = true)]
    target: Option<String>,
    /// The level to list: 0 to 9, or all.
    #[arg(long, default_value = "0")]
    level: String,
    /// Print JSON (Litestream's fields).
    #[arg(long)]
    json: bool,
    /// Find the replica of the database named in this config.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LtxCommand {
    /// Fully decode each file and check every checksum and format rule.
    ///
    /// Prints one line per file, "ok" or the failure with its offset, and exits non-zero if
    /// any file fails.
    Verify(VerifyArgs),
    /// Print a file's header, its pages (offset, frame size, page checksum) and its trailer.
    Dump(DumpArgs),
    /// List a replica's files per level: level, min and max TXID, size, time.
    Ls(LsArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Replica URL: a directory, file:///path, or s3://bucket/prefix?endpoint=...
    url: String,
    /// Only this level (0 to 9).
    #[arg(long)]
    level: Option<u8>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Check only what the Go reference decoder checks (page order, index and snapshot
    /// completeness are not checked).
    #[arg(long)]
    lenient: bool,
    /// LTX files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The LTX file.
    file: PathBuf,
}

pub fn run(args: LtxArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(LtxCommand::Verify(args)) => verify(&args),
        Some(LtxCommand::Dump(args)) => dump(&args.file),
        Some(LtxCommand::Ls(args)) => super::runtime()?.block_on(ls(args)),
        None => super::runtime()?.block_on(litestream_ls(args)),
    }
}

/// Litestream's `ltx`: one level's files (or all), a table or JSON.
async fn litestream_ls(args: LtxArgs) -> anyhow::Result<ExitCode> {
    let target = args
        .target
        .context("give a replica URL, or a database and --config")?;
    let url = match &args.config {
        Some(config) => super::restore_cmd::from_config(config, &target)?.0,
        None => ReplicaUrl::parse(&target)?,
    };
    let replica = Replica::open(&url)?.detect_layout().await?;
    let files = if args.level == "all" {
        replica.list_all().await?
    } else {
        let level = args
            .level
            .parse()
            .ok()
            .and_then(Level::new)
            .with_context(|| format!("level {:?}: levels are 0 to 9, or all", args.level))?;
        replica.list(level, ltx::Txid::ZERO).await?
    };
    let time = |f: &strata::storage::FileInfo| format!("{:.0}", f.modified);
    let mut out = io::stdout().lock();
    if args.json {
        let objects: Vec<Vec<(&str, String)>> = files
            .iter()
            .map(|f| {
                vec![
                    ("level", f.level.get().to_string()),
                    ("min_txid", super::json_string(&f.range.min.to_string())),
                    ("max_txid", super::json_string(&f.range.max.to_string())),
                    ("size", f.size.to_string()),
                    ("timestamp", super::json_string(&time(f))),
                ]
            })
            .collect();
        write!(out, "{}", super::json_objects(&objects))?;
    } else {
        let mut rows = vec![
            ["level", "min_txid", "max_txid", "size", "created"]
                .map(str::to_owned)
                .to_vec(),
        ];
        rows.extend(files.iter().map(|f| {
            vec![
                f.level.get().to_string(),
                f.range.min.to_string(),
                f.range.max.to_string(),
                f.size.to_string(),
                time(f),
            ]
        }));
        write!(out, "{}", super::columns(&rows))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let url = ReplicaUrl::parse(&args.url)?;
    let replica = Replica::open(&url)?.detect_layout().await?;
    let files = match args.level {
        Some(n) => {
            let level = Level::new(n)
                .with_context(|| format!("level {n} does not exist: levels are 0 to 9"))?;
            replica.list(level, ltx::Txid::ZERO).await?
        }
        None => replica.list_all().await?,
    };
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<5} {:<16}  {:<16}  {:>12}  modified",
        "level", "min", "max", "size"
    )?;
    for f in &files {
        writeln!(
            out,
            "{:<5} {}  {}  {:>12}  {}",
            f.level.to_string(),
            f.range.min,
            f.range.max,
            f.size,
            super::format_time(f.modified)
        )?;
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    writeln!(
        out,
        "{} files, {} ({}; {})",
        files.len(),
        super::format_bytes(total),
        replica.layout(),
        replica.requests()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let validation = if args.lenient {
        Validation::Lenient
    } else {
        Validation::Strict
    };
    let mut out = io::stdout().lock();
    let mut failed = 0;
    for path in &args.files {
        match verify_file(path, validation) {
            Ok((h, d)) => writeln!(
                out,
                "{}: ok ({}, {} page{}, commit {}, page size {}, file checksum {})",
                path.display(),
                h.txid_range(),
                d.page_count,
                if d.page_count == 1 { "" } else { "s" },
                h.commit,
                h.page_size,
                d.trailer.file_checksum
            )?,
            Err(e) => {
                failed += 1;
                writeln!(
                    out,
                    "{}: FAILED: {}",
                    path.display(),
                    super::error_chain(&e)
                )?;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} files failed verification", args.files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_file(path: &Path, validation: Validation) -> anyhow::Result<(Header, Decoded)> {
    let file = File::open(path).context("cannot open")?;
    let dec = Decoder::new(file)?.with_validation(validation);
    let header = *dec.header();
    Ok((header, dec.finish()?))
}

fn dump(path: &Path) -> anyhow::Result<ExitCode> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut dec = Decoder::from_buf_read(BufReader::new(file))
        .with_context(|| format!("{}", path.display()))?;
    let h = *dec.header();
    let mut out = io::stdout().lock();
    writeln!(out, "file:              {}", path.display())?;
    writeln!(out, "size:              {size} bytes")?;
    writeln!(
        out,
        "flags:             {:#010x}{}",
        h.flags.bits(),
        if h.no_checksum() { " (NoChecksum)" } else { "" }
    )?;
    writeln!(out, "page size:         {}", h.page_size)?;
    writeln!(out, "commit:            {} pages", h.commit)?;
    writeln!(out, "min TXID:          {}", h.min_txid)?;
    writeln!(
        out,
        "max TXID:          {}{}",
        h.max_txid,
        if h.is_snapshot() { " (snapshot)" } else { "" }
    )?;
    writeln!(
        out,
        "timestamp:         {} ({} ms)",
        format_millis(h.timestamp),
        h.timestamp
    )?;
    writeln!(out, "pre-apply:         {}", h.pre_apply_checksum)?;
    writeln!(out, "WAL offset:        {}", h.wal_offset)?;
    writeln!(out, "WAL size:          {}", h.wal_size)?;
    writeln!(
        out,
        "WAL salts:         {:08x} {:08x}",
        h.wal_salt1, h.wal_salt2
    )?;
    writeln!(out, "node ID:           {}", h.node_id)?;
    writeln!(out, "pages:")?;
    writeln!(
        out,
        "  {:>10} {:>12} {:>8}  {:<16}",
        "pgno", "offset", "size", "page checksum"
    )?;
    let mut page = vec![0u8; h.page_size.bytes()];
    let result = loop {
        let at = dec.offset();
        match dec.decode_page(&mut page) {
            Ok(Some(pgno)) => writeln!(
                out,
                "  {:>10} {:>12} {:>8}  {}",
                pgno,
                at,
                dec.offset() - at,
                page_checksum(pgno, &page)
            )?,
            Ok(None) => break dec.finish(),
            Err(e) => break Err(e),
        }
    };
    match result {
        Ok(d) => {
            writeln!(out, "page count:        {}", d.page_count)?;
            writeln!(out, "post-apply:        {}", d.trailer.post_apply_checksum)?;
            writeln!(
                out,
                "file checksum:     {} (verified)",
                d.trailer.file_checksum
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            out.flush()?;
            eprintln!("{}: FAILED: {e}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as Litestream prints LTX timestamps.
pub fn format_millis(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => "out of range".to_string(),
    }
}
