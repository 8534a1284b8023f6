//! Building a [`PageMap`] from a replica (a restore plan, then each planned file's header and
//! page index) and moving it forward as the primary writes new files.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use ltx::{Header, PageIndex, Txid};
use strata::restore::{PlanError, plan_files, resolve_timestamp};
use strata::storage::{FileInfo, Level, Replica, StorageError};

use crate::page_map::{MapError, PageMap};

/// How many files' headers and indexes are fetched at once.
const FETCHES_AT_ONCE: usize = 16;

/// Which state of the replica a reader shows: the newest (followed as the primary
/// writes), or pinned at a TXID or a time. The restore's own target.
pub use strata::restore::Target;

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
    /// retention can see this). A new transaction reads the newest state.
    #[error(
        "the state this read transaction shows (TXID {txid}) is no longer in the replica: retention removed its files during the transaction; run it again ({plan})"
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

/// One file's header and page index, and its bytes if it was fetched whole
/// (`Options::whole_file_max`).
struct Indexed {
    info: FileInfo,
    header: Header,
    index: PageIndex,
    body: Option<bytes::Bytes>,
}

/// A map, and the whole bytes of the small files it was built from.
pub struct Loaded {
    /// The map.
    pub map: PageMap,
    /// (file, bytes) of the files fetched whole.
    pub bodies: Vec<(FileInfo, bytes::Bytes)>,
}

fn bodies(indexed: Vec<Indexed>) -> Vec<(FileInfo, bytes::Bytes)> {
    indexed
        .into_iter()
        .filter_map(|f| Some((f.info, f.body?)))
        .collect()
}

/// The map of `target`: one listing of every level, a plan, and each planned file's header
/// and index (the whole file, checksum verified, if it is at most `whole` bytes).
pub async fn load(replica: &Replica, target: Target, whole: u64) -> Result<Loaded, VfsError> {
    let files = replica.list_all().await?;
    let txid = match target {
        Target::Latest => None,
        Target::Txid(t) => Some(t),
        Target::Timestamp(ts) => Some(resolve_timestamp(replica, &files, ts).await??),
    };
    let plan = plan_files(&files, Txid::ZERO, txid, &[])?;
    let indexed = fetch_indexes(replica, &plan.files, whole).await?;
    let map = PageMap::build(indexed.iter().map(|f| (&f.info, &f.header, &f.index)))?
        .ok_or(VfsError::Plan(PlanError::Empty))?;
    Ok(Loaded {
        map,
        bodies: bodies(indexed),
    })
}

/// What a poll found.
pub enum Polled {
    /// Nothing after the map's TXID.
    Nothing,
    /// A newer map: `map` extended by the files that continue it, or planned afresh when
    /// they do not (compaction moved on, or the history restarted).
    Newer(Loaded),
}

/// Looks for files after `map`'s TXID: one start-after listing of L0, where every new
/// transaction lands first.
pub async fn poll(replica: &Replica, map: &Arc<PageMap>, whole: u64) -> Result<Polled, VfsError> {
    let listed = replica.list(Level::L0, map.txid.next()).await?;
    if listed.is_empty() {
        return Ok(Polled::Nothing);
    }
    let mut chain = Vec::new();
    let mut reached = map.txid;
    for f in listed {
        if f.range.min == reached.next() {
            reached = f.range.max;
            chain.push(f);
        } else if f.range.max > reached {
            break;
        }
    }
    if chain.is_empty() {
        // The next L0 files are already gone, or the history restarted: plan again.
        return Ok(Polled::Newer(load(replica, Target::Latest, whole).await?));
    }
    let indexed = fetch_indexes(replica, &chain, whole).await?;
    let mut next = PageMap::clone(map);
    for f in &indexed {
        next.apply(&f.info, &f.header, &f.index)?;
    }
    Ok(Polled::Newer(Loaded {
        map: next,
        bodies: bodies(indexed),
    }))
}

async fn fetch_indexes(
    replica: &Replica,
    files: &[FileInfo],
    whole: u64,
) -> Result<Vec<Indexed>, VfsError> {
    futures::stream::iter(files.iter().cloned())
        .map(|info| async move {
            if info.size > whole {
                let (header, tail) =
                    futures::try_join!(replica.read_header(&info), replica.read_tail(&info))?;
                named_as(replica, &info, &header)?;
                return Ok(Indexed {
                    info,
                    header,
                    index: tail.index,
                    body: None,
                });
            }
            let (header, index, body) = fetch_whole(replica, &info).await?;
            Ok(Indexed {
                info,
                header,
                index,
                body: Some(body),
            })
        })
        .buffered(FETCHES_AT_ONCE)
        .try_collect()
        .await
}

/// The whole of `info` in one read, its header and page index, its checksum verified (the
/// file checksum covers the decoded pages, so it is checked by decoding the file once).
pub async fn fetch_whole(
    replica: &Replica,
    info: &FileInfo,
) -> Result<(Header, PageIndex, bytes::Bytes), VfsError> {
    let body = replica.read(info).await?;
    let invalid = |error| VfsError::ltx(replica, info, error);
    let head: &[u8; ltx::HEADER_SIZE] = body
        .get(..ltx::HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            invalid(ltx::Error::Truncated {
                offset: 0,
                what: "header",
            })
        })?;
    let header = Header::from_bytes(head).map_err(invalid)?;
    named_as(replica, info, &header)?;
    let index = match ltx::parse_tail(body.len() as u64, 0, &body).map_err(invalid)? {
        ltx::TailParse::Complete(tail) => {
            ltx::Decoder::new(&body[..])
                .and_then(ltx::Decoder::finish)
                .map_err(invalid)?;
            tail.index
        }
        ltx::TailParse::NeedMore(_) => {
            return Err(invalid(ltx::Error::Truncated {
                offset: 0,
                what: "page index",
            }));
        }
    };
    Ok((header, index, body))
}

/// Checks that `header` covers the TXIDs `info`'s name says: a misnamed file would show
/// another state's pages as this one's.
fn named_as(replica: &Replica, info: &FileInfo, header: &Header) -> Result<(), VfsError> {
    if header.txid_range() == info.range {
        return Ok(());
    }
    Err(VfsError::ltx(
        replica,
        info,
        ltx::Error::InvalidHeader {
            reason: format!(
                "header covers {}, the file name says {}",
                header.txid_range(),
                info.range
            ),
        },
    ))
}
