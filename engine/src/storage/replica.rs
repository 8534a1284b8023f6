//! The replica client: list, read, write and delete LTX files in one replica.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use ltx::{Header, Txid, TxidRange};
use object_store::ObjectStore;
use object_store::path::Path;

use super::backend::{Backend, Capabilities};
use super::counting::{Counting, RequestCounter, RequestCounts};
use super::error::{BackendError, ErrorKind, Operation, StorageError};
use super::layout::{Layout, Level};
use super::multipart::{self, UploadLimits};
use super::object::ObjectBackend;
use super::url::ReplicaUrl;

/// One LTX file in a replica, as a listing describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The level it sits in.
    pub level: Level,
    /// The TXIDs it covers (its name).
    pub range: TxidRange,
    /// Its size in bytes.
    pub size: u64,
    /// When the store says it was written: file mtime (which Litestream and strata set to
    /// the LTX header's timestamp) or S3 LastModified (the upload time).
    pub modified: jiff::Timestamp,
}

impl fmt::Display for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.level, self.range.file_name())
    }
}

#[derive(Clone, Debug)]
struct Inner {
    /// The backend as opened: a wrapper for tests goes between it and the counting.
    #[cfg(any(test, feature = "test-support"))]
    base: Arc<dyn Backend>,
    /// `base`, counted: every request goes through it.
    backend: Arc<dyn Backend>,
    counter: RequestCounter,
    name: String,
    layout: Layout,
    /// When and how files are uploaded in parts.
    upload_limits: UploadLimits,
}

/// Object-store clients by endpoint and bucket, for [`Replica::create_in`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clients {
    stores: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.stores.lock().map_or(0, |s| s.len());
        f.debug_struct("Clients").field("clients", &n).finish()
    }
}

/// A replica: LTX files by level in a [`Backend`], laid out as Litestream lays them out.
/// Cheap to clone; every clone shares the backend and the request counts.
#[derive(Clone, Debug)]
pub struct Replica {
    inner: Arc<Inner>,
}

/// The replica's own top: backends are rooted at the replica.
fn top() -> Path {
    Path::default()
}

impl Replica {
    /// Opens an existing replica for reading. A directory must exist; the layout is the one
    /// Litestream uses for the backend until [`Replica::detect_layout`] says otherwise.
    pub fn open(url: &ReplicaUrl) -> Result<Replica, StorageError> {
        let backend = url.open_backend(false)?;
        Ok(Replica::from_backend(
            backend,
            &url.to_string(),
            url.layout(),
        ))
    }

    /// Opens a replica for writing, creating its directory if needed.
    pub fn create(url: &ReplicaUrl) -> Result<Replica, StorageError> {
        let backend = url.open_backend(true)?;
        Ok(Replica::from_backend(
            backend,
            &url.to_string(),
            url.layout(),
        ))
    }

    /// [`Replica::create`], through the client `clients` holds for the URL's endpoint and
    /// bucket (made on first use): replicas in one bucket share one connection pool.
    pub fn create_in(url: &ReplicaUrl, clients: &Clients) -> Result<Replica, StorageError> {
        let Some((key, prefix)) = url.client_key() else {
            return Replica::create(url);
        };
        let store = {
            let mut stores = clients.stores.lock().unwrap_or_else(|e| e.into_inner());
            match stores.get(&key) {
                Some(store) => store.clone(),
                None => {
                    let store = url.open_store()?;
                    stores.insert(key, store.clone());
                    store
                }
            }
        };
        let backend = url.object_backend(store, prefix);
        Ok(Replica::from_backend(
            Arc::new(backend),
            &url.to_string(),
            url.layout(),
        ))
    }

