//! Counting requests by kind: a [`Backend`] wrapper around any backend.

use std::fmt;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;

use super::backend::{Backend, Body, Capabilities, Listed};
use super::error::BackendError;
use super::multipart::UploadLimits;

/// S3 returns at most this many keys per LIST request.
const KEYS_PER_LIST_PAGE: u64 = 1000;

/// Requests made so far, by kind. A LIST call that returns more than 1000 keys counts once
/// per 1000, as S3 pages them; a batched delete counts once per object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// LIST requests.
    pub list: u64,
    /// Keys those LIST requests returned.
    pub listed: u64,
    /// GET requests, ranged or whole (HEAD included).
    pub get: u64,
    /// PUT requests (a multipart upload counts as one).
    pub put: u64,
    /// Objects deleted.
    pub delete: u64,
    /// Bytes received by GETs.
    pub get_bytes: u64,
}

impl fmt::Display for RequestCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} LIST ({} keys), {} GET ({} bytes), {} PUT, {} DELETE",
            self.list, self.listed, self.get, self.get_bytes, self.put, self.delete
        )
    }
}

#[derive(Debug, Default)]
struct Counters {
    list: AtomicU64,
    listed: AtomicU64,
    get: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    get_bytes: AtomicU64,
}

/// Wraps a backend and counts every request made through it.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Backend>,
    counters: Arc<Counters>,
}

impl Counting {
    /// Starts counting requests to `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Counting {
        Counting {
            inner,
            counters: Arc::default(),
        }
    }

    /// Counts requests to `inner` into the counts `counter` reads (shared with another
    /// wrapper: the same replica seen another way).
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn sharing(inner: Arc<dyn Backend>, counter: &RequestCounter) -> Counting {
        Counting {
            inner,
            counters: counter.0.clone(),
        }
    }

    /// A handle that reads the counts while the backend is in use elsewhere.
    pub fn counter(&self) -> RequestCounter {
        RequestCounter(self.counters.clone())
    }
}

/// Reads the counts of a [`Counting`] backend.
#[derive(Clone, Debug)]
pub struct RequestCounter(Arc<Counters>);

impl RequestCounter {
    /// The counts so far.
    pub fn get(&self) -> RequestCounts {
        let c = &self.0;
        RequestCounts {
            list: c.list.load(Relaxed),
            listed: c.listed.load(Relaxed),
            get: c.get.load(Relaxed),
            put: c.put.load(Relaxed),
            delete: c.delete.load(Relaxed),
            get_bytes: c.get_bytes.load(Relaxed),
        }
    }
}

// A wrapper forwards every method, so it sees all I/O.
#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl Backend for Counting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// One LIST, and one more per 1000 keys as S3 pages them.
    fn list(
        &self,
        prefix: &Path,
        after: Option<&Path>,
    ) -> BoxStream<'static, Result<Listed, BackendError>> {
        let counters = self.counters.clone();
        counters.list.fetch_add(1, Relaxed);
        let mut seen = 0u64;
        self.inner
            .list(prefix, after)
            .inspect(move |item| {
                if item.is_ok() {
                    seen += 1;
                    counters.listed.fetch_add(1, Relaxed);
                    if seen > KEYS_PER_LIST_PAGE && seen % KEYS_PER_LIST_PAGE == 1 {
                        counters.list.fetch_add(1, Relaxed);
                    }
                }
            })
            .boxed()
    }

    async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>, BackendError> {
        self.counters.list.fetch_add(1, Relaxed);
        let dirs = self.inner.list_dirs(prefix).await?;
        self.counters.listed.fetch_add(dirs.len() as u64, Relaxed);
        Ok(dirs)
    }

    async fn get(&self, path: &Path, range: Option<Range<u64>>) -> Result<Body, BackendError> {
        self.counters.get.fetch_add(1, Relaxed);
        let counters = self.counters.clone();
        let body = self.inner.get(path, range).await?;
        Ok(body
            .inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    counters.get_bytes.fetch_add(chunk.len() as u64, Relaxed);
                }
            })
            .boxed())
    }

    async fn read_into(
        &self,
        path: &Path,
        range: Range<u64>,
        buf: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError> {
        self.counters.get.fetch_add(1, Relaxed);
        let buf = self.inner.read_into(path, range, buf).await?;
        self.counters.get_bytes.fetch_add(buf.len() as u64, Relaxed);
        Ok(buf)
    }

    async fn exists(&self, path: &Path) -> Result<bool, BackendError> {
        self.counters.get.fetch_add(1, Relaxed);
        self.inner.exists(path).await
    }

    async fn create(
        &self,
        path: &Path,
        bytes: Bytes,
        timestamp: jiff::Timestamp,
    ) -> Result<(), BackendError> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner.create(path, bytes, timestamp).await
    }

    async fn create_from_file(
        &self,
        path: &Path,
        source: &FsPath,
        timestamp: jiff::Timestamp,
        limits: UploadLimits,
    ) -> Result<u64, BackendError> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner
            .create_from_file(path, source, timestamp, limits)
            .await
    }

    async fn delete(&self, paths: Vec<Path>) -> Result<(), BackendError> {
        self.counters.delete.fetch_add(paths.len() as u64, Relaxed);
        self.inner.delete(paths).await
    }
}
