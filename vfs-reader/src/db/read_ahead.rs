//! Which frames a miss fetches: the page asked for and, while misses run in a sequence,
//! a window after it that grows; each file's frames in runs close enough to read as one.

use super::Inner;
use crate::cache::{FrameKey, PageCache};
use crate::page_map::Frame;

/// The most pages one read-ahead fetches.
pub(super) const MAX_WINDOW: u32 = 4096;

/// A read-ahead's ranged reads are cut at this many bytes and made at once: latency, not
/// bandwidth, is what a scan waits for.
pub(super) const CHUNK: u64 = 512 << 10;

/// A miss this many pages past the previous read-ahead window still counts as sequential.
pub(super) const SKIP: u32 = 16;

/// The pages a miss that starts a stream looks at (it fetches those that come in the same
/// request as its own).
pub(super) const FRESH_WINDOW: u32 = 4;

/// How many streams of sequential misses are told apart.
pub(super) const STREAMS: usize = 4;

/// Frames of one file this many bytes apart or less are read in one request (the bytes
/// between, frames of pages rewritten later, are read and dropped).
pub(super) const GAP_MAX: u64 = 64 << 10;

/// The reads that fetch page `pgno` and its read-ahead.
///
/// A miss just past the end of a recent stream's read-ahead (past pages at hand, which
/// SQLite may skip) continues that stream with a larger window; any other miss starts a
/// stream of its own and takes only the pages after it that come in its own request (frames
/// next to it in the same file), so a point lookup costs one request and a short run of rows
/// few. Several streams are told apart: a scan reads b-tree interior pages in between its
/// leaves, and an index range scan alternates between the index and the table.
pub(super) fn read_ahead(inner: &mut Inner, pgno: u32) -> Vec<Run> {
    let max = MAX_WINDOW.min(cache_window(&inner.cache));
    let continued = inner.streams.iter().position(|s| {
        let skipped = s.end.saturating_add(1)..pgno;
        pgno > s.end
            && skipped.len() <= SKIP as usize
            && skipped.into_iter().all(|p| at_hand(inner, p))
    });
    let fresh = continued.is_none();
    let mut stream = match continued {
        Some(i) => inner.streams.remove(i),
        None => {
            if inner.streams.len() == STREAMS {
                inner.streams.remove(0);
            }
            Stream { end: 0, window: 1 }
        }
    };
    // Quadrupled while small: a short run of rows costs few requests.
    let window = if fresh {
        FRESH_WINDOW
    } else if stream.window < 16 {
        stream.window * 4
    } else {
        stream.window * 2
    }
    .min(max)
    .max(1);
    let end = pgno
        .saturating_add(window)
        .min(inner.map.pages().saturating_add(1));
    if fresh {
        // The end stays at the page: what it took on the way is at hand, so a miss past
        // that continues the stream.
        stream.end = pgno;
    } else {
        stream.window = window;
        stream.end = end.saturating_sub(1).max(pgno);
    }
    inner.streams.push(stream);

    // Frames to fetch, by file: the page asked for, and the window's pages not at hand.
    let mut by_file: Vec<(u32, Vec<(u32, Frame)>)> = Vec::new();
    for p in pgno..end {
        let Some(f) = inner.map.frame(p) else {
            continue;
        };
        if p != pgno && at_hand(inner, p) {
            continue;
        }
        match by_file.iter_mut().find(|(i, _)| *i == f.file) {
            Some((_, frames)) => frames.push((p, f)),
            None => by_file.push((f.file, vec![(p, f)])),
        }
    }
    // Each file's frames in runs of ranges close enough to read as one.
    let mut runs: Vec<Run> = Vec::new();
    for (file, mut frames) in by_file {
        frames.sort_by_key(|(_, f)| f.offset);
        for (p, f) in frames {
            let frame_end = f.offset + u64::from(f.size);
            match runs.last_mut() {
                Some(run)
                    if run.file == file
                        && f.offset >= run.range.end
                        && f.offset - run.range.end <= GAP_MAX
                        && run.range.end - run.range.start < CHUNK =>
                {
                    run.range.end = frame_end;
                    run.frames.push((p, f));
                }
                _ => runs.push(Run {
                    file,
                    range: f.offset..frame_end,
                    frames: vec![(p, f)],
                }),
            }
        }
    }
    if fresh {
        runs.retain(|run| run.frames.iter().any(|(p, _)| *p == pgno));
    }
    runs
}

/// A run of misses at ascending pages: the last page its read-ahead fetched, and the size of
/// that read-ahead in pages.
pub(super) struct Stream {
    pub(super) end: u32,
    pub(super) window: u32,
}

/// Frames of one file read in one request: bytes `range` of file `file` of the map.
pub(super) struct Run {
    pub(super) file: u32,
    pub(super) range: std::ops::Range<u64>,
    pub(super) frames: Vec<(u32, Frame)>,
}

/// Whether page `pgno` reads without a request: no file holds it (zeros), or its frame is
/// cached, or the hydrated copy holds it.
pub(super) fn at_hand(inner: &Inner, pgno: u32) -> bool {
    let Some(f) = inner.map.frame(pgno) else {
        return true;
    };
    inner
        .cache
        .contains(&FrameKey::new(inner.map.ids[f.file as usize], f.offset))
        || inner
            .hydrated
            .as_ref()
            .is_some_and(|h| h.holds(&inner.map, f))
}

/// The read-ahead window may take at most half the cache.
pub(super) fn cache_window(cache: &PageCache) -> u32 {
    u32::try_from(cache.capacity() / 2)
        .unwrap_or(u32::MAX)
        .max(1)
}
