//! `strata restore`.

use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use strata::restore::{
    self, IntegrityCheck, NoProgress, Plan, Progress, RestoreOptions, RestorePoint,
};
use strata::storage::{Replica, ReplicaUrl};

use super::{format_bytes, format_time, parse_size, parse_txid};
use strata::config::parse_interval;
use strata::follow::{FollowError, FollowOptions, Follower, PrimaryUrl};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Replica URL: a directory, file:///path, or s3://bucket/prefix?endpoint=...&region=...
    /// With --config, the database's path instead: its replica is the config's. With -f,
    /// also a primary's live stream, http://HOST:PORT/NAME (with --replica).
    url: String,
    /// Where to write the database (required unless --dry-run or --config).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Find the replica of the database named in the config (Litestream's -config); the
    /// output defaults to the database's own path.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Succeed without doing anything if the output database already exists (container
    /// start-up scripts; Litestream's flag).
    #[arg(long)]
    if_db_not_exists: bool,
    /// Succeed without doing anything if the replica holds nothing to restore (Litestream's
    /// flag).
    #[arg(long)]
    if_replica_exists: bool,
    /// Restore exactly this TXID (hex, as in file names).
    #[arg(long, value_parser = parse_txid, conflicts_with = "timestamp")]
    txid: Option<ltx::Txid>,
    /// Restore the last transaction committed at or before this time (RFC 3339, e.g.
    /// 2026-11-21T10:00:00Z). At exactly a commit's time that commit is included, as in
    /// PostgreSQL; Litestream takes only files strictly before the time, one TXID earlier.
    #[arg(long)]
    timestamp: Option<jiff::Timestamp>,
    /// Print the plan (files, sizes) and exit without fetching any page.
    #[arg(long)]
    dry_run: bool,
    /// Replace an existing output database and remove its -wal, -shm and -journal files.
    #[arg(long)]
    force: bool,
    /// Follow mode: after the restore, keep the output at the replica's newest TXID until
    /// interrupted, each TXID applied as one SQLite transaction, so any SQLite may read
    /// it meanwhile (Litestream's -f). A follower killed and started again goes on from
    /// where it was (its position is kept beside the database, in `<output>-follow`).
    #[arg(short = 'f', long, conflicts_with_all = ["txid", "timestamp", "dry_run"])]
    follow: bool,
    /// How often a follower asks the replica for new files (Litestream's -follow-interval);
    /// following a primary, how soon it tries again once the primary is away.
    #[arg(long, value_parser = parse_interval, default_value = "1s", requires = "follow")]
    follow_interval: Duration,
    /// Serve the follower's status on HOST:PORT: GET /status (text) and /metrics
    /// (Prometheus): its TXID, the newest the source is known to hold, the lag between them.
    #[arg(long, requires = "follow")]
    addr: Option<String>,
    /// Following a primary's stream (http://HOST:PORT/NAME): its replica, which the
    /// database is restored from and caught up from whenever the stream cannot serve.
    #[arg(long, requires = "follow")]
    replica: Option<String>,
    /// Check the result with SQLite before it replaces the output.
    #[arg(long, value_enum, default_value_t = CheckArg::None)]
    integrity_check: CheckArg,
    /// Segments fetched and decoded at once [default: 2 per core for a directory, 16 for
    /// remote stores] (also Litestream's -parallelism, its files fetched at once).
    #[arg(long, alias = "parallelism")]
    concurrency: Option<NonZeroUsize>,
    /// Print JSON instead of text (Litestream's fields): the plan with --dry-run, else a
    /// summary once restored; the text goes to stderr.
    #[arg(long)]
    json: bool,
    /// Segment size, the unit fetched and decoded (e.g. 1MiB) [default: 1MiB]; a remote
    /// store is read eight segments per request. Data in flight stays around
    /// 2 x (concurrency + 2) x chunk size, plus eight chunks read ahead remotely.
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CheckArg {
    None,
    Quick,
    Full,
}

