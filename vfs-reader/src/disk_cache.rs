//! The on-disk cache of fetched frames (opt-in, `Options::disk_cache_dir`): every ranged read
//! of a replica file is kept as a file under the cache directory, so a reader started again
//! (another process, after a restart) reads those bytes without a request.
//!
//! Layout: `<dir>/<replica>/<level>-<min>-<max>-<size>-<content>/<start>-<end>`, the
//! replica named by a hash of its URL and an LTX file by its level, TXID range, size and the
//! identity of its bytes (header and file checksum, see
//! [`content_id`](crate::page_map::content_id)): a replica wiped and written again reuses
//! names and sizes, never contents. Each entry is its bytes after their CRC-64;
//! an entry that does not match (a torn write, a flipped bit) is removed and fetched again.
//! Entries are written to a temporary name and renamed, so readers in other processes see
//! whole entries or none. The total is bounded: past `limit` bytes, the least recently
//! written entries go first.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use strata::storage::FileInfo;

/// Bytes before an entry's data: its CRC-64, big-endian.
const CRC_BYTES: usize = 8;

/// The cache of one replica.
pub(crate) struct DiskCache {
    root: PathBuf,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per LTX file (its directory name), the ranges held, by start. Filled from the
    /// directory the first time the file is asked for.
    files: HashMap<String, BTreeMap<u64, u64>>,
    /// Bytes held by every entry of this replica (what this process knows of).
    bytes: u64,
}

impl DiskCache {
    /// The cache of the replica named `replica` under `dir`, at most `limit` bytes.
    pub(crate) fn open(dir: &Path, replica: &str, limit: u64) -> std::io::Result<DiskCache> {
        let root = dir.join(format!("{:016x}", crate::fnv1a(replica.as_bytes())));
        std::fs::create_dir_all(&root)?;
        let bytes = entries(&root).iter().map(|e| e.len).sum();
        Ok(DiskCache {
            root,
            limit,
            state: Mutex::new(State {
                files: HashMap::new(),
                bytes,
            }),
        })
    }

    fn file_dir(file: &FileInfo, id: u64) -> String {
        format!(
            "{}-{}-{}-{}-{id:016x}",
            file.level.get(),
            file.range.min,
            file.range.max,
            file.size
        )
    }

    /// Bytes `range` of `file` (whose content identity is `id`), if an entry holds them all
    /// and is intact.
    pub(crate) fn get(&self, file: &FileInfo, id: u64, range: &Range<u64>) -> Option<Bytes> {
        let name = Self::file_dir(file, id);
        let (start, end) = {
            let mut state = self.state.lock().unwrap();
            let held = state
                .files
                .entry(name.clone())
                .or_insert_with(|| held_ranges(&self.root.join(&name)));
            let (&start, &end) = held.range(..=range.start).next_back()?;
            (end >= range.end).then_some((start, end))?
        };
        let path = self.root.join(&name).join(entry_name(start, end));
        let data = std::fs::read(&path).ok().filter(|data| {
            data.len() == CRC_BYTES + (end - start) as usize && {
                let (crc, body) = data.split_at(CRC_BYTES);
                let mut digest = ltx::Crc64::new();
                digest.update(body);
                crc == digest.value().to_be_bytes()
            }
        });
        let Some(data) = data else {
            // Damaged or removed by another process: forget it, fetch again.
            let _ = std::fs::remove_file(&path);
            let mut state = self.state.lock().unwrap();
            if let Some(held) = state.files.get_mut(&name) {
                held.remove(&start);
            }
            return None;
        };
        let from = CRC_BYTES + (range.start - start) as usize;
        let to = CRC_BYTES + (range.end - start) as usize;
        Some(Bytes::from(data).slice(from..to))
    }

