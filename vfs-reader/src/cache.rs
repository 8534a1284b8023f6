//! The page cache: decoded pages by where their frame is (the identity of the file's bytes
//! and the offset), least recently used evicted first, bounded in bytes. Keyed by frame, not
//! page number, so a newer map never finds a stale page: a rewritten page has a new frame;
//! and by the file's content, not its name, so a replica written again under the same names
//! never finds the old bytes.

use hashlink::LruCache;

/// Identifies one frame in the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FrameKey {
    file: u64,
    offset: u64,
}

impl FrameKey {
    /// The frame at `offset` in the file whose content identity is `file` (see
    /// [`content_id`](crate::page_map::content_id)).
    pub(crate) fn new(file: u64, offset: u64) -> FrameKey {
        FrameKey { file, offset }
    }
}

/// Decoded pages, at most `capacity` of them.
pub(crate) struct PageCache {
    pages: LruCache<FrameKey, Box<[u8]>>,
    capacity: usize,
}

impl PageCache {
    /// A cache of `bytes` for pages of `page_size` bytes (at least a few pages).
    pub(crate) fn new(bytes: usize, page_size: usize) -> PageCache {
        let capacity = (bytes / page_size.max(1)).max(8);
        PageCache {
            pages: LruCache::new_unbounded(),
            capacity,
        }
    }

    /// How many pages it holds at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The page, marked as used.
    pub(crate) fn get(&mut self, key: &FrameKey) -> Option<&[u8]> {
        self.pages.get(key).map(|p| &**p)
    }

    /// Whether the page is there (not marked as used).
    pub(crate) fn contains(&self, key: &FrameKey) -> bool {
        self.pages.contains_key(key)
    }

    /// Adds a page, evicting the least recently used beyond the capacity.
    pub(crate) fn insert(&mut self, key: FrameKey, page: Box<[u8]>) {
        self.pages.insert(key, page);
        while self.pages.len() > self.capacity {
            self.pages.remove_lru();
        }
    }

    /// A buffer for a page: the least recently used one if the cache is full, so a full
    /// cache reuses its memory instead of allocating per page.
    pub(crate) fn spare(&mut self, page_size: usize) -> Box<[u8]> {
        if self.pages.len() >= self.capacity
            && let Some((_, page)) = self.pages.remove_lru()
            && page.len() == page_size
        {
            return page;
        }
        vec![0; page_size].into_boxed_slice()
    }
}

/// Whole small files (see `Options::whole_file_max`), least recently used evicted first,
/// bounded in bytes: a page in one is decoded from memory, with no request, even after
/// retention deleted the file.
pub(crate) struct FileBodies {
    files: LruCache<u64, bytes::Bytes>,
    bytes: usize,
    capacity: usize,
}

impl FileBodies {
    /// Room for `capacity` bytes of files.
    pub(crate) fn new(capacity: usize) -> FileBodies {
        FileBodies {
            files: LruCache::new_unbounded(),
            bytes: 0,
            capacity,
        }
    }

    /// The bytes of the file whose content identity is `file`, if held.
    pub(crate) fn get(&mut self, file: u64) -> Option<bytes::Bytes> {
        self.files.get(&file).cloned()
    }

    /// Keeps the bytes of each file.
    pub(crate) fn keep(&mut self, bodies: Vec<crate::state::Body>) {
        for (_, id, body) in bodies {
            self.insert(id, body);
        }
    }

    /// Keeps `body` as the bytes of the file `id`.
    fn insert(&mut self, id: u64, body: bytes::Bytes) {
        if body.len() > self.capacity {
            return;
        }
        self.bytes += body.len();
        if let Some(old) = self.files.insert(id, body) {
            self.bytes -= old.len();
        }
        while self.bytes > self.capacity {
            match self.files.remove_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}
