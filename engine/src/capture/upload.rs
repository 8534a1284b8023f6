//! Shipping staged L0 files to the replica, in TXID order, never overwriting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use ltx::{Txid, TxidRange};

use super::CaptureError;
use super::staging::Staging;
use crate::storage::{Level, Replica};

/// Where each replica's uploader is with the staged files, so that a staged file is
/// removed only once every replica holds it (and, with compaction, every replica's L1
/// covers it). A replica that lags (its server down) keeps files staged for at most
/// [`LAGGING_KEEP_MAX`]; after that it gets a full copy when it returns.
#[derive(Debug)]
pub(super) struct StagedUse {
    /// Per replica: (uploaded, removable).
    slots: std::sync::Mutex<Vec<(Txid, Txid)>>,
}

impl StagedUse {
    /// For `n` replicas, none of which holds anything yet.
    pub(super) fn new(n: usize) -> Arc<StagedUse> {
        Arc::new(StagedUse {
            slots: std::sync::Mutex::new(vec![(Txid::ZERO, Txid::ZERO); n]),
        })
    }

    pub(super) fn set(&self, slot: usize, uploaded: Txid, removable: Txid) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get_mut(slot) {
            *s = (uploaded, removable);
        }
    }

    /// The lowest (uploaded, removable) over every replica.
    fn floor(&self) -> (Txid, Txid) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let uploaded = slots.iter().map(|s| s.0).min().unwrap_or(Txid::ZERO);
        let removable = slots.iter().map(|s| s.1).min().unwrap_or(Txid::ZERO);
        (uploaded, removable)
    }

    fn replicas(&self) -> usize {
        self.slots.lock().map_or(1, |s| s.len())
    }

    /// A replica given up on: it holds back no staged file any more.
    pub(super) fn release(&self, slot: usize) {
        self.set(slot, Txid::MAX, Txid::MAX);
    }
}

