//! What a replica holds, level by level, as this process last saw it: the per-replica state
//! compaction and retention work from, so a pass needs no listing of its own.
//!
//! The index is filled by one listing of every level, kept current by whoever writes or
//! deletes through this process (the uploader adds L0 files, compaction its outputs,
//! retention removes what it deletes), and replaced whenever the replica is listed again
//! (the uploader's periodic check), which is how files written by another process arrive.

use std::sync::{Arc, Mutex, MutexGuard};

use ltx::Txid;

use crate::storage::{FileInfo, Level};

/// One file in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedFile {
    /// The file.
    pub file: FileInfo,
    /// When this process first saw it (wrote or listed it): retention's grace period counts
    /// from here, never from a timestamp the file carries.
    pub seen: jiff::Timestamp,
}

/// The files of every level, each level ordered by (max TXID, min TXID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LevelIndex {
    levels: [Vec<IndexedFile>; 10],
    /// Files being written by this process and not yet indexed: a listing that finds one
    /// has found this process's file, not another writer's.
    pending: Vec<(Level, ltx::TxidRange)>,
    /// Files a merge in progress is reading (once per merge): retention leaves them alone.
    pinned: Vec<(Level, ltx::TxidRange)>,
    /// Files found corrupt: no merge or plan uses them, and retention keeps what restores
    /// without them.
    suspect: Vec<(Level, ltx::TxidRange)>,
    /// Files known to decode: written by this process, or read through once.
    verified: Vec<(Level, ltx::TxidRange)>,
}

impl LevelIndex {
    /// An index of `files`, seen at `now`.
    pub fn from_files(files: impl IntoIterator<Item = FileInfo>, now: jiff::Timestamp) -> Self {
        let mut index = LevelIndex::default();
        for file in files {
            index.insert(file, now);
        }
        index
    }

    /// The files of `level`, by max TXID.
    pub fn level(&self, level: Level) -> &[IndexedFile] {
        &self.levels[level.get() as usize]
    }

    /// The usable files of `level` (not found corrupt) as plain file descriptions.
    pub fn files(&self, level: Level) -> Vec<FileInfo> {
        self.level(level)
            .iter()
            .filter(|i| !self.is_suspect(&i.file))
            .map(|i| i.file.clone())
            .collect()
    }

    /// Every usable file of every level.
    pub fn all(&self) -> Vec<FileInfo> {
        self.levels
            .iter()
            .flatten()
            .filter(|i| !self.is_suspect(&i.file))
            .map(|i| i.file.clone())
            .collect()
    }

    /// Marks a file found corrupt.
    pub fn mark_suspect(&mut self, file: &FileInfo) {
        if !self.is_suspect(file) {
            self.suspect.push((file.level, file.range));
        }
    }

    /// Marks a file as known to decode.
    pub fn mark_verified(&mut self, file: &FileInfo) {
        if !self.is_verified(file) {
            self.verified.push((file.level, file.range));
        }
    }

    /// Whether the file is known to decode.
    pub fn is_verified(&self, file: &FileInfo) -> bool {
        self.verified.contains(&(file.level, file.range))
    }

    /// Whether the file was found corrupt.
    pub fn is_suspect(&self, file: &FileInfo) -> bool {
        self.suspect.contains(&(file.level, file.range))
    }

    /// The file of `level` reaching the highest TXID.
    pub fn newest(&self, level: Level) -> Option<&FileInfo> {
        self.level(level).last().map(|i| &i.file)
    }

    /// The highest TXID any file reaches.
    pub fn max_txid(&self) -> Txid {
        self.levels
            .iter()
            .filter_map(|l| l.last())
            .map(|i| i.file.range.max)
            .max()
            .unwrap_or(Txid::ZERO)
    }

    /// Where `range` is in `level` (`Err`: where it would go), by the level's order.
    fn find(&self, level: Level, range: ltx::TxidRange) -> Result<usize, usize> {
        self.level(level)
            .binary_search_by_key(&(range.max, range.min), |i| {
                (i.file.range.max, i.file.range.min)
            })
    }

    /// Adds (or refreshes) a file; one already indexed keeps its `seen` time.
    pub fn insert(&mut self, file: FileInfo, now: jiff::Timestamp) {
        self.pending.retain(|p| *p != (file.level, file.range));
        let found = self.find(file.level, file.range);
        let level = &mut self.levels[file.level.get() as usize];
        match found {
            Ok(at) => level[at].file = file,
            Err(at) => level.insert(at, IndexedFile { file, seen: now }),
        }
    }

    /// Notes that this process is writing `range` to `level` (until [`LevelIndex::insert`]
    /// or [`LevelIndex::abandon`]).
    pub fn begin_write(&mut self, level: Level, range: ltx::TxidRange) {
        self.pending.push((level, range));
    }

    /// Forgets a write that failed.
    pub fn abandon(&mut self, level: Level, range: ltx::TxidRange) {
        self.pending.retain(|p| *p != (level, range));
    }

    /// Marks files as being read, until [`LevelIndex::unpin`].
    pub fn pin(&mut self, files: &[FileInfo]) {
        self.pinned.extend(files.iter().map(|f| (f.level, f.range)));
    }

    /// Ends one [`LevelIndex::pin`] of each file.
    pub fn unpin(&mut self, files: &[FileInfo]) {
        for f in files {
            if let Some(at) = self.pinned.iter().position(|p| *p == (f.level, f.range)) {
                self.pinned.swap_remove(at);
            }
        }
    }

