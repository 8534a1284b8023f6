//! The page map: for each page of the database at one TXID, which LTX file holds its newest
//! version and where in that file its frame sits. Built by folding the page indexes of a
//! restore plan's files in order, later files winning.

use std::sync::Arc;

use ltx::{Checksum, Header, PageIndex, PageSize, Trailer, Txid};
use strata::storage::FileInfo;

/// Where one page's frame is: a file of [`PageMap::files`], a byte offset and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Index into [`PageMap::files`].
    pub file: u32,
    /// Byte offset of the frame in the file.
    pub offset: u64,
    /// Length of the frame in bytes.
    pub size: u32,
}

impl Frame {
    /// Decodes page `pgno` from `bytes`, this frame's bytes, into `page`, checking that the
    /// frame holds the page the index says it does.
    pub(crate) fn decode(
        &self,
        bytes: &[u8],
        pgno: u32,
        page_size: PageSize,
        page: &mut [u8],
    ) -> Result<(), ltx::Error> {
        let got = ltx::decode_page_frame(bytes, self.offset, page_size, page)?;
        if got.get() != pgno {
            return Err(ltx::Error::Usage(format!(
                "the page index says page {pgno} is at offset {}, the frame there holds page {got}",
                self.offset
            )));
        }
        Ok(())
    }
}

const NO_FILE: u32 = u32::MAX;

/// The database at one TXID, as frames in replica files.
#[derive(Clone, Debug)]
pub(crate) struct PageMap {
    /// The TXID this map shows.
    pub txid: Txid,
    /// The page size of every file folded in.
    pub page_size: PageSize,
    /// The files frames point into.
    pub files: Vec<Arc<FileInfo>>,
    /// The identity of each file's bytes ([`content_id`]), beside `files`: what caches key
    /// frames by, since a replica wiped and written again reuses names and sizes.
    pub ids: Vec<u64>,
    /// The history the files belong to (their node ID; 0 if none carries one).
    pub history: u64,
    /// Counts the times the state followed was replaced by one that does not continue it
    /// (the replica's history restarted, or it lost its newest files): what a hydrated
    /// copy of an earlier epoch holds is not this state's.
    pub epoch: u64,
    /// The checksum of the database at `txid` (the newest file's post-apply checksum;
    /// zero where a file carries none): a file continues this state only if its
    /// pre-apply checksum is this one.
    pub post_apply: Checksum,
    /// Indexed by page number - 1; `file == NO_FILE` for a page no file holds (the lock
    /// page, or a database built from nothing).
    frames: Vec<Frame>,
}

/// Why a set of files does not make one database.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Two files disagree on the page size.
    #[error("{file} has page size {found}, the files before it {expected}")]
    PageSize {
        /// The file that disagrees.
        file: String,
        /// Its page size.
        found: PageSize,
        /// The page size of the files before it.
        expected: PageSize,
    },
    /// The first file is not a snapshot and the map is empty.
    #[error("no page map to continue: {file} does not start at TXID 1")]
    NoBase {
        /// The file.
        file: String,
    },
    /// A file of another history than the files before it: never joined.
    #[error("{}: {}", .0.file, .0.error)]
    TwoHistories(Box<TwoHistories>),
}

/// Two files of two histories that a map would have joined.
#[derive(Debug)]
pub struct TwoHistories {
    /// The earlier file, of the map's history.
    pub earlier: FileInfo,
    /// The file of another history.
    pub file: FileInfo,
    /// What the headers say.
    pub error: ltx::Error,
}

/// The identity of an LTX file's bytes: its header (TXIDs, time, history, size of the
/// database), its file checksum and its size. Two files of one name and size from two
/// histories (a replica wiped and written again) differ in it.
pub(crate) fn content_id(info: &FileInfo, header: &Header, file_checksum: Checksum) -> u64 {
    let mut crc = ltx::Crc64::new();
    crc.update(&header.to_bytes());
    crc.update(&file_checksum.get().to_be_bytes());
    crc.update(&info.size.to_be_bytes());
    crc.update(&[info.level.get()]);
    crc.value()
}

