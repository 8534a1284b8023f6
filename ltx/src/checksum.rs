//! CRC-64/GO-ISO and the three LTX checksums built on it: page, database and file.

use std::fmt;
use std::io::{self, Read};
use std::sync::OnceLock;

use crc_fast::{CrcAlgorithm, Digest};

use crate::page::{PageNum, PageSize};

/// A stored LTX checksum. A checksum that is set always has bit 63 on, so 0 means absent.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Checksum(u64);

impl Checksum {
    /// Bit 63, set in every checksum this format produces.
    pub const FLAG: u64 = 1 << 63;
    /// No checksum (files with the NoChecksum header flag store this).
    pub const ZERO: Checksum = Checksum(0);
    /// The database checksum of an empty database.
    pub const EMPTY_DATABASE: Checksum = Checksum(Self::FLAG);

    /// Wraps a stored value as is.
    pub const fn from_raw(raw: u64) -> Checksum {
        Checksum(raw)
    }

    /// A checksum from a CRC value: bit 63 forced on.
    pub const fn from_crc(crc: u64) -> Checksum {
        Checksum(crc | Self::FLAG)
    }

    /// The stored value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether this is a set checksum: bit 63 on.
    pub const fn is_set(self) -> bool {
        self.0 & Self::FLAG != 0
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({:016x})", self.0)
    }
}

/// An incremental CRC-64/GO-ISO (Go's `crc64.ISO` table): polynomial x^64+x^4+x^3+x+1,
/// reflected, init and xorout all ones. Not the ECMA polynomial.
#[derive(Clone, Copy, Debug)]
pub struct Crc64(Digest);

impl Crc64 {
    /// A CRC over no bytes yet.
    pub fn new() -> Crc64 {
        static TEMPLATE: OnceLock<Digest> = OnceLock::new();
        Crc64(*TEMPLATE.get_or_init(|| Digest::new(CrcAlgorithm::Crc64GoIso)))
    }

    /// Adds bytes; feeding pieces gives the same result as feeding their concatenation.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The CRC of everything fed so far.
    #[inline]
    pub fn value(&self) -> u64 {
        self.0.finalize()
    }

    /// The CRC of `a ++ b` from the CRC of `a`, the CRC of `b` and the length of `b`, so
    /// pieces of a stream hashed apart (in parallel) join into the CRC of the whole.
    pub fn combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
        crc_fast::checksum_combine(CrcAlgorithm::Crc64GoIso, crc_a, crc_b, len_b)
    }
}

impl Default for Crc64 {
    fn default() -> Crc64 {
        Crc64::new()
    }
}

/// The checksum of one page: `FLAG | crc64(u32be(pgno) ++ data)`.
pub fn page_checksum(pgno: PageNum, data: &[u8]) -> Checksum {
    let mut crc = Crc64::new();
    crc.update(&pgno.get().to_be_bytes());
    crc.update(data);
    Checksum::from_crc(crc.value())
}

/// A rolling database checksum: the XOR of the page checksums of every page except the lock
/// page, with bit 63 set. XOR lets pages be added, replaced and dropped one at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatabaseChecksum(u64);

impl DatabaseChecksum {
    /// The checksum of an empty database.
    pub const fn new() -> DatabaseChecksum {
        DatabaseChecksum(0)
    }

    /// Folds in a page's checksum (the lock page is ignored).
    pub fn add(&mut self, page_size: PageSize, pgno: PageNum, data: &[u8]) {
        if !pgno.is_lock_page(page_size) {
            self.0 ^= page_checksum(pgno, data).get();
        }
    }

    /// Folds in a page checksum computed elsewhere. Adding the same value twice removes it.
    pub fn toggle(&mut self, page: Checksum) {
        self.0 ^= page.get();
    }

    /// The checksum as stored in a header or trailer.
    pub fn value(&self) -> Checksum {
        Checksum::from_crc(self.0)
    }
}

/// The database checksum of the first `pages` pages read from `db` (a database file read
/// from offset 0). The lock page is skipped. Errors if `db` holds fewer pages.
pub fn database_checksum<R: Read>(
    mut db: R,
    page_size: PageSize,
    pages: u32,
) -> io::Result<Checksum> {
    let mut buf = vec![0u8; page_size.bytes()];
    let mut sum = DatabaseChecksum::new();
    for n in 1..=pages {
        db.read_exact(&mut buf)?;
        let pgno = PageNum::new(n).expect("page numbers start at 1");
        sum.add(page_size, pgno, &buf);
    }
    Ok(sum.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_go_iso_not_ecma() {
        let mut crc = Crc64::new();
        crc.update(b"1234");
        crc.update(b"56789");
        assert_eq!(crc.value(), 0xB909_56C7_75A4_1001);
    }

    #[test]
    fn combined_pieces_equal_the_whole() {
        let piece = |b: &[u8]| {
            let mut c = Crc64::new();
            c.update(b);
            c.value()
        };
        let (a, b) = (b"1234".as_slice(), b"56789".as_slice());
        assert_eq!(Crc64::combine(piece(a), piece(b), 5), 0xB909_56C7_75A4_1001);
        assert_eq!(Crc64::combine(piece(a), piece(b""), 0), piece(a));
    }

    #[test]
    fn database_checksum_matches_upstream_vectors() {
        let ps = PageSize::new(512).unwrap();
        let mut db = Vec::new();
        for fill in 1..=3u8 {
            db.extend(std::iter::repeat_n(fill, 512));
        }
        let sum = database_checksum(&db[..], ps, 3).unwrap();
        assert_eq!(sum.get(), 0xefff_ffff_ecd9_9000);
        assert_eq!(
            database_checksum(&[][..], ps, 0).unwrap(),
            Checksum::EMPTY_DATABASE
        );

        let ps = PageSize::new(1024).unwrap();
        let db = [vec![b'2'; 1024], vec![b'3'; 1024]].concat();
        let sum = database_checksum(&db[..], ps, 2).unwrap();
        assert_eq!(sum.get(), 0xe189_9b6d_587a_aaaa);
    }

    #[test]
    fn lock_page_is_excluded() {
        let ps = PageSize::new(65536).unwrap();
        let mut sum = DatabaseChecksum::new();
        sum.add(ps, ps.lock_page(), &[7u8; 65536]);
        assert_eq!(sum.value(), Checksum::EMPTY_DATABASE);
    }
}
