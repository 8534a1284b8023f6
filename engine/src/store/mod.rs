//! The Store: many databases replicated by one process, on one runtime.
//!
//! Every database's capture is run by one shared ticker (no thread and no timer per
//! database; an idle database costs a read of its wal-index header and a few `stat`s per
//! sync interval), its syncs run on the blocking pool a bounded number at a time, and every
//! replica in one bucket shares one object-store client. Databases are added, removed,
//! disabled and enabled while the others run; [`Store::apply`] moves the store to a new list
//! (a reloaded config) touching only what changed.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("app.db");
//! # let replica_url = format!("file://{}", dir.path().join("replica").display());
//! use strata::store::{Database, Store, StoreOptions};
//!
//! let app = rusqlite::Connection::open(&path)?;
//! app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE orders(item TEXT)")?;
//!
//! let store = Store::new(StoreOptions::default());
//! let db = store.add(Database::new(&path, replica_url.parse()?)).await?;
//!
//! app.execute("INSERT INTO orders VALUES ('book')", [])?;
//! let txid = store.sync(&db).await?; // the insert is in the replica now
//! println!("durable through TXID {txid}");
//!
//! for (_, stopped) in store.shutdown().await {
//!     stopped?; // a final sync and upload, within the shutdown timeout
//! }
//! # Ok(())
//! # }
//! ```

mod dir;
mod litestream_metrics;
mod metrics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ltx::Txid;
use tokio::sync::mpsc;

use crate::capture::{
    CaptureError, CaptureOptions, Feed, Replication, Status, StopError, SyncError,
};
use crate::config::Config;
use crate::storage::{Clients, Replica, ReplicaUrl, StorageError};
use crate::ticker::Ticker;

pub use crate::config::DirSource;
pub use dir::scan;

/// How a [`Store`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Syncs (staging files from the WAL, checkpoints) running at once, across every
    /// database. The rest wait their turn.
    pub max_concurrent_syncs: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_concurrent_syncs: 8,
        }
    }
}

/// One database to replicate, and how.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Database {
    /// The database file.
    pub path: PathBuf,
    /// Where it is replicated: one capture serves them all, each has its own uploads,
    /// compaction and retention.
    pub replicas: Vec<ReplicaUrl>,
    /// Capture, compaction and retention settings.
    pub options: CaptureOptions,
}

impl Database {
    /// `path` replicated to `replica` with the default settings.
    pub fn new(path: impl Into<PathBuf>, replica: ReplicaUrl) -> Database {
        Database {
            path: path.into(),
            replicas: vec![replica],
            options: CaptureOptions::default(),
        }
    }

    /// The same, replicated to `replica` too.
    pub fn with_replica(mut self, replica: ReplicaUrl) -> Database {
        self.replicas.push(replica);
        self
    }

    /// The same with other settings.
    pub fn with_options(mut self, options: CaptureOptions) -> Database {
        self.options = options;
        self
    }
}

/// The databases a config lists, with its settings: a `dir` entry is scanned now (see
/// [`scan`]). `sync_interval` (a command-line override) replaces the configured one.
pub fn config_databases(config: &Config) -> Result<Vec<Database>, StoreError> {
    config_databases_around(config, &std::collections::HashSet::new())
}

