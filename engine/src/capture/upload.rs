//! Shipping staged L0 files to the replica, in TXID order, never overwriting.

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
    let io = |path: std::path::PathBuf| move |source| CaptureError::Io { path, source };
    let staged = staging.staged().map_err(io(staging.dir().to_owned()))?;
    let mut count = 0;
    let already = *uploaded;
    for txid in staged.iter().copied().filter(|t| *t > already) {
        let path = staging.path(txid);
        let bytes = tokio::fs::read(&path).await.map_err(io(path.clone()))?;
        let header = ltx::Decoder::from_buf_read(&bytes[..])
            .map_err(|e| CaptureError::Corrupt {
                path: path.clone(),
                error: e,
            })?
            .header()
            .timestamp;
        let timestamp =
            jiff::Timestamp::from_millisecond(header).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let range = TxidRange::single(txid);
        match replica
            .write(Level::L0, range, bytes.clone().into(), timestamp)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {
                let existing = replica
                    .list(Level::L0, txid)
                    .await?
                    .into_iter()
                    .find(|f| f.range == range);
                let same = match existing {
                    Some(f) => replica.read(&f).await?[..] == bytes[..],
                    None => false,
                };
                if !same {
                    return Err(CaptureError::Conflict {
                        txid,
                        replica: replica.name().to_owned(),
                    });
                }
            }
            Err(e) => return Err(e.into()),
        }
        *uploaded = txid;
        count += 1;
    }
    for txid in staged.iter().copied().filter(|t| *t < *uploaded) {
        staging.remove(txid).map_err(io(staging.path(txid)))?;
    }
    Ok(count)
}
