//! Shipping staged L0 files to the replica, in TXID order, never overwriting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use ltx::{Txid, TxidRange};

use super::CaptureError;
use super::batch::{self, Batches};
use super::staging::Staging;
use crate::storage::{Level, Replica};

/// Where each replica's uploader is with the staged files, so that a staged file is
/// removed only once every replica holds it. A replica that lags (its server down) keeps
/// files staged for at most [`LAGGING_KEEP_MAX`]; after that it gets a full copy when it
/// returns.
#[derive(Debug)]
pub(super) struct StagedUse {
    /// Per replica: the highest TXID it holds.
    slots: std::sync::Mutex<Vec<Txid>>,
}

impl StagedUse {
    /// For `n` replicas, none of which holds anything yet.
    pub(super) fn new(n: usize) -> Arc<StagedUse> {
        Arc::new(StagedUse {
            slots: std::sync::Mutex::new(vec![Txid::ZERO; n]),
        })
    }

    pub(super) fn set(&self, slot: usize, uploaded: Txid) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get_mut(slot) {
            *s = uploaded;
        }
    }

    /// The lowest TXID every replica holds.
    fn floor(&self) -> Txid {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.iter().copied().min().unwrap_or(Txid::ZERO)
    }

    fn replicas(&self) -> usize {
        self.slots.lock().map_or(1, |s| s.len())
    }

    /// A replica given up on: it holds back no staged file any more.
    pub(super) fn release(&self, slot: usize) {
        self.set(slot, Txid::MAX);
    }
}

/// Uploads staged files above `uploaded` (the highest TXID known to be in the replica) in
/// TXID order, then removes the uploaded ones except the newest (after [`FEED_KEEP`]) and
/// the local copies of uploads compaction no longer reads. Staged files that continue
/// one another go as one file, merged by `batches` (see [`batch`](super::batch)). Returns
/// how many files were uploaded, and adds each file sent to `sent`. Each file must continue
/// the replica (start at `uploaded + 1`, or at 1 for a full copy named as a snapshot): a file
/// that would leave a gap is never sent. It is dropped if a full copy staged after it
/// supersedes it, and is an error otherwise. A file already in the replica counts as
/// uploaded if it holds the same bytes (an upload retried after a crash); different bytes
/// mean another writer: a conflict.
///
/// `newest` says what becomes of the newest staged file when it would be merged with others
/// (see [`NewestStaged`]): the replica's newest L0 file should hold one TXID whenever writes
/// pause, as Litestream 0.5.17 needs to continue a replica (it looks for a local copy of the
/// newest file, named by its last TXID alone).
pub(super) async fn upload(
    (staging, batches): (&Staging, &Batches),
    replica: &Replica,
    uploaded: &mut Txid,
    sent: &mut Vec<TxidRange>,
    removable: Txid,
    (peers, slot): (&StagedUse, usize),
    newest: NewestStaged,
) -> Result<usize, CaptureError> {
    let io = |path: PathBuf| {
        move |source| CaptureError::Io {
            path,
            error: source,
        }
    };
    let staged = staging.staged().map_err(io(staging.dir().to_owned()))?;
    let mut count = 0;
    let mut held = false;
    let mut i = staged.partition_point(|r| r.max <= *uploaded);
    while i < staged.len() {
        let first = staged[i];
        if first.min != Txid::ONE && first.min != uploaded.next() {
            if staged[i + 1..].iter().any(|r| r.min == Txid::ONE) {
                tracing::debug!(
                    file = first.file_name(),
                    "skipping a file a later full copy supersedes"
                );
                // Another replica may still need it; with one replica it is of no use.
                if peers.replicas() == 1 {
                    staging.remove(first).map_err(io(staging.path(first)))?;
                }
                i += 1;
                continue;
            }
            return Err(CaptureError::Gap {
                range: first,
                uploaded: *uploaded,
                replica: replica.name().to_owned(),
            });
        }
        let mut len = batch::run_from(staging, &staged, i);
        if len > 1 && i + len == staged.len() {
            match newest {
                // The rest now, the newest on its own in this same round.
                NewestStaged::Alone => len -= 1,
                // The rest now, the newest with what follows it (or alone if nothing
                // does) a round later: still one file per round.
                NewestStaged::Held => {
                    len -= 1;
                    held = true;
                }
            }
        }
        let run = &staged[i..i + len];
        i += run.len();
        let (range, path) = if let [one] = run {
            // Checked whole before it goes: a file damaged or replaced on disk is never
            // uploaded (a merge checks its inputs as it reads them).
            if let Some(damage) = damaged(staging, vec![*one]).await {
                return Err(damage);
            }
            let path = if level_of(*one) == Level::L0 {
                batches
                    .link(staging, *one)
                    .map_err(io(batches.dir().to_owned()))?
            } else {
                staging.path(*one)
            };
            (*one, path)
        } else {
            let pieces = run.to_vec();
            let (run, staging_dir, merging) = (pieces.clone(), staging.clone(), batches.clone());
            let merged = tokio::task::spawn_blocking(move || merging.merge(&staging_dir, &run))
                .await
                .map_err(|e| CaptureError::Io {
                    path: PathBuf::new(),
                    error: std::io::Error::other(format!("merging staged files panicked: {e}")),
                })?;
            let merged = match merged {
                Ok(path) => path,
                Err(error) => {
                    return Err(damaged(staging, pieces).await.unwrap_or(CaptureError::Io {
                        path: batches.dir().to_owned(),
                        error,
                    }));
                }
            };
            (TxidRange::new(first.min, staged[i - 1].max), merged)
        };
        let txid = range.max;
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
        if held {
            break;
        }
    }
    peers.set(slot, *uploaded);
    let everyone = peers.floor();
    // Staged files stay a while for followers' streams once every replica has them.
    for range in staged.iter().copied().filter(|r| r.max < *uploaded) {
        let path = staging.path(range);
        let age = staged_age(&path);
        let done_by_all = range.max < everyone && age.is_some_and(|age| age > FEED_KEEP);
        let given_up_waiting = age.is_some_and(|age| age > LAGGING_KEEP_MAX);
        if done_by_all || given_up_waiting {
            staging.remove(range).map_err(io(path))?;
        }
    }
    // Merged uploads are this replica's alone: kept while its compaction may read them.
    let kept = batches.kept().map_err(io(batches.dir().to_owned()))?;
    for range in kept.into_iter().filter(|r| r.max < *uploaded) {
        let path = batches.dir().join(range.file_name());
        if r_covered(&path, range, removable) {
            batches.remove(range).map_err(io(path))?;
        }
    }
    Ok(count)
}