/// [`config_databases`], not opening the files in `captured` (see [`dir::scan_around`]).
fn config_databases_around(
    config: &Config,
    captured: &std::collections::HashSet<(u64, u64)>,
) -> Result<Vec<Database>, StoreError> {
    let mut compaction = config.compaction_options();
    let mut dbs = Vec::new();
    for db in &config.dbs {
        let mut options = CaptureOptions::default();
        if let Some(i) = db.sync_interval {
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
        if let Some(t) = db.busy_timeout {
            options.busy_timeout = t;
        }
        if let Some(n) = db.max_wal_bytes {
            options.max_wal_bytes = n;
        }
        if let Some(t) = config.shutdown_sync_timeout {
            options.shutdown_timeout = t;
        }
        compaction.encoding = options.encoding;
        options.compaction = Some(compaction.clone());
        match &db.dir {
            None => dbs.push(Database {
                path: db.path.clone(),
                replicas: db.replicas.clone(),
                options,
            }),
            Some(source) => {
                let found = dir::scan_around(&db.path, source, captured).map_err(|error| {
                    StoreError::Io {
                        path: db.path.clone(),
                        error,
                    }
                })?;
                dbs.extend(found.into_iter().map(|(path, rel)| Database {
                    path,
                    replicas: db.replicas.iter().map(|r| r.join(&rel)).collect(),
                    options: options.clone(),
                }));
            }
        }
    }
    Ok(dbs)
}

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No database at that path is in the store.
    #[error("{} is not in the store", .0.display())]
    Unknown(PathBuf),
    /// The database is in the store already.
    #[error("{} is already in the store", .0.display())]
    AlreadyAdded(PathBuf),
    /// Another database in the store is replicated to the same place (or one inside its
    /// files, or around them).
    #[error("{}: {replica} is already the replica of {}, or inside or around its files: each database needs a replica of its own", path.display(), other.display())]
    ReplicaShared {
        /// The database being added.
        path: PathBuf,
        /// The replica.
        replica: String,
        /// The database that has it.
        other: PathBuf,
    },
    /// The replica is a directory inside a staging directory.
    #[error("{}: {replica} is inside a staging directory (.NAME-strata), which strata removes and rewrites: give a replica elsewhere", path.display())]
    ReplicaInStaging {
        /// The database being added.
        path: PathBuf,
        /// The replica.
        replica: String,
    },
    /// The database is in the store but disabled.
    #[error("{} is disabled", .0.display())]
    Disabled(PathBuf),
    /// A name matches more than one database in the store.
    #[error("{name} names {} databases: {}; give more of the path", candidates.len(), candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The name given.
        name: String,
        /// The databases it matches.
        candidates: Vec<PathBuf>,
    },
    /// The database file is missing or unreadable.
    #[error("{}: {error}", path.display())]
    Io {
        /// The database.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The replica could not be opened.
    #[error("{}: {source}", path.display())]
    Replica {
        /// The database.
        path: PathBuf,
        /// Why.
        source: StorageError,
    },
    /// Replication could not start.
    #[error("cannot replicate {}: {source}", path.display())]
    Start {
        /// The database.
        path: PathBuf,
        /// Why.
        source: CaptureError,
    },
    /// The final sync at a stop fell short.
    #[error("{}: {source}", path.display())]
    Stop {
        /// The database.
        path: PathBuf,
        /// What is not in the replica.
        source: Box<StopError>,
    },
    /// A [`Store::sync`] could not confirm durability.
    #[error("{}: {source}", path.display())]
    Sync {
        /// The database.
        path: PathBuf,
        /// Why.
        source: SyncError,
    },
}

/// What one database in the store is doing.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DbStatus {
    /// The database (canonical path).
    pub path: PathBuf,
    /// Its replicas.
    pub replicas: Vec<String>,
    /// Whether it is being replicated (a disabled one is kept but not captured).
    pub enabled: bool,
    /// Capture and upload state, while enabled.
    pub capture: Option<Status>,
    /// Why the replication stopped on its own, if it did (it stays stopped until removed
    /// or enabled again).
    pub failed: Option<String>,
}

/// What [`Store::apply`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Applied {
    /// Databases started.
    pub added: Vec<PathBuf>,
    /// Databases stopped and removed (with what their final sync left undone, if anything).
    pub removed: Vec<(PathBuf, Result<Status, StoreError>)>,
    /// Databases restarted because their settings or replica changed.
    pub changed: Vec<PathBuf>,
    /// Databases that could not be started (they are not in the store).
    pub failed: Vec<StoreError>,
}

struct Entry {
    spec: Database,
    /// Where its replicas are ([`ReplicaUrl::location`]).
    locations: Vec<String>,
    running: Option<Replication>,
}

/// A database whose replication stopped on its own, and why.
type Failure = (PathBuf, String);

/// Many databases replicated on one runtime. See the [module docs](self).
pub struct Store {
    ticker: Ticker,
    clients: Clients,
    dbs: tokio::sync::Mutex<BTreeMap<PathBuf, Entry>>,
    /// Databases being started, with their replicas' locations: kept apart from `dbs`, so a
    /// slow start (a replica that takes long to answer) leaves the store answering.
    starting: std::sync::Mutex<Vec<(PathBuf, Vec<String>)>>,
    failures: (
        mpsc::UnboundedSender<Failure>,
        tokio::sync::Mutex<mpsc::UnboundedReceiver<Failure>>,
    ),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// An empty store. Call it inside a tokio runtime (the application's, or one made for
    /// strata): its work runs there.
    pub fn new(options: StoreOptions) -> Store {
        let (tx, rx) = mpsc::unbounded_channel();
        Store {
            ticker: Ticker::new(options.max_concurrent_syncs),
            clients: Clients::default(),
            dbs: tokio::sync::Mutex::new(BTreeMap::new()),
            starting: std::sync::Mutex::new(Vec::new()),
            failures: (tx, tokio::sync::Mutex::new(rx)),
        }
    }