pub async fn run(mut args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.url.starts_with("http://") || args.url.starts_with("https://") {
        let primary = PrimaryUrl::parse(&args.url).map_err(anyhow::Error::msg)?;
        if !args.follow {
            bail!("{primary} is a primary's live stream: follow it with -f (and --replica URL)");
        }
        let Some(replica) = &args.replica else {
            bail!(
                "following {primary} needs its replica too (--replica URL): the database is restored from it, and caught up from it when the stream cannot serve"
            );
        };
        let Some(output) = args.output.clone() else {
            bail!("give the output database with -o PATH");
        };
        let replica = Replica::open(&ReplicaUrl::parse(replica)?)?;
        return follow(
            Some(primary),
            replica,
            &output,
            args.force,
            (args.follow_interval, args.addr.as_deref()),
        )
        .await;
    }
    if args.replica.is_some() {
        bail!("--replica goes with a primary's stream (http://HOST:PORT/NAME) as the source");
    }
    // A database path with no config (not a URL, not a replica directory) is looked up in
    // Litestream's default config, as Litestream does.
    if args.config.is_none()
        && !args.url.contains("://")
        && !std::path::Path::new(&args.url).is_dir()
        && std::path::Path::new(super::LITESTREAM_CONFIG).exists()
    {
        args.config = Some(super::LITESTREAM_CONFIG.into());
    }
    let url = match &args.config {
        Some(config) => {
            let (url, db) = from_config(config, &args.url)?;
            args.output.get_or_insert(db);
            url
        }
        None => ReplicaUrl::parse(&args.url)?,
    };
    let target = match (args.txid, args.timestamp) {
        (Some(t), _) => RestorePoint::Txid(t),
        (None, Some(ts)) => RestorePoint::Timestamp(ts),
        (None, None) => RestorePoint::Latest,
    };
    if args.if_db_not_exists
        && let Some(output) = &args.output
        && std::fs::symlink_metadata(output).is_ok()
    {
        println!("{} already exists: nothing restored", output.display());
        return Ok(ExitCode::SUCCESS);
    }
    let replica = match Replica::open(&url) {
        Err(e) if args.if_replica_exists && e.kind() == strata::storage::ErrorKind::NotFound => {
            println!("no replica at {url}: nothing restored");
            return Ok(ExitCode::SUCCESS);
        }
        opened => opened?,
    };
    if args.if_replica_exists && replica.list_all().await?.is_empty() {
        println!("the replica at {url} is empty: nothing restored");
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        let replica = replica.detect_layout().await?;
        let plan = restore::plan(&replica, target).await?;
        if args.json {
            let output = args.output.as_ref().map(|o| o.display().to_string());
            print!("{}", plan_json(&plan, &args.url, output.as_deref(), &url));
        } else {
            print_plan(&plan)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(output) = args.output else {
        bail!("give the output database with -o PATH (or use --dry-run)");
    };
    if args.follow {
        return follow(
            None,
            replica,
            &output,
            args.force,
            (args.follow_interval, args.addr.as_deref()),
        )
        .await;
    }
    if strata::follow::is_followed(&output) {
        bail!(
            "a follower is keeping {} (restore -f): stop it first, or restore elsewhere",
            output.display()
        );
    }
    let defaults = RestoreOptions::default();
    let options = RestoreOptions {
        concurrency: args.concurrency.map(NonZeroUsize::get),
        chunk_size: args.chunk_size.unwrap_or(defaults.chunk_size),
        force: args.force,
        integrity_check: match args.integrity_check {
            CheckArg::None => IntegrityCheck::None,
            CheckArg::Quick => IntegrityCheck::Quick,
            CheckArg::Full => IntegrityCheck::Full,
        },
        ..defaults
    };
    let bar = std::io::stderr().is_terminal().then(Bar::new).map(Arc::new);
    let progress: Arc<dyn Progress> = match &bar {
        Some(bar) => bar.clone(),
        None => Arc::new(NoProgress),
    };
    let mut stop = StopSignals::new()?;
    // The restore is dropped when a signal comes, which removes its temporary file.
    let result = tokio::select! {
        result = restore::restore(&replica, target, &output, &options, progress) => Ok(result),
        signal = stop.next() => Err(signal),
    };
    if let Some(bar) = &bar {
        bar.0.finish_and_clear();
    }
    let result = match result {
        Ok(result) => result,
        Err((number, name)) => {
            eprintln!(
                "restore stopped by {name}: {} left as it was, the partial copy removed",
                output.display()
            );
            // Now, not after the blocking work the restore had started has run out.
            std::process::exit(128 + number);
        }
    };
    let s = result.context("restore failed")?;
    if args.json {
        let check = match args.integrity_check {
            CheckArg::None => "none",
            CheckArg::Quick => "quick",
            CheckArg::Full => "full",
        };
        let fields = [
            ("db_path", super::json_string(&output.display().to_string())),
            ("replica", super::json_string(super::replica_type(&url))),
            ("txid", super::json_string(&s.txid.to_string())),
            ("duration_ms", s.elapsed.as_millis().to_string()),
            ("integrity_check", super::json_string(check)),
        ];
        println!("{}", super::json_object(&fields, 0));
    }
    let mut text: Box<dyn Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    writeln!(
        text,
        "restored TXID {} to {}: {} ({} pages of {} bytes) from {} file{}, {} fetched in {:.2}s{}",
        s.txid,
        output.display(),
        format_bytes(s.db_size),
        s.db_size / u64::from(s.page_size.get()),
        s.page_size,
        s.files,
        if s.files == 1 { "" } else { "s" },
        format_bytes(s.bytes),
        s.elapsed.as_secs_f64(),
        if s.replans > 0 {
            format!(", {} re-plans", s.replans)
        } else {
            String::new()
        },
    )?;
    if s.verified {
        writeln!(
            text,
            "verified: the result matches the last file's post-apply database checksum"
        )?;
    }
    tracing::info!(requests = %s.requests, "restore requests");
    Ok(ExitCode::SUCCESS)
}

/// `restore --follow`: restores (or reopens) `output`, then follows the replica until a
/// signal, which exits 0; a failure it cannot go past exits non-zero.
async fn follow(
    primary: Option<PrimaryUrl>,
    replica: Replica,
    output: &std::path::Path,
    force: bool,
    (interval, addr): (Duration, Option<&str>),
) -> anyhow::Result<ExitCode> {
    let mut stop = StopSignals::new()?;
    let mut options = FollowOptions::default();
    options.interval = interval;
    let url = match &primary {
        Some(p) => format!("{p} (replica {})", replica.name()),
        None => replica.name().to_owned(),
    };
    type Starting<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Follower, FollowError>> + Send + 'a>,
    >;
    let started: Starting<'_> = match primary {
        Some(primary) => Box::pin(Follower::start_streaming(
            primary, replica, output, force, options,
        )),
        None => Box::pin(Follower::start(replica, output, force, options)),
    };
    let follower = tokio::select! {
        started = started => started,
        (number, name) = stop.next() => {
            eprintln!("follow stopped by {name} before it started");
            std::process::exit(128 + number);
        }
    }
    .with_context(|| format!("cannot follow {url} into {}", output.display()))?;
    let status = follower.status();
    println!(
        "following {url} into {} from TXID {} ({}), every {interval:?}",
        output.display(),
        status.txid,
        if follower.restored() {
            "restored"
        } else {
            "its saved position"
        },
    );
    if let Some(addr) = addr {
        let bound = super::follow_status::start(addr, follower.watch(), output.to_owned()).await?;
        println!("status at http://{bound}/status and /metrics");
    }
    let mut watch = follower.watch();
    let stopped_by = loop {
        tokio::select! {
            signal = stop.next() => break Some(signal),
            changed = watch.changed() => {
                if changed.is_err() || watch.borrow().stopped {
                    break None;
                }
            }
        }
    };
    let last = follower.status();
    let result = follower.stop().await;
    match (stopped_by, result) {
        (_, Err(e)) => {
            Err(anyhow::Error::new(e)
                .context(format!("following {url} stopped at TXID {}", last.txid)))
        }
        (Some((_, name)), Ok(())) => {
            println!(
                "stopped by {name} at TXID {} ({} files from the primary's stream, {} transactions from the replica)",
                last.txid, last.streamed, last.from_replica
            );
            Ok(ExitCode::SUCCESS)
        }
        (None, Ok(())) => Ok(ExitCode::SUCCESS),
    }
}

/// The signals that stop a restore: SIGINT, SIGTERM and SIGHUP.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The number and name of the next signal.
    async fn next(&mut self) -> (i32, &'static str) {
        tokio::select! {
            _ = self.interrupt.recv() => (libc::SIGINT, "SIGINT"),
            _ = self.terminate.recv() => (libc::SIGTERM, "SIGTERM"),
            _ = self.hangup.recv() => (libc::SIGHUP, "SIGHUP"),
        }
    }
}

