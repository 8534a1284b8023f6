//! The replica client: list, read, write and delete LTX files in one replica.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use ltx::{FileTail, Header, TailParse, Txid, TxidRange};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload,
};

use super::counting::{CountingStore, RequestCounter, RequestCounts};
use super::error::{ErrorKind, Operation, StorageError};
use super::layout::{Layout, Level};
use super::location::ReplicaUrl;
use super::multipart::{self, UploadError, UploadLimits};

/// S3 user metadata Litestream reads for a file's accurate timestamp.
const TIMESTAMP_METADATA: &str = "litestream-timestamp";

/// How often a broken read is resumed before giving up.
const READ_ATTEMPTS: u32 = 4;

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
    store: Arc<dyn ObjectStore>,
    counter: RequestCounter,
    name: String,
    root: Path,
    layout: Layout,
    /// The replica directory, for the file backend.
    local_root: Option<PathBuf>,
    /// Whether the store keeps user metadata (S3): Litestream's timestamp goes there.
    metadata: bool,
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

/// A replica: LTX files by level in an object store, laid out as Litestream lays them out.
/// Cheap to clone; every clone shares the store and the request counts.
#[derive(Clone, Debug)]
pub struct Replica {
    inner: Arc<Inner>,
}

impl Replica {
    /// Opens an existing replica for reading. A directory must exist; the layout is the one
    /// Litestream uses for the backend until [`Replica::detect_layout`] says otherwise.
    pub fn open(url: &ReplicaUrl) -> Result<Replica, StorageError> {
        Replica::from_url(url, false)
    }