    /// Starts replicating a database; returns its canonical path, the key for the other
    /// calls. Fails if it is already in the store (under any spelling).
    pub async fn add(&self, db: Database) -> Result<PathBuf, StoreError> {
        let path = canonical(&db.path)?;
        let locations: Vec<String> = db.replicas.iter().map(ReplicaUrl::location).collect();
        {
            let dbs = self.dbs.lock().await;
            let mut starting = self.starting.lock().unwrap();
            if dbs.contains_key(&path) || starting.iter().any(|(p, _)| *p == path) {
                return Err(StoreError::AlreadyAdded(path));
            }
            let in_use: Vec<(&PathBuf, &Vec<String>)> = dbs
                .iter()
                .map(|(p, e)| (p, &e.locations))
                .chain(starting.iter().map(|(p, l)| (p, l)))
                .collect();
            // A directory replica inside a staging directory (this database's or another's)
            // would be removed with it (`strata reset`, a new history).
            let stagings: Vec<String> = in_use
                .iter()
                .map(|(p, _)| p.as_path())
                .chain([path.as_path()])
                .filter_map(|p| crate::capture::staging_dir(p).ok())
                .map(|d| format!("file://{}", d.display()))
                .collect();
            if let Some(i) = locations
                .iter()
                .position(|l| stagings.iter().any(|s| nested(l, s)))
            {
                return Err(StoreError::ReplicaInStaging {
                    path,
                    replica: db.replicas[i].to_string(),
                });
            }
            for (other, theirs) in in_use {
                // The same place, or one inside the other's files (`ROOT/ltx/...`): a
                // replica beside another (`ROOT/other`) shares nothing with it.
                let clash = |a: &str, b: &str| a == b || nested(a, &format!("{b}/ltx"));
                if let Some(i) = locations
                    .iter()
                    .position(|l| theirs.iter().any(|t| clash(l, t) || clash(t, l)))
                {
                    return Err(StoreError::ReplicaShared {
                        path,
                        replica: db.replicas[i].to_string(),
                        other: other.clone(),
                    });
                }
            }
            starting.push((path.clone(), locations.clone()));
        }
        let started = self.start(&path, &db).await;
        let mut dbs = self.dbs.lock().await;
        self.starting.lock().unwrap().retain(|(p, _)| *p != path);
        dbs.insert(
            path.clone(),
            Entry {
                spec: db,
                locations,
                running: Some(started?),
            },
        );
        Ok(path)
    }

