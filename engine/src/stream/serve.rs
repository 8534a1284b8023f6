//! A follower's stream on the primary: a task reads the staged files after the follower's
//! TXID and sends them, then each new one as it is staged, through a small channel that is
//! the response body. Memory per follower is that channel (a few chunks), never a file.
//! A follower that stops reading is cut off; capture and uploads never wait for it.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use ltx::Txid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::wire::{HEARTBEAT, Head};
use crate::capture::{Feed, NextFile};

/// Bytes read from a staged file at a time.
const CHUNK: usize = 64 << 10;
/// Chunks waiting for a follower to read them.
const QUEUED: usize = 4;
/// A follower that takes longer than this to accept a chunk is cut off (it catches up from
/// the replica when it comes back).
const CUT_OFF: Duration = Duration::from_secs(10);

/// The body of the stream for a follower at `from`: frames (see `wire`) until the follower
/// goes, is cut off, needs the replica (a gap), or the capture stops.
pub fn follower_body(feed: Feed, from: Txid) -> impl Stream<Item = Bytes> + Send + 'static {
    let (tx, mut rx) = mpsc::channel(QUEUED);
    tokio::spawn(async move {
        if let Err(why) = send_files(feed, from, &tx).await {
            tracing::debug!(%from, why, "a follower's stream ended");
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Sends frames until something ends the stream; returns why.
async fn send_files(mut feed: Feed, from: Txid, tx: &mpsc::Sender<Bytes>) -> Result<(), String> {
    let mut at = from;
    send(tx, heartbeat(&feed)).await?;
    loop {
        let next = feed.next_after(at).map_err(|e| e.to_string())?;
        match next {
            NextFile::File { range, file, size } => {
                send(tx, Head::File { range, len: size }.encode().into()).await?;
                let mut file = tokio::fs::File::from_std(file);
                let mut left = size;
                while left > 0 {
                    let mut chunk = vec![0u8; CHUNK.min(left as usize)];
                    file.read_exact(&mut chunk)
                        .await
                        .map_err(|e| format!("reading staged {range}: {e}"))?;
                    left -= chunk.len() as u64;
                    send(tx, chunk.into()).await?;
                }
                at = range.max;
            }
            NextFile::Gap => {
                send(tx, Head::Gap.encode().into()).await?;
                return Err(format!("the staged files no longer reach back to {at}"));
            }
            NextFile::Nothing => {
                tokio::select! {
                    going = feed.changed() => if !going {
                        return Err("the capture stopped".to_owned());
                    },
                    () = tokio::time::sleep(HEARTBEAT) => send(tx, heartbeat(&feed)).await?,
                    () = tx.closed() => return Err("the follower went".to_owned()),
                }
            }
        }
    }
}

fn heartbeat(feed: &Feed) -> Bytes {
    Head::Heartbeat {
        staged: feed.staged(),
        uploaded: feed.uploaded(),
    }
    .encode()
    .into()
}

async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), String> {
    match tokio::time::timeout(CUT_OFF, tx.send(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the follower went".to_owned()),
        Err(_) => Err(format!(
            "cut off: the follower read nothing for {CUT_OFF:?}"
        )),
    }
}