/// The replica of the database `db` names in the config at `path` (its first, if it has
/// several), and the database's path.
pub(super) fn from_config(
    path: &std::path::Path,
    db: &str,
) -> anyhow::Result<(ReplicaUrl, PathBuf)> {
    let config = strata::config::Config::load(path, true)?;
    let wanted = normalized(&std::path::absolute(db)?);
    let dbs = strata::store::config_databases(&config)?;
    let found = dbs.into_iter().find(|d| {
        std::path::absolute(&d.path).is_ok_and(|p| normalized(&p) == wanted)
            || std::fs::canonicalize(&d.path).is_ok_and(|p| p == wanted)
    });
    if let Some(d) = found {
        let first = d.replicas.into_iter().next();
        return first
            .map(|url| (url, d.path))
            .ok_or_else(|| anyhow::anyhow!("{db} has no replica"));
    }
    // A database of a directory entry that does not exist yet has its replica all the same.
    for entry in config.dbs.iter().filter(|d| d.dir.is_some()) {
        if let Ok(rel) = wanted.strip_prefix(normalized(&std::path::absolute(&entry.path)?))
            && let Some(rel) = rel.to_str()
            && let Some(url) = entry.replicas.first()
        {
            return Ok((url.join(rel), wanted));
        }
    }
    bail!("{} lists no database {db}", path.display())
}

