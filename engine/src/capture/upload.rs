//! Shipping staged L0 files to the replica, in TXID order, never overwriting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use ltx::{Txid, TxidRange};

use super::CaptureError;
use super::staging::Staging;
use super::sync::FullCopyRequest;
use crate::restore::{PlanError, plan_files};
use crate::storage::{FileInfo, Level, Replica, SharedIndex};

/// Where each replica's uploader is with the staged files, so that a staged file is
/// removed only once every replica holds it (and, with compaction, every replica's L1
/// covers it). A replica that lags (its server down) keeps files staged for at most
/// [`LAGGING_KEEP_MAX`]; after that it gets a full copy when it returns.
#[derive(Debug)]
pub struct StagedUse {
    /// Per replica: (uploaded, removable).
    slots: std::sync::Mutex<Vec<(Txid, Txid)>>,
}

impl StagedUse {
    /// For `n` replicas, none of which holds anything yet.
    pub fn new(n: usize) -> Arc<StagedUse> {
        Arc::new(StagedUse {
            slots: std::sync::Mutex::new(vec![(Txid::ZERO, Txid::ZERO); n]),
        })
    }

    fn set(&self, slot: usize, uploaded: Txid, removable: Txid) {
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
    fn release(&self, slot: usize) {
        self.set(slot, Txid::MAX, Txid::MAX);
    }
}

/// Ships staged files to one replica and watches that the replica keeps them.
#[derive(Debug)]
pub struct Uploader {
    staging: Staging,
    replica: Replica,
    /// The highest TXID known to be in the replica.
    pub uploaded: Txid,
    /// The newest TXID of any file seen in the replica when it was checked (or opened),
    /// never lowered: files above it are this uploader's (`recent`) or another writer's.
    known: Txid,
    /// Files uploaded since the last check.
    recent: Vec<TxidRange>,
    /// Header fields of files uploaded, by max TXID (the newest
    /// [`HEADERS_KEPT`]): what a merge of this history ending there carries.
    headers: std::collections::BTreeMap<Txid, MergedFields>,
    checked: Instant,
    /// The next round checks the replica first (the last one failed: the replica may have
    /// been wiped or replaced meanwhile).
    check_first: bool,
    /// The replica could not be listed at start: it is listed before its first upload.
    unlisted: bool,
    /// When the replica was last listed whole.
    listed: Instant,
    /// One check in this many lists the replica whole.
    list_every: u32,
    /// How often to check the replica while uploading.
    check_every: Duration,
    /// Asked when the replica lost the history, or cannot be continued: the capture's next
    /// file is a full copy named as a snapshot.
    rebase: Arc<FullCopyRequest>,
    /// What the replica holds, shared with compaction: files uploaded are added, and each
    /// check's listing replaces it.
    index: SharedIndex,
    /// Whether uploaded staged files wait for L1 to cover them (compaction reads them).
    keep_staged_for_compaction: bool,
    /// The other replicas' use of the staged files, and this one's slot there.
    peers: (Arc<StagedUse>, usize),
    /// A full copy was asked for because the staged files do not continue this replica.
    asked_full_copy: bool,
}

impl Uploader {
    /// An uploader for a replica that restores to `uploaded` and whose newest file ends at
    /// `known`, or (`None`) one that could not be listed yet.
    pub fn new(
        staging: Staging,
        replica: Replica,
        listed: Option<(Txid, Txid)>,
        rebase: Arc<FullCopyRequest>,
        (check_every, list_every): (Duration, u32),
        (index, keep_staged_for_compaction): (SharedIndex, bool),
        peers: (Arc<StagedUse>, usize),
    ) -> Uploader {
        let (uploaded, known) = listed.unwrap_or((Txid::ZERO, Txid::ZERO));
        peers.0.set(peers.1, uploaded, Txid::ZERO);
        Uploader {
            staging,
            replica,
            uploaded,
            known,
            recent: Vec::new(),
            headers: std::collections::BTreeMap::new(),
            checked: Instant::now(),
            check_first: false,
            unlisted: listed.is_none(),
            listed: Instant::now(),
            list_every: list_every.max(1),
            check_every,
            rebase,
            index,
            keep_staged_for_compaction,
            peers,
            asked_full_copy: false,
        }
    }

