//! Files a primary pushes over its live stream (`primary=`): a task reads the stream while a
//! reader is active and keeps, in memory, the files that continue the replica's newest state
//! until the replica holds them; a read transaction shows the replica's state with them on
//! top. The replica stays the source of everything else: what the stream does not bring
//! (a gap, a restarted history, a primary away) the poller does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ltx::{Checksum, HEADER_SIZE, Header, PageIndex, Trailer, Txid, TxidRange};
use strata::storage::{FileInfo, Level};
use strata::stream::{Head, PrimaryUrl, StreamConnection};

use super::follow::Follow;
use crate::Options;
use crate::page_map::{PageMap, content_id};

/// One file the primary pushed, decoded and verified.
pub(super) struct PushedFile {
    info: FileInfo,
    header: Header,
    index: PageIndex,
    trailer: Trailer,
    id: u64,
    body: Bytes,
}

impl PushedFile {
    /// Reads `body`, the file of `range` the primary sent: its header must name `range`,
    /// and the whole file must decode to its checksum.
    fn decode(range: TxidRange, body: Bytes) -> Result<PushedFile, String> {
        let invalid = |e: ltx::Error| format!("{range} from the primary: {e}");
        let head: &[u8; HEADER_SIZE] = body
            .get(..HEADER_SIZE)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("{range} from the primary: {} bytes", body.len()))?;
        let header = Header::from_bytes(head).map_err(invalid)?;
        if header.txid_range() != range {
            return Err(format!(
                "the primary announced {range} and sent {}",
                header.txid_range()
            ));
        }
        ltx::Decoder::new(&body[..])
            .and_then(ltx::Decoder::finish)
            .map_err(invalid)?;
        let tail = ltx::read_file_tail(body.len() as u64, |r| {
            Ok(body[r.start as usize..r.end as usize].to_vec())
        })
        .map_err(invalid)?;
        let info = FileInfo {
            level: Level::L0,
            range,
            size: body.len() as u64,
            modified: jiff::Timestamp::now(),
        };
        let id = content_id(&info, &header, tail.trailer.file_checksum);
        Ok(PushedFile {
            info,
            header,
            index: tail.index,
            trailer: tail.trailer,
            id,
            body,
        })
    }
}

/// The files pushed and not yet in the replica's state followed, and what the primary
/// last said of itself.
#[derive(Default)]
pub(super) struct Pushed {
    /// Files that continue one another, oldest first.
    files: VecDeque<Arc<PushedFile>>,
    /// Their bytes in all.
    bytes: u64,
    /// The primary's newest TXID, as last heard.
    primary: Txid,
    /// When this reader last held everything the primary had (`None`: never).
    level_at: Option<Instant>,
    /// A first stream ended, or could not be opened: a new reader waits no longer.
    tried: bool,
}

/// The pushed files a state shown holds on top of the replica's, and their bytes by
/// content identity: reads of those files are served from them, never from the replica.
#[derive(Default)]
pub(super) struct Top {
    files: Vec<Arc<PushedFile>>,
    bodies: HashMap<u64, Bytes>,
}

impl Top {
    /// The bytes of the pushed file of content identity `id`, if the state shown holds it.
    pub(super) fn body(&self, id: u64) -> Option<Bytes> {
        self.bodies.get(&id).cloned()
    }

    /// `base` with these files folded in again (the same state, planned from other replica
    /// files); `None` if they no longer continue it.
    pub(super) fn replay(&self, mut base: PageMap) -> Option<PageMap> {
        let from = base.txid;
        for f in self.files.iter().filter(|f| f.info.range.max > from) {
            if !Held::of(&base).continued_by(f) {
                return None;
            }
            base.apply(&f.info, &f.header, &f.index, f.trailer).ok()?;
        }
        Some(base)
    }
}

impl Pushed {
    /// The newest TXID held: the last file's, or `base`'s.
    fn tip(&self, base: Txid) -> Txid {
        self.files
            .back()
            .map_or(base, |f| f.info.range.max.max(base))
    }

    /// The replica's state followed is now `base`: the files it holds go; all of them if
    /// what is left does not continue it.
    pub(super) fn prune(&mut self, base: &PageMap) {
        while self
            .files
            .front()
            .is_some_and(|f| f.info.range.max <= base.txid)
        {
            let f = self.files.pop_front().expect("a front");
            self.bytes -= f.info.size;
        }
        if self
            .files
            .front()
            .is_some_and(|f| f.info.range.min != base.txid.next())
        {
            self.files.clear();
            self.bytes = 0;
        }
        self.heard(self.primary, base.txid);
    }

