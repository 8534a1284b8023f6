//! Writing decoded pages to the output, file by file in plan (TXID) order.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use ltx::{FileLayout, PageSize, Segment, Txid};
use tokio::sync::mpsc;

use super::Progress;
use super::pipeline::{Failure, Item, Pool};
use crate::storage::{FileInfo, StorageError};

/// What the output file holds so far.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// The page size, once the first file is read.
    pub page_size: Option<PageSize>,
    /// The last TXID whose file was applied completely and verified.
    pub txid: Txid,
    /// Files applied completely, across re-plans.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The post-apply database checksum of the last file applied, if it carries one.
    pub post_apply: Option<ltx::Checksum>,
    /// The history of the files applied (their node ID, when one carries it), and the
    /// first file that carried it.
    pub history: Option<(u64, FileInfo)>,
}

impl Applied {
    /// Nothing applied yet, keeping the tally of work done.
    pub(super) fn restart(&self) -> Applied {
        Applied {
            files: self.files,
            bytes: self.bytes,
            ..Applied::default()
        }
    }
}

/// Why applying stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A planned file is gone (retention deleted it). `partial`: some of it was applied.
    Vanished { file: FileInfo, partial: bool },
    /// A file's bytes failed verification.
    Corrupt { file: FileInfo, error: ltx::Error },
    /// The page size differs from the files before.
    PageSize {
        file: FileInfo,
        expected: PageSize,
        found: PageSize,
    },
    /// A file of another history than the files before it: they must not be joined.
    TwoHistories(Box<TwoHistories>),
    /// Reading failed for another reason.
    Storage(StorageError),
    /// Writing the output failed.
    Output(io::Error),
}

/// Two files of a plan that belong to two histories.
#[derive(Debug)]
pub(crate) struct TwoHistories {
    /// The first earlier file of the other history.
    pub earlier: FileInfo,
    /// The file that does not belong with it.
    pub file: FileInfo,
    /// What the headers say.
    pub error: ltx::Error,
}

/// Writes what the pipeline delivers: each segment's pages at their offsets, and at each
/// file's end, once every segment's checksum is in, the file checksum is verified and the
/// database truncated or extended to the file's commit. A file's pages all land before the
/// next file's, so later files win, exactly as applying them in TXID order.
pub(crate) fn write_files(
    mut rx: mpsc::Receiver<Item>,
    files: &[FileInfo],
    out: &File,
    direct: Option<&File>,
    applied: &mut Applied,
    pool: &Pool,
    progress: &dyn Progress,
) -> Result<(), Stop> {
    let mut writeback = Writeback::default();
    let mut writer = Writer::new(out, direct);
    let mut current: Option<Current> = None;
    let mut remaining = files.len();
    while remaining > 0 {
        let Some(item) = rx.blocking_recv() else {
            return Err(Stop::Output(io::Error::other(
                "the fetch stopped before the plan was complete",
            )));
        };
        match item {
            Item::Pages {
                file,
                layout,
                segment,
                pages,
                sum,
            } => {
                let cur = Current::enter(&mut current, file, &layout, files, applied)?;
                writer
                    .write_runs(&layout, &segment, pages.as_slice())
                    .map_err(Stop::Output)?;
                writeback.wrote(out, pages.as_slice().len() as u64);
                pool.put(pages.into_vec());
                cur.wrote = true;
                cur.sums.push(sum);
                let bytes = segment.bytes.end - segment.bytes.start;
                cur.delivered += bytes;
                progress.fetched(bytes);
            }
            Item::End { file, layout } => {
                let cur = Current::enter(&mut current, file, &layout, files, applied)?;
                let delivered = cur.delivered;
                let info = &files[file];
                let trailer = layout
                    .verify(cur.sums.drain(..))
                    .map_err(|error| Stop::Corrupt {
                        file: info.clone(),
                        error,
                    })?;
                let header = layout.header();
                applied.post_apply = (!header.no_checksum()).then_some(trailer.post_apply_checksum);
                out.set_len(header.page_size.db_len(header.commit))
                    .map_err(Stop::Output)?;
                progress.fetched(info.size - delivered);
                applied.txid = info.range.max;
                applied.files += 1;
                applied.bytes += info.size;
                current = None;
                remaining -= 1;
            }
            Item::Failed { file, failure } => {
                let info = files[file].clone();
                return Err(match failure {
                    Failure::Storage(e) if e.is_not_found() => Stop::Vanished {
                        file: info,
                        partial: current.as_ref().is_some_and(|c| c.file == file && c.wrote),
                    },
                    Failure::Storage(e) => Stop::Storage(e),
                    Failure::Corrupt(error) => Stop::Corrupt { file: info, error },
                });
            }
        }
    }
    Ok(())
}

