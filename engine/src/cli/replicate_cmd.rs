//! `strata replicate`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ltx::PageEncoding;
use strata::compact::{CompactionOptions, Outcome};
use strata::config::{Config, DbConfig, parse_interval};
use strata::storage::{Level, Replica, ReplicaUrl};
use strata::store::{Database, DbStatus, Store, StoreOptions, config_databases};

use super::pending_dbs::PendingDbs;

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The database to replicate (with REPLICA), unless --config is given.
    db: Option<PathBuf>,
    /// Where to replicate it: a directory, file:///path, or s3://bucket/prefix?endpoint=...
    replica: Option<String>,
    /// A YAML file listing databases; Litestream's keys (dbs, path or dir/pattern/recursive/
    /// watch, replica with url or type/path, levels, snapshot, l0-retention) are accepted,
    /// so litestream.yml works. SIGHUP re-reads it and applies what changed.
    #[arg(short, long, conflicts_with_all = ["db", "replica"])]
    config: Option<PathBuf>,
    /// How often committed transactions become an L0 file [default: 1s].
    #[arg(long, value_parser = parse_interval)]
    sync_interval: Option<Duration>,
    /// Serve /metrics, /status and followers' streams (/NAME) on HOST:PORT (the config's
    /// `addr`, which this overrides).
    #[arg(long)]
    addr: Option<String>,
    /// Use the config file as written: no $VAR expansion (Litestream's flag).
    #[arg(long = "no-expand-env", alias = "no_expand_env")]
    no_expand_env: bool,
    /// Write pages as per-page LZ4 frames, which Litestream releases before 0.5.15 also read
    /// (newer ones read both).
    #[arg(long)]
    legacy_frames: bool,
    /// Run this command (split as a shell would, but not run by one) while replicating:
    /// SIGINT and SIGTERM are passed on to it, and when it exits strata syncs a last time and
    /// exits with its exit code (Litestream's -exec). A second signal kills it 5 s later
    /// (a third at once), then the final sync runs.
    #[arg(long)]
    exec: Option<String>,
    /// Sync every database to its replicas once, then exit (Litestream's -once): the final
    /// sync and upload of a stop, at once. Non-zero if a replica is left short.
    #[arg(long, conflicts_with = "exec")]
    once: bool,
    /// With --once: then write a snapshot in each replica, whatever the snapshot interval
    /// (Litestream's -force-snapshot).
    #[arg(long, requires = "once")]
    force_snapshot: bool,
    /// With --once: then apply each replica's retention (Litestream's -enforce-retention).
    #[arg(long, requires = "once")]
    enforce_retention: bool,
    /// Restore each database that does not exist from its (first) replica before starting,
    /// if the replica holds any files (Litestream's -restore-if-db-not-exists).
    #[arg(long)]
    restore_if_db_not_exists: bool,
}

/// Where the list of databases comes from.
struct Source<'a> {
    args: &'a ReplicateArgs,
}

impl Source<'_> {
    /// Reads the config (or takes the command line's database) and lists its databases.
    async fn load(&self, store: Option<&Store>) -> anyhow::Result<(Config, Listed)> {
        let config = self.config()?;
        let listed = self.databases(&config, store).await?;
        Ok((config, listed))
    }

    /// The config, or the command line's database as one.
    fn config(&self) -> anyhow::Result<Config> {
        let args = self.args;
        let mut config = match (&args.config, &args.db, &args.replica) {
            (Some(path), _, _) => Config::load(path, !args.no_expand_env)?,
            (None, Some(db), Some(url)) => Config {
                dbs: vec![DbConfig::new(db.clone(), ReplicaUrl::parse(url)?)],
                ..Config::default()
            },
            // Litestream's default config, when nothing else is given.
            (None, None, None) => Config::load(
                std::path::Path::new(super::LITESTREAM_CONFIG),
                !args.no_expand_env,
            )
            .with_context(|| {
                format!(
                    "no database and replica given (strata replicate DB URL), and no config at {}",
                    super::LITESTREAM_CONFIG
                )
            })?,
            _ => bail!(
                "give a database and a replica URL (strata replicate DB URL), or --config FILE"
            ),
        };
        if let Some(addr) = &args.addr {
            config.addr = Some(addr.clone());
        }
        Ok(config)
    }

    /// The databases `config` lists now (directories listed again, without opening the
    /// files `store` captures, if given), with the command line's overrides; those whose
    /// file does not exist apart.
    async fn databases(&self, config: &Config, store: Option<&Store>) -> anyhow::Result<Listed> {
        let args = self.args;
        let mut dbs = match store {
            Some(store) => store.config_databases(config).await?,
            None => config_databases(config)?,
        };
        for db in &mut dbs {
            if let Some(i) = args.sync_interval {
                db.options.sync_interval = i;
            }
            if args.legacy_frames {
                db.options.encoding = PageEncoding::Frame;
                if let Some(c) = &mut db.options.compaction {
                    c.encoding = PageEncoding::Frame;
                }
            }
        }
        let missing = dbs
            .extract_if(.., |db| super::pending_dbs::is_missing(&db.path))
            .collect();
        check_distinct(&dbs)?;
        Ok(Listed { dbs, missing })
    }
}