    /// The primary said its newest TXID is `primary`; this reader holds `held`.
    fn heard(&mut self, primary: Txid, held: Txid) {
        self.primary = self.primary.max(primary);
        if held >= self.primary && self.primary > Txid::ZERO {
            self.level_at = Some(Instant::now());
        }
    }

    /// Whether a new reader has waited enough for the stream: it held the primary's newest
    /// TXID once, or a first stream ended or could not be opened.
    pub(super) fn settled(&self) -> bool {
        self.level_at.is_some() || self.tried
    }

    /// Seconds since this reader last held the primary's newest TXID.
    pub(super) fn lag(&self) -> Option<f64> {
        self.level_at.map(|at| at.elapsed().as_secs_f64())
    }

    /// `base` with the pushed files that continue it folded in; `None` if none do. Files
    /// that do not continue it are dropped (the stream starts again from what is held).
    pub(super) fn on_top(&mut self, base: &PageMap) -> Option<(PageMap, Top)> {
        let mut map = base.clone();
        let mut top = Top::default();
        for f in self
            .files
            .iter()
            .skip_while(|f| f.info.range.max <= base.txid)
        {
            let folded = Held::of(&map).continued_by(f)
                && map.apply(&f.info, &f.header, &f.index, f.trailer).is_ok();
            if !folded {
                tracing::info!(file = %f.info.range, at = %map.txid, "a pushed file does not continue the replica's state: dropped");
                self.files.clear();
                self.bytes = 0;
                return None;
            }
            top.bodies.insert(f.id, f.body.clone());
            top.files.push(f.clone());
        }
        (!top.files.is_empty()).then_some((map, top))
    }
}

/// A state a pushed file may continue: its TXID, history and checksum.
#[derive(Clone, Copy)]
struct Held {
    txid: Txid,
    history: u64,
    post_apply: Checksum,
}

impl Held {
    fn of(map: &PageMap) -> Held {
        Held {
            txid: map.txid,
            history: map.history,
            post_apply: map.post_apply,
        }
    }

    /// Whether `file` continues this state: the next TXID, the same history, and the state
    /// it was made on (its pre-apply checksum) where both carry checksums.
    fn continued_by(self, file: &PushedFile) -> bool {
        let h = &file.header;
        file.info.range.min == self.txid.next()
            && (h.node_id == 0 || self.history == 0 || h.node_id == self.history)
            && (!h.pre_apply_checksum.is_set()
                || !self.post_apply.is_set()
                || h.pre_apply_checksum == self.post_apply)
    }
}

/// Reads `primary`'s stream while a reader is active; sleeps on `wake_stream` otherwise.
pub(super) async fn streamer(primary: PrimaryUrl, options: Options, follow: Arc<Follow>) {
    let pause = options.poll_interval.min(Duration::from_secs(1));
    let mut warned = false;
    while follow.until_active(&follow.wake_stream).await {
        let from = follow.push_tip();
        match StreamConnection::open(&primary, from).await {
            Ok(mut connection) => {
                warned = false;
                match read(&mut connection, &follow, &options).await {
                    Ok(why) => tracing::debug!(%primary, why, "the stream ended"),
                    Err(why) => tracing::info!(%primary, %why, "the stream ended"),
                }
            }
            Err(why) => {
                if !warned {
                    tracing::warn!(%why, "the primary cannot be reached: following the replica meanwhile");
                    warned = true;
                }
            }
        }
        follow.pushed.lock().unwrap().tried = true;
        tokio::time::sleep(pause).await;
    }
}