    /// A replica in any `object_store` store (wrapped, for instance, in a throttling store),
    /// under `root`, described as `name` in errors.
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        name: &str,
        root: Path,
        layout: Layout,
    ) -> Replica {
        Replica::from_backend(Arc::new(ObjectBackend::new(store, root)), name, layout)
    }

    /// A replica in any [`Backend`], described as `name` in errors. Its requests are counted
    /// (see [`Replica::requests`]).
    pub fn from_backend(backend: Arc<dyn Backend>, name: &str, layout: Layout) -> Replica {
        #[cfg_attr(
            not(any(test, feature = "test-support")),
            allow(clippy::redundant_clone)
        )]
        let counting = Counting::new(backend.clone());
        let counter = counting.counter();
        Replica {
            inner: Arc::new(Inner {
                #[cfg(any(test, feature = "test-support"))]
                base: backend,
                backend: Arc::new(counting),
                counter,
                name: name.to_owned(),
                layout,
                upload_limits: UploadLimits::default(),
            }),
        }
    }

    /// The same replica seen through a [`FaultyBackend`](super::faults::FaultyBackend):
    /// requests fail, stall or return damaged bytes as the returned handle says. Request
    /// counts are shared with `self`.
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_faults(&self) -> (Replica, super::faults::Faults) {
        let (faulty, faults) = super::faults::FaultyBackend::new(self.inner.base.clone());
        let faulty: Arc<dyn Backend> = Arc::new(faulty);
        let counted = Counting::sharing(faulty.clone(), &self.inner.counter);
        let replica = Replica {
            inner: Arc::new(Inner {
                base: faulty,
                backend: Arc::new(counted),
                ..(*self.inner).clone()
            }),
        };
        (replica, faults)
    }

    /// An empty replica in memory, for tests.
    #[cfg(any(test, feature = "test-support"))]
    pub fn memory(layout: Layout) -> Replica {
        Replica::from_store(
            Arc::new(object_store::memory::InMemory::new()),
            "memory://",
            Path::default(),
            layout,
        )
    }

    /// The replica's URL, as errors name it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the backend does cheaply.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }

    /// The layout in use.
    pub fn layout(&self) -> Layout {
        self.inner.layout
    }

    /// Requests made through this replica so far.
    pub fn requests(&self) -> RequestCounts {
        self.inner.counter.get()
    }

    /// The same replica read with another layout.
    pub fn with_layout(&self, layout: Layout) -> Replica {
        Replica {
            inner: Arc::new(Inner {
                layout,
                ..(*self.inner).clone()
            }),
        }
    }

    /// The same replica, uploading files larger than `limits.single_put_max` in parts.
    pub fn with_upload_limits(&self, upload_limits: UploadLimits) -> Replica {
        Replica {
            inner: Arc::new(Inner {
                upload_limits,
                ..(*self.inner).clone()
            }),
        }
    }

    /// Looks at the replica's top level (one LIST) and switches to the other layout if only
    /// that one holds files, so a replica copied between backends still reads.
    pub async fn detect_layout(self) -> Result<Replica, StorageError> {
        let dirs = self
            .inner
            .backend
            .list_dirs(&top())
            .await
            .map_err(|e| self.error(Operation::List, "", e))?;
        let has = |layout: Layout| dirs.iter().any(|d| layout.owns_top_dir(d));
        let current = self.layout();
        if !has(current) && has(current.other()) {
            tracing::info!(replica = %self.name(), layout = %current.other(), "replica uses the other layout");
            return Ok(self.with_layout(current.other()));
        }
        Ok(self)
    }

    fn path(&self, level: Level, range: TxidRange) -> Path {
        self.inner.layout.file_path(&top(), level, range)
    }

    fn error(&self, op: Operation, path: impl fmt::Display, e: BackendError) -> StorageError {
        StorageError::from_backend(&self.inner.name, op, path, e)
    }

    /// The files of `level` whose minimum TXID is at least `from`, in TXID order.
    ///
    /// Names are fixed-width hex, so the listing starts after the last name that cannot
    /// qualify instead of walking the whole level (S3 StartAfter).
    pub async fn list(&self, level: Level, from: Txid) -> Result<Vec<FileInfo>, StorageError> {
        let dir = self.inner.layout.level_dir(&top(), level);
        let after = (from > Txid::ONE).then(|| {
            dir.clone()
                .join(TxidRange::new(from.prev(), Txid::MAX).file_name())
        });
        let listed: Vec<_> = self
            .inner
            .backend
            .list(&dir, after.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.error(Operation::List, &dir, e))?;
        let mut files: Vec<FileInfo> = listed
            .into_iter()
            .filter(|m| m.path.parts_count() == dir.parts_count() + 1)
            .filter_map(|m| {
                let name = m.path.filename()?;
                let Ok(range) = TxidRange::parse_file_name(name) else {
                    tracing::debug!(path = %m.path, "ignoring a file that is not named like an LTX file");
                    return None;
                };
                Some(FileInfo {
                    level,
                    range,
                    size: m.size,
                    modified: m.modified,
                })
            })
            .filter(|f| f.range.min >= from)
            .collect();
        files.sort_by_key(|f| f.range);
        Ok(files)
    }

    /// Every file in every level, ordered by level then TXID: one recursive listing of the
    /// replica (paginated by the store), not a listing per level.
    pub async fn list_all(&self) -> Result<Vec<FileInfo>, StorageError> {
        Ok(self.list_all_with_scratch().await?.0)
    }

    /// [`Replica::list_all`], and the scratch objects of interrupted uploads (see
    /// `multipart`) the same listing found.
    pub async fn list_all_with_scratch(&self) -> Result<(Vec<FileInfo>, Vec<Path>), StorageError> {
        let root = top();
        let scratch_dir = multipart::scratch_dir(&root);
        let listed: Vec<_> = self
            .inner
            .backend
            .list(&root, None)
            .try_collect()
            .await
            .map_err(|e| self.error(Operation::List, "", e))?;
        let mut files = Vec::new();
        let mut scratch = Vec::new();
        for m in listed {
            if m.path
                .prefix_match(&scratch_dir)
                .is_some_and(|rest| rest.count() == 1)
            {
                scratch.push(m.path);
                continue;
            }
            let Some((level, name)) = self.inner.layout.locate(&root, &m.path) else {
                continue;
            };
            let Ok(range) = TxidRange::parse_file_name(name) else {
                tracing::debug!(path = %m.path, "ignoring a file that is not named like an LTX file");
                continue;
            };
            files.push(FileInfo {
                level,
                range,
                size: m.size,
                modified: m.modified,
            });
        }
        files.sort_by_key(|f| (f.level, f.range));
        Ok((files, scratch))
    }

    /// Bytes `range` of `file`.
    pub async fn read_range(
        &self,
        file: &FileInfo,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        let mut out = None;
        self.read_pieces(file, range.clone(), &[range.end], |piece| {
            out = Some(piece);
            true
        })
        .await?;
        Ok(out.expect("a read that succeeded delivered its one piece"))
    }

    /// Bytes `range` of `file` from one read, handed to `deliver` in pieces as they arrive:
    /// piece `i` ends at `ends[i]` (ascending, the last one `range.end`). One request where a
    /// read per piece would pay a round trip each, while only the piece being assembled is
    /// held here. `deliver` returning `false` ends the read early (nobody wants the rest).
    /// A body that arrives shorter or longer than the range is damaged data.
    pub async fn read_pieces(
        &self,
        file: &FileInfo,
        range: Range<u64>,
        ends: &[u64],
        mut deliver: impl FnMut(Bytes) -> bool,
    ) -> Result<(), StorageError> {
        let path = self.path(file.level, file.range);
        let want = range.end - range.start;
        debug_assert!(ends.windows(2).all(|w| w[0] < w[1]) && ends.last() == Some(&range.end));
        let mut pieces = Pieces::new(range.start, ends);
        // A read of the whole object asks for it plainly: some S3-compatible servers
        // (rclone) answer a range covering everything with 200, which a ranged GET rejects.
        let whole = range.start == 0 && range.end == file.size;
        let mut body = self
            .inner
            .backend
            .get(&path, (!whole).then(|| range.clone()))
            .await
            .map_err(|e| self.error(Operation::Get, &path, e))?;
        let mut overlong = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.error(Operation::Get, &path, e))?;
            if pieces.received() + chunk.len() as u64 > want {
                overlong = true;
                break;
            }
            if !pieces.push(chunk, &mut deliver) {
                return Ok(());
            }
        }
        let got = pieces.received();
        if got != want || overlong {
            return Err(StorageError::new(
                &self.inner.name,
                Operation::Get,
                &path,
                ErrorKind::InvalidData,
                if overlong {
                    format!("asked for bytes {range:?}, the object sent more")
                } else {
                    format!("asked for bytes {range:?}, the object ended after {got} of them")
                },
            ));
        }
        // A body of no chunks at all (an empty range) still owes its zero-length pieces.
        pieces.push(Bytes::new(), &mut deliver);
        Ok(())
    }

    /// Bytes `range` of `file` into `buf`, which is resized to fit and handed back, so a
    /// caller can recycle buffers. A backend that reads into buffers (a directory: one
    /// positional read) is asked to; other backends' responses are copied into it.
    pub async fn read_range_into(
        &self,
        file: &FileInfo,
        range: Range<u64>,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, StorageError> {
        if !self.capabilities().reads_into_buffers {
            let bytes = self.read_range(file, range).await?;
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Ok(buf);
        }
        let path = self.path(file.level, file.range);
        let want = range.end - range.start;
        let buf = self
            .inner
            .backend
            .read_into(&path, range.clone(), buf)
            .await
            .map_err(|e| self.error(Operation::Get, &path, e))?;
        if buf.len() as u64 != want {
            return Err(self.short(file, &range, buf.len() as u64));
        }
        Ok(buf)
    }

    /// The whole of `file`.
    pub async fn read(&self, file: &FileInfo) -> Result<Bytes, StorageError> {
        self.read_range(file, 0..file.size).await
    }

    /// The header of `file`, from one ranged read of its first 100 bytes.
    pub async fn read_header(&self, file: &FileInfo) -> Result<Header, StorageError> {
        let range = 0..ltx::HEADER_SIZE as u64;
        if file.size < range.end {
            return Err(self.short(file, &range, file.size));
        }
        let bytes = self.read_range(file, range.clone()).await?;
        let head: &[u8; ltx::HEADER_SIZE] = bytes[..]
            .try_into()
            .map_err(|_| self.short(file, &range, bytes.len() as u64))?;
        Header::from_bytes(head).map_err(|e| self.invalid(file, e))
    }

    /// An error for a read that got fewer bytes than the range asked for: a file shorter
    /// than its listing or than an LTX header.
    fn short(&self, file: &FileInfo, range: &Range<u64>, got: u64) -> StorageError {
        StorageError::new(
            &self.inner.name,
            Operation::Get,
            self.path(file.level, file.range),
            ErrorKind::InvalidData,
            format!(
                "bytes {}..{} asked for, {got} read: the file is truncated (listed as {} bytes)",
                range.start, range.end, file.size
            ),
        )
    }

    /// An error for a file whose bytes are not valid LTX.
    pub fn invalid(&self, file: &FileInfo, e: ltx::Error) -> StorageError {
        StorageError::new(
            &self.inner.name,
            Operation::Get,
            self.path(file.level, file.range),
            ErrorKind::InvalidData,
            e.to_string(),
        )
    }

    /// Writes a complete LTX file to `level`, only if no file of that name exists
    /// (conditional create: If-None-Match on S3, no-clobber link locally). `timestamp` is
    /// the header's, recorded as Litestream records it: S3 metadata, or the file's mtime.
    pub async fn write(
        &self,
        level: Level,
        range: TxidRange,
        bytes: Bytes,
        timestamp: jiff::Timestamp,
    ) -> Result<FileInfo, StorageError> {
        let path = self.path(level, range);
        let size = bytes.len() as u64;
        self.inner
            .backend
            .create(&path, bytes, timestamp)
            .await
            .map_err(|e| self.error(Operation::Put, &path, e))?;
        Ok(FileInfo {
            level,
            range,
            size,
            modified: timestamp,
        })
    }

    /// Writes the LTX file at `source` (complete and synced) like [`Replica::write`], without
    /// holding it in memory where the backend can avoid it: a directory copies it beside its
    /// name and links the copy into place; an object store gets one conditional
    /// PUT, or, past [`UploadLimits::single_put_max`], parts with bounded memory (see
    /// `storage::multipart`). Nothing is overwritten.
    pub async fn write_file(
        &self,
        level: Level,
        range: TxidRange,
        source: &std::path::Path,
        timestamp: jiff::Timestamp,
    ) -> Result<FileInfo, StorageError> {
        let path = self.path(level, range);
        let size = self
            .inner
            .backend
            .create_from_file(&path, source, timestamp, self.inner.upload_limits)
            .await
            .map_err(|e| self.error(Operation::Put, &path, e))?;
        Ok(FileInfo {
            level,
            range,
            size,
            modified: timestamp,
        })
    }

    /// Writes the complete LTX file at `source` to `level`, named and dated by its own
    /// header, so a file's name and content cannot disagree. See [`Replica::write_file`].
    pub async fn write_ltx_file(
        &self,
        level: Level,
        source: &std::path::Path,
    ) -> Result<FileInfo, StorageError> {
        let mut head = [0u8; ltx::HEADER_SIZE];
        let header = async {
            use tokio::io::AsyncReadExt;
            tokio::fs::File::open(source)
                .await?
                .read_exact(&mut head)
                .await?;
            Header::from_bytes(&head).map_err(std::io::Error::other)
        }
        .await
        .map_err(|e| {
            StorageError::new(
                &self.inner.name,
                Operation::Put,
                source.display(),
                ErrorKind::Other,
                format!("cannot read the LTX header: {e}"),
            )
        })?;
        let timestamp = jiff::Timestamp::from_millisecond(header.timestamp)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        self.write_file(level, header.txid_range(), source, timestamp)
            .await
    }

    /// Whether the file for `range` is in `level` (one HEAD request).
    pub async fn exists(&self, level: Level, range: TxidRange) -> Result<bool, StorageError> {
        let path = self.path(level, range);
        self.inner
            .backend
            .exists(&path)
            .await
            .map_err(|e| self.error(Operation::Get, &path, e))
    }

    /// Deletes scratch objects of interrupted uploads (see `multipart`, and
    /// [`Replica::list_all_with_scratch`]). Returns how many were deleted. (An incomplete
    /// multipart upload of a killed process is the bucket lifecycle's to abort:
    /// `object_store` cannot list them.)
    pub async fn delete_scratch(&self, scratch: Vec<Path>) -> Result<usize, StorageError> {
        let count = scratch.len();
        let dir = multipart::scratch_dir(&top());
        self.delete_paths(scratch, dir.as_ref()).await?;
        Ok(count)
    }

    /// Deletes files, batched (S3 DeleteObjects takes 1000 keys a request). Files already
    /// gone are not an error.
    pub async fn delete(&self, files: &[FileInfo]) -> Result<(), StorageError> {
        let paths = files.iter().map(|f| self.path(f.level, f.range)).collect();
        self.delete_paths(paths, "(batch)").await
    }

    /// Deletes objects, batched; ones already gone are not an error. `what` names them in
    /// an error.
    async fn delete_paths(&self, paths: Vec<Path>, what: &str) -> Result<(), StorageError> {
        self.inner
            .backend
            .delete(paths)
            .await
            .map_err(|e| self.error(Operation::Delete, what, e))
    }
}