/// The databases a config lists now.
struct Listed {
    /// Those to replicate.
    dbs: Vec<Database>,
    /// Those whose file does not exist: replicated once it does (checked every second, as
    /// Litestream does), while the others are (one missing database stops no other).
    missing: Vec<Database>,
}

impl Listed {
    /// Says which databases do not exist and what becomes of them (`leave_out`: nothing);
    /// whether any does not.
    fn report_missing(&self, leave_out: bool) -> bool {
        for db in &self.missing {
            if leave_out {
                eprintln!("{}: no database here: not replicated", db.path.display());
            } else {
                eprintln!(
                    "{}: no database here yet: replicated once it appears",
                    db.path.display()
                );
            }
        }
        !self.missing.is_empty()
    }
}

/// One database has one capture: two entries naming the same file (by any spelling,
/// symlink or hard link: the same device and inode) are a mistake to report, not two
/// captures to race each other.
fn check_distinct(dbs: &[Database]) -> anyhow::Result<()> {
    let mut seen: Vec<((u64, u64), usize)> = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let meta = match std::fs::metadata(&db.path) {
            Ok(m) => m,
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
    Ok(())
}

pub async fn run(args: ReplicateArgs) -> anyhow::Result<ExitCode> {
    // Signals are caught from here on: one that arrives while databases are still being
    // opened stops them cleanly once they are, instead of killing the process midway.
    let mut signals = Signals::new()?;
    let source = Source { args: &args };
    let config = source.config()?;
    restore_missing(&config, args.restore_if_db_not_exists).await?;
    let listed = source.databases(&config, None).await?;
    // A database of the config that is missing is waited for, as Litestream does. With
    // -once, or named on the command line (a typo is more likely than a file to come), it
    // is left out and the exit status says so.
    let leave_out = args.once || args.config.is_none() && args.db.is_some();
    let mut failed = listed.report_missing(leave_out) && leave_out;
    let mut pending = PendingDbs::new(!args.once);
    let dbs = listed.dbs;
    if !leave_out {
        pending.wait_for(listed.missing);
    }
    let watching = config
        .dbs
        .iter()
        .any(|d| d.dir.as_ref().is_some_and(|s| s.watch));
    if dbs.is_empty() && !watching && pending.is_empty() {
        if failed {
            bail!("no database the config lists exists");
        }
        bail!("the config lists no databases (and no directory is watched)");
    }
    let store = std::sync::Arc::new(Store::new(StoreOptions::default()));
    // An empty addr is no endpoint, as in Litestream.
    if let Some(addr) = config.addr.as_deref().filter(|a| !a.trim().is_empty()) {
        let bound = super::serve::start(addr, store.clone()).await?;
        eprintln!("serving http://{bound}/metrics, /status, and followers' streams at /NAME");
    }
    if let Some(socket) = &config.socket {
        super::control_socket::start(&socket.path, socket.permissions, store.clone()).await?;
        eprintln!("control socket at {}", socket.path.display());
    }
    if let Some(url) = config
        .heartbeat_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        let interval = config
            .heartbeat_interval
            .unwrap_or(super::heartbeat::DEFAULT_INTERVAL);
        super::heartbeat::start(url.to_owned(), interval, store.clone())?;
    }
    // One database that cannot start (its replica unreachable, its staging taken by another
    // process) stops no other: it is named and tried again later (with -once, the exit
    // status says so).
    let mut started = 0;
    // -force-snapshot and -enforce-retention work on the replicas of the databases listed.
    let maintained: Vec<(ReplicaUrl, CompactionOptions)> =
        if args.force_snapshot || args.enforce_retention {
            dbs.iter()
                .flat_map(|db| {
                    let options = db.options.compaction.clone().unwrap_or_default();
                    db.replicas
                        .iter()
                        .map(move |u| (u.clone(), options.clone()))
                })
                .collect()
        } else {
            Vec::new()
        };
    for db in dbs {
        if pending.start(&store, db).await {
            started += 1;
        } else if args.once {
            failed = true;
        }
    }
    // Nothing started and nothing to wait for (a second process on the same databases, a
    // replica down at boot): the exit status says so, for a service manager to act on,
    // rather than a process that looks like it replicates.
    let commands = args.exec.is_some() || config.exec.is_some();
    let only_failures = !pending.is_empty() && pending.missing_none() && !watching && !commands;
    if started == 0 && (only_failures || args.once && failed) {
        store.shutdown().await;
        bail!("no database could start");
    }
    // The command line's -exec wins over the config's exec.
    let mut child = match args
        .exec
        .as_ref()
        .or(config.exec.as_ref())
        .filter(|_| !args.once)
    {
        Some(cmd) => match spawn(cmd) {
            Ok(child) => Some(child),
            Err(e) => {
                store.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    // Directory mode with `watch`: the directories are listed again every second.
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: BTreeSet<PathBuf> = BTreeSet::new();
    let mut config = config;
    let mut exit_code = None;
    // Stop signals received while the command runs, and when it is to be killed.
    let mut stop_signals = 0u32;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        // -once: straight to the final sync and upload.
        if args.once {
            break;
        }
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Reload => {
                    match source.load(Some(&store)).await {
                        Ok((reloaded, listed)) => {
                            config = reloaded;
                            eprintln!("SIGHUP: config re-read");
                            listed.report_missing(false);
                            pending.wait_for(listed.missing);
                            pending.keep_listed(&listed.dbs);
                            let specs = listed.dbs.clone();
                            let applied = store.apply(listed.dbs).await;
                            for e in &applied.failed {
                                pending.retry_later(e, &specs);
                            }
                            report_applied(&store, applied, &mut reported).await;
                        }
                        Err(e) => eprintln!(
                            "SIGHUP: config not applied, running as before: {}",
                            super::error_chain(&e)
                        ),
                    }
                }
                Signal::Stop(sig) => match &mut child {
                    // The child decides when to stop; strata follows once it has exited. A
                    // second signal gives it EXEC_GRACE more, then it is killed; a third
                    // kills it at once. Either way the final sync follows.
                    Some(c) if exit_code.is_none() => {
                        forward(c, sig);
                        stop_signals += 1;
                        match stop_signals {
                            1 => {}
                            2 => {
                                eprintln!(
                                    "second signal: the command is killed in {} s unless it exits, then the final sync",
                                    EXEC_GRACE.as_secs()
                                );
                                kill_at = Some(tokio::time::Instant::now() + EXEC_GRACE);
                            }
                            _ => kill_at = Some(tokio::time::Instant::now()),
                        }
                    }
                    _ => break,
                },
            },
            (db, message) = store.next_failure() => {
                eprintln!("{}: {message}; its replication has stopped", db.display());
                failed = true;
                let all_failed = store.status().await.iter().all(|s| s.failed.is_some());
                if all_failed && !watching && pending.is_empty() && child.is_none() {
                    break;
                }
            }
            _ = rescan.tick(), if watching || !pending.is_empty() => {
                if watching
                    && let Ok(listed) = source.databases(&config, Some(&store)).await
                {
                    pending.wait_for(listed.missing);
                    report_applied(&store, store.apply(listed.dbs).await, &mut reported).await;
                }
                pending.tick(&store).await;
            }
            () = async { tokio::time::sleep_until(kill_at.expect("guarded")).await }, if kill_at.is_some() && exit_code.is_none() => {
                kill_at = None;
                if let Some(c) = &mut child {
                    eprintln!("killing the command (SIGKILL)");
                    let _ = c.start_kill();
                }
            }
            status = async { child.as_mut().expect("guarded").wait().await }, if child.is_some() && exit_code.is_none() => {
                let code = match status {
                    Ok(s) => exit_status_code(s),
                    Err(e) => {
                        eprintln!("cannot wait for the command: {e}");
                        1
                    }
                };
                eprintln!("the command exited with status {code}");
                exit_code = Some(code);
                break;
            }
        }
    }
    eprintln!("stopping: final sync and upload (another signal stops at once)");
    let before = store.status().await;
    let stopped = tokio::select! {
        stopped = store.shutdown() => stopped,
        _ = signals.next() => {
            eprintln!("signal during shutdown: exiting now; files not yet uploaded stay staged");
            return Ok(ExitCode::FAILURE);
        }
    };
    for (db, result) in stopped {
        let shown = db.display().to_string();
        if let Some(s) = before.iter().find(|s| s.path == db) {
            print_compaction(&shown, s);
        }
        match result {
            Ok(s) => eprintln!(
                "{shown}: replicated through TXID {} ({} full {})",
                s.uploaded,
                s.full_copies,
                if s.full_copies == 1 { "copy" } else { "copies" }
            ),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    for path in pending.never_started() {
        failed = true;
        eprintln!("{}: never started: not replicated", path.display());
    }
    if let Some(socket) = &config.socket {
        let _ = std::fs::remove_file(&socket.path);
    }
    if args.force_snapshot || args.enforce_retention {
        failed |= !after_once(&args, &maintained).await?;
    }
    Ok(match exit_code {
        // The command's own failure is its exit code; a replica short of what it committed
        // turns its success into a failure.
        Some(code) if code != 0 => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        _ if failed => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

/// Litestream's -restore-if-db-not-exists (`all`) and its per-database key: each database
/// that does not exist is restored from its first replica, if that holds any files (else
/// it is left for the start to report).
async fn restore_missing(config: &Config, all: bool) -> anyhow::Result<()> {
    for db in &config.dbs {
        let Some(url) = db.replicas.first() else {
            continue;
        };
        if !(all || db.restore_if_missing)
            || db.dir.is_some()
            || std::fs::symlink_metadata(&db.path).is_ok()
        {
            continue;
        }
        let replica = match Replica::open(url) {
            Err(e) if e.kind() == strata::storage::ErrorKind::NotFound => None,
            opened => Some(opened?),
        };
        let backed_up = match &replica {
            Some(replica) => !replica.list_all().await?.is_empty(),
            None => false,
        };
        let (Some(replica), true) = (replica, backed_up) else {
            eprintln!(
                "{}: does not exist, and {url} holds no backup",
                db.path.display()
            );
            continue;
        };
        let progress = std::sync::Arc::new(strata::restore::NoProgress);
        let restored = strata::restore::restore(
            &replica,
            strata::restore::RestorePoint::Latest,
            &db.path,
            &strata::restore::RestoreOptions::default(),
            progress,
        )
        .await
        .with_context(|| format!("cannot restore {} from {url}", db.path.display()))?;
        eprintln!(
            "{}: did not exist; restored TXID {} from {url}",
            db.path.display(),
            restored.txid
        );
    }
    Ok(())
}

/// Litestream's -force-snapshot and -enforce-retention, once every database has synced:
/// a snapshot now and retention in each replica. Whether every one succeeded.
async fn after_once(
    args: &ReplicateArgs,
    replicas: &[(ReplicaUrl, CompactionOptions)],
) -> anyhow::Result<bool> {
    let mut ok = true;
    for (url, options) in replicas {
        let Some((compactor, scratch)) =
            super::compact_cmd::offline_compactor(url, options.clone()).await?
        else {
            continue;
        };
        let now = jiff::Timestamp::now();
        if args.force_snapshot {
            match compactor.run_level_now(Level::SNAPSHOT, now).await {
                Ok(Outcome::Compacted { file, .. }) => {
                    eprintln!("{url}: snapshot {} written", file.range.file_name());
                }
                Ok(_) => eprintln!("{url}: the newest snapshot is up to date"),
                Err(e) => {
                    ok = false;
                    eprintln!("{url}: snapshot failed: {e}");
                }
            }
        }
        if args.enforce_retention {
            match compactor.run_retention(now).await {
                Ok(n) => eprintln!("{url}: retention deleted {n} files"),
                Err(e) => {
                    ok = false;
                    eprintln!("{url}: retention failed: {e}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(ok)
}

async fn report_applied(
    store: &Store,
    applied: strata::store::Applied,
    reported: &mut BTreeSet<PathBuf>,
) {
    let status = store.status().await;
    for path in &applied.added {
        reported.remove(path);
        let replicas = status
            .iter()
            .find(|s| s.path == *path)
            .map(|s| s.replicas.join(" and "))
            .unwrap_or_default();
        eprintln!("replicating {} to {replicas}", path.display());
    }
    for path in &applied.changed {
        eprintln!("{}: settings changed; restarted", path.display());
    }
    for (path, result) in &applied.removed {
        match result {
            Ok(s) => eprintln!(
                "{}: removed, replicated through TXID {}",
                path.display(),
                s.uploaded
            ),
            Err(e) if !path.exists() => {
                eprintln!("{}: deleted; stopped ({e})", path.display());
            }
            Err(e) => eprintln!("{}: removed: {e}", path.display()),
        }
    }
    for e in &applied.failed {
        // A database that cannot start is retried at every rescan; said once.
        if e.database().is_none_or(|p| reported.insert(p.to_owned())) {
            eprintln!("{e}");
        }
    }
}

fn print_compaction(db: &str, status: &DbStatus) {
    let Some(capture) = &status.capture else {
        return;
    };
    for replica in &capture.replicas {
        let Some(c) = &replica.compaction else {
            continue;
        };
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
            let name = if capture.replicas.len() > 1 {
                format!(" ({})", replica.replica)
            } else {
                String::new()
            };
            eprintln!(
                "{db}{name}: compacted {}; retention deleted {} files",
                if levels.is_empty() {
                    "nothing".to_owned()
                } else {
                    levels.join(", ")
                },
                c.deleted
            );
        }
    }
}

/// How long `-exec`'s command has after a second stop signal before it is killed.
const EXEC_GRACE: Duration = Duration::from_secs(5);

/// Starts `-exec`'s command.
fn spawn(cmd: &str) -> anyhow::Result<tokio::process::Child> {
    let words =
        split_words(cmd).map_err(|e| anyhow::anyhow!("cannot parse --exec {cmd:?}: {e}"))?;
    let Some((program, rest)) = words.split_first() else {
        bail!("--exec was given no command");
    };
    let child = tokio::process::Command::new(program)
        .args(rest)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot run {program:?}"))?;
    eprintln!("running {cmd}");
    Ok(child)
}

fn forward(child: &tokio::process::Child, signal: libc::c_int) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) on the child's pid with a valid signal number.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The exit code a shell would report: the code, or 128 + the signal that killed it.
fn exit_status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Splits a command line into words as a POSIX shell would: blanks separate, single quotes
/// keep everything, double quotes keep all but `\"` and `\\`, a backslash escapes the next
/// character. No expansion of any kind.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("a trailing backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// What a signal asks for.
enum Signal {
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGINT or SIGTERM (the number): stop.
    Stop(libc::c_int),
}

/// SIGINT, SIGTERM and SIGHUP, caught from the moment this is made.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop(libc::SIGINT),
            _ = self.terminate.recv() => Signal::Stop(libc::SIGTERM),
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn commands_split_as_a_shell_splits_them() {
        assert_eq!(
            split_words(r#"python3 -c 'print("a b")' "x y" z\ w"#).unwrap(),
            ["python3", "-c", r#"print("a b")"#, "x y", "z w"]
        );
        assert_eq!(split_words("  a   b ").unwrap(), ["a", "b"]);
        assert_eq!(split_words(r#"a "" b"#).unwrap(), ["a", "", "b"]);
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
    }
}
