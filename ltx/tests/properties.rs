//! Property tests: random files round-trip; compaction equals applying files in order.

mod common;

use std::io::Cursor;

use common::decode;
use ltx::{
    ApplyChecks, Checksum, CompactOptions, Decoder, Encoder, Header, HeaderFlags, PageEncoding,
    PageNum, PageSize, Txid, TxidRange, apply, compact, database_checksum, decode_page_frame,
    read_file_tail,
};
use proptest::prelude::*;

/// Page contents: compressible (a repeated seed byte pattern) or random.
fn page_data(size: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|i| {
            if compressible {
                (seed as usize + i / 64) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn page_size() -> impl Strategy<Value = PageSize> {
    prop_oneof![4 => Just(512u32), 2 => Just(1024), 2 => Just(4096), 1 => Just(65536)]
        .prop_map(|n| PageSize::new(n).unwrap())
}

fn encoding() -> impl Strategy<Value = PageEncoding> {
    prop_oneof![Just(PageEncoding::Block), Just(PageEncoding::Frame)]
}

/// A database model: its pages (index 0 is page 1).
type Db = Vec<Vec<u8>>;

fn db_checksum(db: &Db, page_size: PageSize) -> Checksum {
    let bytes: Vec<u8> = db.concat();
    database_checksum(&bytes[..], page_size, db.len() as u32).unwrap()
}

/// One step of a chain: the new commit, which existing pages change, and their content.
#[derive(Clone, Debug)]
struct Step {
    commit: u32,
    changed: Vec<bool>,
    seed: u64,
    compressible: bool,
}

fn step(max_pages: u32) -> impl Strategy<Value = Step> {
    (
        1..=max_pages,
        prop::collection::vec(any::<bool>(), max_pages as usize),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(commit, changed, seed, compressible)| Step {
            commit,
            changed,
            seed,
            compressible,
        })
}

/// Builds a chain: a snapshot then incrementals. An incremental holds the pages it changes
/// plus every page it adds when the database grows, as Litestream's capture does.
fn build_chain(
    page_size: PageSize,
    steps: &[Step],
    no_checksum: bool,
    encoding: PageEncoding,
) -> (Vec<Vec<u8>>, Vec<Db>) {
    let mut db: Db = Vec::new();
    let mut files = Vec::new();
    let mut states = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let txid = Txid::new(i as u64 + 1);
        let pre = db_checksum(&db, page_size);
        let prev_commit = db.len() as u32;
        db.truncate(s.commit as usize);
        let mut written = Vec::new();
        for p in 1..=s.commit {
            let grows = p > prev_commit;
            if i == 0 || grows || s.changed[p as usize - 1] {
                let data = page_data(page_size.bytes(), s.seed ^ u64::from(p), s.compressible);
                if grows {
                    db.push(data.clone());
                } else {
                    db[p as usize - 1] = data.clone();
                }
                written.push((PageNum::new(p).unwrap(), data));
            }
        }
        let mut h = Header::new(page_size, s.commit, TxidRange::single(txid));
        h.timestamp = 1_700_000_000_000 + i as i64;
        if no_checksum {
            h.flags = HeaderFlags::NO_CHECKSUM;
        } else if i > 0 {
            h.pre_apply_checksum = pre;
        }
        let mut enc = Encoder::with_encoding(Vec::new(), &h, encoding).unwrap();
        for (pgno, data) in &written {
            enc.encode_page(*pgno, data).unwrap();
        }
        let post = if no_checksum {
            Checksum::ZERO
        } else {
            db_checksum(&db, page_size)
        };
        files.push(enc.finish(post).unwrap().writer);
        states.push(db.clone());
    }
    (files, states)
}

fn apply_all<'a>(db: &mut Cursor<Vec<u8>>, files: impl IntoIterator<Item = &'a Vec<u8>>) {
    for f in files {
        apply(
            Decoder::from_buf_read(&f[..]).unwrap(),
            db,
            ApplyChecks::Database,
        )
        .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_files_round_trip(
        page_size in page_size(),
        encoding in encoding(),
        snapshot in any::<bool>(),
        no_checksum in any::<bool>(),
        commit in 0u32..48,
        present in prop::collection::vec(any::<bool>(), 48),
        seeds in prop::collection::vec((any::<u64>(), any::<bool>()), 48),
    ) {
        let txids = if snapshot { TxidRange::new(Txid::ONE, Txid::new(3)) } else { TxidRange::new(Txid::new(4), Txid::new(9)) };
        let mut h = Header::new(page_size, commit, txids);
        h.timestamp = -5;
        if no_checksum {
            h.flags = HeaderFlags::NO_CHECKSUM;
        } else if !snapshot {
            h.pre_apply_checksum = Checksum::from_crc(0x1234);
        }
        let pages: Vec<(PageNum, Vec<u8>)> = (1..=commit)
            .filter(|&p| snapshot || present[p as usize - 1])
            .map(|p| {
                let (seed, compressible) = seeds[p as usize - 1];
                (PageNum::new(p).unwrap(), page_data(page_size.bytes(), seed, compressible))
            })
            .collect();
        let post = if no_checksum {
            Checksum::ZERO
        } else if snapshot || commit == 0 {
            let db: Db = pages.iter().map(|(_, d)| d.clone()).collect();
            db_checksum(&db, page_size)
        } else {
            Checksum::from_crc(0x5678)
        };
        let mut enc = Encoder::with_encoding(Vec::new(), &h, encoding).unwrap();
        for (pgno, data) in &pages {
            enc.encode_page(*pgno, data).unwrap();
        }
        let out = enc.finish(post).unwrap();
        prop_assert_eq!(out.file_size, out.writer.len() as u64);

        let c = decode(&out.writer).unwrap();
        prop_assert_eq!(c.header, h);
        prop_assert_eq!(&c.pages, &pages);
        prop_assert_eq!(c.decoded.trailer, out.trailer);

        let bytes = &out.writer;
        let tail = read_file_tail(bytes.len() as u64, |r| Ok(bytes[r.start as usize..r.end as usize].to_vec())).unwrap();
        let mut page = vec![0u8; page_size.bytes()];
        for (pgno, data) in &pages {
            let e = tail.index.get(*pgno).unwrap();
            decode_page_frame(&bytes[e.range().start as usize..e.range().end as usize], e.offset, page_size, &mut page).unwrap();
            prop_assert_eq!(&page, data);
        }
    }

    #[test]
    fn compaction_equals_sequential_apply(
        page_size in prop_oneof![Just(512u32), Just(1024)].prop_map(|n| PageSize::new(n).unwrap()),
        steps in prop::collection::vec(step(24), 2..9),
        no_checksum in any::<bool>(),
        encoding in encoding(),
        split in any::<prop::sample::Index>(),
        len in any::<prop::sample::Index>(),
    ) {
        let (files, states) = build_chain(page_size, &steps, no_checksum, encoding);
        let from = split.index(files.len());
        let to = from + len.index(files.len() - from);

        let mut expected = Cursor::new(Vec::new());
        apply_all(&mut expected, &files);
        prop_assert_eq!(expected.get_ref(), &states.last().unwrap().concat());

        let merged = {
            let inputs = files[from..=to].iter().map(|f| Decoder::from_buf_read(&f[..]).unwrap()).collect();
            compact(inputs, Vec::new(), CompactOptions { encoding, ..Default::default() }).unwrap().writer
        };
        let h = *Decoder::from_buf_read(&merged[..]).unwrap().header();
        prop_assert_eq!(h.txid_range(), TxidRange::new(Txid::new(from as u64 + 1), Txid::new(to as u64 + 1)));
        prop_assert_eq!(h.commit, steps[to].commit);
        prop_assert_eq!(h.is_snapshot(), from == 0);

        let mut actual = Cursor::new(Vec::new());
        apply_all(&mut actual, files[..from].iter().chain([&merged]).chain(&files[to + 1..]));
        prop_assert_eq!(actual.get_ref(), expected.get_ref());
    }
}
