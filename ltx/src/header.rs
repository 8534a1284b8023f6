//! The 100-byte file header.

use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::page::PageSize;
use crate::txid::{Txid, TxidRange};

/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 100;

/// The magic at offset 0.
pub const MAGIC: [u8; 4] = *b"LTX1";

/// Header flag bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderFlags(u32);

impl HeaderFlags {
    /// No database checksums: pre- and post-apply are 0 and nothing checks them.
    /// Litestream 0.5 sets this on every file it writes.
    pub const NO_CHECKSUM: HeaderFlags = HeaderFlags(0x2);
    /// Format 1's whole-body LZ4 flag. Never valid in format 3; seen only to diagnose.
    const FORMAT1_COMPRESS_LZ4: u32 = 0x1;
    const DEFINED: u32 = Self::NO_CHECKSUM.0;

    /// No flags.
    pub const fn empty() -> HeaderFlags {
        HeaderFlags(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: HeaderFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Validated flags from the raw bits.
    pub fn from_bits(bits: u32) -> Result<HeaderFlags> {
        if bits & Self::FORMAT1_COMPRESS_LZ4 != 0 {
            return Err(Error::Format1 {
                evidence: "header flag 0x1 (whole-body LZ4 compression) exists only in format 1",
            });
        }
        if bits & !Self::DEFINED != 0 {
            return Err(Error::UnknownHeaderFlags { flags: bits });
        }
        Ok(HeaderFlags(bits))
    }
}

/// The file header: what the file holds and where it sits in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Flag bits.
    pub flags: HeaderFlags,
    /// The database page size.
    pub page_size: PageSize,
    /// Database size in pages after this file is applied (0 empties it).
    pub commit: u32,
    /// First transaction covered; 1 makes the file a snapshot.
    pub min_txid: Txid,
    /// Last transaction covered.
    pub max_txid: Txid,
    /// Milliseconds since the Unix epoch (UTC) when the file was written.
    pub timestamp: i64,
    /// Database checksum before this file is applied (0 for snapshots and NoChecksum).
    pub pre_apply_checksum: Checksum,
    /// Byte offset in the source WAL, 0 for journal sources and compactions.
    pub wal_offset: i64,
    /// Byte length of the source WAL segment.
    pub wal_size: i64,
    /// WAL header salt-1.
    pub wal_salt1: u32,
    /// WAL header salt-2.
    pub wal_salt2: u32,
    /// ID of the node that wrote the file; 0 if unset.
    pub node_id: u64,
}

impl Header {
    /// A header for `range` with every optional field zero and no flags.
    pub fn new(page_size: PageSize, commit: u32, range: TxidRange) -> Header {
        Header {
            flags: HeaderFlags::empty(),
            page_size,
            commit,
            min_txid: range.min,
            max_txid: range.max,
            timestamp: 0,
            pre_apply_checksum: Checksum::ZERO,
            wal_offset: 0,
            wal_size: 0,
            wal_salt1: 0,
            wal_salt2: 0,
            node_id: 0,
        }
    }

    /// The TXID range, which is also the file name.
    pub fn txid_range(&self) -> TxidRange {
        TxidRange::new(self.min_txid, self.max_txid)
    }

    /// Whether the file is a snapshot (it starts at TXID 1 and holds every page).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == Txid::ONE
    }

    /// Whether the NoChecksum flag is set.
    pub fn no_checksum(&self) -> bool {
        self.flags.contains(HeaderFlags::NO_CHECKSUM)
    }

