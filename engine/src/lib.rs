//! strata: LTX capture, compaction, retention and restore for SQLite, compatible with
//! Litestream 0.5 replicas.
//!
//! - [`storage`]: the replica client over any object store, both Litestream layouts;
//! - [`restore`]: plan the fewest files reaching a target, fetch them in parallel, apply.

pub mod restore;
pub mod storage;

pub use ltx;