impl PageMap {
    /// A map from `files` in plan order, each with its header, page index and file
    /// checksum.
    pub(crate) fn build<'a>(
        files: impl IntoIterator<Item = (&'a FileInfo, &'a Header, &'a PageIndex, Trailer)>,
    ) -> Result<Option<PageMap>, MapError> {
        let mut map: Option<PageMap> = None;
        for (info, header, index, trailer) in files {
            match &mut map {
                None => {
                    if !header.is_snapshot() {
                        return Err(MapError::NoBase { file: name(info) });
                    }
                    let mut m = PageMap {
                        txid: Txid::ZERO,
                        page_size: header.page_size,
                        files: Vec::new(),
                        ids: Vec::new(),
                        history: 0,
                        epoch: 0,
                        post_apply: Checksum::ZERO,
                        frames: Vec::new(),
                    };
                    m.apply(info, header, index, trailer)?;
                    map = Some(m);
                }
                Some(m) => m.apply(info, header, index, trailer)?,
            }
        }
        Ok(map)
    }

    /// Folds in one more file, which continues this map's TXID (or restarts the history).
    pub(crate) fn apply(
        &mut self,
        info: &FileInfo,
        header: &Header,
        index: &PageIndex,
        trailer: Trailer,
    ) -> Result<(), MapError> {
        if header.is_snapshot() {
            self.history = header.node_id;
        } else if header.node_id != 0 {
            if self.history != 0 && self.history != header.node_id {
                let earlier = self
                    .files
                    .last()
                    .map_or_else(|| info.clone(), |f| FileInfo::clone(f));
                return Err(MapError::TwoHistories(Box::new(TwoHistories {
                    error: ltx::Error::TwoHistories {
                        first: earlier.range,
                        first_node: self.history,
                        second: header.txid_range(),
                        second_node: header.node_id,
                    },
                    earlier,
                    file: info.clone(),
                })));
            }
            self.history = header.node_id;
        }
        if header.page_size != self.page_size {
            if !header.is_snapshot() {
                return Err(MapError::PageSize {
                    file: name(info),
                    found: header.page_size,
                    expected: self.page_size,
                });
            }
            // A snapshot with another page size replaces everything.
            self.page_size = header.page_size;
            self.frames.clear();
        }
        if header.is_snapshot() {
            // A snapshot holds every page: nothing before it is needed.
            self.frames.clear();
            self.files.clear();
            self.ids.clear();
        }
        let file = u32::try_from(self.files.len()).unwrap_or(NO_FILE - 1);
        self.files.push(Arc::new(info.clone()));
        self.ids
            .push(content_id(info, header, trailer.file_checksum));
        let pages = header.commit as usize;
        self.frames.resize(
            pages,
            Frame {
                file: NO_FILE,
                offset: 0,
                size: 0,
            },
        );
        for entry in index.entries() {
            let i = entry.pgno.get() as usize - 1;
            if i < pages {
                self.frames[i] = Frame {
                    file,
                    offset: entry.offset,
                    size: entry.size,
                };
            }
        }
        self.txid = header.max_txid;
        self.post_apply = trailer.post_apply_checksum;
        // Files no page points into any more are dropped (their pages were all rewritten).
        self.compact_files();
        Ok(())
    }

    /// The database size in pages.
    pub(crate) fn pages(&self) -> u32 {
        u32::try_from(self.frames.len()).unwrap_or(u32::MAX)
    }

    /// The frame holding page `pgno` (1-based); `None` for a page no file holds, which
    /// reads as zeros.
    pub(crate) fn frame(&self, pgno: u32) -> Option<Frame> {
        let f = *self.frames.get((pgno as usize).checked_sub(1)?)?;
        (f.file != NO_FILE).then_some(f)
    }

    fn compact_files(&mut self) {
        let mut used = vec![false; self.files.len()];
        for f in &self.frames {
            if f.file != NO_FILE {
                used[f.file as usize] = true;
            }
        }
        if used.iter().all(|&u| u) {
            return;
        }
        let mut renumber = vec![NO_FILE; self.files.len()];
        let mut kept = Vec::new();
        let mut kept_ids = Vec::new();
        for (i, (file, id)) in self.files.drain(..).zip(self.ids.drain(..)).enumerate() {
            if used[i] {
                renumber[i] = kept.len() as u32;
                kept.push(file);
                kept_ids.push(id);
            }
        }
        self.files = kept;
        self.ids = kept_ids;
        for f in &mut self.frames {
            if f.file != NO_FILE {
                f.file = renumber[f.file as usize];
            }
        }
    }
}

