//! What a primary streams to its followers: the files it stages, the very bytes that go to
//! L0, each as soon as it is staged, and how far its replicas hold them.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use ltx::{Txid, TxidRange};
use tokio::sync::watch;

use super::staging::staged_in;

/// A database's staged files as they come, for followers. Cheap to clone; reads only the
/// staging directory, so a follower never holds up the capture or the uploads.
#[derive(Clone, Debug)]
pub struct Feed {
    /// The staging directory's L0 files (not the staging lock: a follower's stream must
    /// never keep a capture from starting again).
    l0: PathBuf,
    staged: watch::Receiver<Txid>,
    uploaded: Vec<watch::Receiver<Txid>>,
}

/// What follows a TXID in the staging directory.
#[derive(Debug)]
pub enum NextFile {
    /// The file that continues it (or a full copy that starts a history, from TXID 1),
    /// open: it stays readable even if it is removed once uploaded.
    File {
        /// Its TXIDs.
        range: TxidRange,
        /// The open file.
        file: File,
        /// Its size in bytes.
        size: u64,
    },
    /// Nothing is staged after it yet.
    Nothing,
    /// Files after it are staged, but none continues it (those in between were uploaded
    /// and removed): a follower there catches up from the replica.
    Gap,
}

impl Feed {
    pub(super) fn new(
        l0: PathBuf,
        staged: watch::Receiver<Txid>,
        uploaded: Vec<watch::Receiver<Txid>>,
    ) -> Feed {
        Feed {
            l0,
            staged,
            uploaded,
        }
    }

    /// The newest TXID staged.
    pub fn staged(&self) -> Txid {
        *self.staged.borrow()
    }

    /// The newest TXID every replica holds.
    pub fn uploaded(&self) -> Txid {
        self.uploaded
            .iter()
            .map(|u| *u.borrow())
            .min()
            .unwrap_or(Txid::ZERO)
    }

    /// Waits until a newer file is staged; `false` once the capture has stopped.
    pub async fn changed(&mut self) -> bool {
        self.staged.changed().await.is_ok()
    }

    /// The staged file after `txid`. A full copy staged above it (a history that started
    /// again) is what follows it too: it holds the whole database.
    pub fn next_after(&self, txid: Txid) -> io::Result<NextFile> {
        let staged = staged_in(&self.l0)?;
        let next = staged
            .iter()
            .filter(|r| r.max > txid)
            .find(|r| r.min == txid.next() || r.min == Txid::ONE);
        let Some(&range) = next else {
            return Ok(if staged.iter().any(|r| r.max > txid) {
                NextFile::Gap
            } else {
                NextFile::Nothing
            });
        };
        match File::open(self.l0.join(range.file_name())) {
            Ok(file) => {
                let size = file.metadata()?.len();
                Ok(NextFile::File { range, file, size })
            }
            // Uploaded and removed since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(NextFile::Gap),
            Err(e) => Err(e),
        }
    }
}
