//! Reads: a page from the hydrated copy, the cache, a file held whole, the disk cache or the
//! replica (with its read-ahead), and page 1 as SQLite should see it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use strata::storage::FileInfo;

use super::read_ahead::read_ahead;
use super::{Db, Inner};
use crate::cache::FrameKey;
use crate::runtime;
use crate::state::{self, RestorePoint, VfsError};

impl Db {
    /// Fills `buf` from byte `offset` of the database. Returns `false` for a short read
    /// (past the end; the rest is zeroed).
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> Result<bool, VfsError> {
        let mut inner = self.inner.lock().unwrap();
        let page_size = inner.map.page_size.bytes() as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let pgno = at / page_size + 1;
            if pgno > u64::from(inner.map.pages()) {
                buf[done..].fill(0);
                return Ok(false);
            }
            let pgno = pgno as u32;
            let within = (at % page_size) as usize;
            let n = (page_size as usize - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            self.read_page(&mut inner, pgno, within, out, true)?;
            if pgno == 1 {
                patch_header(&inner, within, out);
            }
            done += n;
        }
        Ok(true)
    }

    fn read_page(
        &self,
        inner: &mut Inner,
        pgno: u32,
        within: usize,
        out: &mut [u8],
        retry: bool,
    ) -> Result<(), VfsError> {
        let Some(frame) = inner.map.frame(pgno) else {
            out.fill(0);
            return Ok(());
        };
        if let Some(hydrated) = inner
            .hydrated
            .as_ref()
            .filter(|h| h.holds(&inner.map, frame))
        {
            match hydrated.read(pgno, within, out) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    crate::report(
                        crate::ffi::SQLITE_IOERR,
                        &format!(
                            "strata vfs: cannot read the hydrated file: {e}; reading from the replica"
                        ),
                    );
                    inner.hydrated = None;
                }
            }
        }
        let file = &inner.map.files[frame.file as usize];
        if let Some(reason) = self.follow.hydration.as_ref().and_then(|h| h.corrupt(file)) {
            return Err(VfsError::Corrupt {
                file: file.to_string(),
                reason,
            });
        }
        let key = FrameKey::new(inner.map.ids[frame.file as usize], frame.offset);
        if let Some(page) = inner.cache.get(&key) {
            out.copy_from_slice(&page[within..within + out.len()]);
            return Ok(());
        }
        match self.fetch(inner, pgno) {
            Err(e) if retry && e.is_not_found() => {
                // Compaction and retention moved on: plan the same TXID again (the replica's
                // under pushed files shown, which fold in again), retry once.
                let replica = self.replica.clone();
                let txid = inner.base.txid;
                let whole = self.options.whole_file_max;
                let loaded = runtime::run(self.options.timeout, async move {
                    state::load(&replica, RestorePoint::Txid(txid), whole).await
                });
                let history = inner.map.history;
                let loaded = match loaded {
                    // The same TXID of another history is not the state this transaction
                    // reads: as good as gone.
                    Ok(l) if l.map.history != 0 && history != 0 && l.map.history != history => {
                        Err(VfsError::Gone {
                            txid,
                            plan: strata::restore::PlanError::Unavailable {
                                target: txid,
                                available: "the replica holds another history now".to_owned(),
                            },
                        })
                    }
                    Ok(l) => Ok(l),
                    Err(VfsError::Plan(plan)) => Err(VfsError::Gone { txid, plan }),
                    Err(e) => Err(e),
                };
                let loaded = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        // The state is gone: the next transaction shows what the replica
                        // restores to now, planned at the next poll.
                        if matches!(e, VfsError::Gone { .. })
                            && inner.target == RestorePoint::Latest
                        {
                            self.follow.replan_now.store(true, Ordering::SeqCst);
                            self.follow.wake.notify_one();
                        }
                        return Err(e);
                    }
                };
                let mut base = loaded.map;
                base.epoch = inner.map.epoch;
                let Some(map) = inner.top.replay(base.clone()) else {
                    return Err(VfsError::Config(format!(
                        "the files the primary pushed do not continue TXID {txid} as the replica holds it now"
                    )));
                };
                inner.bodies.keep(loaded.bodies);
                inner.base = Arc::new(base);
                inner.map = Arc::new(map);
                return self.read_page(inner, pgno, within, out, false);
            }
            r => r?,
        }
        let page = inner.cache.get(&key).ok_or_else(|| {
            VfsError::Config(format!("page {pgno} was fetched but is not in the cache"))
        })?;
        out.copy_from_slice(&page[within..within + out.len()]);
        Ok(())
    }

    /// Fetches page `pgno` and its read-ahead ([`read_ahead`]). The frames are spread over
    /// several files (a page's newest version is in whichever file last wrote it); each
    /// file's are read in ranged reads that cover neighbours together ([`GAP_MAX`]) up to
    /// [`CHUNK`] bytes each, all at once.
    fn fetch(&self, inner: &mut Inner, pgno: u32) -> Result<(), VfsError> {
        let runs = read_ahead(inner, pgno);
        // Bytes of each run: from a file held whole, or one ranged read each, all at once.
        let mut bytes: Vec<Option<bytes::Bytes>> = runs
            .iter()
            .map(|run| {
                let id = inner.map.ids[run.file as usize];
                let body = inner.top.body(id).or_else(|| inner.bodies.get(id))?;
                let range = run.range.start as usize..run.range.end as usize;
                body.get(range.clone()).map(|_| body.slice(range))
            })
            .collect();
        if let Some(disk) = &self.disk {
            for (i, run) in runs.iter().enumerate() {
                if bytes[i].is_none() {
                    let f = run.file as usize;
                    bytes[i] = disk.get(&inner.map.files[f], inner.map.ids[f], &run.range);
                }
            }
        }
        let missing: Vec<(usize, FileInfo, u64, std::ops::Range<u64>)> = runs
            .iter()
            .enumerate()
            .filter(|(i, _)| bytes[*i].is_none())
            .map(|(i, run)| {
                let info = FileInfo::clone(&inner.map.files[run.file as usize]);
                (i, info, inner.map.ids[run.file as usize], run.range.clone())
            })
            .collect();
        if !missing.is_empty() {
            let replica = self.replica.clone();
            let disk = self.disk.clone();
            let fetched = runtime::run(self.options.timeout, async move {
                let reads = missing.into_iter().map(|(i, info, id, range)| {
                    let replica = replica.clone();
                    let disk = disk.clone();
                    async move {
                        let b = replica.read_range(&info, range.clone()).await?;
                        if let Some(disk) = disk {
                            // Kept in the background, checksummed as fetched.
                            tokio::task::spawn_blocking({
                                let b = b.clone();
                                move || disk.put(&info, id, &range, &b)
                            });
                        }
                        Ok::<_, VfsError>(b)
                    }
                    .map(move |r| (i, r))
                });
                Ok(futures::future::join_all(reads).await)
            })?;
            // Only the run holding the page asked for must arrive: the rest is read-ahead,
            // whose files retention may already have deleted (the page map points at them
            // until SQLite asks for one of their pages, which is then planned again).
            let own = runs
                .iter()
                .position(|run| run.frames.iter().any(|(p, _)| *p == pgno));
            for (i, b) in fetched {
                match b {
                    Ok(b) => bytes[i] = Some(b),
                    Err(e) if Some(i) == own => return Err(e),
                    Err(e) => tracing::debug!(error = %e, "read-ahead failed"),
                }
            }
        }
        let page_size = inner.map.page_size;
        for (run, bytes) in runs.into_iter().zip(bytes) {
            let Some(bytes) = bytes else {
                continue;
            };
            let file = inner.map.files[run.file as usize].clone();
            let id = inner.map.ids[run.file as usize];
            for (p, f) in run.frames {
                let start = (f.offset - run.range.start) as usize;
                let Some(frame_bytes) = bytes.get(start..start + f.size as usize) else {
                    return Err(self.corrupt(
                        &file,
                        ltx::Error::Truncated {
                            offset: f.offset,
                            what: "page frame",
                        },
                    ));
                };
                let mut page = inner.cache.spare(page_size.bytes());
                f.decode(frame_bytes, p, page_size, &mut page)
                    .map_err(|e| self.corrupt(&file, e))?;
                inner.cache.insert(FrameKey::new(id, f.offset), page);
            }
        }
        Ok(())
    }

    fn corrupt(&self, file: &strata::storage::FileInfo, error: ltx::Error) -> VfsError {
        VfsError::ltx(&self.replica, file, error)
    }
}

/// Page 1 as SQLite should see it: rollback-journal mode (so it never looks for a WAL), and
/// a change counter that moves with the state shown, with the in-header size valid for it.
fn patch_header(inner: &Inner, within: usize, out: &mut [u8]) {
    let generation = inner.generation.to_be_bytes();
    let pages = inner.map.pages().to_be_bytes();
    let patches: [(usize, &[u8]); 5] = [
        (18, &[1]),
        (19, &[1]),
        (24, &generation),
        (28, &pages),
        (92, &generation),
    ];
    for (at, bytes) in patches {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(slot) = (at + i).checked_sub(within).and_then(|j| out.get_mut(j)) {
                *slot = *b;
            }
        }
    }
}
