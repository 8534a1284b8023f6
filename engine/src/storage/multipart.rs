//! Files too large to hold in memory for one PUT, written without ever replacing a file.
//!
//! A single conditional PUT needs the whole body in memory, and `object_store` completes
//! multipart uploads unconditionally. It does have a conditional copy, though (for S3 a
//! one-part multipart copy completed with `If-None-Match: *`). So a large file is uploaded
//! in parts, a few at a time, to a scratch key under `strata-uploads/` beside the levels,
//! copied to its name with `copy_if_not_exists`, and the scratch object deleted. A crash in
//! between leaves a scratch object that no listing of a level sees.
//!
//! What the copy loses: user metadata set on the upload (Litestream's `litestream-timestamp`)
//! does not follow it, so Litestream dates such a file by its upload time.

use std::path::Path as LocalPath;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMultipartOptions, WriteMultipart};
use tokio::io::AsyncReadExt;

/// How files are written to a remote store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Files up to this size go in one conditional PUT, read into memory.
    pub single_put_max: u64,
    /// Larger files go in parts of this size (S3 wants at least 5 MiB but for the last)...
    pub part_size: usize,
    /// ...with at most this many parts in flight: memory is about one part more than that.
    pub parts_in_flight: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            single_put_max: 64 << 20,
            part_size: 16 << 20,
            parts_in_flight: 4,
        }
    }
}

/// Where an upload failed.
#[derive(Debug)]
pub(super) enum UploadError {
    /// Reading the local file.
    Read(std::io::Error),
    /// A request to the store, about this object.
    Store(Path, object_store::Error),
}

/// Where the scratch objects of a replica under `root` are.
pub(super) fn scratch_dir(root: &Path) -> Path {
    root.clone().join("strata-uploads")
}

/// The scratch key for uploading `dest` under `root`, unique to this process and moment.
pub(super) fn scratch_path(root: &Path, dest: &Path) -> Path {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = dest.filename().unwrap_or("file");
    scratch_dir(root).join(format!("{name}.{}.{nanos}", std::process::id()))
}

/// Uploads `source` in parts to `scratch`, then copies it to `dest` unless `dest` exists
/// (then `Store(dest, AlreadyExists)`). The scratch object is removed whatever happens.
/// Returns the size written.
pub(super) async fn upload_then_copy(
    store: &dyn ObjectStore,
    source: &LocalPath,
    scratch: &Path,
    dest: &Path,
    limits: UploadLimits,
) -> Result<u64, UploadError> {
    let size = upload(store, source, scratch, limits).await?;
    let copied = store
        .copy_if_not_exists(scratch, dest)
        .await
        .map_err(|e| UploadError::Store(dest.clone(), e));
    if let Err(e) = store.delete(scratch).await {
        tracing::warn!(path = %scratch, error = %e, "cannot delete the scratch copy of an upload");
    }
    copied.map(|()| size)
}

/// The multipart upload of `source` to `scratch`; aborted if anything fails.
async fn upload(
    store: &dyn ObjectStore,
    source: &LocalPath,
    scratch: &Path,
    limits: UploadLimits,
) -> Result<u64, UploadError> {
    let store_err = |e| UploadError::Store(scratch.clone(), e);
    let mut file = tokio::fs::File::open(source)
        .await
        .map_err(UploadError::Read)?;
    let upload = store
        .put_multipart_opts(scratch, PutMultipartOptions::default())
        .await
        .map_err(store_err)?;
    let mut parts = WriteMultipart::new_with_chunk_size(upload, limits.part_size);
    let mut size = 0u64;
    let sent: Result<(), UploadError> = async {
        loop {
            parts
                .wait_for_capacity(limits.parts_in_flight)
                .await
                .map_err(store_err)?;
            let part = read_part(&mut file, limits.part_size)
                .await
                .map_err(UploadError::Read)?;
            if part.is_empty() {
                return Ok(());
            }
            size += part.len() as u64;
            parts.put(part);
        }
    }
    .await;
    match sent {
        Ok(()) => {
            parts.finish().await.map_err(store_err)?;
            Ok(size)
        }
        Err(e) => {
            if let Err(abort) = parts.abort().await {
                tracing::warn!(path = %scratch, error = %abort, "cannot abort a failed multipart upload");
            }
            Err(e)
        }
    }
}

/// Up to `len` bytes from `file` (fewer only at its end).
async fn read_part(file: &mut tokio::fs::File, len: usize) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let want = (len - buf.len()) as u64;
        if (&mut *file).take(want).read_to_end(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.into())
}
