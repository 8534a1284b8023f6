//! Making the follower's local database ready: restored from the replica the first time
//! (waiting for the replica's first file), or reopened at its saved position and checked
//! to be what the position says; what `--force` starts over from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::FollowError;
use super::local::LocalDb;
use super::position::{self, Position};
use crate::plan::PlanError;
use crate::restore::{self, NoProgress, RestoreError, RestoreOptions, RestorePoint};
use crate::storage::Replica;

/// The local database opened, its position, whether it was restored (because it had
/// none), and why it must be rebuilt first, if it must (it is not what its position says).
pub(super) async fn prepare(
    replica: &Replica,
    db: &Path,
    force: bool,
    interval: Duration,
) -> Result<Prepared, FollowError> {
    let position_error = |error| FollowError::Position {
        path: position::path_for(db),
        error,
    };
    let lock = position::lock(db).map_err(position_error)?;
    let exists = std::fs::symlink_metadata(db).is_ok();
    let saved = match Position::load(db) {
        Ok(saved) => saved,
        // A position that cannot be read: --force starts over.
        Err(_) if force => {
            remove_follower_files(db, exists).map_err(position_error)?;
            None
        }
        Err(error) => {
            return Err(position_error(std::io::Error::new(
                error.kind(),
                format!("{error} (give --force to restore the database again)"),
            )));
        }
    };
    if let Some(saved) = saved {
        if !exists {
            // The database went and its position, -wal and -shm stayed: they are the
            // follower's own, of a database no longer there.
            tracing::warn!(db = %db.display(), "the database is gone: restoring it again");
            remove_follower_files(db, false).map_err(position_error)?;
        } else {
            match open_saved(db, &saved).await {
                Ok((local, rebuild)) => {
                    tracing::info!(db = %db.display(), txid = %saved.txid, "following on from the saved position");
                    return Ok(Prepared {
                        local: local.holding(lock),
                        position: saved,
                        restored: false,
                        rebuild,
                    });
                }
                Err(e) if force && !matches!(e, FollowError::Panicked(_)) => {
                    tracing::warn!(db = %db.display(), error = %e, "--force: restoring the database again");
                    remove_follower_files(db, true).map_err(position_error)?;
                }
                Err(e) => return Err(e),
            }
        }
    } else if exists && !force {
        return Err(FollowError::NotAFollower {
            path: db.to_owned(),
            position: position::path_for(db),
        });
    }
    let mut told = false;
    let plan = loop {
        match restore::plan(replica, RestorePoint::Latest).await {
            Ok(plan) => break plan,
            // A follower started before its primary's first upload waits for it.
            Err(RestoreError::Plan(PlanError::Empty)) => {}
            Err(RestoreError::Storage(e)) if e.is_not_found() => {}
            Err(error) => {
                return Err(FollowError::Restore {
                    path: db.to_owned(),
                    error: Box::new(error),
                });
            }
        }
        if !told {
            tracing::warn!(
                replica = replica.name(),
                "the replica holds nothing yet: waiting for its first file"
            );
            told = true;
        }
        tokio::time::sleep(interval).await;
    };
    let history = match plan.files.last() {
        Some(last) => replica.read_header(last).await?.node_id,
        None => 0,
    };
    let options = RestoreOptions {
        force,
        ..RestoreOptions::default()
    };
    let summary = restore::restore(
        replica,
        RestorePoint::Txid(plan.txid),
        db,
        &options,
        Arc::new(NoProgress),
    )
    .await
    .map_err(|error| FollowError::Restore {
        path: db.to_owned(),
        error: Box::new(error),
    })?;
    let path = db.to_owned();
    let local = tokio::task::spawn_blocking(move || LocalDb::open(&path))
        .await
        .map_err(|e| FollowError::Panicked(e.to_string()))??;
    let fingerprint = local.fingerprint()?;
    let position = Position {
        txid: summary.txid,
        history,
        page_size: local.page_size().get(),
        applying: None,
        newest: summary.txid,
        fingerprint: Some(fingerprint),
    };
    position.save(db).map_err(position_error)?;
    tracing::info!(db = %db.display(), txid = %summary.txid, "restored; following");
    Ok(Prepared {
        local: local.holding(lock),
        position,
        restored: true,
        rebuild: None,
    })
}

/// What [`prepare`] made ready.
pub(super) struct Prepared {
    pub(super) local: LocalDb,
    pub(super) position: Position,
    pub(super) restored: bool,
    pub(super) rebuild: Option<String>,
}

/// Opens a database that has a saved position and checks it is what the position says:
/// if not (replaced, written by something else, or a transaction in flight when the
/// follower was killed left it unknown), why it must be rebuilt.
async fn open_saved(db: &Path, saved: &Position) -> Result<(LocalDb, Option<String>), FollowError> {
    let path = db.to_owned();
    let saved = *saved;
    tokio::task::spawn_blocking(move || {
        let local = LocalDb::open(&path)?;
        if local.page_size().get() != saved.page_size {
            return Err(FollowError::Position {
                path: position::path_for(&path),
                error: std::io::Error::other(format!(
                    "says page size {}, the database has {} (give --force to restore it again)",
                    saved.page_size,
                    local.page_size()
                )),
            });
        }
        let now = local.fingerprint()?;
        let rebuild = match saved.fingerprint {
            Some(f) if f == now => None,
            // Killed mid-transaction: the database is at the position or at `applying`,
            // and one transaction reaching past both leaves it right (see `next_step`).
            Some(_) if saved.applying.is_some() => None,
            Some(_) => Some(format!(
                "{} is not the database the follower left at TXID {} (replaced, or written by something else)",
                path.display(),
                saved.txid
            )),
            None => None,
        };
        Ok((local, rebuild))
    })
    .await
    .map_err(|e| FollowError::Panicked(e.to_string()))?
}

/// Removes the follower's position and the database's -wal and -shm, and the database
/// itself if `db_too`: what is left of a follower whose database is gone or given up.
fn remove_follower_files(db: &Path, db_too: bool) -> std::io::Result<()> {
    let mut paths = vec![position::path_for(db)];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        paths.push(PathBuf::from(p));
    }
    if db_too {
        paths.push(db.to_owned());
    }
    for p in paths {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
