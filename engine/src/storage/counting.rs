//! Counting requests by kind: an `ObjectStore` wrapper around any store.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

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

/// Wraps a store and counts every request made through it.
#[derive(Debug)]
pub struct CountingStore<T> {
    inner: T,
    counters: Arc<Counters>,
}

impl<T: ObjectStore> CountingStore<T> {
    /// Starts counting requests to `inner`.
    pub fn new(inner: T) -> CountingStore<T> {
        CountingStore {
            inner,
            counters: Arc::default(),
        }
    }

    /// A handle that reads the counts while the store is in use elsewhere.
    pub fn counter(&self) -> RequestCounter {
        RequestCounter(self.counters.clone())
    }
}

/// Reads the counts of a [`CountingStore`].
#[derive(Clone, Debug)]
pub struct RequestCounter(Arc<Counters>);

impl RequestCounter {
    /// Counts a GET made around the store (a positional read of a local file).
    pub(crate) fn record_get(&self, bytes: u64) {
        self.0.get.fetch_add(1, Relaxed);
        self.0.get_bytes.fetch_add(bytes, Relaxed);
    }

    /// Counts a PUT made around the store (a local file copy).
    pub(crate) fn record_put(&self) {
        self.0.put.fetch_add(1, Relaxed);
    }

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

impl<T: ObjectStore> fmt::Display for CountingStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

/// Counts a listing's pages as the items stream by.
fn count_pages(
    counters: Arc<Counters>,
    stream: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    counters.list.fetch_add(1, Relaxed);
    let mut seen = 0u64;
    stream
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

#[async_trait]
impl<T: ObjectStore> ObjectStore for CountingStore<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.counters.get.fetch_add(1, Relaxed);
        let mut result = self.inner.get_opts(location, options).await?;
        let counters = self.counters.clone();
        let placeholder = GetResultPayload::Stream(futures::stream::empty().boxed());
        result.payload = match std::mem::replace(&mut result.payload, placeholder) {
            GetResultPayload::Stream(body) => GetResultPayload::Stream(
                body.inspect(move |chunk| {
                    if let Ok(chunk) = chunk {
                        counters.get_bytes.fetch_add(chunk.len() as u64, Relaxed);
                    }
                })
                .boxed(),
            ),
            // A local file is read whole; count its range now rather than force a stream.
            file => {
                counters
                    .get_bytes
                    .fetch_add(result.range.end - result.range.start, Relaxed);
                file
            }
        };
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.counters.get.fetch_add(ranges.len() as u64, Relaxed);
        let parts = self.inner.get_ranges(location, ranges).await?;
        let bytes: usize = parts.iter().map(Bytes::len).sum();
        self.counters.get_bytes.fetch_add(bytes as u64, Relaxed);
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let counters = self.counters.clone();
        let counted = locations
            .inspect(move |l| {
                if l.is_ok() {
                    counters.delete.fetch_add(1, Relaxed);
                }
            })
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        count_pages(self.counters.clone(), self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        count_pages(
            self.counters.clone(),
            self.inner.list_with_offset(prefix, offset),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.counters.list.fetch_add(1, Relaxed);
        let result = self.inner.list_with_delimiter(prefix).await?;
        let keys = result.objects.len() + result.common_prefixes.len();
        self.counters.listed.fetch_add(keys as u64, Relaxed);
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.counters.put.fetch_add(1, Relaxed);
        self.inner.copy_opts(from, to, options).await
    }
}
