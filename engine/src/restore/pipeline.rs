//! Fetching and decoding planned files: each file is split into segments of whole frames
//! (its page index says where they are), and many segments are fetched and decoded at once,
//! then handed to the writer in plan order.
//!
//! From a remote store, consecutive segments are read in spans of [`SPAN_SEGMENTS`] with
//! one request each, decoded as each segment's bytes arrive: a request costs a round trip
//! and the server's own overhead, so fewer, longer reads go faster, while memory still
//! holds only the segments in flight.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use ltx::{FileLayout, Segment, SegmentSum};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::storage::{ErrorKind, FileInfo, Operation, Replica, StorageError};

/// Files up to this size are fetched whole in one read; larger ones by header and tail
/// first, then segment by segment.
const SMALL_FILE: u64 = ltx::TAIL_FETCH_SIZE;

/// Segments read with one request from a remote store.
const SPAN_SEGMENTS: usize = 8;

/// Buffers passed back and forth between fetching, decoding and writing, so a long restore
/// allocates (and page-faults) only while the pool fills.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    pub(super) fn get(&self) -> Vec<u8> {
        self.0.lock().unwrap().pop().unwrap_or_default()
    }

    pub(super) fn put(&self, buf: Vec<u8>) {
        self.0.lock().unwrap().push(buf);
    }
}

/// Alignment of decoded pages in memory: what direct (uncached) writes require.
pub(crate) const ALIGN: usize = 4096;

/// Decoded pages in a pooled buffer, starting on an [`ALIGN`] boundary.
#[derive(Debug)]
pub(crate) struct PageBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageBuf {
    fn new(mut vec: Vec<u8>, len: usize) -> PageBuf {
        // Growing only zero-fills the new part, so a recycled buffer is not zeroed again.
        vec.resize(len + ALIGN, 0);
        let start = vec.as_ptr().align_offset(ALIGN);
        PageBuf { vec, start, len }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }

    /// The buffer, for the pool.
    pub(super) fn into_vec(self) -> Vec<u8> {
        self.vec
    }
}

/// What the writer receives, in plan order.
#[derive(Debug)]
pub(crate) enum Item {
    /// The decoded pages of one segment of file `file`, one after another.
    Pages {
        file: usize,
        layout: Arc<FileLayout>,
        segment: Segment,
        pages: PageBuf,
        sum: SegmentSum,
    },
    /// Every segment of file `file` has been delivered.
    End {
        file: usize,
        layout: Arc<FileLayout>,
    },
    /// File `file` could not be read or decoded.
    Failed { file: usize, failure: Failure },
}

#[derive(Debug)]
pub(crate) enum Failure {
    Storage(StorageError),
    Corrupt(ltx::Error),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Failure {
        Failure::Storage(e)
    }
}

/// A planned file ready to be split: its layout, and its bytes if it was fetched whole.
struct Prepared {
    file: usize,
    layout: Arc<FileLayout>,
    whole: Option<Bytes>,
}

enum Work {
    Segment {
        file: usize,
        layout: Arc<FileLayout>,
        segment: Segment,
        source: Source,
    },
    End {
        file: usize,
        layout: Arc<FileLayout>,
    },
    Failed {
        file: usize,
        failure: Failure,
    },
}

/// Where a segment's frame bytes come from.
enum Source {
    /// The file, fetched whole.
    Whole(Bytes),
    /// A read of its own.
    Range,
    /// Piece `piece` of a span read.
    Span { span: Arc<Span>, piece: usize },
}

/// Consecutive segments of one file read with one request, started by the first segment
/// that wants its bytes; each piece is handed over as soon as it has arrived.
struct Span {
    range: std::ops::Range<u64>,
    /// Where each piece (segment) ends.
    ends: Vec<u64>,
    /// Taken by whichever segment starts the read.
    senders: Mutex<Option<Vec<PieceSender>>>,
    receivers: Vec<Mutex<Option<PieceReceiver>>>,
}

type PieceSender = oneshot::Sender<Result<Bytes, StorageError>>;
type PieceReceiver = oneshot::Receiver<Result<Bytes, StorageError>>;