/// Cuts a body arriving in chunks into pieces ending at given offsets.
struct Pieces<'a> {
    /// The offset of the next byte to arrive.
    at: u64,
    /// Where the first piece started.
    origin: u64,
    /// Where the pieces not yet delivered end.
    ends: &'a [u64],
    /// The chunks of the piece being assembled.
    parts: Vec<Bytes>,
    /// Where it starts.
    start: u64,
}

impl<'a> Pieces<'a> {
    fn new(at: u64, ends: &'a [u64]) -> Pieces<'a> {
        Pieces {
            at,
            origin: at,
            ends,
            parts: Vec::new(),
            start: at,
        }
    }

    /// How many bytes have arrived so far.
    fn received(&self) -> u64 {
        self.at - self.origin
    }

    /// Takes the next chunk of the body, delivering each piece it completes; `false` once
    /// `deliver` has said it wants no more.
    fn push(&mut self, mut chunk: Bytes, deliver: &mut impl FnMut(Bytes) -> bool) -> bool {
        while let Some((&end, rest)) = self.ends.split_first() {
            let room = end - self.at;
            if (chunk.len() as u64) < room {
                self.at += chunk.len() as u64;
                if !chunk.is_empty() {
                    self.parts.push(chunk);
                }
                return true;
            }
            self.parts.push(chunk.split_to(room as usize));
            self.at = end;
            self.ends = rest;
            let piece = concat(std::mem::take(&mut self.parts), end - self.start);
            self.start = end;
            if !deliver(piece) {
                return false;
            }
        }
        true
    }
}

fn concat(parts: Vec<Bytes>, len: u64) -> Bytes {
    if parts.len() == 1 {
        return parts.into_iter().next().unwrap();
    }
    let mut buf = BytesMut::with_capacity(len as usize);
    for p in parts {
        buf.extend_from_slice(&p);
    }
    buf.freeze()
}
