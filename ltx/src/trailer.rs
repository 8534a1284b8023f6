//! The 16-byte trailer: post-apply database checksum and file checksum.

use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::header::Header;

/// Size of the trailer in bytes.
pub const TRAILER_SIZE: usize = 16;

/// The last 16 bytes of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Database checksum after the file is applied (0 with NoChecksum).
    pub post_apply_checksum: Checksum,
    /// CRC of the file's contents, bit 63 set.
    pub file_checksum: Checksum,
}

impl Trailer {
    /// The trailer as stored.
    pub fn to_bytes(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[..8].copy_from_slice(&self.post_apply_checksum.get().to_be_bytes());
        b[8..].copy_from_slice(&self.file_checksum.get().to_be_bytes());
        b
    }

    /// Parses stored trailer bytes (no validation).
    pub fn from_bytes(b: &[u8; TRAILER_SIZE]) -> Trailer {
        Trailer {
            post_apply_checksum: Checksum::from_raw(u64::from_be_bytes(b[..8].try_into().unwrap())),
            file_checksum: Checksum::from_raw(u64::from_be_bytes(b[8..].try_into().unwrap())),
        }
    }

    /// Checks the post-apply checksum against the header's flags and commit.
    ///
    /// NoChecksum files store 0; others a set checksum, and exactly the empty-database
    /// checksum when the database is emptied (commit 0).
    pub fn validate_post_apply(post: Checksum, header: &Header, offset: u64) -> Result<()> {
        let reason = if header.no_checksum() {
            (post != Checksum::ZERO)
                .then(|| format!("post-apply checksum {post} must be 0 in a NoChecksum file"))
        } else if header.commit == 0 {
            (post != Checksum::EMPTY_DATABASE).then(|| {
                format!(
                    "post-apply checksum {post} must be {} (the empty database) when commit is 0",
                    Checksum::EMPTY_DATABASE
                )
            })
        } else {
            (!post.is_set()).then(|| format!("post-apply checksum {post} must have bit 63 set"))
        };
        match reason {
            Some(reason) => Err(Error::InvalidTrailer { offset, reason }),
            None => Ok(()),
        }
    }
}