impl Span {
    fn new(segments: &[Segment]) -> Span {
        let (senders, receivers) = segments
            .iter()
            .map(|_| oneshot::channel())
            .unzip::<_, _, Vec<_>, Vec<_>>();
        Span {
            range: segments[0].bytes.start..segments[segments.len() - 1].bytes.end,
            ends: segments.iter().map(|s| s.bytes.end).collect(),
            senders: Mutex::new(Some(senders)),
            receivers: receivers.into_iter().map(|r| Mutex::new(Some(r))).collect(),
        }
    }

    /// The bytes of piece `piece`, starting the read if no piece has yet.
    async fn piece(
        &self,
        piece: usize,
        replica: &Replica,
        info: &FileInfo,
    ) -> Result<Bytes, StorageError> {
        let senders = self.senders.lock().unwrap().take();
        if let Some(senders) = senders {
            let (replica, info, range, ends) = (
                replica.clone(),
                info.clone(),
                self.range.clone(),
                self.ends.clone(),
            );
            tokio::spawn(async move {
                let mut senders = senders.into_iter();
                // Nobody waiting for a piece (the pipeline stopped) ends the read.
                let read = replica
                    .read_pieces(&info, range, &ends, |bytes| {
                        senders.next().is_some_and(|tx| tx.send(Ok(bytes)).is_ok())
                    })
                    .await;
                if let Err(e) = read {
                    for tx in senders {
                        let _ = tx.send(Err(e.copy()));
                    }
                }
            });
        }
        let rx = self.receivers[piece]
            .lock()
            .unwrap()
            .take()
            .expect("each piece is taken once");
        // A read ends early only when its receivers are gone, so this does not happen.
        rx.await.unwrap_or_else(|_| {
            Err(StorageError::new(
                replica.name(),
                Operation::Get,
                info,
                ErrorKind::Other,
                "the read of this part was abandoned",
            ))
        })
    }
}

/// Runs the fetch-and-decode pipeline for `files`, sending results in order. At most
/// `concurrency` files are being prepared and `concurrency` segments fetched or decoded at
/// once (decoding itself uses one thread per core); a segment holds at most `chunk_size`
/// bytes of frames and decodes to at most `chunk_size` bytes of pages (or one page). Stops
/// at the first failure, or when the receiver goes away.
pub(crate) fn spawn(
    replica: Replica,
    files: Vec<FileInfo>,
    concurrency: usize,
    chunk_size: u64,
    pool: Pool,
    tx: mpsc::Sender<Item>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let concurrency = concurrency.max(1);
        let networked = replica.capabilities().networked;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let cpu = Arc::new(Semaphore::new(cores));
        let files = Arc::new(files);
        let work = stream::iter(0..files.len())
            .map({
                let (replica, files) = (replica.clone(), files.clone());
                move |file| prepare(replica.clone(), files[file].clone(), file)
            })
            .buffered(concurrency)
            .flat_map(move |prepared| stream::iter(split(prepared, chunk_size, networked)));
        let mut items = work
            .map(move |w| run(w, replica.clone(), files.clone(), pool.clone(), cpu.clone()))
            .buffered(concurrency);
        while let Some(item) = items.next().await {
            let failed = matches!(item, Item::Failed { .. });
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    })
}

/// Reads a file's layout: the whole file if it is small, otherwise its header and tail.
async fn prepare(
    replica: Replica,
    info: FileInfo,
    file: usize,
) -> Result<Prepared, (usize, Failure)> {
    let (replica, info) = (&replica, &info);
    let inner = async {
        let read = replica
            .read_layout(info, SMALL_FILE)
            .await?
            .map_err(Failure::Corrupt)?;
        let layout = FileLayout::new(&read.head, info.size, read.tail_start, &read.tail_bytes)
            .map_err(Failure::Corrupt)?;
        let whole = read.whole;
        Ok(Prepared {
            file,
            layout: Arc::new(layout),
            whole,
        })
    };
    inner.await.map_err(|failure| (file, failure))
}

