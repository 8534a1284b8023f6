//! One compaction: input files streamed from the replica through the k-way merge into a
//! local scratch file, which is then written to the replica whole.
//!
//! Memory is one read buffer per input (at most [`MAX_CHUNK`], less when there are many
//! inputs) plus one page per input and the output's page index: never a file's size.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use ltx::{CompactOptions, Decoder, Header, PageEncoding};

use super::CompactError;
use crate::storage::{ChunkedReader, FileInfo, Replica};

/// The largest read one input makes at a time.
const MAX_CHUNK: u64 = 1 << 20;
/// The smallest, however many inputs there are.
const MIN_CHUNK: u64 = 64 << 10;
/// The read buffers of all inputs together stay under this (above MIN_CHUNK x inputs).
const BUFFER_BUDGET: u64 = 32 << 20;
/// First reads issued at once.
const PREFETCH: usize = 8;

/// A merged file in the scratch directory, ready to write to the replica.
#[derive(Debug)]
pub(super) struct Merged {
    /// Where it is; removed when this is dropped.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    /// Its size in bytes.
    pub size: u64,
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Merges `inputs` (in TXID order) into a new file in `scratch`. `read` counts the bytes
/// fetched, for progress.
pub(super) async fn merge(
    replica: &Replica,
    inputs: &[FileInfo],
    local_l0: &[PathBuf],
    scratch: &Path,
    encoding: PageEncoding,
    read: Arc<AtomicU64>,
) -> Result<Merged, CompactError> {
    let chunk = (BUFFER_BUDGET / inputs.len().max(1) as u64).clamp(MIN_CHUNK, MAX_CHUNK);
    // L0 files still staged locally (the same bytes as uploaded) are read from disk: no GET.
    let local: Vec<Option<File>> = inputs
        .iter()
        .map(|f| staged_copy(local_l0, f).map(|(_, file)| file))
        .collect();
    // Each input's first read, a few at a time: with many small inputs (L0 files fit in one
    // read) this is where the time goes, and the merge needs them all before its first page.
    let reads: Vec<_> = inputs
        .iter()
        .zip(&local)
        .map(|(f, local)| {
            let (replica, f, remote) = (replica.clone(), f.clone(), local.is_none());
            async move {
                if !remote {
                    return Ok(Vec::new());
                }
                replica
                    .read_range_into(&f, 0..f.size.min(chunk), Vec::new())
                    .await
            }
        })
        .collect();
    let firsts: Vec<Result<Vec<u8>, _>> = futures::stream::iter(reads)
        .buffered(PREFETCH)
        .collect()
        .await;
    let mut readers = Vec::with_capacity(inputs.len());
    for ((file, first), local) in inputs.iter().zip(firsts).zip(local) {
        if let Some(local) = local {
            readers.push(Input::Local {
                file: file.clone(),
                reader: std::io::BufReader::with_capacity(chunk as usize, local),
            });
            continue;
        }
        let first = first?;
        read.fetch_add(first.len() as u64, Ordering::Relaxed);
        readers.push(Input::Remote(
            ChunkedReader::new(replica.clone(), file.clone(), chunk)
                .with_prefetched(first)
                .counting(read.clone()),
        ));
    }
    std::fs::create_dir_all(scratch).map_err(|error| CompactError::Scratch {
        path: scratch.to_owned(),
        error,
    })?;
    let path = scratch.join(format!(
        "compact-{}-{}.ltx.tmp",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    let merged = {
        let path = path.clone();
        let replica = replica.clone();
        tokio::task::spawn_blocking(move || merge_blocking(&replica, readers, &path, encoding))
            .await
            .map_err(|e| CompactError::Panicked(e.to_string()))?
    };
    match merged {
        Ok((header, size)) => Ok(Merged { path, header, size }),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// The staged copy of an L0 input in one of `local_l0`, opened, if there is one of the
/// listed size.
fn staged_copy(local_l0: &[PathBuf], file: &FileInfo) -> Option<(PathBuf, File)> {
    if file.level != crate::storage::Level::L0 {
        return None;
    }
    local_l0.iter().find_map(|dir| {
        let path = dir.join(file.range.file_name());
        let opened = File::open(&path).ok()?;
        (opened.metadata().ok()?.len() == file.size).then_some((path, opened))
    })
}

/// The first of `inputs` that does not decode (header, every page, trailer checksum), and
/// why: after a merge fails on bad data, to name the file and keep it out of later work.
pub(super) async fn find_corrupt(
    replica: &Replica,
    inputs: &[FileInfo],
    local_l0: &[PathBuf],
) -> Option<(FileInfo, String)> {
    for file in inputs {
        if let Some((path, local)) = staged_copy(local_l0, file) {
            let input = Input::Local {
                file: file.clone(),
                reader: std::io::BufReader::new(local),
            };
            if let Some(error) = check_input(input).await {
                // The staged copy is bad: the replica's may be fine. Drop the local copy so
                // the next merge fetches it, and judge the replica's on its own.
                tracing::warn!(path = %path.display(), %error, "staged copy is corrupt; using the replica's");
                let _ = std::fs::remove_file(&path);
            } else {
                continue;
            }
        }
        if let Some(error) = verify_file(replica, file).await {
            return Some((file.clone(), error));
        }
    }
    None
}

/// Why `input` does not decode to its end (header, every page, checksum), if it does not;
/// a storage failure while reading says nothing about the bytes and counts as no finding.
async fn check_input(input: Input) -> Option<String> {
    let checked = tokio::task::spawn_blocking(move || -> Result<(), ltx::Error> {
        let mut decoder = Decoder::from_buf_read(input)?;
        let mut page = vec![0u8; decoder.header().page_size.bytes()];
        while decoder.decode_page(&mut page)?.is_some() {}
        decoder.finish().map(|_| ())
    })
    .await;
    match checked {
        Ok(Err(ltx::Error::Io { .. })) | Ok(Ok(())) | Err(_) => None,
        Ok(Err(e)) => Some(e.to_string()),
    }
}

/// Whether `file` in the replica decodes to its end; `None` if it does or could not be read.
pub(super) async fn verify_file(replica: &Replica, file: &FileInfo) -> Option<String> {
    check_input(Input::Remote(ChunkedReader::new(
        replica.clone(),
        file.clone(),
        MAX_CHUNK,
    )))
    .await
}

fn merge_blocking(
    replica: &Replica,
    readers: Vec<Input>,
    path: &Path,
    encoding: PageEncoding,
) -> Result<(Header, u64), CompactError> {
    let mut decoders = Vec::with_capacity(readers.len());
    for r in readers {
        let file = r.file().clone();
        let replica = replica.clone();
        let decoder = Decoder::from_buf_read(r).map_err(|e| ltx_error(&replica, &file, e))?;
        // The name and the header must agree, or the merge would mislabel what it writes.
        file.check_named(decoder.header())
            .map_err(|e| CompactError::Storage(replica.invalid(&file, e)))?;
        decoders.push(decoder);
    }
    let scratch_error = |error| CompactError::Scratch {
        path: path.to_owned(),
        error,
    };
    let out = File::create(path).map_err(scratch_error)?;
    let options = CompactOptions {
        encoding,
        allow_gaps: false,
    };
    let encoded = ltx::compact(decoders, BufWriter::new(out), options).map_err(|e| match e {
        // A failed read carries the storage error that names the file; any other I/O
        // error is the scratch file's (a full disk).
        ltx::Error::Io { source, .. } => match source.downcast::<crate::storage::StorageError>() {
            Ok(storage) => CompactError::Storage(storage),
            Err(io) => scratch_error(io),
        },
        other => CompactError::Ltx(other),
    })?;
    let file = encoded
        .writer
        .into_inner()
        .map_err(|e| scratch_error(e.into_error()))?;
    file.sync_all().map_err(scratch_error)?;
    let mut head = [0u8; ltx::HEADER_SIZE];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(scratch_error)?;
    let header = Header::from_bytes(&head).map_err(CompactError::Ltx)?;
    Ok((header, encoded.file_size))
}

fn ltx_error(replica: &Replica, file: &FileInfo, e: ltx::Error) -> CompactError {
    match e {
        ltx::Error::Io { offset, source } => {
            match source.downcast::<crate::storage::StorageError>() {
                Ok(storage) => CompactError::Storage(storage),
                Err(source) => {
                    CompactError::Storage(replica.invalid(file, ltx::Error::Io { offset, source }))
                }
            }
        }
        other => CompactError::Storage(replica.invalid(file, other)),
    }
}

/// One input of a merge: a staged local copy, or the replica's file.
enum Input {
    Local {
        file: FileInfo,
        reader: std::io::BufReader<File>,
    },
    Remote(ChunkedReader),
}

impl Input {
    fn file(&self) -> &FileInfo {
        match self {
            Input::Local { file, .. } => file,
            Input::Remote(r) => r.file(),
        }
    }
}

impl BufRead for Input {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Input::Local { reader, .. } => reader.fill_buf(),
            Input::Remote(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            Input::Local { reader, .. } => reader.consume(n),
            Input::Remote(r) => r.consume(n),
        }
    }
}

impl Read for Input {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Local { reader, .. } => reader.read(out),
            Input::Remote(r) => r.read(out),
        }
    }
}
