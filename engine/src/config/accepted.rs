//! Litestream keys strata accepts without acting on them: each present one is logged as a
//! warning naming what strata does instead, never ignored in silence.

use super::yaml::{Map, full, get};

/// Top-level keys, and what strata does instead.
pub(super) const TOP: &[(&str, &str)] = &[
    (
        "logging",
        "strata logs to stderr; set levels with --log (e.g. --log strata=debug) or RUST_LOG",
    ),
    ("mcp-addr", "no MCP server is served"),
    (
        "validation",
        "each replica is checked every 60 s (one listing in ten plans a restore)",
    ),
    (
        "verify-compaction",
        "every file compacted is decoded and its checksums verified, always",
    ),
    (
        "l0-retention-check-interval",
        "an uploaded L0 file goes once L1 covers it and l0-retention has passed",
    ),
    (
        "shutdown-sync-interval",
        "the final sync retries until shutdown-sync-timeout",
    ),
];

/// Keys of a `dbs` entry, and what strata does instead.
pub(super) const DB: &[(&str, &str)] = &[
    (
        "meta-path",
        "strata stages beside the database, in .NAME-strata",
    ),
    (
        "meta-dir",
        "strata stages beside the database, in .NAME-strata",
    ),
];

/// Keys of a replica, and what strata does instead.
pub(super) const REPLICA: &[(&str, &str)] = &[
    (
        "validation-interval",
        "each replica is checked every 60 s (one listing in ten plans a restore)",
    ),
    (
        "max-sync-ltx-files",
        "each upload merges what was staged since the last into one file",
    ),
    (
        "auto-recover",
        "a replica found to lack files gets a full copy, always",
    ),
    (
        "storage-class",
        "objects are written in the bucket's default storage class",
    ),
    (
        "sign-payload",
        "requests are signed as the S3 client does by default",
    ),
    (
        "require-content-md5",
        "uploads carry no Content-MD5; every file's checksum is verified when read",
    ),
    ("part-size", "large files go in 16 MiB parts"),
    ("concurrency", "large files go four parts at a time"),
];

/// Keys strata refuses rather than run without: server-side encryption settings, which
/// would otherwise leave objects unencrypted.
pub(super) const REFUSED: &[&str] = &[
    "sse-customer-algorithm",
    "sse-customer-key",
    "sse-customer-key-path",
    "sse-kms-key-id",
];

/// The names of `accepted`, to add to a mapping's known keys.
pub(super) fn names(accepted: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    accepted.iter().map(|(k, _)| *k).collect()
}

/// Logs a warning for each key of `accepted` present in `m`.
pub(super) fn warn(m: &Map, at: &str, accepted: &[(&str, &str)]) {
    for (key, instead) in accepted {
        if get(m, key).is_some() {
            tracing::warn!(key = %full(at, key), "accepted but not acted on: {instead}");
        }
    }
}
