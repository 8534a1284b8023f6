//! A replica in a directory of this machine: Litestream's `file` replica.
//!
//! A directory is an object store (`object_store`'s `LocalFileSystem`, through the object
//! backend) for listing, checking, creating and deleting; what a file system does better is
//! done here: reads are positional reads on a blocking thread, a file to upload is copied
//! beside its name, synced and linked into place (a create that fails if the name is taken),
//! and file times are set to the LTX header's timestamp, as Litestream sets them. The replica
//! never shares a file with the source (no hard link to a staged file): a backup that changes
//! when a local file does is no backup.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use super::backend::{Backend, Body, Capabilities, Listed};
use super::error::BackendError;
use super::error::ErrorKind;
use super::multipart::UploadLimits;
use super::object::ObjectBackend;

/// A replica directory.
#[derive(Debug)]
pub struct Directory {
    root: PathBuf,
    /// The directory as an object store.
    files: ObjectBackend,
}

impl Directory {
    /// The directory at `root`, which must exist (its canonical path, so that a link or a
    /// relative path resolves once).
    pub fn new(root: &FsPath) -> Result<Directory, BackendError> {
        let root = std::fs::canonicalize(root).map_err(|e| {
            BackendError::new(
                ErrorKind::Other,
                format!("cannot resolve {}: {e}", root.display()),
            )
        })?;
        let files = LocalFileSystem::new_with_prefix(&root)?;
        let files = ObjectBackend::new(Arc::new(files), Path::default());
        Ok(Directory { root, files })
    }

    fn local(&self, path: &Path) -> PathBuf {
        self.root.join(path.as_ref())
    }
}

/// Runs file system work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(BackendError::new(
            ErrorKind::Other,
            format!("file system task failed: {e}"),
        ))
    })
}

/// Sets a file's modification time; a failure is only worth a warning (the bytes are safe,
/// only Litestream's view of the file's age is off).
fn set_time(file: &FsPath, timestamp: jiff::Timestamp) {
    let set = std::fs::File::options()
        .write(true)
        .open(file)
        .and_then(|f| f.set_modified(timestamp.into()));
    if let Err(e) = set {
        tracing::warn!(path = %file.display(), error = %e, "cannot set the file time to the LTX timestamp");
    }
}

/// Hard-links `from` to `to`, which must not exist: only a link that found the name taken
/// means the file exists; any other failure is a failed write.
fn link(from: &FsPath, to: &FsPath) -> Result<(), BackendError> {
    std::fs::hard_link(from, to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            e.into()
        } else {
            other(e)
        }
    })
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Copies `source` beside `dest`, syncs it and links it into place; returns its size.
fn copy_into_place(
    source: &FsPath,
    dest: &FsPath,
    timestamp: jiff::Timestamp,
) -> Result<u64, BackendError> {
    let dir = dest.parent().expect("level directories have a parent");
    std::fs::create_dir_all(dir).map_err(other)?;
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let copied = std::fs::copy(source, &tmp)
        .map_err(|e| other(e).at(source.display()))
        .and_then(|size| {
            let f = std::fs::File::open(&tmp).map_err(other)?;
            f.sync_all().map_err(other)?;
            f.set_modified(timestamp.into()).map_err(other)?;
            Ok(size)
        })
        .and_then(|size| link(&tmp, dest).map(|()| size));
    let _ = std::fs::remove_file(&tmp);
    let size = copied?;
    sync_dir(dir).map_err(other)?;
    Ok(size)
}

/// A failure that is neither a missing file nor a taken name.
fn other(e: std::io::Error) -> BackendError {
    BackendError::from(e).of_kind(ErrorKind::Other)
}

#[async_trait]
impl Backend for Directory {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            networked: false,
            reads_into_buffers: true,
        }
    }

    fn list(
        &self,
        prefix: &Path,
        after: Option<&Path>,
    ) -> BoxStream<'static, Result<Listed, BackendError>> {
        self.files.list(prefix, after)
    }

    async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>, BackendError> {
        self.files.list_dirs(prefix).await
    }

    async fn get(&self, path: &Path, range: Option<Range<u64>>) -> Result<Body, BackendError> {
        let local = self.local(path);
        let bytes = blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&local)?;
            let size = file.metadata()?.len();
            let range = range.unwrap_or(0..size);
            let end = range.end.min(size);
            let mut buf = vec![0u8; end.saturating_sub(range.start) as usize];
            file.read_exact_at(&mut buf, range.start)?;
            Ok(Bytes::from(buf))
        })
        .await?;
        Ok(futures::stream::once(async move { Ok(bytes) }).boxed())
    }

    async fn read_into(
        &self,
        path: &Path,
        range: Range<u64>,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError> {
        let local = self.local(path);
        blocking(move || {
            use std::os::unix::fs::FileExt;
            // Growing only zero-fills the new part; a recycled buffer is not zeroed again.
            buf.resize((range.end - range.start) as usize, 0);
            std::fs::File::open(&local)?.read_exact_at(&mut buf, range.start)?;
            Ok(buf)
        })
        .await
    }

    async fn exists(&self, path: &Path) -> Result<bool, BackendError> {
        self.files.exists(path).await
    }

    async fn create(
        &self,
        path: &Path,
        bytes: Bytes,
        timestamp: jiff::Timestamp,
    ) -> Result<(), BackendError> {
        self.files.create(path, bytes, timestamp).await?;
        let local = self.local(path);
        blocking(move || {
            set_time(&local, timestamp);
            Ok(())
        })
        .await
    }

    async fn create_from_file(
        &self,
        path: &Path,
        source: &FsPath,
        timestamp: jiff::Timestamp,
        _limits: UploadLimits,
    ) -> Result<u64, BackendError> {
        let (source, dest) = (source.to_owned(), self.local(path));
        blocking(move || copy_into_place(&source, &dest, timestamp)).await
    }

    async fn delete(&self, paths: Vec<Path>) -> Result<(), BackendError> {
        self.files.delete(paths).await
    }
}