/// Keeps what `connection` brings until it ends, breaks, or the reader goes idle.
async fn read(
    connection: &mut StreamConnection,
    follow: &Follow,
    options: &Options,
) -> Result<&'static str, String> {
    // Pushed files wait in memory for the replica: at most this much of them.
    let room = (options.cache_size as u64 / 2).max(MIN_ROOM);
    loop {
        if follow.closed.load(Ordering::SeqCst) {
            return Ok("closed");
        }
        if !follow.is_active() {
            return Ok("the reader is idle");
        }
        match connection.next_head().await? {
            None => return Ok("the primary ended it"),
            Some(Head::Gap) => return Ok("it no longer reaches back to this reader"),
            Some(Head::Heartbeat { staged, .. }) => follow.heard(staged),
            Some(Head::File { range, len }) => {
                // The primary holds this much at least, taken or not.
                follow.heard(range.max);
                let tip = follow.push_tip();
                if range.max <= tip {
                    if len > room {
                        return Err(format!("{range} is held already and {len} bytes long"));
                    }
                    connection.read_file(len).await?;
                    continue;
                }
                if range.min != tip.next() {
                    return Err(format!("{range} does not continue TXID {tip}"));
                }
                if follow.pushed_bytes() + len > room {
                    return Err(format!(
                        "{len} more bytes would pass {room} held for the replica to catch up: waiting for it"
                    ));
                }
                let body = connection.read_file(len).await?;
                let file = tokio::task::spawn_blocking(move || PushedFile::decode(range, body))
                    .await
                    .map_err(|e| e.to_string())??;
                follow.push(file)?;
            }
        }
    }
}

/// The least room for pushed files, whatever the cache size.
const MIN_ROOM: u64 = 32 << 20;

impl Follow {
    /// The newest TXID held: the pushed files', or the replica's state followed.
    pub(super) fn push_tip(&self) -> Txid {
        let newest = self.newest.lock().unwrap();
        self.pushed.lock().unwrap().tip(newest.txid)
    }

    fn pushed_bytes(&self) -> u64 {
        self.pushed.lock().unwrap().bytes
    }

    fn heard(&self, primary: Txid) {
        let newest = self.newest.lock().unwrap();
        let mut pushed = self.pushed.lock().unwrap();
        let held = pushed.tip(newest.txid);
        pushed.heard(primary, held);
    }

    /// Keeps `file` if it continues what is held (the replica's state followed, then the
    /// files pushed before it).
    fn push(&self, file: PushedFile) -> Result<(), String> {
        let newest = self.newest.lock().unwrap();
        let mut pushed = self.pushed.lock().unwrap();
        let after = pushed
            .files
            .back()
            .filter(|last| last.info.range.max > newest.txid);
        let held = match after {
            Some(last) => Held {
                txid: last.info.range.max,
                history: match last.header.node_id {
                    0 => newest.history,
                    node => node,
                },
                post_apply: last.trailer.post_apply_checksum,
            },
            None => Held::of(&newest),
        };
        if !held.continued_by(&file) {
            return Err(format!(
                "{} does not continue TXID {} of the state held (another history, or another state)",
                file.info.range, held.txid
            ));
        }
        pushed.bytes += file.info.size;
        let max = file.info.range.max;
        pushed.files.push_back(Arc::new(file));
        let primary = pushed.primary;
        pushed.heard(primary.max(max), max);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltx::{Encoder, PageNum, PageSize};

    /// An LTX file of `range` writing `pages` (one byte each, repeated), made on the state
    /// of checksum `pre` and leaving `post`, of history `node`.
    fn ltx_file(range: (u64, u64), pages: &[(u32, u8)], pre: u64, post: u64, node: u64) -> Bytes {
        let range = TxidRange::new(Txid::new(range.0), Txid::new(range.1));
        let mut header = Header::new(PageSize::new(512).unwrap(), 4, range);
        header.node_id = node;
        if range.min != Txid::ONE {
            header.pre_apply_checksum = Checksum::from_crc(pre);
        }
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out, &header).unwrap();
        for &(pgno, byte) in pages {
            enc.encode_page(PageNum::new(pgno).unwrap(), &[byte; 512])
                .unwrap();
        }
        // A snapshot's post-apply checksum is its pages' (the decoder checks it).
        let post = if range.min == Txid::ONE {
            let mut sum = ltx::DatabaseChecksum::new();
            for &(pgno, byte) in pages {
                sum.add(header.page_size, PageNum::new(pgno).unwrap(), &[byte; 512]);
            }
            sum.value()
        } else {
            Checksum::from_crc(post)
        };
        enc.finish(post).unwrap();
        Bytes::from(out)
    }

    fn pushed(
        range: (u64, u64),
        pages: &[(u32, u8)],
        pre: u64,
        post: u64,
        node: u64,
    ) -> PushedFile {
        let r = TxidRange::new(Txid::new(range.0), Txid::new(range.1));
        PushedFile::decode(r, ltx_file(range, pages, pre, post, node)).unwrap()
    }

