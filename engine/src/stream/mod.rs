//! The live stream from a primary to its followers, over HTTP: each file the primary
//! stages (the very bytes that go to L0) is sent to every follower as soon as it is
//! staged, with heartbeats while nothing happens. Object storage stays the safety net: a
//! follower the stream no longer reaches back to catches up from the replica.
//!
//! `wire` is the format; `serve` makes a follower's response body on the primary (feature
//! `sqlite`); `client` reads it (feature `stream-client`), for followers and the VFS.

#[cfg(feature = "stream-client")]
mod client;
#[cfg(feature = "sqlite")]
pub(crate) mod serve;
pub(crate) mod wire;

#[cfg(feature = "stream-client")]
pub use client::{PrimaryUrl, StreamConnection};
#[cfg(feature = "sqlite")]
pub use serve::follower_body;
pub use wire::{CONTENT_TYPE, Head};