    /// Checks the rules of the spec's section 7 that a header must satisfy on its own.
    pub fn validate(&self) -> Result<()> {
        let (min, max) = (self.min_txid, self.max_txid);
        if min == Txid::ZERO || max == Txid::ZERO {
            return Err(Error::header(format!(
                "TXIDs must be at least 1 (min {min}, max {max})"
            )));
        }
        if min > max {
            return Err(Error::header(format!(
                "min TXID {min} is greater than max TXID {max}"
            )));
        }
        if self.wal_offset < 0 || self.wal_size < 0 {
            return Err(Error::header(format!(
                "negative WAL offset {} or size {}",
                self.wal_offset, self.wal_size
            )));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return Err(Error::header("WAL salts are set but the WAL offset is 0"));
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return Err(Error::header(format!(
                "WAL size {} is set but the WAL offset is 0",
                self.wal_size
            )));
        }
        let pre = self.pre_apply_checksum;
        if self.is_snapshot() || self.no_checksum() {
            if pre != Checksum::ZERO {
                let why = if self.is_snapshot() {
                    "a snapshot"
                } else {
                    "a NoChecksum file"
                };
                return Err(Error::header(format!(
                    "pre-apply checksum {pre} must be 0 in {why}"
                )));
            }
        } else if !pre.is_set() {
            return Err(Error::header(format!(
                "pre-apply checksum {pre} must have bit 63 set"
            )));
        }
        Ok(())
    }

    /// The header as stored (reserved bytes zero).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.flags.bits().to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.get().to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.get().to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.get().to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.get().to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses and validates stored header bytes. Reserved bytes are ignored, as in Go.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Result<Header> {
        let magic: [u8; 4] = b[0..4].try_into().unwrap();
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        let flags = HeaderFlags::from_bits(u32_at(4))?;
        let raw_page_size = u32_at(8);
        let page_size = PageSize::new(raw_page_size).ok_or_else(|| {
            Error::header(format!(
                "page size {raw_page_size} is not a power of two from 512 to 65536"
            ))
        })?;
        let header = Header {
            flags,
            page_size,
            commit: u32_at(12),
            min_txid: Txid::new(u64_at(16)),
            max_txid: Txid::new(u64_at(24)),
            timestamp: u64_at(32) as i64,
            pre_apply_checksum: Checksum::from_raw(u64_at(40)),
            wal_offset: u64_at(48) as i64,
            wal_size: u64_at(56) as i64,
            wal_salt1: u32_at(64),
            wal_salt2: u32_at(68),
            node_id: u64_at(72),
        };
        header.validate()?;
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let mut h = Header::new(
            PageSize::new(4096).unwrap(),
            10,
            TxidRange::new(Txid::new(5), Txid::new(6)),
        );
        h.flags = HeaderFlags::NO_CHECKSUM;
        h.timestamp = 1_700_000_000_000;
        h.wal_offset = 32;
        h.wal_size = 4152;
        h.wal_salt1 = 0x1122_3344;
        h.wal_salt2 = 0x5566_7788;
        h.node_id = 0xabc;
        h
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn rejects_each_rule() {
        let bad = |f: fn(&mut Header)| {
            let mut h = sample();
            f(&mut h);
            h.validate().unwrap_err().to_string()
        };
        assert!(bad(|h| h.min_txid = Txid::ZERO).contains("at least 1"));
        assert!(bad(|h| h.max_txid = Txid::new(4)).contains("greater than"));
        assert!(bad(|h| h.wal_offset = -1).contains("negative"));
        assert!(bad(|h| h.wal_offset = 0).contains("salts"));
        assert!(bad(|h| h.pre_apply_checksum = Checksum::from_crc(1)).contains("NoChecksum"));
        assert!(
            bad(|h| {
                h.flags = HeaderFlags::empty();
                h.pre_apply_checksum = Checksum::from_raw(5);
            })
            .contains("bit 63")
        );
    }

    #[test]
    fn rejects_bad_magic_flags_and_page_size() {
        let mut b = sample().to_bytes();
        b[0] = b'X';
        assert!(matches!(
            Header::from_bytes(&b),
            Err(Error::BadMagic { .. })
        ));
        let mut b = sample().to_bytes();
        b[7] |= 0x4;
        assert!(matches!(
            Header::from_bytes(&b),
            Err(Error::UnknownHeaderFlags { flags: 0x6 })
        ));
        let mut b = sample().to_bytes();
        b[7] |= 0x1;
        assert!(matches!(Header::from_bytes(&b), Err(Error::Format1 { .. })));
        let mut b = sample().to_bytes();
        b[8..12].copy_from_slice(&3000u32.to_be_bytes());
        assert!(
            Header::from_bytes(&b)
                .unwrap_err()
                .to_string()
                .contains("3000")
        );
    }
}
