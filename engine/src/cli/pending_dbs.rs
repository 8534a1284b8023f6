//! The databases `strata replicate` has not started yet, as Litestream treats them: one whose
//! file does not exist is started once it does (checked every second), and one that could
//! not start (its replica unreachable, its staging taken by another process) is tried again
//! after a pause that grows to a minute. Neither stops or slows the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata::store::{Database, Store, StoreError};
use tokio::time::Instant;

/// The first pause before a database that could not start is tried again.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest pause between tries.
const LAST_RETRY: Duration = Duration::from_secs(60);

pub(super) struct PendingDbs {
    /// Whether a database that cannot start is tried again (not with `-once`).
    retry: bool,
    /// Databases whose file does not exist yet.
    missing: Vec<Database>,
    /// Databases that could not start, and when each is tried next.
    retrying: Vec<Retry>,
}

struct Retry {
    db: Database,
    at: Instant,
    pause: Duration,
}

impl PendingDbs {
    pub(super) fn new(retry: bool) -> PendingDbs {
        PendingDbs {
            retry,
            missing: Vec::new(),
            retrying: Vec::new(),
        }
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.retrying.is_empty()
    }

    /// Whether no database is waited for because its file is missing.
    pub(super) fn missing_none(&self) -> bool {
        self.missing.is_empty()
    }

    /// From now on, waits for these missing databases (the config's current list of them).
    pub(super) fn wait_for(&mut self, missing: Vec<Database>) {
        self.missing = missing;
    }

    /// Starts `db`; one that cannot start is said and tried again later. Whether it
    /// started.
    pub(super) async fn start(&mut self, store: &Store, db: Database) -> bool {
        self.try_start(store, db, FIRST_RETRY).await
    }

    /// A database the store could not start (`error`), tried again later if `specs` has
    /// it.
    pub(super) fn retry_later(&mut self, error: &StoreError, specs: &[Database]) {
        let Some(path) = error.database() else {
            return;
        };
        if let Some(db) = specs.iter().find(|db| same_file(&db.path, path)) {
            self.schedule(db.clone(), FIRST_RETRY);
        }
    }

    /// Forgets the databases tried again that `specs` (the config now) no longer lists.
    pub(super) fn keep_listed(&mut self, specs: &[Database]) {
        self.retrying
            .retain(|r| specs.iter().any(|db| same_file(&db.path, &r.db.path)));
    }

    /// Starts the missing databases that now exist and the ones due to be tried again.
    pub(super) async fn tick(&mut self, store: &Store) {
        for db in self
            .missing
            .extract_if(.., |db| !is_missing(&db.path))
            .collect::<Vec<_>>()
        {
            let path = db.path.clone();
            if self.try_start(store, db, FIRST_RETRY).await {
                eprintln!("{}: it exists now: replicating", path.display());
            }
        }
        let now = Instant::now();
        let due: Vec<Retry> = self.retrying.extract_if(.., |r| r.at <= now).collect();
        for retry in due {
            let path = retry.db.path.clone();
            let next = (retry.pause * 2).min(LAST_RETRY);
            if self.try_start(store, retry.db, next).await {
                eprintln!("{}: started on a later try: replicating", path.display());
            }
        }
    }

    /// The databases that could not start so far.
    pub(super) fn never_started(&self) -> impl Iterator<Item = &Path> {
        self.retrying.iter().map(|r| r.db.path.as_path())
    }

    async fn try_start(&mut self, store: &Store, db: Database, pause: Duration) -> bool {
        let replicas = db
            .replicas
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and ");
        let path = db.path.clone();
        match store.add(db.clone()).await {
            Ok(_) => {
                eprintln!("replicating {} to {replicas}", path.display());
                true
            }
            // Started meanwhile (a SIGHUP applied the config).
            Err(StoreError::AlreadyAdded(_)) => true,
            Err(e) => {
                let next = if self.retry {
                    format!("tried again in {} s", pause.as_secs())
                } else {
                    "not replicated".to_owned()
                };
                eprintln!(
                    "{}: cannot start: {}; {next}",
                    path.display(),
                    super::error_chain(&anyhow::Error::from(e)),
                );
                if self.retry {
                    self.schedule(db, pause);
                }
                false
            }
        }
    }

    fn schedule(&mut self, db: Database, pause: Duration) {
        self.retrying.retain(|r| r.db.path != db.path);
        self.retrying.push(Retry {
            db,
            at: Instant::now() + pause,
            pause,
        });
    }
}

/// Whether nothing is at `path` (a dangling symlink is something: opening it fails loudly).
pub(super) fn is_missing(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Whether `a` and `b` name the same database file (by any spelling).
fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    canonical(a) == canonical(b)
}
