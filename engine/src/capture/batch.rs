//! Batched uploads: capture stages a file per commit (or burst of commits) so followers get
//! each at once, but a replica gets at most one L0 object per upload round: the staged
//! files that continue one another are merged into one file covering their TXIDs, written
//! beside the staging directory and uploaded from there. Every L0 file uploaded has its
//! copy there (a lone staged file is hard-linked) until the replica's L1 covers it, so
//! compaction reads its inputs locally, and staged files can go once followers have had
//! them.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use ltx::{CompactOptions, Decoder, PageEncoding, Txid, TxidRange};

use super::staging::Staging;

/// Staged files one merge step reads at once: each is an open file and a read buffer. Longer
/// runs are merged in steps, each step's output the next one's first input.
const MERGE_FAN_IN: usize = 64;

/// Bytes of staged files one upload takes at most; what is left goes in the next.
const MERGE_MAX_BYTES: u64 = 256 << 20;

/// Where one replica's merged uploads are made, and how their pages are encoded.
#[derive(Clone, Debug)]
pub(super) struct Batches {
    dir: PathBuf,
    encoding: PageEncoding,
}

/// Removes every replica's local copies of uploads (`batch`, `batch-N`): they belong to a
/// history the capture no longer continues.
pub(super) fn remove_all(staging: &Staging) -> io::Result<()> {
    for entry in std::fs::read_dir(staging.dir())? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name == "batch" || name.starts_with("batch-")) && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

impl Batches {
    /// Merged uploads of replica `slot` of the database staged in `staging`.
    pub(super) fn new(staging: &Staging, slot: usize, encoding: PageEncoding) -> Batches {
        let dir = if slot == 0 {
            staging.dir().join("batch")
        } else {
            staging.dir().join(format!("batch-{slot}"))
        };
        Batches { dir, encoding }
    }

    /// Where merged uploads are kept until compaction no longer reads them.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The local copy of the file uploaded for `range`: a merged upload, or a staged file.
    pub(super) fn local_path(&self, staging: &Staging, range: TxidRange) -> PathBuf {
        let merged = self.dir.join(range.file_name());
        if merged.exists() {
            merged
        } else {
            staging.path(range)
        }
    }

    /// The merged uploads kept, in TXID order.
    pub(super) fn kept(&self) -> io::Result<Vec<TxidRange>> {
        match super::staging::staged_in(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
    }

    /// Removes the merged upload for `range`.
    pub(super) fn remove(&self, range: TxidRange) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(range.file_name())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The copy of the lone staged file `range` to upload: a hard link to it (a copy where
    /// links fail), made afresh.
    pub(super) fn link(&self, staging: &Staging, range: TxidRange) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(range.file_name());
        self.remove(range)?;
        if std::fs::hard_link(staging.path(range), &path).is_err() {
            let tmp = path.with_extension("ltx.tmp");
            std::fs::copy(staging.path(range), &tmp)?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(path)
    }

    /// Merges the staged files `run` (each continuing the one before) into one file covering
    /// them all and returns its path. Made afresh each time: a file of that name left from
    /// before may hold another history's pages.
    pub(super) fn merge(&self, staging: &Staging, run: &[TxidRange]) -> io::Result<PathBuf> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Err(io::Error::other("nothing to merge"));
        };
        std::fs::create_dir_all(&self.dir)?;
        let path = self
            .dir
            .join(TxidRange::new(first.min, last.max).file_name());
        let tmp = path.with_extension("ltx.tmp");
        let step = path.with_extension("ltx.step");
        let mut merged: Option<PathBuf> = None;
        for chunk in run.chunks(MERGE_FAN_IN) {
            let mut inputs = Vec::with_capacity(chunk.len() + 1);
            if let Some(so_far) = &merged {
                inputs.push(open(so_far)?);
            }
            for &range in chunk {
                inputs.push(open(&staging.path(range))?);
            }
            let out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            let options = CompactOptions {
                encoding: self.encoding,
                allow_gaps: false,
            };
            let encoded = ltx::compact(inputs, out, options).map_err(io::Error::other)?;
            encoded.writer.into_inner().map_err(|e| e.into_error())?;
            std::fs::rename(&tmp, &step)?;
            merged = Some(step.clone());
        }
        let file = File::open(&step)?;
        file.sync_all()?;
        std::fs::rename(&step, &path)?;
        Ok(path)
    }
}

/// Whether the file at `path` is the LTX file of `range`, whole: its header names `range`
/// and it decodes to its checksum. `Err` says what is wrong.
pub(super) fn verify(path: &Path, range: TxidRange) -> Result<(), String> {
    let decoder = open(path).map_err(|e| e.to_string())?;
    let named = decoder.header().txid_range();
    if named != range {
        return Err(format!("its header says {named}"));
    }
    decoder.finish().map(drop).map_err(|e| e.to_string())
}

fn open(path: &Path) -> io::Result<Decoder<BufReader<File>>> {
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Decoder::new(file).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

/// The staged files from `staged[start]` on that one upload takes: those that continue one
/// another, up to [`MERGE_MAX_BYTES`] (always at least the first). A full copy (TXID 1
/// upward) starts a history and goes alone.
pub(super) fn run_from(staging: &Staging, staged: &[TxidRange], start: usize) -> usize {
    let Some(&first) = staged.get(start) else {
        return 0;
    };
    if first.min == Txid::ONE {
        return 1;
    }
    let size = |r: TxidRange| std::fs::metadata(staging.path(r)).map_or(0, |m| m.len());
    let mut bytes = size(first);
    let mut end = start + 1;
    while let Some(&next) = staged.get(end) {
        if next.min == Txid::ONE || next.min != staged[end - 1].max.next() {
            break;
        }
        bytes += size(next);
        if bytes > MERGE_MAX_BYTES {
            break;
        }
        end += 1;
    }
    end - start
}
