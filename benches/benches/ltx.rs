//! Throughput of the `ltx` crate against the physical limit: a plain `lz4_flex` loop and a
//! bare CRC over the same pages.
//!
//! Run: `cargo bench -p strata-benches --bench ltx`. Throughput is page data (uncompressed
//! bytes) per second.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ltx::{
    Checksum, CompactOptions, Crc64, Decoder, Encoder, Header, HeaderFlags, PageNum, PageSize,
    Txid, TxidRange, compact, decode_page_frame, read_file_tail,
};
use lz4_flex::block::{
    CompressTable, compress_into_with_table, decompress_into, get_maximum_output_size,
};

const PAGE: usize = 4096;
const PAGES: u32 = 2048; // 8 MiB of page data

/// Pages shaped like SQLite table leaves: short text records with counters (compress ~3x),
/// or random bytes (do not compress).
fn pages(compressible: bool, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..PAGES)
        .map(|p| {
            if compressible {
                let mut page = Vec::with_capacity(PAGE);
                let mut row = u64::from(p) * 40;
                while page.len() < PAGE {
                    let r = rnd();
                    page.extend_from_slice(
                        format!(
                            "\x0d\x05user{row:06}|user{row}@example.com|{}|active;",
                            r % 100_000
                        )
                        .as_bytes(),
                    );
                    row += 1;
                }
                page.truncate(PAGE);
                page
            } else {
                (0..PAGE / 8).flat_map(|_| rnd().to_le_bytes()).collect()
            }
        })
        .collect()
}

fn header(range: TxidRange, commit: u32) -> Header {
    let mut h = Header::new(PageSize::new(PAGE as u32).unwrap(), commit, range);
    h.flags = HeaderFlags::NO_CHECKSUM;
    h
}

/// Encodes every `every`-th page into `out`, which is cleared first and reused across
/// iterations like a writer's buffer (a fresh allocation would time page faults).
fn encode_into(out: &mut Vec<u8>, pages: &[Vec<u8>], range: TxidRange, every: usize) {
    out.clear();
    let mut enc = Encoder::new(out, &header(range, PAGES)).unwrap();
    for (i, data) in pages.iter().enumerate().step_by(every) {
        enc.encode_page(PageNum::new(i as u32 + 1).unwrap(), data)
            .unwrap();
    }
    enc.finish(Checksum::ZERO).unwrap();
}

fn encode(pages: &[Vec<u8>], range: TxidRange, every: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, pages, range, every);
    out
}

fn kinds() -> [(&'static str, Vec<Vec<u8>>); 2] {
    [
        ("compressible", pages(true, 7)),
        ("random", pages(false, 7)),
    ]
}

fn bench_baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(u64::from(PAGES) * PAGE as u64));
    for (kind, pages) in kinds() {
        let mut table = CompressTable::small();
        let mut out = vec![0u8; get_maximum_output_size(PAGE)];
        g.bench_function(BenchmarkId::new("lz4_flex_compress", kind), |b| {
            b.iter(|| {
                for p in &pages {
                    black_box(compress_into_with_table(p, &mut out, &mut table).unwrap());
                }
            });
        });
        let compressed: Vec<Vec<u8>> = pages.iter().map(|p| lz4_flex::block::compress(p)).collect();
        let mut page = vec![0u8; PAGE];
        g.bench_function(BenchmarkId::new("lz4_flex_decompress", kind), |b| {
            b.iter(|| {
                for c in &compressed {
                    black_box(decompress_into(c, &mut page).unwrap());
                }
            });
        });
        if kind == "random" {
            g.bench_function("crc64_go_iso", |b| {
                b.iter(|| {
                    let mut crc = Crc64::new();
                    for p in &pages {
                        crc.update(p);
                    }
                    black_box(crc.value())
                });
            });
        }
    }
    g.finish();
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("ltx");
    g.throughput(Throughput::Bytes(u64::from(PAGES) * PAGE as u64));
    let range = TxidRange::single(Txid::new(2));
    for (kind, pages) in kinds() {
        let mut out = Vec::new();
        g.bench_function(BenchmarkId::new("encode", kind), |b| {
            b.iter(|| encode_into(black_box(&mut out), &pages, range, 1));
        });
        let file = encode(&pages, range, 1);
        let mut page = vec![0u8; PAGE];
        g.bench_function(BenchmarkId::new("decode", kind), |b| {
            b.iter(|| {
                let mut dec = Decoder::from_buf_read(&file[..]).unwrap();
                while let Some(p) = dec.decode_page(&mut page).unwrap() {
                    black_box(p);
                }
                black_box(dec.finish().unwrap())
            });
        });
    }
    g.finish();
}

/// Four overlapping inputs (every page, every 2nd, 4th, 8th) merged into one file.
fn bench_compact(c: &mut Criterion) {
    let mut g = c.benchmark_group("ltx_compact");
    for (kind, pages) in kinds() {
        let inputs: Vec<Vec<u8>> = [1usize, 2, 4, 8]
            .iter()
            .enumerate()
            .map(|(i, &every)| encode(&pages, TxidRange::single(Txid::new(i as u64 + 2)), every))
            .collect();
        let input_pages: u64 = [1u64, 2, 4, 8]
            .iter()
            .map(|e| u64::from(PAGES).div_ceil(*e))
            .sum();
        g.throughput(Throughput::Bytes(input_pages * PAGE as u64));
        g.bench_function(BenchmarkId::new("4_inputs", kind), |b| {
            b.iter(|| {
                let decoders = inputs
                    .iter()
                    .map(|f| Decoder::from_buf_read(&f[..]).unwrap())
                    .collect();
                black_box(
                    compact(
                        decoders,
                        Vec::with_capacity(PAGES as usize * PAGE),
                        CompactOptions::default(),
                    )
                    .unwrap(),
                )
            });
        });
    }
    g.finish();
}

/// One page through the index: the tail parse a cold reader does once per file, and the
/// per-page frame decode every cache miss pays.
fn bench_random_access(c: &mut Criterion) {
    let mut g = c.benchmark_group("ltx_page_read");
    g.throughput(Throughput::Bytes(PAGE as u64));
    let pages = pages(true, 7);
    let file = encode(&pages, TxidRange::single(Txid::new(2)), 1);
    let read = |r: std::ops::Range<u64>| Ok(file[r.start as usize..r.end as usize].to_vec());
    g.bench_function("read_tail_index", |b| {
        b.iter(|| black_box(read_file_tail(file.len() as u64, read).unwrap()));
    });
    let tail = read_file_tail(file.len() as u64, read).unwrap();
    let page_size = PageSize::new(PAGE as u32).unwrap();
    let mut page = vec![0u8; PAGE];
    let mut n = 0u32;
    g.bench_function("decode_one_page", |b| {
        b.iter(|| {
            n = (n + 977) % PAGES;
            let e = tail.index.get(PageNum::new(n + 1).unwrap()).unwrap();
            let frame = &file[e.offset as usize..(e.offset + u64::from(e.size)) as usize];
            black_box(decode_page_frame(frame, e.offset, page_size, &mut page).unwrap())
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_baseline, bench_codec, bench_compact, bench_random_access
}
criterion_main!(benches);
