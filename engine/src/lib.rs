//! strata: LTX capture, compaction, retention and restore for SQLite.

pub use ltx;