/// What an upload round does with the newest staged file when others continue up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NewestStaged {
    /// Sent alone after them: two files, the newest holding one TXID (a sync waited for,
    /// a stop).
    Alone,
    /// Left for the next round (the loop's rounds, one file each): while writes go on it is
    /// merged with the next ones, and once they pause it goes alone.
    Held,
}

/// The first of `pieces` that is not what its name says on disk, as an error; `None` if
/// every one is whole.
async fn damaged(staging: &Staging, pieces: Vec<TxidRange>) -> Option<CaptureError> {
    let staging = staging.clone();
    tokio::task::spawn_blocking(move || {
        pieces.into_iter().find_map(|range| {
            batch::verify(&staging.path(range), range)
                .err()
                .map(|detail| CaptureError::StagedDamaged { range, detail })
        })
    })
    .await
    .ok()
    .flatten()
}

/// How long a staged file every replica has stays for followers' streams: one that falls
/// further behind catches up from object storage.
const FEED_KEEP: Duration = Duration::from_secs(10);

/// How long an uploaded file's local copy waits for L1 to cover it before it goes anyway, so a
/// compaction that keeps failing cannot make the staging directory grow without bound.
const STAGED_KEEP_MAX: Duration = Duration::from_secs(600);

/// How long a staged file this replica holds waits for a lagging replica: after that the
/// lagging one gets a full copy when it returns, and the staging directory stays bounded.
const LAGGING_KEEP_MAX: Duration = Duration::from_secs(3600);

/// Whether an uploaded file's local copy may go: compaction no longer needs to read it
/// (its TXIDs are at or below `removable`), or it has waited long enough.
fn r_covered(path: &Path, range: TxidRange, removable: Txid) -> bool {
    range.max <= removable || staged_age(path).is_some_and(|age| age > STAGED_KEEP_MAX)
}

