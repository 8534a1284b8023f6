//! The live stream from a primary to its followers, over HTTP: each file the primary
//! stages (the very bytes that go to L0) is sent to every follower as soon as it is
//! staged, with heartbeats while nothing happens. Object storage stays the safety net: a
//! follower the stream no longer reaches back to catches up from the replica.
//!
//! `wire` is the format; `serve` makes a follower's response body on the primary. The
//! follower's side is in [`crate::follow`].

pub(crate) mod serve;
pub(crate) mod wire;

pub use serve::follower_body;
pub use wire::CONTENT_TYPE;