    /// A state at TXID 1 of history `node`, its pages all `byte`.
    fn base(byte: u8, node: u64) -> PageMap {
        let snapshot = pushed(
            (1, 1),
            &[(1, byte), (2, byte), (3, byte), (4, byte)],
            0,
            0,
            node,
        );
        PageMap::build([(
            &snapshot.info,
            &snapshot.header,
            &snapshot.index,
            snapshot.trailer,
        )])
        .unwrap()
        .unwrap()
    }

    fn hold(p: &mut Pushed, file: PushedFile) {
        p.bytes += file.info.size;
        p.files.push_back(Arc::new(file));
    }

    #[test]
    fn pushed_files_show_on_top_of_the_replica_and_go_once_it_holds_them() {
        let at1 = base(1, 7);
        let s1 = at1.post_apply.get();
        let mut p = Pushed::default();
        hold(&mut p, pushed((2, 2), &[(2, 2)], s1, 0x22, 7));
        hold(&mut p, pushed((3, 3), &[(3, 3)], 0x22, 0x33, 7));
        let (map, top) = p.on_top(&at1).unwrap();
        assert_eq!(map.txid, Txid::new(3));
        assert_eq!(map.post_apply, Checksum::from_crc(0x33));
        let file_of = |pgno| {
            map.files[map.frame(pgno).unwrap().file as usize]
                .range
                .max
                .get()
        };
        assert_eq!([1, 2, 3, 4].map(file_of), [1, 2, 3, 1]);
        assert!(
            top.body(map.ids[map.frame(3).unwrap().file as usize])
                .is_some()
        );

        // The replica reaches TXID 2: file 2 goes, file 3 still shows on top of it.
        let mut at2 = at1.clone();
        let two = pushed((2, 2), &[(2, 2)], s1, 0x22, 7);
        at2.apply(&two.info, &two.header, &two.index, two.trailer)
            .unwrap();
        p.prune(&at2);
        assert_eq!(p.files.len(), 1);
        assert_eq!(p.on_top(&at2).unwrap().0.txid, Txid::new(3));
        // And TXID 3: nothing is held any more.
        let (at3, _) = p.on_top(&at2).unwrap();
        p.prune(&at3);
        assert!(p.files.is_empty() && p.bytes == 0);
    }

    #[test]
    fn a_pushed_file_of_another_state_or_history_is_never_shown() {
        let at1 = base(1, 7);
        let s1 = at1.post_apply.get();
        let held = Held::of(&at1);
        assert!(held.continued_by(&pushed((2, 2), &[(2, 2)], s1, 0x22, 7)));
        assert!(
            !held.continued_by(&pushed((2, 2), &[(2, 2)], 0x99, 0x22, 7)),
            "another state"
        );
        assert!(
            !held.continued_by(&pushed((2, 2), &[(2, 2)], 0x11, 0x22, 8)),
            "another history"
        );
        assert!(
            !held.continued_by(&pushed((3, 3), &[(2, 2)], 0x11, 0x22, 7)),
            "a gap"
        );

        // Files held that stop continuing the replica's state (it was replaced under them)
        // are dropped, not shown.
        let mut p = Pushed::default();
        hold(&mut p, pushed((2, 2), &[(2, 2)], s1, 0x22, 7));
        let other = base(5, 9);
        assert!(p.on_top(&other).is_none());
        assert!(p.files.is_empty());
    }

    #[test]
    fn a_file_whose_bytes_do_not_match_what_was_announced_is_refused() {
        let body = ltx_file((2, 3), &[(2, 2)], 0x11, 0x22, 7);
        let r = |a, b| TxidRange::new(Txid::new(a), Txid::new(b));
        assert!(
            PushedFile::decode(r(2, 2), body.clone()).is_err(),
            "another range"
        );
        let mut broken = body.to_vec();
        let at = broken.len() / 2;
        broken[at] ^= 1;
        assert!(
            PushedFile::decode(r(2, 3), Bytes::from(broken)).is_err(),
            "a flipped bit"
        );
        assert!(
            PushedFile::decode(r(2, 3), body.slice(..40)).is_err(),
            "cut short"
        );
        assert!(PushedFile::decode(r(2, 3), body).is_ok());
    }
}
