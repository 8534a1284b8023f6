//! Page numbers, page sizes and SQLite's lock page.

use std::fmt;
use std::num::NonZeroU32;

/// SQLite's PENDING_BYTE: the page holding this offset is never stored.
const PENDING_BYTE: u64 = 0x4000_0000;

/// A SQLite page size: a power of two from 512 to 65536 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize(u32);

impl PageSize {
    /// The smallest page size SQLite supports.
    pub const MIN: PageSize = PageSize(512);
    /// The largest page size SQLite supports.
    pub const MAX: PageSize = PageSize(65536);
    /// SQLite's default page size.
    pub const DEFAULT: PageSize = PageSize(4096);

    /// A page size, if `bytes` is a power of two in 512..=65536.
    pub const fn new(bytes: u32) -> Option<PageSize> {
        if bytes.is_power_of_two() && bytes >= Self::MIN.0 && bytes <= Self::MAX.0 {
            Some(PageSize(bytes))
        } else {
            None
        }
    }

    /// The size in bytes.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The size in bytes, as a buffer length.
    pub const fn bytes(self) -> usize {
        self.0 as usize
    }

    /// The lock page for this page size: the page holding byte offset 1 GiB.
    pub const fn lock_page(self) -> PageNum {
        // The quotient is at most 2^21, so the sum never overflows or equals zero.
        match NonZeroU32::new((PENDING_BYTE / self.0 as u64) as u32 + 1) {
            Some(n) => PageNum(n),
            None => unreachable!(),
        }
    }

    /// The byte offset of page `pgno` in a database file.
    pub const fn offset_of(self, pgno: PageNum) -> u64 {
        (pgno.get() as u64 - 1) * self.0 as u64
    }

    /// The byte length of a database of `pages` pages.
    pub const fn db_len(self, pages: u32) -> u64 {
        pages as u64 * self.0 as u64
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A 1-based SQLite page number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageNum(NonZeroU32);

impl PageNum {
    /// Page 1, which holds the database header.
    pub const ONE: PageNum = PageNum(NonZeroU32::MIN);

    /// A page number, if `n` is not 0.
    pub const fn new(n: u32) -> Option<PageNum> {
        match NonZeroU32::new(n) {
            Some(n) => Some(PageNum(n)),
            None => None,
        }
    }

    /// The raw page number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Whether this is the lock page for `page_size`.
    pub const fn is_lock_page(self, page_size: PageSize) -> bool {
        self.0.get() == page_size.lock_page().get()
    }
}

impl fmt::Display for PageNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for PageNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageNum({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_powers_of_two_in_range() {
        assert!(PageSize::new(256).is_none());
        assert!(PageSize::new(1000).is_none());
        assert!(PageSize::new(131072).is_none());
        for shift in 9..=16 {
            assert_eq!(PageSize::new(1 << shift).unwrap().get(), 1 << shift);
        }
    }

    #[test]
    fn lock_page_matches_sqlite() {
        let lock = |n| PageSize::new(n).unwrap().lock_page().get();
        assert_eq!(lock(512), 2_097_153);
        assert_eq!(lock(1024), 1_048_577);
        assert_eq!(lock(4096), 262_145);
        assert_eq!(lock(8192), 131_073);
        assert_eq!(lock(16384), 65_537);
        assert_eq!(lock(32768), 32_769);
        assert_eq!(lock(65536), 16_385);
    }
}
