//! Fetching planned files: ranged reads issued many at a time, delivered in order.

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::storage::{FileInfo, Replica, StorageError};

/// A piece of one planned file, or the error that stopped it.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Index of the file in the plan.
    pub file: usize,
    /// Byte offset of `bytes` in the file.
    pub offset: u64,
    pub bytes: Result<Bytes, StorageError>,
}

/// Splits every file into ranged reads of at most `chunk_size` bytes and runs `concurrency`
/// of them at once, sending the results in plan order. Memory is bounded by
/// `concurrency + channel capacity` chunks. Stops when the receiver goes away.
pub(crate) fn spawn_fetch(
    replica: Replica,
    files: Vec<FileInfo>,
    concurrency: usize,
    chunk_size: u64,
    tx: mpsc::Sender<Chunk>,
) -> tokio::task::JoinHandle<()> {
    let requests: Vec<(usize, Range<u64>)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, f)| chunk_ranges(f.size, chunk_size).map(move |r| (i, r)))
        .collect();
    tokio::spawn(async move {
        let files = &files;
        let replica = &replica;
        let mut chunks = futures::stream::iter(requests)
            .map(|(file, range)| async move {
                let bytes = replica.read_range(&files[file], range.clone()).await;
                Chunk {
                    file,
                    offset: range.start,
                    bytes,
                }
            })
            .buffered(concurrency.max(1));
        while let Some(chunk) = chunks.next().await {
            let failed = chunk.bytes.is_err();
            if tx.send(chunk).await.is_err() || failed {
                // The applier stopped, or this file is unreadable: later chunks are moot.
                break;
            }
        }
    })
}

fn chunk_ranges(size: u64, chunk: u64) -> impl Iterator<Item = Range<u64>> {
    let chunk = chunk.max(1);
    (0..size.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(size))
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_cover_the_file_exactly() {
        let r: Vec<_> = super::chunk_ranges(10, 4).collect();
        assert_eq!(r, [0..4, 4..8, 8..10]);
        assert_eq!(super::chunk_ranges(0, 4).count(), 0);
        assert_eq!(
            super::chunk_ranges(4, 4).collect::<Vec<_>>(),
            vec![0..4_u64]
        );
    }
}
