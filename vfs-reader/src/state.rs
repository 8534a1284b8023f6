//! Building a [`PageMap`] from a replica (a restore plan, then each planned file's header and
//! page index) and moving it forward as the primary writes new files.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use ltx::{Header, PageIndex, Trailer, Txid};
use strata::plan::{PlanError, plan_files, resolve_timestamp};
use strata::storage::{FileInfo, Level, Replica, StorageError};

use crate::page_map::{MapError, PageMap, content_id};

/// How many files' headers and indexes are fetched at once.
const FETCHES_AT_ONCE: usize = 16;

/// Which state of the replica a reader shows: the newest (followed as the primary
/// writes), or pinned at a TXID or a time. The restore's own target.
pub use strata::restore::RestorePoint;

/// Why a replica could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The object store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No restore plan reaches the state asked for.
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// The planned files do not make one database.
    #[error("{0}")]
    Map(#[from] MapError),
    /// A file's bytes are not valid LTX.
    #[error("{file}: {error}")]
    Ltx {
        /// The file, as the replica names it.
        file: String,
        /// What is wrong with it.
        error: ltx::Error,
    },
    /// A file the open read transaction needs is gone and its state with it: retention
    /// removed it while the transaction ran (a transaction longer than the replica's L0
    /// retention can see this), or the replica lost it or was written again. A new
    /// transaction reads what the replica restores to now.
    #[error(
        "the state this read transaction shows (TXID {txid}) is no longer in the replica (retention removed its files during the transaction, or the replica changed under it); run it again ({plan})"
    )]
    Gone {
        /// The TXID the transaction shows.
        txid: Txid,
        /// Why it cannot be planned again.
        plan: PlanError,
    },
    /// A file read whole did not match its checksum: its pages are not served, not even
    /// by ranged reads, which cannot tell.
    #[error("{file} is corrupt ({reason}): its pages are not served")]
    Corrupt {
        /// The file, as `L<level>/<name>`.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The replica did not answer in time.
    #[error("the replica did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The VFS was given something it cannot use.
    #[error("{0}")]
    Config(String),
}

impl VfsError {
    /// `file` of `replica` is not valid LTX.
    pub fn ltx(replica: &Replica, file: &FileInfo, error: ltx::Error) -> VfsError {
        VfsError::Ltx {
            file: format!("{} {} {}", replica.name(), file.level, file.range),
            error,
        }
    }

    /// A file the map points into is gone (compaction and retention moved on).
    pub fn is_not_found(&self) -> bool {
        matches!(self, VfsError::Storage(e) if e.is_not_found())
    }
}

/// One file's header, page index and trailer, and its bytes if it was fetched whole
/// (`Options::whole_file_max`).
struct Fetched {
    info: FileInfo,
    header: Header,
    index: PageIndex,
    trailer: Trailer,
    body: Option<bytes::Bytes>,
}

/// A map, and the whole bytes of the small files it was built from.
pub(crate) struct Loaded {
    /// The map.
    pub map: PageMap,
    /// (file, content identity, bytes) of the files fetched whole.
    pub bodies: Vec<Body>,
    /// The snapshots (L9) the listing behind the map held, if it listed them.
    pub snapshots: Option<Vec<FileInfo>>,
}

/// A file fetched whole: what the listing says of it, the identity of its bytes, the bytes.
pub(crate) type Body = (FileInfo, u64, bytes::Bytes);

fn bodies(indexed: Vec<Fetched>) -> Vec<Body> {
    indexed
        .into_iter()
        .filter_map(|f| {
            let id = content_id(&f.info, &f.header, f.trailer.file_checksum);
            Some((f.info, id, f.body?))
        })
        .collect()
}