/// Uploads staged files above `uploaded` (the highest TXID known to be in the replica) in
/// TXID order, then removes the uploaded ones except the newest. Returns how many were
/// uploaded, and adds each file sent to `sent`. Each file must continue the replica (start at `uploaded + 1`, or at 1 for a
/// full copy named as a snapshot): a file that would leave a gap is never sent. It is
/// dropped if a full copy staged after it supersedes it, and is an error otherwise.
/// A file already in the replica counts as uploaded if it holds the same bytes (an upload
/// retried after a crash); different bytes mean another writer: a conflict.
pub(super) async fn upload(
    staging: &Staging,
    replica: &Replica,
    uploaded: &mut Txid,
    sent: &mut Vec<TxidRange>,
    removable: Txid,
    (peers, slot): (&StagedUse, usize),
) -> Result<usize, CaptureError> {
    let io = |path: PathBuf| {
        move |source| CaptureError::Io {
            path,
            error: source,
        }
    };
    let staged = staging.staged().map_err(io(staging.dir().to_owned()))?;
    let already = *uploaded;
    let mut count = 0;
    for (i, range) in staged
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, r)| r.max > already)
    {
        let txid = range.max;
        if range.min != Txid::ONE && range.min != uploaded.next() {
            if staged[i + 1..].iter().any(|r| r.min == Txid::ONE) {
                tracing::debug!(
                    file = range.file_name(),
                    "skipping a file a later full copy supersedes"
                );
                // Another replica may still need it; with one replica it is of no use.
                if peers.replicas() == 1 {
                    staging.remove(range).map_err(io(staging.path(range)))?;
                }
                continue;
            }
            return Err(CaptureError::Gap {
                range,
                uploaded: *uploaded,
                replica: replica.name().to_owned(),
            });
        }
        let path = staging.path(range);
        let level = level_of(range);
        match replica.write_ltx_file(level, &path).await {
            Ok(written) if written.range != range => {
                return Err(CaptureError::Io {
                    path,
                    error: std::io::Error::other(format!(
                        "the staged file's header says {}, its name {range}",
                        written.range
                    )),
                });
            }
            Ok(_) => {}
            // A conditional create that failed is a conflict only if the file is there now
            // and is not this one.
            Err(e) if e.is_already_exists() => {
                match compare_with_replica(replica, level, range, &path).await? {
                    Existing::Same => {}
                    Existing::Different => {
                        return Err(CaptureError::Conflict {
                            txid,
                            replica: replica.name().to_owned(),
                        });
                    }
                    Existing::Missing => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(%txid, "uploaded");
        *uploaded = txid;
        sent.push(range);
        count += 1;
    }
    peers.set(slot, *uploaded, removable);
    let (everyone, all_removable) = peers.floor();
    for range in staged.iter().copied().filter(|r| r.max < *uploaded) {
        let done_by_all = range.max < everyone && r_covered(staging, range, all_removable);
        let given_up_waiting = r_covered(staging, range, removable)
            && staged_age(staging, range).is_some_and(|age| age > LAGGING_KEEP_MAX);
        if done_by_all || given_up_waiting {
            staging.remove(range).map_err(io(staging.path(range)))?;
        }
    }
    Ok(count)
}

/// How long an uploaded staged file waits for L1 to cover it before it goes anyway, so a
/// compaction that keeps failing cannot make the staging directory grow without bound.
const STAGED_KEEP_MAX: Duration = Duration::from_secs(600);

/// How long a staged file this replica holds waits for a lagging replica: after that the
/// lagging one gets a full copy when it returns, and the staging directory stays bounded.
const LAGGING_KEEP_MAX: Duration = Duration::from_secs(3600);

/// Whether an uploaded staged file may go: compaction no longer needs to read it locally
/// (its TXIDs are at or below `removable`), or it has waited long enough.
fn r_covered(staging: &Staging, range: TxidRange, removable: Txid) -> bool {
    range.max <= removable || staged_age(staging, range).is_some_and(|age| age > STAGED_KEEP_MAX)
}

/// How long ago a staged file was written.
fn staged_age(staging: &Staging, range: TxidRange) -> Option<Duration> {
    std::fs::metadata(staging.path(range))
        .and_then(|m| m.modified())
        .ok()?
        .elapsed()
        .ok()
}

/// What the replica holds under a staged file's name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Existing {
    /// Exactly the staged file's bytes (an upload retried after a crash).
    Same,
    /// Other bytes: another writer's file.
    Different,
    /// Nothing.
    Missing,
}

/// Compares the replica's file for `range` with the staged file, a chunk at a time (a full
/// copy can be as large as the database).
pub(super) async fn compare_with_replica(
    replica: &Replica,
    level: Level,
    range: TxidRange,
    path: &Path,
) -> Result<Existing, CaptureError> {
    let Some(existing) = replica
        .list(level, range.min)
        .await?
        .into_iter()
        .find(|f| f.range == range)
    else {
        return Ok(Existing::Missing);
    };
    const CHUNK: u64 = 8 << 20;
    let io = |source| CaptureError::Io {
        path: path.to_owned(),
        error: source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    if file.metadata().await.map_err(io)?.len() != existing.size {
        return Ok(Existing::Different);
    }
    let mut ours = vec![0u8; CHUNK.min(existing.size) as usize];
    let mut at = 0;
    while at < existing.size {
        let end = (at + CHUNK).min(existing.size);
        let theirs = replica.read_range(&existing, at..end).await?;
        let ours = &mut ours[..(end - at) as usize];
        file.read_exact(ours).await.map_err(io)?;
        if theirs[..] != ours[..] {
            return Ok(Existing::Different);
        }
        at = end;
    }
    Ok(Existing::Same)
}

/// Where a staged file goes: L0, except a full copy that restarts the history (`1-<n>`,
/// after a page-size change, a replaced database or a lost replica), which is a snapshot.
/// In L9 it is what every reader starts from, Litestream's included: its planner takes the
/// newest snapshot and the files above it, and would pass over a full copy in L0.
pub(super) fn level_of(range: TxidRange) -> Level {
    if range.min == Txid::ONE && range.max > Txid::ONE {
        Level::SNAPSHOT
    } else {
        Level::L0
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize};

    use super::*;
    use crate::storage::Layout;

    /// A one-page L0 file for `txid`, every byte of its page `fill`.
    fn l0_file<W: io::Write>(out: W, txid: u64, fill: u8) -> io::Result<W> {
        let mut header = Header::new(PageSize::new(512).unwrap(), 1, range(txid));
        header.flags = HeaderFlags::NO_CHECKSUM;
        let mut encoder = Encoder::new(out, &header).map_err(io::Error::other)?;
        encoder
            .encode_page(PageNum::new(1).unwrap(), &[fill; 512])
            .map_err(io::Error::other)?;
        Ok(encoder
            .finish(Checksum::ZERO)
            .map_err(io::Error::other)?
            .writer)
    }

    fn range(txid: u64) -> TxidRange {
        TxidRange::single(Txid::new(txid))
    }

    fn stage(staging: &Staging, txid: u64, fill: u8) {
        staging
            .write(range(txid), |out| Ok((l0_file(out, txid, fill)?, ())))
            .unwrap();
    }

    #[tokio::test]
    async fn a_file_already_uploaded_counts_once_its_bytes_match_and_conflicts_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(&dir.path().join("app.db")).unwrap();
        let replica = Replica::memory(Layout::S3);
        for txid in 1..=3 {
            stage(&staging, txid, txid as u8);
        }
        let mut uploaded = Txid::ZERO;
        assert_eq!(
            upload(
                &staging,
                &replica,
                &mut uploaded,
                &mut Vec::new(),
                Txid::MAX,
                (&StagedUse::new(1), 0),
            )
            .await
            .unwrap(),
            3
        );
        assert_eq!(uploaded, Txid::new(3));
        // Uploaded files leave the staging directory, but for the newest.
        assert_eq!(staging.staged().unwrap(), [range(3)]);

        // A crash lost the record of uploading 3: uploading it again finds the same bytes.
        let mut uploaded = Txid::new(2);
        assert_eq!(
            upload(
                &staging,
                &replica,
                &mut uploaded,
                &mut Vec::new(),
                Txid::MAX,
                (&StagedUse::new(1), 0),
            )
            .await
            .unwrap(),
            1
        );
        assert_eq!(uploaded, Txid::new(3));

        // Someone else wrote 4 first, with other contents: refused, never overwritten.
        let theirs = bytes::Bytes::from(l0_file(Vec::new(), 4, 0xee).unwrap());
        let timestamp = jiff::Timestamp::UNIX_EPOCH;
        replica
            .write(Level::L0, range(4), theirs.clone(), timestamp)
            .await
            .unwrap();
        stage(&staging, 4, 4);
        let err = upload(
            &staging,
            &replica,
            &mut uploaded,
            &mut Vec::new(),
            Txid::MAX,
            (&StagedUse::new(1), 0),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, CaptureError::Conflict { txid, .. } if txid == Txid::new(4)),
            "{err}"
        );
        assert_eq!(uploaded, Txid::new(3));
        let listed = replica.list(Level::L0, Txid::new(4)).await.unwrap();
        assert_eq!(replica.read(&listed[0]).await.unwrap(), theirs);
    }
}