    /// How often the replica is checked while nothing is uploaded: as often as it is
    /// listed whole while uploading (every tenth check).
    pub fn idle_check_interval(&self) -> Duration {
        self.check_every * self.list_every
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Uploads what is staged (see [`upload`]), first checking, now and then, that the
    /// replica still restores to what it holds (see [`Uploader::verify`]). While a full copy
    /// is awaited after a loss, files that cannot continue the replica wait quietly.
    pub async fn upload(&mut self) -> Result<usize, CaptureError> {
        if let Some(detail) = self.index.foreign() {
            return Err(CaptureError::ForeignHistory {
                replica: self.replica.name().to_owned(),
                detail,
            });
        }
        if self.unlisted {
            self.first_listing().await?;
        }
        let asked = self.index.take_check_request();
        if asked || self.check_first || self.checked.elapsed() >= self.check_every {
            // The cheap check (HEADs: are the newest file and the base its chain starts
            // from still there?) catches a wiped or replaced replica; every `list_every`-th
            // is a full listing, which also catches files missing in the middle and another
            // writer's files. A check asked for (compaction found the index stale) lists.
            let full = asked
                || self.listed.elapsed() >= self.check_every * self.list_every
                || !self.newest_is_there().await?
                || !self.base_is_there().await?;
            if full {
                self.check_replica().await?;
            } else {
                self.checked = Instant::now();
            }
            self.check_first = false;
        }
        let sent = self.recent.len();
        // With compaction on, L1 reads uploaded L0 files from the staging directory (no GET
        // each): they stay until L1 covers them.
        let removable = if self.keep_staged_for_compaction {
            self.index
                .lock()
                .newest(Level::new(1).expect("level 1"))
                .map_or(Txid::ZERO, |f| f.range.max)
        } else {
            Txid::MAX
        };
        let result = upload(
            &self.staging,
            &self.replica,
            &mut self.uploaded,
            &mut self.recent,
            removable,
            (&self.peers.0, self.peers.1),
        )
        .await;
        // What was uploaded is in the replica whether or not a later file failed. Its size
        // goes to the index and its header fields to `headers` (one open of the staged file);
        // a staged file already removed is indexed by the next listing instead.
        let mut index = self.index.lock();
        for &range in &self.recent[sent..] {
            let Some((size, header)) = staged_header(&self.staging.path(range)) else {
                continue;
            };
            let file = FileInfo {
                level: level_of(range),
                range,
                size,
                modified: jiff::Timestamp::now(),
            };
            index.insert(file.clone(), jiff::Timestamp::now());
            index.mark_verified(&file);
            self.headers.insert(range.max, MergedFields::of(&header));
        }
        drop(index);
        while self.headers.len() > HEADERS_KEPT {
            self.headers.pop_first();
        }
        match result {
            Err(CaptureError::Gap { .. }) if self.rebase.is_asked() => Ok(0),
            // The staged files do not continue this replica (it was down while they were
            // removed, or was added later): ask the capture for a full copy, which
            // continues every replica, and upload from there.
            Err(CaptureError::Gap { range, .. }) => {
                if !self.asked_full_copy {
                    tracing::warn!(replica = self.replica.name(), uploaded = %self.uploaded, staged = range.file_name(), "the staged files do not continue this replica: the next file is a full copy");
                }
                self.asked_full_copy = true;
                self.rebase.ask_above(self.known);
                Ok(0)
            }
            Ok(n) => {
                if n > 0 {
                    self.asked_full_copy = false;
                }
                Ok(n)
            }
            Err(e) => {
                // Whatever failed, the replica may have changed meanwhile (wiped, replaced,
                // recreated): the next round looks before it builds on it.
                self.check_first = true;
                Err(e)
            }
        }
    }

    /// The listing a replica that could not be listed at start gets before its first upload:
    /// where it stands, and, if it holds TXIDs the capture may have used since, a full copy
    /// above them (no TXID is used twice).
    async fn first_listing(&mut self) -> Result<(), CaptureError> {
        let files = self.list_whole().await?;
        let restores_to = latest_restorable(&files);
        let newest = files
            .iter()
            .map(|f| f.range.max)
            .max()
            .unwrap_or(Txid::ZERO);
        let staged = self
            .staging
            .staged()
            .map_err(|error| CaptureError::Io {
                path: self.staging.dir().to_owned(),
                error,
            })?
            .last()
            .map_or(Txid::ZERO, |r| r.max);
        self.index.lock().replace(files, jiff::Timestamp::now());
        self.uploaded = restores_to;
        self.known = self.known.max(newest);
        self.unlisted = false;
        self.checked = Instant::now();
        self.listed = self.checked;
        self.peers.0.set(self.peers.1, restores_to, Txid::ZERO);
        tracing::info!(replica = self.replica.name(), restores_to = %restores_to, newest = %newest, "listed the replica");
        if newest > staged || newest > restores_to {
            tracing::warn!(replica = self.replica.name(), %newest, "the replica cannot be continued from the staged files: the next file is a full copy");
            self.rebase.ask_above(newest);
            self.asked_full_copy = true;
        }
        Ok(())
    }

    /// Gives up on this replica (another history is in it): it keeps no staged file from
    /// removal and its compaction and retention stop.
    pub fn stop(&self, why: &str) {
        self.peers.0.release(self.peers.1);
        self.index.report_foreign(why.to_owned());
    }

    /// Lists and checks the replica now (see [`Uploader::verify`]), without failing on a
    /// loss: a replica that lost files asks the capture for a full copy, which the final
    /// sync of a stop then writes.
    pub async fn check_now(&mut self) -> Result<(), CaptureError> {
        if self.unlisted {
            return self.first_listing().await;
        }
        self.check_replica().await
    }

    /// Checks that the replica restores to `uploaded` and holds nothing this uploader did
    /// not send since it was last checked: an error if not. The newest file and the base its
    /// chain starts from are looked at first (HEADs); if either is gone, the replica is
    /// listed. A replica wiped, put back from an older copy, or missing files in the middle
    /// restores no further than some earlier TXID: then the capture is asked for a full copy,
    /// and files this uploader sent since the last good check that no longer restore are
    /// deleted, being of no use. Files from another writer are an error.
    pub async fn verify(&mut self) -> Result<(), CaptureError> {
        if self.newest_is_there().await? && self.base_is_there().await? {
            return Ok(());
        }
        let before = self.uploaded;
        self.check_replica().await?;
        if self.uploaded < before {
            return Err(CaptureError::ReplicaLost {
                replica: self.replica.name().to_owned(),
                uploaded: before,
                holds_through: self.uploaded,
            });
        }
        Ok(())
    }

    /// Whether `snapshot` (not written by this process) is a merge of this capture's own
    /// files: a compaction takes its last input's header timestamp (to the millisecond),
    /// database size, page size and history, so it matches this process's file ending at
    /// the same TXID. (Capture files carry no database checksum to compare.)
    async fn same_history(&self, snapshot: &FileInfo, trusted: &[FileInfo]) -> bool {
        let ours = match self.headers.get(&snapshot.range.max) {
            Some(&ours) => ours,
            None => {
                let Some(ours) = trusted.iter().find(|f| f.range.max == snapshot.range.max) else {
                    return false;
                };
                match self.replica.read_header(ours).await {
                    Ok(h) => MergedFields::of(&h),
                    Err(_) => return false,
                }
            }
        };
        self.replica
            .read_header(snapshot)
            .await
            .is_ok_and(|h| MergedFields::of(&h) == ours)
    }

    /// Whether the file the replica's chain to `uploaded` starts from (a snapshot, as the
    /// index knows it) is still there (one HEAD): a replica wiped and written again since
    /// holds the newest file but restores nothing.
    async fn base_is_there(&self) -> Result<bool, CaptureError> {
        if self.uploaded == Txid::ZERO {
            return Ok(true);
        }
        let base = {
            let index = self.index.lock();
            plan_files(&index.all(), Txid::ZERO, Some(self.uploaded), &[])
                .ok()
                .and_then(|p| p.files.into_iter().next())
        };
        match base {
            Some(f) => Ok(self.replica.exists(f.level, f.range).await?),
            None => Ok(false),
        }
    }

    /// Every level, listed while this process deletes nothing.
    async fn list_whole(&self) -> Result<Vec<FileInfo>, CaptureError> {
        let _no_deletions = self.index.exclusive().await;
        Ok(self.replica.list_all().await?)
    }

    /// Whether the newest file uploaded is still in the replica (one HEAD); false if it is
    /// not known which file that is.
    async fn newest_is_there(&self) -> Result<bool, CaptureError> {
        let newest = match self.recent.last() {
            Some(&range) => Some((level_of(range), range)),
            None => {
                let index = self.index.lock();
                [Level::L0, Level::SNAPSHOT].into_iter().find_map(|level| {
                    index
                        .level(level)
                        .iter()
                        .rev()
                        .find(|i| i.file.range.max == self.uploaded)
                        .map(|i| (level, i.file.range))
                })
            }
        };
        match newest {
            Some((level, range)) => Ok(self.replica.exists(level, range).await?),
            None => Ok(false),
        }
    }

    async fn check_replica(&mut self) -> Result<(), CaptureError> {
        let files = self.list_whole().await?;
        self.checked = Instant::now();
        self.listed = self.checked;
        // Another writer's files: in L0, anything newer than the last check this uploader
        // did not send; in L9, a snapshot this process neither sent nor is writing (another
        // database's full copy); anywhere, a file beyond what was uploaded. (Compaction in
        // L1 to L8 only merges what the replica holds.)
        let (suspects, trusted): (Vec<FileInfo>, Vec<FileInfo>) = {
            let index = self.index.lock();
            let ours =
                |f: &FileInfo| self.recent.contains(&f.range) || index.knows(f.level, f.range);
            let suspects = files
                .iter()
                .filter(|f| {
                    let new_l0 = f.level == Level::L0 && f.range.max > self.known;
                    let new_snapshot = f.level == Level::SNAPSHOT;
                    !ours(f)
                        && (new_l0 || new_snapshot || f.range.max > self.uploaded.max(self.known))
                })
                .cloned()
                .collect();
            let trusted = files.iter().filter(|f| ours(f)).cloned().collect();
            (suspects, trusted)
        };
        for theirs in &suspects {
            // A snapshot of this history made by another strata (`strata compact`) ends in
            // the same database checksum as this capture's file ending at its TXID.
            if theirs.level == Level::SNAPSHOT && self.same_history(theirs, &trusted).await {
                continue;
            }
            // Another writer's files are never taken as known: every later check finds them.
            return Err(CaptureError::Conflict {
                txid: theirs.range.max,
                replica: self.replica.name().to_owned(),
            });
        }
        self.index
            .lock()
            .replace(files.clone(), jiff::Timestamp::now());
        let newest = |files: &[FileInfo]| {
            files
                .iter()
                .map(|f| f.range.max)
                .max()
                .unwrap_or(Txid::ZERO)
        };
        // `known` only grows: a file at or below a TXID seen before is not another writer's
        // new file (a replica put back from an older copy holds such files again).
        if self.uploaded == Txid::ZERO || restores_to(&files, self.uploaded) {
            self.known = self.known.max(newest(&files));
            self.recent.clear();
            return Ok(());
        }
        // Before acting on a loss, look again: another process's retention may have deleted
        // between the listings of two levels.
        let files = self.list_whole().await?;
        if restores_to(&files, self.uploaded) {
            self.known = self.known.max(newest(&files));
            self.recent.clear();
            return Ok(());
        }
        // Lost: what this uploader sent since the last good check and no longer restores is
        // of no use, and in the way of a clean chain. Nothing else is touched.
        let useless: Vec<_> = files
            .iter()
            .filter(|f| self.recent.contains(&f.range) && !restores_to(&files, f.range.max))
            .cloned()
            .collect();
        self.replica.delete(&useless).await?;
        let kept: Vec<_> = files.into_iter().filter(|f| !useless.contains(f)).collect();
        let holds_through = latest_restorable(&kept);
        tracing::warn!(
            replica = self.replica.name(),
            restores_to = %holds_through,
            uploaded = %self.uploaded,
            deleted = useless.len(),
            "the replica lost files already uploaded: the next file is a full copy"
        );
        self.uploaded = holds_through;
        self.known = self.known.max(newest(&kept));
        self.recent.clear();
        self.rebase.ask_above(self.known);
        Ok(())
    }
}

/// Whether `files` restore to exactly `txid`.
fn restores_to(files: &[FileInfo], txid: Txid) -> bool {
    plan_files(files, Txid::ZERO, Some(txid), &[]).is_ok()
}

/// The newest TXID `files` restore to from nothing (0 if none).
pub fn latest_restorable(files: &[FileInfo]) -> Txid {
    match plan_files(files, Txid::ZERO, None, &[]) {
        Ok(plan) => plan.txid,
        Err(PlanError::Gap { reached, .. }) => reached,
        Err(_) => Txid::ZERO,
    }
}

/// Uploads staged files above `uploaded` (the highest TXID known to be in the replica) in
/// TXID order, then removes the uploaded ones except the newest. Returns how many were
/// uploaded, and adds each file sent to `sent`. Each file must continue the replica (start at `uploaded + 1`, or at 1 for a
/// full copy named as a snapshot): a file that would leave a gap is never sent. It is
/// dropped if a full copy staged after it supersedes it, and is an error otherwise.
/// A file already in the replica counts as uploaded if it holds the same bytes (an upload
/// retried after a crash); different bytes mean another writer: a conflict.
pub async fn upload(
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

/// What a merge of this history ending at a file carries of that file's header: its
/// timestamp, database size, page size and history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MergedFields(i64, u32, ltx::PageSize, u64);

impl MergedFields {
    fn of(h: &ltx::Header) -> MergedFields {
        MergedFields(h.timestamp, h.commit, h.page_size, h.node_id)
    }
}

/// A staged file's size and header, from one open.
fn staged_header(path: &Path) -> Option<(u64, ltx::Header)> {
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut head = [0u8; ltx::HEADER_SIZE];
    std::io::Read::read_exact(&mut file, &mut head).ok()?;
    Some((size, ltx::Header::from_bytes(&head).ok()?))
}

/// How many uploaded files' header fields the uploader remembers (about 3 MB).
const HEADERS_KEPT: usize = 100_000;

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
enum Existing {
    /// Exactly the staged file's bytes (an upload retried after a crash).
    Same,
    /// Other bytes: another writer's file.
    Different,
    /// Nothing.
    Missing,
}

/// Compares the replica's file for `range` with the staged file, a chunk at a time (a full
/// copy can be as large as the database).
async fn compare_with_replica(
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
pub fn level_of(range: TxidRange) -> Level {
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