    /// Opens a replica for writing, creating its directory if needed.
    pub fn create(url: &ReplicaUrl) -> Result<Replica, StorageError> {
        Replica::from_url(url, true)
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
                    let store = url.open_store(true)?.store;
                    stores.insert(key, store.clone());
                    store
                }
            }
        };
        let mut replica =
            Replica::from_store(store, &url.to_string(), Path::from(prefix), url.layout());
        let inner = Arc::get_mut(&mut replica.inner).expect("not shared yet");
        inner.metadata = matches!(url, ReplicaUrl::S3 { .. });
        Ok(replica)
    }

    fn from_url(url: &ReplicaUrl, create: bool) -> Result<Replica, StorageError> {
        let opened = url.open_store(create)?;
        let mut replica =
            Replica::from_store(opened.store, &url.to_string(), opened.root, url.layout());
        let inner = Arc::get_mut(&mut replica.inner).expect("not shared yet");
        inner.local_root = opened.local_root;
        inner.metadata = matches!(url, ReplicaUrl::S3 { .. });
        Ok(replica)
    }

    /// A replica in any store (wrapped, for instance, in a fault-injecting or throttling
    /// store), under `root`, described as `name` in errors.
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        name: &str,
        root: Path,
        layout: Layout,
    ) -> Replica {
        let counting = CountingStore::new(store);
        let counter = counting.counter();
        Replica {
            inner: Arc::new(Inner {
                store: Arc::new(counting),
                counter,
                name: name.to_owned(),
                root,
                layout,
                local_root: None,
                metadata: false,
                upload_limits: UploadLimits::default(),
            }),
        }
    }

    /// The same replica seen through a [`FaultStore`](super::faults::FaultStore): requests
    /// fail, stall or return damaged bytes as the returned handle says. Request counts are
    /// shared with `self`; the local fast paths are off, so every request meets the faults.
    pub fn with_faults(&self) -> (Replica, super::faults::Faults) {
        let (store, faults) = super::faults::FaultStore::new(self.inner.store.clone());
        let inner = &self.inner;
        let replica = Replica {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                counter: inner.counter.clone(),
                name: inner.name.clone(),
                root: inner.root.clone(),
                layout: inner.layout,
                local_root: None,
                metadata: inner.metadata,
                upload_limits: inner.upload_limits,
            }),
        };
        (replica, faults)
    }

    /// An empty replica in memory, for tests.
    pub fn memory(layout: Layout) -> Replica {
        Replica::from_store(
            Arc::new(InMemory::new()),
            "memory://",
            Path::default(),
            layout,
        )
    }

    /// The replica's URL, as errors name it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the replica is a directory on this machine.
    pub fn is_local(&self) -> bool {
        self.inner.local_root.is_some()
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
        let root = &self.inner.root;
        let listing = self
            .inner
            .store
            .list_with_delimiter(Some(root))
            .await
            .map_err(|e| self.error(Operation::List, root, e))?;
        let dirs: Vec<&str> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .collect();
        let has = |layout: Layout| dirs.iter().any(|d| layout.owns_top_dir(d));
        let current = self.layout();
        if !has(current) && has(current.other()) {
            tracing::info!(replica = %self.name(), layout = %current.other(), "replica uses the other layout");
            return Ok(self.with_layout(current.other()));
        }
        Ok(self)
    }

    fn path(&self, level: Level, range: TxidRange) -> Path {
        self.inner.layout.file_path(&self.inner.root, level, range)
    }

    fn error(
        &self,
        op: Operation,
        path: impl fmt::Display,
        e: object_store::Error,
    ) -> StorageError {
        StorageError::from_store(&self.inner.name, op, path, e)
    }

    /// The files of `level` whose minimum TXID is at least `from`, in TXID order.
    ///
    /// Names are fixed-width hex, so the listing starts after the last name that cannot
    /// qualify instead of walking the whole level (S3 StartAfter).
    pub async fn list(&self, level: Level, from: Txid) -> Result<Vec<FileInfo>, StorageError> {
        let dir = self.inner.layout.level_dir(&self.inner.root, level);
        let stream = if from > Txid::ONE {
            let before = TxidRange::new(from.prev(), Txid::MAX);
            self.inner
                .store
                .list_with_offset(Some(&dir), &dir.clone().join(before.file_name()))
        } else {
            self.inner.store.list(Some(&dir))
        };
        let metas: Vec<_> = stream
            .try_collect()
            .await
            .map_err(|e| self.error(Operation::List, &dir, e))?;
        let mut files: Vec<FileInfo> = metas
            .into_iter()
            .filter(|m| m.location.parts_count() == dir.parts_count() + 1)
            .filter_map(|m| {
                let name = m.location.filename()?;
                let Ok(range) = TxidRange::parse_file_name(name) else {
                    tracing::debug!(path = %m.location, "ignoring a file that is not named like an LTX file");
                    return None;
                };
                Some(FileInfo {
                    level,
                    range,
                    size: m.size,
                    modified: jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
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
        let root = &self.inner.root;
        let scratch_dir = multipart::scratch_dir(root);
        let metas: Vec<object_store::ObjectMeta> = self
            .inner
            .store
            .list(Some(root))
            .try_collect()
            .await
            .map_err(|e| self.error(Operation::List, root, e))?;
        let mut files = Vec::new();
        let mut scratch = Vec::new();
        for m in metas {
            if m.location
                .prefix_match(&scratch_dir)
                .is_some_and(|rest| rest.count() == 1)
            {
                scratch.push(m.location);
                continue;
            }
            let Some((level, name)) = self.inner.layout.locate(root, &m.location) else {
                continue;
            };
            let Ok(range) = TxidRange::parse_file_name(name) else {
                tracing::debug!(path = %m.location, "ignoring a file that is not named like an LTX file");
                continue;
            };
            files.push(FileInfo {
                level,
                range,
                size: m.size,
                modified: jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis())
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            });
        }
        files.sort_by_key(|f| (f.level, f.range));
        Ok((files, scratch))
    }

    /// Bytes `range` of `file`. A body that breaks mid-transfer is resumed from where it
    /// stopped (pinned to the same object version), with backoff between attempts.
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
    /// A body that breaks mid-transfer is resumed from where it stopped, pinned to the same
    /// object version, with backoff between attempts.
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
        let mut etag = None;
        let mut attempt = 0;
        loop {
            let from = pieces.at;
            // A read of the whole object asks for it plainly: some S3-compatible servers
            // (rclone) answer a range covering everything with 200, which a ranged GET rejects.
            let whole = from == 0 && range.end == file.size;
            let opts = GetOptions {
                range: (!whole).then(|| (from..range.end).into()),
                if_match: etag.clone(),
                ..Default::default()
            };
            let failure = match self.inner.store.get_opts(&path, opts).await {
                Ok(result) if matches!(result.payload, GetResultPayload::File(..)) => {
                    // A local file: one read of the whole range, nothing to resume.
                    let bytes = result
                        .bytes()
                        .await
                        .map_err(|e| self.error(Operation::Get, &path, e))?;
                    let got = pieces.received() + bytes.len() as u64;
                    if got != want {
                        return Err(self.short(file, &range, got));
                    }
                    pieces.push(bytes, &mut deliver);
                    return Ok(());
                }
                Ok(result) => {
                    if etag.is_none() {
                        etag = result.meta.e_tag.clone();
                    }
                    let mut body = result.into_stream();
                    let mut failure = None;
                    let mut overlong = false;
                    while let Some(chunk) = body.next().await {
                        match chunk {
                            Ok(c) if pieces.received() + c.len() as u64 > want => {
                                overlong = true;
                                break;
                            }
                            Ok(c) => {
                                if !pieces.push(c, &mut deliver) {
                                    return Ok(());
                                }
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    let got = pieces.received();
                    match failure {
                        None if got == want && !overlong => {
                            // A body of no chunks at all (an empty range) still owes its
                            // zero-length pieces.
                            pieces.push(Bytes::new(), &mut deliver);
                            return Ok(());
                        }
                        None => {
                            return Err(StorageError::new(
                                &self.inner.name,
                                Operation::Get,
                                &path,
                                ErrorKind::InvalidData,
                                if overlong {
                                    format!("asked for bytes {range:?}, the object sent more")
                                } else {
                                    format!(
                                        "asked for bytes {range:?}, the object ended after {got} of them"
                                    )
                                },
                            ));
                        }
                        Some(e) => e,
                    }
                }
                // The request itself failed: object_store's own retries (see `location`) are
                // spent already, so it is not retried a second time here.
                Err(e) => return Err(self.error(Operation::Get, &path, e)),
            };
            // The body broke mid-transfer and object_store's own body retries (if any) are
            // spent: resume from where it stopped, a bounded number of times.
            let err = self.error(Operation::Get, &path, failure);
            attempt += 1;
            if err.kind != ErrorKind::Unavailable || attempt >= READ_ATTEMPTS {
                return Err(err);
            }
            tracing::debug!(error = %err, resume_at = pieces.at, "resuming read");
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }

    /// Bytes `range` of `file` into `buf`, which is resized to fit and handed back, so a
    /// caller can recycle buffers. A local replica is read with one positional read straight
    /// into the buffer on a blocking thread; other stores' responses are copied into it.
    pub async fn read_range_into(
        &self,
        file: &FileInfo,
        range: Range<u64>,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>, StorageError> {
        let len = (range.end - range.start) as usize;
        let Some(root) = &self.inner.local_root else {
            let bytes = self.read_range(file, range).await?;
            buf.clear();
            buf.extend_from_slice(&bytes);
            return Ok(buf);
        };
        let path = self.path(file.level, file.range);
        let local = root.join(path.as_ref());
        let result = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            // Growing only zero-fills the new part; a recycled buffer is not zeroed again.
            buf.resize(len, 0);
            std::fs::File::open(&local)
                .and_then(|f| f.read_exact_at(&mut buf, range.start))
                .map(|()| buf)
        })
        .await
        .expect("local read panicked");
        match result {
            Ok(buf) => {
                self.inner.counter.record_get(len as u64);
                Ok(buf)
            }
            Err(e) => {
                let kind = match e.kind() {
                    std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                    std::io::ErrorKind::UnexpectedEof => ErrorKind::InvalidData,
                    _ => ErrorKind::Other,
                };
                Err(StorageError::new(
                    &self.inner.name,
                    Operation::Get,
                    &path,
                    kind,
                    e.to_string(),
                ))
            }
        }
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

    /// The page index and trailer of `file`: one ranged read of the tail, and a second only
    /// if the index is larger than the first read.
    pub async fn read_tail(&self, file: &FileInfo) -> Result<FileTail, StorageError> {
        let mut range = ltx::tail_fetch_range(file.size);
        let mut tail = self.read_range(file, range.clone()).await?;
        loop {
            match ltx::parse_tail(file.size, range.start, &tail)
                .map_err(|e| self.invalid(file, e))?
            {
                TailParse::Complete(t) => return Ok(t),
                TailParse::NeedMore(more) => {
                    let head = self.read_range(file, more.clone()).await?;
                    tail = [head, tail].concat().into();
                    range.start = more.start;
                }
            }
        }
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
        let mut attributes = Attributes::new();
        if self.inner.metadata {
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
        self.inner
            .store
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
            .map_err(|e| self.error(Operation::Put, &path, e))?;
        if let Some(root) = &self.inner.local_root {
            let file = root.join(path.as_ref());
            let set = std::fs::File::options()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_modified(timestamp.into()));
            if let Err(e) = set {
                tracing::warn!(path = %file.display(), error = %e, "cannot set the file time to the LTX timestamp");
            }
        }
        Ok(FileInfo {
            level,
            range,
            size,
            modified: timestamp,
        })
    }

    /// Writes the LTX file at `source` (complete and synced) like [`Replica::write`], without
    /// holding it in memory when the replica is a local directory: on the same filesystem the
    /// file is hard-linked into place (no copy at all); elsewhere it is copied (by the kernel
    /// where it can) beside its final name, synced, and linked. A link fails if the name
    /// exists, so nothing is overwritten. Other stores get the bytes in one conditional PUT,
    /// or, past [`UploadLimits::single_put_max`], in parts with bounded memory (see
    /// `storage::multipart`).
    pub async fn write_file(
        &self,
        level: Level,
        range: TxidRange,
        source: &std::path::Path,
        timestamp: jiff::Timestamp,
    ) -> Result<FileInfo, StorageError> {
        let Some(root) = &self.inner.local_root else {
            return self
                .write_remote_file(level, range, source, timestamp)
                .await;
        };
        let path = self.path(level, range);
        let dest = root.join(path.as_ref());
        let source = source.to_owned();
        // Only a link that found the name taken means the file exists; any other failure
        // (a level directory that cannot be made, a full disk) is a failed write.
        let result =
            tokio::task::spawn_blocking(move || -> Result<u64, (ErrorKind, std::io::Error)> {
                let other = |e: std::io::Error| (ErrorKind::Other, e);
                let link = |from: &std::path::Path, to: &std::path::Path| {
                    std::fs::hard_link(from, to).map_err(|e| {
                        let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                            ErrorKind::AlreadyExists
                        } else {
                            ErrorKind::Other
                        };
                        (kind, e)
                    })
                };
                let dir = dest.parent().expect("level directories have a parent");
                std::fs::create_dir_all(dir).map_err(other)?;
                std::fs::File::options()
                    .write(true)
                    .open(&source)
                    .and_then(|f| f.set_modified(timestamp.into()))
                    .map_err(other)?;
                match link(&source, &dest) {
                    Ok(()) => {
                        std::fs::File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(other)?;
                        return std::fs::metadata(&dest).map(|m| m.len()).map_err(other);
                    }
                    Err((_, e)) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
                    Err(e) => return Err(e),
                }
                let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
                let size = std::fs::copy(&source, &tmp).map_err(other)?;
                let linked = std::fs::File::open(&tmp)
                    .and_then(|f| {
                        f.sync_all()?;
                        f.set_modified(timestamp.into())
                    })
                    .map_err(other)
                    .and_then(|()| link(&tmp, &dest));
                let _ = std::fs::remove_file(&tmp);
                linked?;
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(other)?;
                Ok(size)
            })
            .await
            .expect("local copy panicked");
        self.inner.counter.record_put();
        match result {
            Ok(size) => Ok(FileInfo {
                level,
                range,
                size,
                modified: timestamp,
            }),
            Err((kind, e)) => Err(StorageError::new(
                &self.inner.name,
                Operation::Put,
                &path,
                kind,
                e.to_string(),
            )),
        }
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

    async fn write_remote_file(
        &self,
        level: Level,
        range: TxidRange,
        source: &std::path::Path,
        timestamp: jiff::Timestamp,
    ) -> Result<FileInfo, StorageError> {
        let read_error = |e: std::io::Error| {
            StorageError::new(
                &self.inner.name,
                Operation::Put,
                source.display(),
                ErrorKind::Other,
                e.to_string(),
            )
        };
        let limits = self.inner.upload_limits;
        let size = tokio::fs::metadata(source).await.map_err(read_error)?.len();
        if size <= limits.single_put_max {
            let bytes = tokio::fs::read(source).await.map_err(read_error)?;
            return self.write(level, range, bytes.into(), timestamp).await;
        }
        let path = self.path(level, range);
        let scratch = multipart::scratch_path(&self.inner.root, &path);
        let store = &*self.inner.store;
        let size = multipart::upload_then_copy(store, source, &scratch, &path, limits)
            .await
            .map_err(|e| match e {
                UploadError::Read(e) => read_error(e),
                UploadError::Store(at, e) => self.error(Operation::Put, at, e),
            })?;
        Ok(FileInfo {
            level,
            range,
            size,
            modified: timestamp,
        })
    }

    /// Whether the file for `range` is in `level` (one HEAD request).
    pub async fn exists(&self, level: Level, range: TxidRange) -> Result<bool, StorageError> {
        let path = self.path(level, range);
        match self.inner.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(Operation::Get, &path, e)),
        }
    }

    /// Deletes scratch objects of interrupted uploads (see `multipart`, and
    /// [`Replica::list_all_with_scratch`]). Returns how many were deleted. (An incomplete
    /// multipart upload of a killed process is the bucket lifecycle's to abort:
    /// `object_store` cannot list them.)
    pub async fn delete_scratch(&self, scratch: Vec<Path>) -> Result<usize, StorageError> {
        let count = scratch.len();
        let dir = multipart::scratch_dir(&self.inner.root);
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
        let results: Vec<_> = self
            .inner
            .store
            .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(Operation::Delete, what, e)),
            }
        }
        Ok(())
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