/// The work for one prepared file: its segments, then its end. A file not fetched whole
/// from a networked backend is read in spans (see [`SPAN_SEGMENTS`]).
fn split(
    prepared: Result<Prepared, (usize, Failure)>,
    chunk_size: u64,
    networked: bool,
) -> Vec<Work> {
    let p = match prepared {
        Ok(p) => p,
        Err((file, failure)) => return vec![Work::Failed { file, failure }],
    };
    let page_size = p.layout.header().page_size.bytes() as u64;
    let max_pages = (chunk_size / page_size).max(1) as usize;
    let segments = p.layout.segments(chunk_size, max_pages);
    let mut work = Vec::with_capacity(segments.len() + 1);
    let group = if p.whole.is_none() && networked {
        SPAN_SEGMENTS
    } else {
        1
    };
    for run in segments.chunks(group) {
        let span = (run.len() > 1).then(|| Arc::new(Span::new(run)));
        for (piece, segment) in run.iter().enumerate() {
            let source = match (&p.whole, &span) {
                (Some(bytes), _) => Source::Whole(bytes.clone()),
                (None, Some(span)) => Source::Span {
                    span: span.clone(),
                    piece,
                },
                (None, None) => Source::Range,
            };
            work.push(Work::Segment {
                file: p.file,
                layout: p.layout.clone(),
                segment: segment.clone(),
                source,
            });
        }
    }
    work.push(Work::End {
        file: p.file,
        layout: p.layout,
    });
    work
}

/// Fetches (unless the file was fetched whole) and decodes one segment.
async fn run(
    work: Work,
    replica: Replica,
    files: Arc<Vec<FileInfo>>,
    pool: Pool,
    cpu: Arc<Semaphore>,
) -> Item {
    let (file, layout, segment, source) = match work {
        Work::Segment {
            file,
            layout,
            segment,
            source,
        } => (file, layout, segment, source),
        Work::End { file, layout } => return Item::End { file, layout },
        Work::Failed { file, failure } => return Item::Failed { file, failure },
    };
    let range = segment.bytes.clone();
    let read = match source {
        Source::Whole(bytes) => Ok(Frames::Shared(
            bytes.slice(range.start as usize..range.end as usize),
        )),
        Source::Span { span, piece } => span
            .piece(piece, &replica, &files[file])
            .await
            .map(Frames::Shared),
        // Where the backend reads into buffers (a file), a recycled one is used; a response
        // already sits in memory, so it is decoded where it is.
        Source::Range if replica.capabilities().reads_into_buffers => replica
            .read_range_into(&files[file], range, pool.get())
            .await
            .map(Frames::Owned),
        Source::Range => replica
            .read_range(&files[file], range)
            .await
            .map(Frames::Shared),
    };
    let frames = match read {
        Ok(frames) => frames,
        Err(e) => {
            return Item::Failed {
                file,
                failure: e.into(),
            };
        }
    };
    let _cpu = cpu.acquire().await.expect("semaphore is never closed");
    let (pool, decode_layout, decode_segment) = (pool.clone(), layout.clone(), segment.clone());
    let decoded = tokio::task::spawn_blocking(move || {
        let page_size = decode_layout.header().page_size.bytes();
        let mut pages = PageBuf::new(pool.get(), decode_segment.frames.len() * page_size);
        let sum =
            decode_layout.decode_segment(&decode_segment, frames.as_slice(), pages.as_mut_slice());
        if let Frames::Owned(buf) = frames {
            pool.put(buf);
        }
        sum.map(|sum| (pages, sum))
    })
    .await
    .expect("segment decoding panicked");
    match decoded {
        Ok((pages, sum)) => Item::Pages {
            file,
            layout,
            segment,
            pages,
            sum,
        },
        Err(e) => Item::Failed {
            file,
            failure: Failure::Corrupt(e),
        },
    }
}

/// A segment's frame bytes: a slice of a file fetched whole, or a pooled buffer.
enum Frames {
    Shared(Bytes),
    Owned(Vec<u8>),
}

impl Frames {
    fn as_slice(&self) -> &[u8] {
        match self {
            Frames::Shared(b) => b,
            Frames::Owned(v) => v,
        }
    }
}