    async fn start(&self, path: &Path, db: &Database) -> Result<Replication, StoreError> {
        let replicas = db
            .replicas
            .iter()
            .map(|url| Replica::create_in(url, &self.clients))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StoreError::Replica {
                path: path.to_owned(),
                source,
            })?;
        let replication = Replication::start_on(
            Some(self.ticker.clone()),
            path,
            replicas,
            db.options.clone(),
        )
        .await
        .map_err(|source| StoreError::Start {
            path: path.to_owned(),
            source,
        })?;
        for replica in &db.replicas {
            tracing::info!(db = %path.display(), %replica, "replicating");
        }
        let (failed, failures) = (replication.failed_handle(), self.failures.0.clone());
        let path = path.to_owned();
        tokio::spawn(async move {
            if let Some(message) = failed.await {
                tracing::error!(db = %path.display(), error = %message, "replication stopped");
                let _ = failures.send((path, message));
            }
        });
        Ok(replication)
    }

    /// Stops replicating a database (a final sync and upload first) and forgets it.
    pub async fn remove(&self, db: &Path) -> Result<Status, StoreError> {
        let path = self.key(db).await?;
        let entry = self.dbs.lock().await.remove(&path);
        let entry = entry.ok_or_else(|| StoreError::Unknown(path.clone()))?;
        match entry.running {
            Some(r) => stop(&path, r).await,
            None => Ok(Status::default()),
        }
    }

    /// Stops replicating a database but keeps it in the store, to [`Store::enable`] later.
    pub async fn disable(&self, db: &Path) -> Result<Status, StoreError> {
        let path = self.key(db).await?;
        let running = {
            let mut dbs = self.dbs.lock().await;
            let entry = dbs
                .get_mut(&path)
                .ok_or_else(|| StoreError::Unknown(path.clone()))?;
            entry.running.take()
        };
        match running {
            Some(r) => stop(&path, r).await,
            None => Ok(Status::default()),
        }
    }

    /// Starts a disabled (or failed) database again.
    pub async fn enable(&self, db: &Path) -> Result<(), StoreError> {
        let path = self.key(db).await?;
        let (spec, failed) = {
            let mut dbs = self.dbs.lock().await;
            let entry = dbs
                .get_mut(&path)
                .ok_or_else(|| StoreError::Unknown(path.clone()))?;
            let mut starting = self.starting.lock().unwrap();
            if entry.running.as_ref().is_some_and(|r| r.fatal().is_none())
                || starting.iter().any(|(p, _)| *p == path)
            {
                return Ok(());
            }
            starting.push((path.clone(), entry.locations.clone()));
            (entry.spec.clone(), entry.running.take())
        };
        // Stopped and started without the store locked: the others go on meanwhile.
        if let Some(failed) = failed {
            let _ = failed.stop().await;
        }
        let started = self.start(&path, &spec).await;
        let mut dbs = self.dbs.lock().await;
        self.starting.lock().unwrap().retain(|(p, _)| *p != path);
        let started = started?;
        match dbs.get_mut(&path) {
            Some(entry) => entry.running = Some(started),
            // Removed meanwhile.
            None => {
                drop(dbs);
                let _ = started.stop().await;
            }
        }
        Ok(())
    }

    /// Returns once everything committed to `db` before the call is in its replica, with
    /// the newest TXID there. The sync runs at once, not at the next interval. Waits
    /// through upload retries: bound it with `tokio::time::timeout`.
    pub async fn sync(&self, db: &Path) -> Result<Txid, StoreError> {
        let path = self.key(db).await?;
        // The store is not locked while waiting: other calls go on meanwhile.
        let waiting = {
            let dbs = self.dbs.lock().await;
            let entry = dbs
                .get(&path)
                .ok_or_else(|| StoreError::Unknown(path.clone()))?;
            let running = entry
                .running
                .as_ref()
                .ok_or_else(|| StoreError::Disabled(path.clone()))?;
            running.sync_handle()
        };
        waiting
            .await
            .map_err(|source| StoreError::Sync { path, source })
    }

    /// The staged files of the database `name` names, as they come, for a follower's
    /// stream. `name` is its file name, or any trailing part of its path (in directory mode
    /// its path relative to the directory) that names one database of the store.
    pub async fn feed(&self, name: &str) -> Result<Feed, StoreError> {
        let dbs = self.dbs.lock().await;
        let wanted = Path::new(name);
        let matching: Vec<&PathBuf> = dbs
            .keys()
            .filter(|p| !name.is_empty() && wanted.is_relative() && p.ends_with(wanted))
            .collect();
        let path = match matching.as_slice() {
            [] => return Err(StoreError::Unknown(wanted.to_owned())),
            [one] => (*one).clone(),
            more => {
                return Err(StoreError::Ambiguous {
                    name: name.to_owned(),
                    candidates: more.iter().map(|p| (*p).clone()).collect(),
                });
            }
        };
        dbs[&path]
            .running
            .as_ref()
            .map(Replication::feed)
            .ok_or(StoreError::Disabled(path))
    }

    /// Every database in the store, in path order.
    pub async fn status(&self) -> Vec<DbStatus> {
        let dbs = self.dbs.lock().await;
        dbs.iter()
            .map(|(path, e)| DbStatus {
                path: path.clone(),
                replicas: e.spec.replicas.iter().map(ToString::to_string).collect(),
                enabled: e.running.is_some(),
                capture: e.running.as_ref().map(Replication::status),
                failed: e.running.as_ref().and_then(Replication::fatal),
            })
            .collect()
    }

    /// Every database's metrics, in the Prometheus (OpenMetrics) text format: syncs,
    /// uploads, compaction and retention passes with counts, time and errors; requests by
    /// kind; files and bytes per level; TXIDs and lag. Read from [`Store::status`] at each
    /// call; nothing is kept for them in between.
    pub async fn metrics(&self) -> String {
        metrics::encode(self.status().await, jiff::Timestamp::now())
    }

    /// The databases a config lists now, as [`config_databases`] does, but without opening
    /// any file this store captures: use this, not that, to list a directory again while the
    /// store runs (see [`scan`]'s note on locks).
    pub async fn config_databases(&self, config: &Config) -> Result<Vec<Database>, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let captured = self
            .dbs
            .lock()
            .await
            .keys()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        config_databases_around(config, &captured)
    }

    /// The databases in the store, in path order.
    pub async fn databases(&self) -> Vec<PathBuf> {
        self.dbs.lock().await.keys().cloned().collect()
    }

    /// Resolves with the next database whose replication stopped on its own (a fatal
    /// error such as another writer in its replica, or a bug), and why. The others go on;
    /// the failed one stays in the store, stopped, until removed or enabled again.
    pub async fn next_failure(&self) -> (PathBuf, String) {
        let mut rx = self.failures.1.lock().await;
        match rx.recv().await {
            Some(failure) => failure,
            None => std::future::pending().await,
        }
    }

    /// Moves the store to `dbs` (a reloaded config): starts the new ones, stops and removes
    /// those no longer listed, restarts those whose replica or settings changed, and
    /// leaves the rest running untouched.
    pub async fn apply(&self, dbs: Vec<Database>) -> Applied {
        let mut applied = Applied::default();
        let mut wanted = BTreeMap::new();
        for db in dbs {
            match canonical(&db.path) {
                Ok(path) => {
                    wanted.insert(path, db);
                }
                Err(e) => applied.failed.push(e),
            }
        }
        let current: Vec<(PathBuf, Database)> = {
            let dbs = self.dbs.lock().await;
            dbs.iter()
                .map(|(p, e)| (p.clone(), e.spec.clone()))
                .collect()
        };
        // Everything that goes (or changes) stops before anything starts: a replica a
        // removed database leaves may be the one a new database is given, and two databases
        // must never write one replica, even for a moment.
        let mut changed = Vec::new();
        for (path, spec) in &current {
            match wanted.get(path) {
                None => {
                    let result = self.remove(path).await;
                    applied.removed.push((path.clone(), result));
                }
                Some(new) if new.replicas != spec.replicas || new.options != spec.options => {
                    let _ = self.remove(path).await;
                    changed.push((path.clone(), new.clone()));
                }
                Some(_) => {}
            }
        }
        for (path, new) in changed {
            match self.add(new).await {
                Ok(_) => applied.changed.push(path),
                Err(e) => applied.failed.push(e),
            }
        }
        for (path, db) in wanted {
            if current.iter().any(|(p, _)| *p == path) {
                continue;
            }
            match self.add(db).await {
                Ok(path) => applied.added.push(path),
                Err(e) => applied.failed.push(e),
            }
        }
        applied
    }

    /// Stops every database at once, each with a final sync and upload within its shutdown
    /// timeout. Returns each database's outcome.
    pub async fn shutdown(&self) -> Vec<(PathBuf, Result<Status, StoreError>)> {
        let entries: Vec<(PathBuf, Entry)> = std::mem::take(&mut *self.dbs.lock().await)
            .into_iter()
            .collect();
        futures::future::join_all(entries.into_iter().map(|(path, entry)| async move {
            let result = match entry.running {
                Some(r) => stop(&path, r).await,
                None => Ok(Status::default()),
            };
            (path, result)
        }))
        .await
    }

    async fn key(&self, db: &Path) -> Result<PathBuf, StoreError> {
        if self.dbs.lock().await.contains_key(db) {
            return Ok(db.to_owned());
        }
        // A database deleted since it was added no longer canonicalises: match by the
        // canonical parent instead.
        let path = canonical(db).or_else(|e| {
            let parent = db.parent().filter(|p| !p.as_os_str().is_empty());
            match (parent.map(std::fs::canonicalize), db.file_name()) {
                (Some(Ok(dir)), Some(name)) => Ok(dir.join(name)),
                (None, Some(name)) => std::env::current_dir()
                    .and_then(std::fs::canonicalize)
                    .map(|d| d.join(name))
                    .map_err(|_| e),
                _ => Err(e),
            }
        })?;
        Ok(path)
    }
}

async fn stop(path: &Path, replication: Replication) -> Result<Status, StoreError> {
    replication.stop().await.map_err(|source| StoreError::Stop {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

impl StoreError {
    /// The database a failure to open or start concerns (what a caller may try again).
    pub fn database(&self) -> Option<&Path> {
        match self {
            StoreError::Start { path, .. }
            | StoreError::Io { path, .. }
            | StoreError::Replica { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Whether replica location `inner` is `outer` or inside it.
fn nested(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn canonical(path: &Path) -> Result<PathBuf, StoreError> {
    std::fs::canonicalize(path).map_err(|error| StoreError::Io {
        path: path.to_owned(),
        error: if error.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(error.kind(), "no database here")
        } else {
            error
        },
    })
}
