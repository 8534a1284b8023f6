//! strata: LTX capture, compaction, retention and restore for SQLite, compatible with
//! Litestream 0.5 replicas.
//!
//! - `capture` (feature `sqlite`): a live database's committed transactions as L0 files;
//! - [`compact`]: levels, snapshots and retention on wall-clock intervals;
//! - [`storage`]: the replica client over any object store, both Litestream layouts;
//! - [`plan`]: the fewest files of one history that reach a restore point, which restore,
//!   compaction, retention and the VFS all follow;
//! - [`restore`]: fetch a plan's files in parallel and apply them;
//! - `follow` (feature `follow`): a local database kept at a replica's newest TXID while
//!   any SQLite reads it, polling the replica or fed by a primary's live stream;
//! - `stream` (features `sqlite`, `stream-client`): a primary's live stream of staged
//!   files to followers, and its client.

// What is public is the API: everything else is private to its module or the crate.
#![warn(unreachable_pub)]

#[cfg(feature = "sqlite")]
pub mod capture;
pub mod compact;
pub mod config;
#[cfg(feature = "follow")]
pub mod follow;
pub mod plan;
pub mod restore;
pub mod storage;
#[cfg(feature = "sqlite")]
pub mod store;
#[cfg(any(feature = "sqlite", feature = "stream-client"))]
pub mod stream;
#[cfg(feature = "test-support")]
pub mod test_support;
#[cfg(feature = "sqlite")]
mod ticker;

pub use ltx;
