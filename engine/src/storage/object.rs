//! A replica under a prefix of any `object_store` store: S3 and S3-compatible servers, GCS,
//! Azure, and the in-memory store tests use.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

use super::backend::{Backend, Body, Capabilities, Listed};
use super::error::BackendError;
use super::error::ErrorKind;
use super::multipart::{self, UploadError, UploadLimits};

/// S3 user metadata Litestream reads for a file's accurate timestamp.
const TIMESTAMP_METADATA: &str = "litestream-timestamp";

/// A replica: the objects under `prefix` in `store`.
#[derive(Debug)]
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Whether the store keeps user metadata (S3): Litestream's timestamp goes there.
    metadata: bool,
}

impl ObjectBackend {
    /// The replica under `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> ObjectBackend {
        ObjectBackend {
            store,
            prefix,
            metadata: false,
        }
    }

    /// The same, recording each file's LTX timestamp in Litestream's S3 user metadata.
    pub(crate) fn with_timestamp_metadata(mut self) -> ObjectBackend {
        self.metadata = true;
        self
    }

    /// The store's path of a path relative to the replica.
    fn full(&self, path: &Path) -> Path {
        self.prefix.parts().chain(path.parts()).collect()
    }
}

/// A path relative to `prefix`, for one the store listed under it.
fn relative(prefix: &Path, path: &Path) -> Path {
    match path.prefix_match(prefix) {
        Some(rest) => rest.collect(),
        None => path.clone(),
    }
}

#[async_trait]
impl Backend for ObjectBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            networked: true,
            reads_into_buffers: false,
        }
    }

    fn list(
        &self,
        prefix: &Path,
        after: Option<&Path>,
    ) -> BoxStream<'static, Result<Listed, BackendError>> {
        let dir = self.full(prefix);
        let metas = match after {
            Some(after) => self.store.list_with_offset(Some(&dir), &self.full(after)),
            None => self.store.list(Some(&dir)),
        };
        let root = self.prefix.clone();
        metas
            .map(move |m| {
                let m = m?;
                Ok(Listed {
                    path: relative(&root, &m.location),
                    size: m.size,
                    modified: jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                })
            })
            .boxed()
    }

    async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>, BackendError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.full(prefix)))
            .await?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    async fn get(&self, path: &Path, range: Option<Range<u64>>) -> Result<Body, BackendError> {
        let opts = GetOptions {
            range: range.map(Into::into),
            ..Default::default()
        };
        let result = self.store.get_opts(&self.full(path), opts).await?;
        Ok(result
            .into_stream()
            .map(|c| c.map_err(BackendError::from))
            .boxed())
    }

    async fn read_into(
        &self,
        path: &Path,
        range: Range<u64>,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError> {
        let bytes = self.store.get_range(&self.full(path), range).await?;
        buf.clear();
        buf.extend_from_slice(&bytes);
        Ok(buf)
    }

    async fn exists(&self, path: &Path) -> Result<bool, BackendError> {
        match self.store.head(&self.full(path)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(
        &self,
        path: &Path,
        bytes: Bytes,
        timestamp: jiff::Timestamp,
    ) -> Result<(), BackendError> {
        let mut attributes = Attributes::new();
        if self.metadata {
            attributes.insert(
                Attribute::Metadata(TIMESTAMP_METADATA.into()),
                format!("{timestamp:.9}").into(),
            );
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..Default::default()
        };
        self.store
            .put_opts(&self.full(path), PutPayload::from(bytes), opts)
            .await?;
        Ok(())
    }

    async fn create_from_file(
        &self,
        path: &Path,
        source: &FsPath,
        timestamp: jiff::Timestamp,
        limits: UploadLimits,
    ) -> Result<u64, BackendError> {
        // The local file failed, not the store: never a kind a caller reads as the object's.
        let read_error = |e: std::io::Error| {
            BackendError::new(ErrorKind::Other, e.to_string()).at(source.display())
        };
        let size = tokio::fs::metadata(source).await.map_err(read_error)?.len();
        if size <= limits.single_put_max {
            let bytes = tokio::fs::read(source).await.map_err(read_error)?;
            self.create(path, bytes.into(), timestamp).await?;
            return Ok(size);
        }
        let dest = self.full(path);
        let scratch = multipart::scratch_path(&self.prefix, &dest);
        multipart::upload_then_copy(&*self.store, source, &scratch, &dest, limits)
            .await
            .map_err(|e| match e {
                UploadError::Read(e) => read_error(e),
                UploadError::Store(at, e) => BackendError::from(e).at(relative(&self.prefix, &at)),
            })
    }

    async fn delete(&self, paths: Vec<Path>) -> Result<(), BackendError> {
        let full: Vec<_> = paths.iter().map(|p| Ok(self.full(p))).collect();
        let results: Vec<_> = self
            .store
            .delete_stream(futures::stream::iter(full).boxed())
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
