//! strata: LTX capture, compaction, retention and restore for SQLite, compatible with
//! Litestream 0.5 replicas.
//!
//! - `capture` (feature `sqlite`): a live database's committed transactions as L0 files;
//! - [`compact`]: levels, snapshots and retention on wall-clock intervals;
//! - [`storage`]: the replica client over any object store, both Litestream layouts;
//! - [`restore`]: plan the fewest files reaching a target, fetch them in parallel, apply.

#[cfg(feature = "sqlite")]
pub mod capture;
pub mod compact;
pub mod config;
pub mod restore;
pub mod storage;
#[cfg(feature = "sqlite")]
pub mod store;
#[cfg(feature = "sqlite")]
mod ticker;

pub use ltx;