    /// Whether a merge in progress is reading the file.
    pub fn is_pinned(&self, file: &FileInfo) -> bool {
        self.pinned.contains(&(file.level, file.range))
    }

    /// Whether the file is indexed or being written by this process.
    pub fn knows(&self, level: Level, range: ltx::TxidRange) -> bool {
        self.pending.contains(&(level, range)) || self.find(level, range).is_ok()
    }

    /// Forgets a file (deleted, or found missing).
    pub fn remove(&mut self, file: &FileInfo) {
        self.verified.retain(|v| *v != (file.level, file.range));
        self.levels[file.level.get() as usize].retain(|i| i.file.range != file.range);
    }

    /// Replaces the whole index with a fresh listing taken at `now`; files already known
    /// keep their `seen` time.
    pub fn replace(&mut self, files: impl IntoIterator<Item = FileInfo>, now: jiff::Timestamp) {
        // Only the levels are replaced: what is pending, pinned, suspect or verified stays.
        let old = LevelIndex {
            levels: std::mem::take(&mut self.levels),
            ..LevelIndex::default()
        };
        for file in files {
            let seen = old
                .find(file.level, file.range)
                .map_or(now, |at| old.level(file.level)[at].seen);
            self.insert(file, seen);
        }
    }
}

/// A [`LevelIndex`] shared by the tasks of one replica.
#[derive(Clone, Debug, Default)]
pub struct SharedIndex {
    index: Arc<Mutex<LevelIndex>>,
    /// Held while listing the replica whole and while deleting from it, so a listing of
    /// several levels never sees this process's deletions half done (one level listed
    /// before a deletion, the next after).
    listing: Arc<tokio::sync::Mutex<()>>,
    alarms: Arc<Alarms>,
}

/// What the tasks of one replica tell each other about it beyond its files.
#[derive(Debug, Default)]
struct Alarms {
    /// The index may no longer describe the replica (a planned file is gone, a snapshot
    /// cannot be built): it should be listed and checked now.
    check: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// Files of another history were found in it: nothing more is written or deleted.
    foreign: Mutex<Option<String>>,
}

impl SharedIndex {
    /// A shared index starting from `index`.
    pub fn new(index: LevelIndex) -> SharedIndex {
        SharedIndex {
            index: Arc::new(Mutex::new(index)),
            listing: Arc::default(),
            alarms: Arc::default(),
        }
    }

    /// Excludes this process's deletions (or, for a deleter, listings) while held.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.listing.lock().await
    }

    /// The index, locked. Hold it briefly: never across an await.
    pub fn lock(&self) -> MutexGuard<'_, LevelIndex> {
        // A panic while holding the lock leaves a consistent index (every method finishes
        // its one change before it could panic), so a poisoned lock is still usable.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the index as it is now.
    pub fn snapshot(&self) -> LevelIndex {
        self.lock().clone()
    }

    /// Asks whoever keeps the index current (the uploader) to list and check the replica
    /// now: something suggests it no longer holds what the index says.
    pub fn request_check(&self) {
        self.alarms
            .check
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.alarms.wake.notify_one();
    }

    /// Whether a check was asked for since the last call (which takes the request).
    pub fn take_check_request(&self) -> bool {
        self.alarms
            .check
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves when a check is asked for.
    pub async fn check_requested(&self) {
        self.alarms.wake.notified().await;
    }

    /// Records that files of another history are in the replica (`what` says which): from
    /// now on nothing is written to it or deleted from it. The first report stays.
    pub fn report_foreign(&self, what: String) {
        let mut foreign = self
            .alarms
            .foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if foreign.is_none() {
            *foreign = Some(what);
        }
        drop(foreign);
        self.alarms.wake.notify_one();
    }

    /// Why the replica holds another history, if it was found to.
    pub fn foreign(&self) -> Option<String> {
        self.alarms
            .foreign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::TxidRange;

    fn file(level: u8, min: u64, max: u64) -> FileInfo {
        FileInfo {
            level: Level::new(level).unwrap(),
            range: TxidRange::new(Txid::new(min), Txid::new(max)),
            size: 100,
            modified: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn levels_are_ordered_by_max_and_keep_first_sight() {
        let t0 = jiff::Timestamp::from_second(10).unwrap();
        let t1 = jiff::Timestamp::from_second(20).unwrap();
        let mut index = LevelIndex::from_files([file(0, 6, 8), file(0, 1, 5)], t0);
        index.insert(file(0, 1, 20), t1);
        index.insert(file(0, 6, 8), t1);
        let ranges: Vec<_> = index
            .level(Level::L0)
            .iter()
            .map(|i| (i.file.range.to_string(), i.seen))
            .collect();
        assert_eq!(ranges[0].1, t0);
        assert_eq!(ranges[1].1, t0, "re-inserting keeps the first sight");
        assert_eq!(ranges[2].1, t1);
        assert_eq!(index.newest(Level::L0).unwrap().range.max, Txid::new(20));
        index.replace([file(0, 6, 8), file(1, 1, 8)], t1);
        assert_eq!(index.level(Level::L0).len(), 1);
        assert_eq!(index.level(Level::L0)[0].seen, t0);
        assert_eq!(index.max_txid(), Txid::new(8));
        index.remove(&file(0, 6, 8));
        assert!(index.level(Level::L0).is_empty());
    }
}