/// The map of `target`: one listing of the replica, a plan, and each planned file's header
/// and index (the whole file, checksum verified, if it is at most `whole` bytes).
pub(crate) async fn load(
    replica: &Replica,
    target: RestorePoint,
    whole: u64,
) -> Result<Loaded, VfsError> {
    let files = replica.list_all().await?;
    let txid = match target {
        RestorePoint::Latest => plan_files(&files, Txid::ZERO, None, &[])?.txid,
        RestorePoint::Txid(t) => t,
        RestorePoint::Timestamp(ts) => resolve_timestamp(replica, &files, ts).await??,
    };
    // Files of two histories are never joined: the earlier file of a pair is left out
    // (the history that reaches the target is kept), else the later, a few times at most.
    let mut excluded: Vec<FileInfo> = Vec::new();
    loop {
        let plan = plan_files(&files, Txid::ZERO, Some(txid), &excluded)?;
        let indexed = fetch_indexes(replica, &plan.files, whole).await?;
        let built = PageMap::build(
            indexed
                .iter()
                .map(|f| (&f.info, &f.header, &f.index, f.trailer)),
        );
        match built {
            Ok(Some(map)) => {
                return Ok(Loaded {
                    map,
                    bodies: bodies(indexed),
                    snapshots: Some(snapshots(&files)),
                });
            }
            Ok(None) => return Err(VfsError::Plan(PlanError::Empty)),
            Err(MapError::TwoHistories(two)) => {
                let around = [two.earlier.clone(), two.file.clone()]
                    .into_iter()
                    .find(|f| {
                        let mut without = excluded.clone();
                        without.push(f.clone());
                        plan_files(&files, Txid::ZERO, Some(txid), &without).is_ok()
                    });
                match around {
                    Some(f) if excluded.len() < MAX_EXCLUDED => {
                        tracing::warn!(replica = replica.name(), error = %two.error, left_out = %f, "files of two histories in the replica");
                        excluded.push(f);
                    }
                    _ => return Err(VfsError::Map(MapError::TwoHistories(two))),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How many files of another history a plan leaves out before it gives up.
const MAX_EXCLUDED: usize = 16;

/// The snapshots among `files`.
fn snapshots(files: &[FileInfo]) -> Vec<FileInfo> {
    files
        .iter()
        .filter(|f| f.level == Level::SNAPSHOT)
        .cloned()
        .collect()
}

/// How a newer state found relates to the state followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// The state followed, extended by new files that continue it.
    Extends,
    /// Planned afresh from a listing; it continues the state followed (a newer TXID of the
    /// same history, or the same state from files compaction wrote since).
    Planned,
    /// Planned afresh; it replaces the state followed rather than continuing it: the
    /// replica's history restarted (another database, a restore put in place) or it lost
    /// its newest files, so it may be at a lower TXID. Checked before it is offered: the
    /// state followed is no longer in the replica.
    Replaces,
}

/// A newer state a poll found.
pub(crate) struct Newer {
    /// Its map.
    pub loaded: Loaded,
    /// How it relates to the state followed.
    pub change: Change,
}

/// What a poll found.
pub(crate) struct Polled {
    /// A newer state, if any.
    pub newer: Option<Newer>,
    /// The snapshots in the replica now.
    pub snapshots: Vec<FileInfo>,
}

/// Looks for what changed after `map` (whose listing held the snapshots `known`): a
/// start-after listing of L0 from the map's TXID, where every new transaction lands first
/// (and the map's newest L0 file must still be), and a listing of L9,
/// where a full copy that restarts the history lands alone (a page-size change, a replaced
/// database, a replica re-seeded). New L0 files that continue the map extend it; anything
/// else is planned afresh.
pub(crate) async fn poll(
    replica: &Replica,
    map: &Arc<PageMap>,
    known: &[FileInfo],
    whole: u64,
) -> Result<Polled, VfsError> {
    let (listed, snapshots) = futures::try_join!(
        replica.list(Level::L0, map.txid),
        replica.list(Level::SNAPSHOT, Txid::ZERO)
    )?;
    // The listing starts at the map's own TXID: if the map's newest file is an L0 file, it
    // must still be there. If not, the replica lost it (or retention removed it after
    // compaction): plan afresh, which tells the two apart.
    let newest_l0 = map
        .files
        .iter()
        .find(|f| f.level == Level::L0 && f.range.max == map.txid);
    if newest_l0.is_some_and(|f| !listed.iter().any(|l| l.range == f.range)) {
        return replan(replica, map, whole).await;
    }
    let newest_known = known
        .iter()
        .map(|f| f.range.max)
        .max()
        .unwrap_or(Txid::ZERO);
    let newest = snapshots
        .iter()
        .map(|f| f.range.max)
        .max()
        .unwrap_or(Txid::ZERO);
    let snapshots_changed = snapshots != known;
    // A new restore point in L9 alone, or snapshots going back (the replica wiped and
    // written again): plan afresh.
    if snapshots_changed && (newest > map.txid || newest < newest_known) {
        return replan(replica, map, whole).await;
    }
    // A new snapshot of another history (another database put in the replica).
    if snapshots_changed && map.history != 0 {
        let fresh = snapshots.iter().rfind(|f| !known.contains(f)).cloned();
        if let Some(f) = fresh {
            let h = replica.read_header(&f).await?;
            if h.node_id != 0 && h.node_id != map.history {
                return replan(replica, map, whole).await;
            }
        }
    }
    let mut chain = Vec::new();
    let mut reached = map.txid;
    for f in listed.iter() {
        if f.range.min == reached.next() {
            reached = f.range.max;
            chain.push(f.clone());
        } else if f.range.max > reached {
            break;
        }
    }
    if chain.is_empty() {
        if listed.iter().all(|f| f.range.max <= map.txid) {
            return Ok(Polled {
                newer: None,
                snapshots,
            });
        }
        // The next L0 files are already gone, or the history restarted: plan again.
        return replan(replica, map, whole).await;
    }
    let indexed = fetch_indexes(replica, &chain, whole).await?;
    let mut next = PageMap::clone(map);
    for f in &indexed {
        if let Err(e) = next.apply(&f.info, &f.header, &f.index, f.trailer) {
            tracing::warn!(replica = replica.name(), error = %e, "new files do not continue the state shown; planning afresh");
            return replan(replica, map, whole).await;
        }
    }
    Ok(Polled {
        newer: Some(Newer {
            loaded: Loaded {
                map: next,
                bodies: bodies(indexed),
                snapshots: None,
            },
            change: Change::Extends,
        }),
        snapshots,
    })
}

/// The newest state planned afresh from a full listing, compared with `map`, the state
/// followed. A state that does not continue `map` (a lower TXID, another history) is taken
/// only once `map`'s newest file is confirmed gone, so a listing that raced compaction and
/// retention never sends a reader back.
pub(crate) async fn replan(
    replica: &Replica,
    map: &PageMap,
    whole: u64,
) -> Result<Polled, VfsError> {
    let mut loaded = load(replica, RestorePoint::Latest, whole).await?;
    let snapshots = loaded.snapshots.take().unwrap_or_default();
    let other_history =
        loaded.map.history != 0 && map.history != 0 && loaded.map.history != map.history;
    let change = if loaded.map.txid >= map.txid && !other_history {
        Some(Change::Planned)
    } else if loaded.map.txid > map.txid {
        Some(Change::Replaces)
    } else {
        let newest = map.files.iter().find(|f| f.range.max == map.txid);
        let gone = match newest {
            Some(f) => !replica.exists(f.level, f.range).await?,
            None => true,
        };
        (gone || other_history).then_some(Change::Replaces)
    };
    if change == Some(Change::Replaces) {
        tracing::warn!(replica = replica.name(), from = %map.txid, to = %loaded.map.txid, "the replica no longer holds the state followed: following what it restores to now");
    }
    Ok(Polled {
        newer: change.map(|change| Newer { loaded, change }),
        snapshots,
    })
}
async fn fetch_indexes(
    replica: &Replica,
    files: &[FileInfo],
    whole: u64,
) -> Result<Vec<Fetched>, VfsError> {
    futures::stream::iter(files.iter().cloned())
        .map(|info| async move {
            let (header, index, trailer, body) = fetch_layout(replica, &info, whole).await?;
            Ok(Fetched {
                info,
                header,
                index,
                trailer,
                body,
            })
        })
        .buffered(FETCHES_AT_ONCE)
        .try_collect()
        .await
}

/// The header, page index and trailer of `info`, and its bytes when it is at most
/// `whole` bytes long: then it is read whole and its checksum verified (it covers the
/// decoded pages, so it is checked by decoding the file once).
async fn fetch_layout(
    replica: &Replica,
    info: &FileInfo,
    whole: u64,
) -> Result<(Header, PageIndex, Trailer, Option<bytes::Bytes>), VfsError> {
    let invalid = |error| VfsError::ltx(replica, info, error);
    let read = replica.read_layout(info, whole).await?.map_err(invalid)?;
    if let Some(body) = &read.whole {
        ltx::Decoder::new(&body[..])
            .and_then(ltx::Decoder::finish)
            .map_err(invalid)?;
    }
    Ok((read.header, read.tail.index, read.tail.trailer, read.whole))
}

/// The whole of `info` in one read, its checksum verified.
pub(crate) async fn fetch_whole(
    replica: &Replica,
    info: &FileInfo,
) -> Result<bytes::Bytes, VfsError> {
    let (.., body) = fetch_layout(replica, info, u64::MAX).await?;
    Ok(body.expect("a file read whole"))
}
