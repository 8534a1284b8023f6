//! Shipping staged L0 files to the replica, in TXID order, never overwriting.

use std::path::{Path, PathBuf};

use ltx::{Txid, TxidRange};

use super::CaptureError;
use super::staging::Staging;
use crate::storage::{Level, Replica};

/// Uploads staged files above `uploaded` (the highest TXID known to be in the replica) in
/// TXID order, then removes the uploaded ones except the newest. Returns how many were
/// uploaded. A file already in the replica counts as uploaded if it holds the same bytes
/// (an upload retried after a crash); different bytes mean another writer: a conflict.
pub async fn upload(
    staging: &Staging,
    replica: &Replica,
    uploaded: &mut Txid,
) -> Result<usize, CaptureError> {
    let io = |path: PathBuf| move |source| CaptureError::Io { path, source };
    let staged = staging.staged().map_err(io(staging.dir().to_owned()))?;
    let already = *uploaded;
    let mut count = 0;
    for txid in staged.iter().copied().filter(|t| *t > already) {
        let path = staging.path(txid);
        let timestamp = header_timestamp(&path).await.map_err(io(path.clone()))?;
        let range = TxidRange::single(txid);
        match replica.write_file(Level::L0, range, &path, timestamp).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {
                if !same_as_replica(replica, range, &path).await? {
                    return Err(CaptureError::Conflict {
                        txid,
                        replica: replica.name().to_owned(),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(%txid, "uploaded");
        *uploaded = txid;
        count += 1;
    }
    for txid in staged.iter().copied().filter(|t| *t < *uploaded) {
        staging.remove(txid).map_err(io(staging.path(txid)))?;
    }
    Ok(count)
}

/// Whether the replica's file for `range` holds exactly the staged file's bytes.
async fn same_as_replica(
    replica: &Replica,
    range: TxidRange,
    path: &Path,
) -> Result<bool, CaptureError> {
    let Some(existing) = replica
        .list(Level::L0, range.min)
        .await?
        .into_iter()
        .find(|f| f.range == range)
    else {
        return Ok(false);
    };
    let ours = tokio::fs::read(path)
        .await
        .map_err(|source| CaptureError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(replica.read(&existing).await?[..] == ours[..])
}

/// The header timestamp of a staged file (its first 100 bytes).
async fn header_timestamp(path: &Path) -> std::io::Result<jiff::Timestamp> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; ltx::HEADER_SIZE];
    tokio::fs::File::open(path)
        .await?
        .read_exact(&mut head)
        .await?;
    let header = ltx::Header::from_bytes(&head).map_err(std::io::Error::other)?;
    Ok(jiff::Timestamp::from_millisecond(header.timestamp).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}
