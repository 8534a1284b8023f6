//! The stream's format: frames, one after another, in an HTTP response body. Integers are
//! big-endian `u64`.
//!
//! - `F` min max len, then `len` bytes: a staged LTX file, TXIDs `min..=max`;
//! - `H` staged uploaded: a heartbeat, first thing and then every [`HEARTBEAT`] while
//!   nothing is staged: the primary's newest TXID and the newest its replicas all hold;
//! - `G`: the primary's staged files no longer reach back to where the follower is (they
//!   were uploaded and removed): catch up from the replica, then ask again.
//!
//! A follower asks with `GET /NAME?txid=<16 hex digits>`, the TXID its database holds.

use std::time::Duration;

use ltx::{Txid, TxidRange};

/// The response's content type.
pub const CONTENT_TYPE: &str = "application/x-strata-stream";

/// How often a heartbeat is sent while nothing is staged.
#[cfg(feature = "sqlite")]
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// A follower that has heard nothing for this long takes the connection for dead.
#[cfg(feature = "stream-client")]
pub(crate) const SILENCE: Duration = Duration::from_secs(5);

/// The largest file a frame may announce: a frame head that says more is garbage.
#[cfg(feature = "stream-client")]
const MAX_FILE: u64 = 1 << 40;

/// The head of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A file of `len` bytes follows.
    File {
        /// The file's TXIDs.
        range: TxidRange,
        /// Its length in bytes.
        len: u64,
    },
    /// The primary's newest TXID, and the newest its replicas hold.
    Heartbeat {
        /// The primary's newest TXID.
        staged: Txid,
        /// The newest TXID its replicas all hold.
        uploaded: Txid,
    },
    /// The stream does not reach back to the follower.
    Gap,
}

impl Head {
    /// The frame head's bytes.
    #[cfg(any(feature = "sqlite", test))]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25);
        match *self {
            Head::File { range, len } => {
                out.push(b'F');
                out.extend_from_slice(&range.min.get().to_be_bytes());
                out.extend_from_slice(&range.max.get().to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Head::Heartbeat { staged, uploaded } => {
                out.push(b'H');
                out.extend_from_slice(&staged.get().to_be_bytes());
                out.extend_from_slice(&uploaded.get().to_be_bytes());
            }
            Head::Gap => out.push(b'G'),
        }
        out
    }

    /// The head at the start of `buf` and its length, `None` if `buf` holds only part of
    /// it; an error for bytes that are no frame.
    #[cfg(feature = "stream-client")]
    pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
        let u64_at = |at: usize| u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        let need = match kind {
            b'F' => 25,
            b'H' => 17,
            b'G' => 1,
            other => return Err(format!("a frame of unknown kind {other:#04x}")),
        };
        if buf.len() < need {
            return Ok(None);
        }
        let head = match kind {
            b'F' => {
                let (min, max, len) = (u64_at(1), u64_at(9), u64_at(17));
                if min == 0 || max < min || len > MAX_FILE {
                    return Err(format!("a file frame of TXIDs {min}..{max}, {len} bytes"));
                }
                Head::File {
                    range: TxidRange::new(Txid::new(min), Txid::new(max)),
                    len,
                }
            }
            b'H' => Head::Heartbeat {
                staged: Txid::new(u64_at(1)),
                uploaded: Txid::new(u64_at(9)),
            },
            _ => Head::Gap,
        };
        Ok(Some((head, need)))
    }
}

#[cfg(all(test, feature = "stream-client"))]
mod tests {
    use super::*;

    #[test]
    fn heads_read_back_whole_and_not_from_part_of_them() {
        let heads = [
            Head::File {
                range: TxidRange::new(Txid::new(5), Txid::new(9)),
                len: 4096,
            },
            Head::Heartbeat {
                staged: Txid::new(12),
                uploaded: Txid::new(10),
            },
            Head::Gap,
        ];
        for head in heads {
            let bytes = head.encode();
            assert_eq!(Head::parse(&bytes).unwrap(), Some((head, bytes.len())));
            for cut in 0..bytes.len() {
                assert_eq!(Head::parse(&bytes[..cut]).unwrap(), None);
            }
        }
        assert!(Head::parse(b"X").is_err());
        let mut bad = Head::File {
            range: TxidRange::new(Txid::new(5), Txid::new(9)),
            len: 1,
        }
        .encode();
        bad[1..9].copy_from_slice(&10u64.to_be_bytes());
        assert!(Head::parse(&bad).is_err(), "min above max");
    }
}
