//! What a replica asks of a store: one trait, a backend per file (`directory`, `object`),
//! behaviours as wrappers that forward every method (`counting`, and `faults` for tests).
//!
//! A backend is one replica's place (a directory, or a prefix of a bucket): paths are
//! relative to it. It does requests and nothing more; naming the replica in errors, the
//! layout of levels and what an LTX file holds are the [`Replica`](super::Replica)'s.
//!
//! Retries are the network client's, not a backend's or a caller's: `object_store`'s HTTP
//! client retries a failed request and resumes a broken body pinned to the object's ETag,
//! within one budget (see `location`), and nothing above it retries a read again.

use std::fmt;
use std::ops::Range;
use std::path::Path as FsPath;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;

use super::error::BackendError;
use super::multipart::UploadLimits;

/// One object a listing found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Where it is, relative to the backend.
    pub path: Path,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, as the store keeps it (a file's mtime, S3's LastModified).
    pub modified: jiff::Timestamp,
}

/// An object's bytes as they arrive.
pub type Body = BoxStream<'static, Result<Bytes, BackendError>>;

/// What a backend does cheaply, for callers choosing between two ways of doing one thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Every request crosses a network: it costs a round trip (and, with most providers,
    /// money), so callers group reads and run more of them at once; and bytes can be damaged
    /// on the way, so a file that reads corrupt is worth reading once more.
    pub networked: bool,
    /// [`Backend::read_into`] reads straight into the caller's buffer (a positional read of
    /// a file), so a caller that recycles buffers saves a copy; otherwise it copies a
    /// response and [`Backend::get`]'s bytes are better used where they are.
    pub reads_into_buffers: bool,
}

/// A replica's store: the requests a [`Replica`](super::Replica) makes.
///
/// A wrapper forwards every method to the backend it wraps (`clippy::missing_trait_methods`
/// holds it to that), so it sees all I/O; a new backend or wrapper joins the conformance
/// suite (`engine/tests/storage.rs`) with one line.
#[async_trait]
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// What this backend does cheaply.
    fn capabilities(&self) -> Capabilities;

    /// Every object under `prefix`, at any depth, in any order; with `after`, only those
    /// whose path sorts after it (S3's StartAfter: the listing starts there).
    fn list(
        &self,
        prefix: &Path,
        after: Option<&Path>,
    ) -> BoxStream<'static, Result<Listed, BackendError>>;

    /// The names of the directories (common prefixes) directly under `prefix`.
    async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>, BackendError>;

    /// Bytes `range` of an object (all of it for `None`). A body shorter than the range
    /// asked for is not an error here: the caller counts what arrived.
    async fn get(&self, path: &Path, range: Option<Range<u64>>) -> Result<Body, BackendError>;

    /// Bytes `range` of an object into `buf`, resized to fit and handed back.
    async fn read_into(
        &self,
        path: &Path,
        range: Range<u64>,
        buf: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError>;

    /// Whether an object is there (a HEAD request).
    async fn exists(&self, path: &Path) -> Result<bool, BackendError>;

    /// Writes an object only if none of that name exists (an `AlreadyExists` error if one
    /// does), dated `timestamp` where the store keeps a date it can be given (a file's mtime,
    /// Litestream's S3 metadata).
    async fn create(
        &self,
        path: &Path,
        bytes: Bytes,
        timestamp: jiff::Timestamp,
    ) -> Result<(), BackendError>;

    /// [`Backend::create`] from a complete local file, without holding it in memory where
    /// the backend can avoid it (a copy on disk, an upload in parts of `limits.part_size`).
    /// Returns the size written.
    async fn create_from_file(
        &self,
        path: &Path,
        source: &FsPath,
        timestamp: jiff::Timestamp,
        limits: UploadLimits,
    ) -> Result<u64, BackendError>;

    /// Deletes objects; ones already gone are not an error.
    async fn delete(&self, paths: Vec<Path>) -> Result<(), BackendError>;
}