/// Starts the kernel writing dirty pages to disk while the restore goes on, so the final
/// fsync finds little left to do instead of writing the whole database at the end.
#[derive(Debug, Default)]
struct Writeback {
    pending: u64,
}

impl Writeback {
    /// Asynchronous writeback is started after every this many bytes written.
    const EVERY: u64 = 32 << 20;

    fn wrote(&mut self, out: &File, bytes: u64) {
        self.pending += bytes;
        if self.pending >= Self::EVERY {
            self.pending = 0;
            start_writeback(out);
        }
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file: queue every dirty page for
/// writing without waiting. Only an optimisation; durability comes from the final fsync.
#[cfg(target_os = "linux")]
fn start_writeback(out: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the borrow of `out`; the call reads no memory.
    let rc = unsafe { libc::sync_file_range(out.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range");
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

/// The file whose segments are arriving.
struct Current {
    /// Its index in the plan.
    file: usize,
    /// The checksums of its segments so far, joined at its end.
    sums: Vec<ltx::SegmentSum>,
    /// Whether any of its pages reached the output.
    wrote: bool,
    /// Its bytes delivered so far, for progress.
    delivered: u64,
}

impl Current {
    /// The state of `file`, starting it (after checking its page size) if it is new.
    fn enter<'c>(
        current: &'c mut Option<Current>,
        file: usize,
        layout: &FileLayout,
        files: &[FileInfo],
        applied: &mut Applied,
    ) -> Result<&'c mut Current, Stop> {
        if current.as_ref().is_none_or(|c| c.file != file) {
            let header = layout.header();
            let found = header.page_size;
            let expected = *applied.page_size.get_or_insert(found);
            if found != expected {
                return Err(Stop::PageSize {
                    file: files[file].clone(),
                    expected,
                    found,
                });
            }
            if header.node_id != 0 {
                match &applied.history {
                    Some((id, earlier)) if *id != header.node_id => {
                        return Err(Stop::TwoHistories(Box::new(TwoHistories {
                            earlier: earlier.clone(),
                            file: files[file].clone(),
                            error: ltx::Error::TwoHistories {
                                first: earlier.range,
                                first_node: *id,
                                second: header.txid_range(),
                                second_node: header.node_id,
                            },
                        })));
                    }
                    Some(_) => {}
                    None => applied.history = Some((header.node_id, files[file].clone())),
                }
            }
            *current = Some(Current {
                file,
                sums: Vec::new(),
                wrote: false,
                delivered: 0,
            });
        }
        Ok(current.as_mut().expect("set above"))
    }
}

/// Runs shorter than this go through the page cache even when the output has a direct
/// descriptor: a direct write is a synchronous device write, and the scattered pages of the
/// small files on top of a snapshot (thousands of one-page runs) cost more that way than
/// the copy into the cache; the final fsync writes them. (Linux keeps the two coherent: a
/// direct write first writes back and drops cached pages in its range.)
const DIRECT_MIN: usize = 64 * 1024;

/// Writes pages at their offsets: through a direct (uncached) descriptor when the output
/// has one and the run is long and aligned for it, through the page cache otherwise. Direct
/// writes keep a large restore from filling the page cache (and evicting everything else).
struct Writer<'f> {
    out: &'f File,
    direct: Option<&'f File>,
}

impl<'f> Writer<'f> {
    fn new(out: &'f File, direct: Option<&'f File>) -> Writer<'f> {
        Writer { out, direct }
    }

    /// Writes a segment's pages, one positional write per run of consecutive pages.
    fn write_runs(
        &mut self,
        layout: &FileLayout,
        segment: &Segment,
        pages: &[u8],
    ) -> io::Result<()> {
        let ps = layout.header().page_size.bytes();
        let pgnos: Vec<u32> = layout.segment_pages(segment).map(|p| p.get()).collect();
        let mut start = 0;
        while start < pgnos.len() {
            let mut end = start + 1;
            while end < pgnos.len() && pgnos[end] == pgnos[end - 1] + 1 {
                end += 1;
            }
            let offset = u64::from(pgnos[start] - 1) * ps as u64;
            self.write(&pages[start * ps..end * ps], offset)?;
            start = end;
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let align = super::pipeline::ALIGN;
        let aligned = (buf.as_ptr() as usize).is_multiple_of(align)
            && buf.len().is_multiple_of(align)
            && offset.is_multiple_of(align as u64);
        if let (Some(direct), true) = (self.direct, aligned && buf.len() >= DIRECT_MIN) {
            match direct.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                // The filesystem takes direct I/O only on its own terms; buffered it is.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("direct write refused; writing through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.out.write_all_at(buf, offset)
    }
}
