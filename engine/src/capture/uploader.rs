//! One replica's uploader: ships what is staged (see [`upload`](super::upload)) and checks,
//! now and then, that the replica still restores to what it was sent; one that lost files
//! asks the capture for a full copy, and another writer's files stop the replica.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltx::{Txid, TxidRange};

use super::CaptureError;
use super::batch::Batches;
use super::staging::Staging;
use super::sync::FullCopyRequest;
use super::upload::{Existing, NewestStaged, StagedUse, compare_with_replica, level_of, upload};
use crate::compact::SharedIndex;
use crate::plan::{PlanError, plan_files};
use crate::storage::{FileInfo, Level, Replica};

/// Ships staged files to one replica and watches that the replica keeps them.
#[derive(Debug)]
pub(super) struct Uploader {
    staging: Staging,
    /// Where merged uploads are made.
    batches: Batches,
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
    /// What the next round does with the newest staged file (see [`NewestStaged`]).
    pub(super) newest: NewestStaged,
}

impl Uploader {
    /// An uploader for a replica that restores to `uploaded` and whose newest file ends at
    /// `known`, or (`None`) one that could not be listed yet.
    pub(super) fn new(
        (staging, batches): (Staging, Batches),
        replica: Replica,
        listed: Option<(Txid, Txid)>,
        rebase: Arc<FullCopyRequest>,
        (check_every, list_every): (Duration, u32),
        (index, keep_staged_for_compaction): (SharedIndex, bool),
        peers: (Arc<StagedUse>, usize),
    ) -> Uploader {
        let (uploaded, known) = listed.unwrap_or((Txid::ZERO, Txid::ZERO));
        peers.0.set(peers.1, uploaded);
        Uploader {
            staging,
            batches,
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
            newest: NewestStaged::Alone,
        }
    }

    /// How often the replica is checked while nothing is uploaded: as often as it is
    /// listed whole while uploading (every tenth check).
    pub(super) fn idle_check_interval(&self) -> Duration {
        self.check_every * self.list_every
    }

    /// Asks the capture for a full copy above `txid`; files that cannot continue the replica
    /// meanwhile wait quietly.
    fn ask_full_copy(&mut self, txid: Txid) {
        self.asked_full_copy = true;
        self.rebase.ask_above(txid);
    }

    /// When the oldest staged file the replica lacks was staged (its file time); `None` if
    /// it lacks none, or the time cannot be read.
    pub(super) fn pending_since(&self) -> Option<jiff::Timestamp> {
        let staged = self.staging.staged().ok()?;
        let first = staged.into_iter().find(|r| r.max > self.uploaded)?;
        let modified = std::fs::metadata(self.staging.path(first))
            .and_then(|m| m.modified())
            .ok()?;
        jiff::Timestamp::try_from(modified).ok()
    }

    /// The replica.
    pub(super) fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Uploads what is staged (see [`upload`]), first checking, now and then, that the
    /// replica still restores to what it holds (see [`Uploader::verify`]). While a full copy
    /// is awaited after a loss, files that cannot continue the replica wait quietly.
    pub(super) async fn upload(&mut self) -> Result<usize, CaptureError> {
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
        // With compaction on, L1 reads uploaded L0 files from their local copies (no GET
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
            (&self.staging, &self.batches),
            &self.replica,
            &mut self.uploaded,
            &mut self.recent,
            removable,
            (&self.peers.0, self.peers.1),
            self.newest,
        )
        .await;
        // What was uploaded is in the replica whether or not a later file failed. Its size
        // goes to the index and its header fields to `headers` (one open of the staged file);
        // a staged file already removed is indexed by the next listing instead.
        let mut index = self.index.lock();
        for &range in &self.recent[sent..] {
            let Some((size, header)) =
                staged_header(&self.batches.local_path(&self.staging, range))
            else {
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
                self.ask_full_copy(self.known);
                Ok(0)
            }
            // A staged file damaged on disk is never uploaded: it goes, and a full copy
            // continues the replica (the files after it no longer continue it).
            Err(CaptureError::StagedDamaged { range, detail }) => {
                tracing::warn!(replica = self.replica.name(), staged = range.file_name(), %detail, "a staged file is damaged: removed; the next file is a full copy");
                for removed in [self.staging.remove(range), self.batches.remove(range)] {
                    if let Err(e) = removed {
                        tracing::warn!(error = %e, "cannot remove the damaged staged file");
                    }
                }
                self.ask_full_copy(self.known.max(range.max));
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
        self.peers.0.set(self.peers.1, restores_to);
        tracing::info!(replica = self.replica.name(), restores_to = %restores_to, newest = %newest, "listed the replica");
        if newest > staged || newest > restores_to {
            tracing::warn!(replica = self.replica.name(), %newest, "the replica cannot be continued from the staged files: the next file is a full copy");
            self.ask_full_copy(newest);
        }
        Ok(())
    }

    /// Gives up on this replica (another history is in it): it keeps no staged file from
    /// removal and its compaction and retention stop.
    pub(super) fn stop(&self, why: &str) {
        self.peers.0.release(self.peers.1);
        self.index.report_foreign(why.to_owned());
    }

    /// Lists and checks the replica now (see [`Uploader::verify`]), without failing on a
    /// loss: a replica that lost files asks the capture for a full copy, which the final
    /// sync of a stop then writes.
    pub(super) async fn check_now(&mut self) -> Result<(), CaptureError> {
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
    pub(super) async fn verify(&mut self) -> Result<(), CaptureError> {
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

    /// Whether `file` in the replica has exactly the bytes of the file staged for its TXIDs
    /// (false if none is staged).
    async fn staged_copy_is(&self, file: &FileInfo) -> Result<bool, CaptureError> {
        let path = self.batches.local_path(&self.staging, file.range);
        if file.level != level_of(file.range) || !path.exists() {
            return Ok(false);
        }
        Ok(matches!(
            compare_with_replica(&self.replica, file.level, file.range, &path).await?,
            Existing::Same
        ))
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
            // An upload stopped after its file reached the replica but before it was noted
            // (the upload task is stopped at once when the replication stops): the bytes of
            // the file still staged say whether it is this capture's.
            if self.staged_copy_is(theirs).await? {
                self.recent.push(theirs.range);
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
pub(super) fn latest_restorable(files: &[FileInfo]) -> Txid {
    match plan_files(files, Txid::ZERO, None, &[]) {
        Ok(plan) => plan.txid,
        Err(PlanError::Gap { reached, .. }) => reached,
        Err(_) => Txid::ZERO,
    }
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
