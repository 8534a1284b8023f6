//! Transaction IDs and the `<min>-<max>.ltx` file names built from them.

use std::fmt;
use std::str::FromStr;

/// A transaction ID: the position of a database state in a replica's history.
///
/// Its text form is 16 lowercase hex digits, zero-padded (`%016x`), which makes file names
/// sort in TXID order. TXID 0 means "before the first transaction"; every LTX file covers
/// TXIDs of 1 or more.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Txid(u64);

impl Txid {
    /// The position before any transaction (pre-apply position of a snapshot).
    pub const ZERO: Txid = Txid(0);
    /// The first transaction; a file whose minimum TXID is 1 is a snapshot.
    pub const ONE: Txid = Txid(1);
    /// The largest TXID.
    pub const MAX: Txid = Txid(u64::MAX);

    /// Wraps a raw value.
    pub const fn new(value: u64) -> Txid {
        Txid(value)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The TXID after this one. Saturates at [`Txid::MAX`], which no real history reaches.
    pub const fn next(self) -> Txid {
        Txid(self.0.saturating_add(1))
    }

    /// The TXID before this one; [`Txid::ZERO`] stays zero.
    pub const fn prev(self) -> Txid {
        Txid(self.0.saturating_sub(1))
    }

    /// Parses exactly 16 hex digits. Upper case is accepted, as the Go library does.
    pub fn from_hex(s: &str) -> Result<Txid, ParseError> {
        if s.len() != 16 {
            return Err(ParseError::new(s, "a TXID is exactly 16 hex digits"));
        }
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseError::new(s, "a TXID is exactly 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(Txid)
            .map_err(|_| ParseError::new(s, "a TXID is exactly 16 hex digits"))
    }
}

impl fmt::Display for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Txid({:016x})", self.0)
    }
}

impl FromStr for Txid {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Txid, ParseError> {
        Txid::from_hex(s)
    }
}

impl From<u64> for Txid {
    fn from(value: u64) -> Txid {
        Txid(value)
    }
}

/// The inclusive TXID range an LTX file covers; also its file name `<min>-<max>.ltx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxidRange {
    /// First transaction covered.
    pub min: Txid,
    /// Last transaction covered.
    pub max: Txid,
}

impl TxidRange {
    /// A range from `min` to `max` inclusive.
    pub const fn new(min: Txid, max: Txid) -> TxidRange {
        TxidRange { min, max }
    }

    /// A range covering the single transaction `txid` (an L0 file).
    pub const fn single(txid: Txid) -> TxidRange {
        TxidRange {
            min: txid,
            max: txid,
        }
    }

    /// Whether a file with this range is a snapshot (it starts at TXID 1).
    pub fn is_snapshot(&self) -> bool {
        self.min == Txid::ONE
    }

    /// The file name, `<min %016x>-<max %016x>.ltx`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.ltx", self.min, self.max)
    }

    /// Parses a file name of exactly the form `^[0-9a-f]{16}-[0-9a-f]{16}\.ltx$`.
    ///
    /// Lower case only, like Litestream: an upper-case name is not a replica file.
    pub fn parse_file_name(name: &str) -> Result<TxidRange, ParseError> {
        const REASON: &str = "an LTX file name is <16 lowercase hex>-<16 lowercase hex>.ltx";
        let b = name.as_bytes();
        let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if b.len() != 37 || b[16] != b'-' || &b[33..] != b".ltx" {
            return Err(ParseError::new(name, REASON));
        }
        if !lower_hex(&b[..16]) || !lower_hex(&b[17..33]) {
            return Err(ParseError::new(name, REASON));
        }
        let min = Txid::from_hex(&name[..16])?;
        let max = Txid::from_hex(&name[17..33])?;
        if min == Txid::ZERO || max < min {
            return Err(ParseError::new(
                name,
                "an LTX file covers TXIDs min..=max with 1 <= min <= max",
            ));
        }
        Ok(TxidRange { min, max })
    }

    /// Whether a file covering `self` can follow a chain that has reached `prev_max`.
    ///
    /// Overlap is allowed, a gap is not, and the file must move the chain forward
    /// (Go's `IsContiguous`).
    pub fn continues(&self, prev_max: Txid) -> bool {
        self.min <= prev_max.next() && self.max > prev_max
    }
}

impl fmt::Display for TxidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// A TXID or file name that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {input:?}: {reason}")]
pub struct ParseError {
    input: String,
    reason: &'static str,
}

impl ParseError {
    fn new(input: &str, reason: &'static str) -> ParseError {
        ParseError {
            input: input.to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txid_text_form_is_16_lowercase_hex_digits() {
        assert_eq!(Txid::new(0x3e8).to_string(), "00000000000003e8");
        assert_eq!("00000000000003E8".parse::<Txid>().unwrap(), Txid::new(1000));
        assert!("3e8".parse::<Txid>().is_err());
        assert!("+0000000000003e8".parse::<Txid>().is_err());
        assert!("00000000000003g8".parse::<Txid>().is_err());
    }

    #[test]
    fn file_names_round_trip_and_reject_other_forms() {
        let r = TxidRange::new(Txid::ONE, Txid::new(1000));
        assert_eq!(r.file_name(), "0000000000000001-00000000000003e8.ltx");
        assert_eq!(TxidRange::parse_file_name(&r.file_name()).unwrap(), r);
        for bad in [
            "0000000000000001-00000000000003E8.ltx",
            "0000000000000001-00000000000003e8.ltx.tmp",
            "0000000000000001_00000000000003e8.ltx",
            "000000000000001-00000000000003e8.ltx",
            "0000000000000000-0000000000000001.ltx",
            "0000000000000005-0000000000000004.ltx",
        ] {
            assert!(TxidRange::parse_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contiguity_allows_overlap_but_not_gaps() {
        let r = |a, b| TxidRange::new(Txid::new(a), Txid::new(b));
        assert!(r(6, 9).continues(Txid::new(5)));
        assert!(r(3, 9).continues(Txid::new(5)));
        assert!(!r(7, 9).continues(Txid::new(5)));
        assert!(!r(3, 5).continues(Txid::new(5)));
    }
}