    /// Keeps `bytes`, bytes `range` of `file` (whose content identity is `id`). A failure to
    /// write only loses the entry.
    pub(crate) fn put(&self, file: &FileInfo, id: u64, range: &Range<u64>, bytes: &[u8]) {
        if range.end - range.start != bytes.len() as u64 || bytes.is_empty() {
            return;
        }
        let name = Self::file_dir(file, id);
        let dir = self.root.join(&name);
        {
            let mut state = self.state.lock().unwrap();
            let held = state
                .files
                .entry(name.clone())
                .or_insert_with(|| held_ranges(&dir));
            if held.get(&range.start) == Some(&range.end) {
                return;
            }
        }
        let entry = entry_name(range.start, range.end);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{entry}.{}", std::process::id()));
            let mut f = std::fs::File::create(&tmp)?;
            let mut digest = ltx::Crc64::new();
            digest.update(bytes);
            f.write_all(&digest.value().to_be_bytes())?;
            f.write_all(bytes)?;
            drop(f);
            std::fs::rename(&tmp, dir.join(&entry)).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep fetched frames on disk");
            return;
        }
        let over = {
            let mut state = self.state.lock().unwrap();
            let held = state.files.entry(name).or_default();
            if held.insert(range.start, range.end) != Some(range.end) {
                state.bytes += (CRC_BYTES + bytes.len()) as u64;
            }
            state.bytes > self.limit
        };
        if over {
            self.evict();
        }
    }

    /// Removes the oldest entries until the cache is under 80% of its limit.
    fn evict(&self) {
        let mut all = entries(&self.root);
        all.sort_by_key(|e| e.modified);
        let mut total: u64 = all.iter().map(|e| e.len).sum();
        let target = self.limit / 5 * 4;
        let mut state = self.state.lock().unwrap();
        for e in all {
            if total <= target {
                break;
            }
            if std::fs::remove_file(&e.path).is_ok() {
                total -= e.len;
                if let Some(held) = state.files.get_mut(&e.file) {
                    held.remove(&e.start);
                }
            }
        }
        state.bytes = total;
    }
}

fn entry_name(start: u64, end: u64) -> String {
    format!("{start:016x}-{end:016x}")
}

fn parse_entry(name: &str) -> Option<(u64, u64)> {
    let (start, end) = name.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (start < end && name.len() == 33).then_some((start, end))
}

/// The ranges held in one LTX file's directory.
fn held_ranges(dir: &Path) -> BTreeMap<u64, u64> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    read.filter_map(|e| parse_entry(e.ok()?.file_name().to_str()?))
        .collect()
}

struct Entry {
    path: PathBuf,
    file: String,
    start: u64,
    len: u64,
    modified: std::time::SystemTime,
}

/// Every entry of the replica's cache.
fn entries(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(files) = std::fs::read_dir(root) else {
        return out;
    };
    for file in files.flatten() {
        let Some(file_name) = file.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(read) = std::fs::read_dir(file.path()) else {
            continue;
        };
        for e in read.flatten() {
            let Some((start, _)) = e.file_name().to_str().and_then(parse_entry) else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            out.push(Entry {
                path: e.path(),
                file: file_name.clone(),
                start,
                len: meta.len(),
                modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            });
        }
    }
    out
}

/// FNV-1a, 64-bit: a stable name for a replica's directory.
#[cfg(test)]
mod tests {
    use super::*;
    use ltx::{Txid, TxidRange};
    use strata::storage::Level;

    fn file(n: u64) -> FileInfo {
        FileInfo {
            level: Level::L0,
            range: TxidRange::new(Txid::new(n), Txid::new(n)),
            size: 1 << 20,
            modified: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn entries_survive_a_reopen_damage_is_a_miss_and_the_total_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), "s3://bucket/db", 10_000).unwrap();
        let bytes: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        cache.put(&file(1), 1, &(100..3100), &bytes);
        assert_eq!(
            &cache.get(&file(1), 1, &(200..300)).unwrap()[..],
            &bytes[100..200]
        );
        assert!(cache.get(&file(1), 1, &(50..300)).is_none(), "not covered");
        assert!(
            cache.get(&file(2), 2, &(200..300)).is_none(),
            "another file"
        );
        assert!(
            cache.get(&file(1), 7, &(200..300)).is_none(),
            "the same name and size with other bytes (a replica written again)"
        );

        // Another process (or a restart) finds it.
        let again = DiskCache::open(dir.path(), "s3://bucket/db", 10_000).unwrap();
        assert_eq!(
            &again.get(&file(1), 1, &(100..3100)).unwrap()[..],
            &bytes[..]
        );
        let other = DiskCache::open(dir.path(), "s3://bucket/other", 10_000).unwrap();
        assert!(
            other.get(&file(1), 1, &(200..300)).is_none(),
            "another replica"
        );

        // A flipped byte is a miss, and the entry is gone.
        let path = again
            .root
            .join(DiskCache::file_dir(&file(1), 1))
            .join(entry_name(100, 3100));
        let mut data = std::fs::read(&path).unwrap();
        data[500] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert!(again.get(&file(1), 1, &(200..300)).is_none());
        assert!(!path.exists());

        // Past the limit, the oldest entries go.
        for n in 10..20 {
            cache.put(&file(n), n, &(0..3000), &bytes);
        }
        let total: u64 = entries(&cache.root).iter().map(|e| e.len).sum();
        assert!(total <= 10_000, "{total} bytes kept");
        assert!(
            cache.get(&file(19), 19, &(0..3000)).is_some(),
            "the newest is kept"
        );
    }
}