fn name(info: &FileInfo) -> String {
    format!("{} {}", info.level, info.range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::{Encoder, PageNum, TxidRange};

    fn file(
        min: u64,
        max: u64,
        pages: &[(u32, u8)],
        commit: u32,
    ) -> (FileInfo, Header, PageIndex, Trailer) {
        let range = TxidRange::new(Txid::new(min), Txid::new(max));
        let mut header = Header::new(PageSize::new(512).unwrap(), commit, range);
        header.timestamp = 1;
        header.flags = ltx::HeaderFlags::NO_CHECKSUM;
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out, &header).unwrap();
        for &(pgno, byte) in pages {
            enc.encode_page(PageNum::new(pgno).unwrap(), &[byte; 512])
                .unwrap();
        }
        enc.finish(ltx::Checksum::ZERO).unwrap();
        let tail = ltx::read_file_tail(out.len() as u64, |r| {
            Ok(out[r.start as usize..r.end as usize].to_vec())
        })
        .unwrap();
        let info = FileInfo {
            level: strata::storage::Level::L0,
            range,
            size: out.len() as u64,
            modified: jiff::Timestamp::UNIX_EPOCH,
        };
        (info, header, tail.index, tail.trailer)
    }

    #[test]
    fn later_files_win_and_the_commit_size_truncates() {
        let a = file(1, 1, &[(1, 1), (2, 1), (3, 1)], 3);
        let b = file(2, 2, &[(2, 2)], 3);
        let c = file(3, 3, &[(1, 3)], 2);
        let map = PageMap::build([&a, &b, &c].map(|(i, h, x, c)| (i, h, x, *c)))
            .unwrap()
            .unwrap();
        assert_eq!(map.txid, Txid::new(3));
        assert_eq!(map.pages(), 2);
        let f = |p| {
            map.files[map.frame(p).unwrap().file as usize]
                .range
                .max
                .get()
        };
        assert_eq!((f(1), f(2)), (3, 2));
        assert!(map.frame(3).is_none());
        // Every page of the snapshot was rewritten or cut: no frame points into it.
        assert_eq!(map.files.len(), 2);
    }

    #[test]
    fn an_incremental_file_first_is_refused_and_a_page_size_change_needs_a_snapshot() {
        let b = file(2, 2, &[(2, 2)], 3);
        assert!(matches!(
            PageMap::build([(&b.0, &b.1, &b.2, b.3)]),
            Err(MapError::NoBase { .. })
        ));
        let a = file(1, 1, &[(1, 1)], 1);
        let mut map = PageMap::build([(&a.0, &a.1, &a.2, a.3)]).unwrap().unwrap();
        let mut other = b.1;
        other.page_size = PageSize::new(1024).unwrap();
        assert!(matches!(
            map.apply(&b.0, &other, &b.2, b.3),
            Err(MapError::PageSize { .. })
        ));
    }

    #[test]
    fn files_of_two_histories_are_never_joined() {
        let mut a = file(1, 1, &[(1, 1)], 1);
        a.1.node_id = 7;
        let mut b = file(2, 2, &[(1, 2)], 1);
        b.1.node_id = 8;
        let mut map = PageMap::build([(&a.0, &a.1, &a.2, a.3)]).unwrap().unwrap();
        assert_eq!(map.history, 7);
        assert!(matches!(
            map.apply(&b.0, &b.1, &b.2, b.3),
            Err(MapError::TwoHistories { .. })
        ));
        // Unknown (Litestream's 0) joins any history; a snapshot starts its own.
        b.1.node_id = 0;
        map.apply(&b.0, &b.1, &b.2, b.3).unwrap();
        let mut c = file(1, 3, &[(1, 3)], 1);
        c.1.node_id = 9;
        map.apply(&c.0, &c.1, &c.2, c.3).unwrap();
        assert_eq!(map.history, 9);
    }

    #[test]
    fn the_same_name_and_size_with_other_bytes_is_another_file() {
        let a = file(1, 1, &[(1, 1)], 1);
        let b = file(1, 1, &[(1, 2)], 1);
        assert_eq!(a.0.size, b.0.size);
        assert_ne!(
            content_id(&a.0, &a.1, a.3.file_checksum),
            content_id(&b.0, &b.1, b.3.file_checksum)
        );
    }
}