/// `path` with `.` and `..` folded away (lexically: `a/b/../c` is `a/c`).
fn normalized(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn print_plan(plan: &Plan) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "plan to TXID {}: {} file{}, {}",
        plan.txid,
        plan.files.len(),
        if plan.files.len() == 1 { "" } else { "s" },
        format_bytes(plan.bytes())
    )?;
    for f in &plan.files {
        writeln!(
            out,
            "  {:<3} {}  {:>12}  {}",
            f.level.to_string(),
            f.range.file_name(),
            f.size,
            format_time(f.modified)
        )?;
    }
    Ok(())
}

/// The plan as Litestream's `restore -dry-run -json` prints it.
fn plan_json(plan: &Plan, source: &str, output: Option<&str>, url: &ReplicaUrl) -> String {
    let files: Vec<String> = plan
        .files
        .iter()
        .map(|f| {
            let fields = [
                ("level", f.level.get().to_string()),
                ("name", super::json_string(&f.range.file_name())),
                ("min_txid", super::json_string(&f.range.min.to_string())),
                ("max_txid", super::json_string(&f.range.max.to_string())),
                ("size", f.size.to_string()),
                (
                    "timestamp",
                    super::json_string(&format!("{:.0}", f.modified)),
                ),
            ];
            super::json_object(&fields, 2)
        })
        .collect();
    let (min, max) = (
        plan.files.first().map(|f| f.range.min),
        plan.files.last().map(|f| f.range.max),
    );
    let txid =
        |t: Option<ltx::Txid>| super::json_string(&t.map_or_else(String::new, |t| t.to_string()));
    let fields = [
        ("source", super::json_string(source)),
        ("target_path", super::json_string(output.unwrap_or(""))),
        ("replica", super::json_string(super::replica_type(url))),
        ("min_txid", txid(min)),
        ("max_txid", txid(max)),
        ("files", super::json_array(&files, 1)),
    ];
    super::json_object(&fields, 0) + "\n"
}

/// A progress bar over the bytes of the planned files.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Bar(bar)
    }
}

impl Progress for Bar {
    fn planned(&self, plan: &Plan) {
        self.0.set_length(self.0.position() + plan.bytes());
        self.0.set_message(format!(
            "restoring TXID {} ({} files)",
            plan.txid,
            plan.files.len()
        ));
    }
    fn fetched(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn replanned(&self, reason: &str) {
        self.0.println(format!("re-planning: {reason}"));
    }
}