/// How long ago the file at `path` was written.
fn staged_age(path: &Path) -> Option<Duration> {
    std::fs::metadata(path)
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

    /// One upload round with one replica, compaction off.
    async fn round(
        staged: (&Staging, &Batches),
        replica: &Replica,
        uploaded: &mut Txid,
        newest: NewestStaged,
    ) -> Result<usize, CaptureError> {
        upload(
            staged,
            replica,
            uploaded,
            &mut Vec::new(),
            Txid::MAX,
            (&StagedUse::new(1), 0),
            newest,
        )
        .await
    }

    #[tokio::test]
    async fn a_file_already_uploaded_counts_once_its_bytes_match_and_conflicts_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(&dir.path().join("app.db")).unwrap();
        let batches = Batches::new(&staging, 0, ltx::PageEncoding::default());
        let replica = Replica::memory(Layout::S3);
        for txid in 1..=4 {
            stage(&staging, txid, txid as u8);
        }
        let mut uploaded = Txid::ZERO;
        // 1 starts the history and goes alone; 2 and 3 continue it and go as one file, and
        // the newest, 4, alone.
        assert_eq!(
            round(
                (&staging, &batches),
                &replica,
                &mut uploaded,
                NewestStaged::Alone
            )
            .await
            .unwrap(),
            3
        );
        assert_eq!(uploaded, Txid::new(4));
        let l0: Vec<_> = replica.list(Level::L0, Txid::ZERO).await.unwrap();
        let ranges: Vec<_> = l0.iter().map(|f| f.range).collect();
        assert_eq!(
            ranges,
            [
                range(1),
                TxidRange::new(Txid::new(2), Txid::new(3)),
                range(4)
            ]
        );
        // Staged files stay for followers' streams a while; the local copies of uploads
        // compaction does not need (it is off here) go but for the newest.
        assert_eq!(
            staging.staged().unwrap(),
            [range(1), range(2), range(3), range(4)]
        );
        assert_eq!(batches.kept().unwrap(), [range(4)]);

        // A crash lost the record of uploading 2-3 and 4: merging and uploading them again
        // finds the same bytes.
        let mut uploaded = Txid::new(1);
        assert_eq!(
            round(
                (&staging, &batches),
                &replica,
                &mut uploaded,
                NewestStaged::Alone
            )
            .await
            .unwrap(),
            2
        );
        assert_eq!(uploaded, Txid::new(4));

        // Someone else wrote 5 first, with other contents: refused, never overwritten.
        let theirs = bytes::Bytes::from(l0_file(Vec::new(), 5, 0xee).unwrap());
        let timestamp = jiff::Timestamp::UNIX_EPOCH;
        replica
            .write(Level::L0, range(5), theirs.clone(), timestamp)
            .await
            .unwrap();
        stage(&staging, 5, 5);
        let err = round(
            (&staging, &batches),
            &replica,
            &mut uploaded,
            NewestStaged::Alone,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, CaptureError::Conflict { txid, .. } if txid == Txid::new(5)),
            "{err}"
        );
        assert_eq!(uploaded, Txid::new(4));
        let listed = replica.list(Level::L0, Txid::new(5)).await.unwrap();
        assert_eq!(replica.read(&listed[0]).await.unwrap(), theirs);
    }

    #[tokio::test]
    async fn the_newest_staged_file_waits_a_round_or_goes_alone_so_the_newest_l0_holds_one_txid() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(&dir.path().join("app.db")).unwrap();
        let batches = Batches::new(&staging, 0, ltx::PageEncoding::default());
        let replica = Replica::memory(Layout::S3);
        let mut uploaded = Txid::ZERO;
        let r = |a, b| TxidRange::new(Txid::new(a), Txid::new(b));
        let stage_through = |to: u64| {
            for txid in 1..=to {
                if !staging.path(range(txid)).exists() {
                    stage(&staging, txid, txid as u8);
                }
            }
        };
        let mut rounds = Vec::new();
        for (through, newest) in [
            // 1 alone (it starts the history), 2-3 merged, 4 held.
            (4, NewestStaged::Held),
            // Writes went on: 4 goes with 5, 6 is held.
            (6, NewestStaged::Held),
            // They paused: 6 goes alone; then nothing is left.
            (6, NewestStaged::Held),
            (6, NewestStaged::Held),
            // A sync (or a stop) does not wait: 7-8 merged, then 9 alone.
            (9, NewestStaged::Alone),
        ] {
            stage_through(through);
            let sent = round((&staging, &batches), &replica, &mut uploaded, newest)
                .await
                .unwrap();
            rounds.push(sent);
        }
        assert_eq!(rounds, [2, 1, 1, 0, 2]);
        let l0: Vec<_> = replica.list(Level::L0, Txid::ZERO).await.unwrap();
        let ranges: Vec<_> = l0.iter().map(|f| f.range).collect();
        assert_eq!(
            ranges,
            [r(1, 1), r(2, 3), r(4, 5), r(6, 6), r(7, 8), r(9, 9)]
        );
    }
}
