//! Compaction throughput and memory: N L0 files that together hold a database's pages,
//! merged into one L1 file by strata's compactor, next to a bare LZ4 decode + encode of the
//! same pages.
//!
//! ```text
//! compaction_bench prepare DIR DB_MB INPUTS   # a directory replica: a snapshot, INPUTS L0 files
//! compaction_bench run DIR                    # one L1 pass; prints MB/s and peak RSS
//! compaction_bench snapshot DIR               # one snapshot pass (the snapshot and L0)
//! compaction_bench lz4 DB_MB                  # the same pages through lz4_flex alone
//! ```
//!
//! Run each step as its own process so the peak RSS printed is the step's own.

use std::time::{Duration, Instant};

use ltx::{Checksum, Encoder, Header, HeaderFlags, PageNum, PageSize, Txid, TxidRange};
use strata::compact::{CompactionOptions, Compactor, Outcome};
use strata::compact::{LevelIndex, SharedIndex};
use strata::storage::{Level, Replica, ReplicaUrl};

const PAGE: usize = 4096;

/// A page shaped like a SQLite table leaf: short text records (compresses ~3x).
fn page(pgno: u32, version: u64, out: &mut Vec<u8>) {
    out.clear();
    let mut x = (u64::from(pgno) << 20 | version) | 1;
    let mut row = u64::from(pgno) * 40;
    while out.len() < PAGE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "\x0d\x05user{row:06}|user{row}@example.com|{}|active;",
                x % 100_000
            )
            .as_bytes(),
        );
        row += 1;
    }
    out.truncate(PAGE);
}

fn page_count(db_mb: u32) -> u32 {
    db_mb * (1 << 20) / PAGE as u32
}

/// The lock page (at 1 GiB) is never written.
fn lock_page(pgno: u32) -> bool {
    u64::from(pgno) == (1u64 << 30) / PAGE as u64 + 1
}

fn encode(
    range: TxidRange,
    commit: u32,
    pages: impl Iterator<Item = u32>,
    version: u64,
) -> Vec<u8> {
    let mut header = Header::new(PageSize::new(PAGE as u32).unwrap(), commit, range);
    header.flags = HeaderFlags::NO_CHECKSUM;
    header.timestamp = written().as_millisecond();
    let mut enc = Encoder::new(Vec::new(), &header).unwrap();
    let mut buf = Vec::with_capacity(PAGE);
    for pgno in pages.filter(|&p| !lock_page(p)) {
        page(pgno, version, &mut buf);
        enc.encode_page(PageNum::new(pgno).unwrap(), &buf).unwrap();
    }
    enc.finish(Checksum::ZERO).unwrap().writer
}

fn peak_rss_mib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, which starts zeroed.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as f64 / 1024.0
}

/// The files' time: two days ago, so no pass is "too early" for its level.
fn written() -> jiff::Timestamp {
    jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48)
}

fn replica(dir: &str) -> Replica {
    Replica::create(&ReplicaUrl::parse(dir).unwrap()).unwrap()
}

async fn prepare(dir: &str, db_mb: u32, inputs: u32) {
    let replica = replica(dir);
    let n = page_count(db_mb);
    let snapshot = TxidRange::single(Txid::ONE);
    let bytes = encode(snapshot, n, 1..=n, 0);
    replica
        .write(Level::SNAPSHOT, snapshot, bytes.into(), written())
        .await
        .unwrap();
    // Input i rewrites pages i*n/inputs ..: together they rewrite the whole database.
    for i in 0..inputs {
        let txid = Txid::new(u64::from(i) + 2);
        let (lo, hi) = (i * n / inputs + 1, (i + 1) * n / inputs);
        let range = TxidRange::single(txid);
        let bytes = encode(range, n, lo..=hi, u64::from(i) + 1);
        replica
            .write(Level::L0, range, bytes.into(), written())
            .await
            .unwrap();
    }
}

async fn run(dir: &str, level: Level) {
    let replica = replica(dir);
    let files = replica.list_all().await.unwrap();
    let inputs = files.iter().filter(|f| f.level == Level::L0).count();
    let levels = if level == Level::SNAPSHOT {
        vec![]
    } else {
        vec![Duration::from_secs(30)]
    };
    let l0_bytes: u64 = files
        .iter()
        .filter(|f| f.level == Level::L0)
        .map(|f| f.size)
        .sum();
    let mut options = CompactionOptions::default();
    options.levels = levels;
    options.retention.enabled = false;
    // Page data merged: every page of every input.
    let inputs_pages: u64 = files
        .iter()
        .filter(|f| f.level == Level::L0 || level == Level::SNAPSHOT)
        .map(|f| file_pages(dir, f))
        .sum();
    let index = SharedIndex::new(LevelIndex::from_files(files, jiff::Timestamp::now()));
    let scratch = std::path::Path::new(dir).join("scratch");
    let compactor = Compactor::new(replica, index, options, scratch);
    let start = Instant::now();
    let outcome = compactor
        .run_level(level, jiff::Timestamp::now())
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let Outcome::Compacted { file, .. } = outcome else {
        panic!("nothing compacted: {outcome:?}");
    };
    let mb = (inputs_pages * PAGE as u64) as f64 / 1e6;
    println!(
        "{level}, {inputs} L0 inputs: {mb:.0} MB of pages ({:.1} MB of L0 files) in {secs:.2} s = {:.0} MB/s; output {:.1} MB; peak RSS {:.0} MiB",
        l0_bytes as f64 / 1e6,
        mb / secs,
        file.size as f64 / 1e6,
        peak_rss_mib()
    );
}

/// Pages in the output (its page index).
fn file_pages(dir: &str, file: &strata::storage::FileInfo) -> u64 {
    let path = std::path::Path::new(dir)
        .join("ltx")
        .join(file.level.get().to_string())
        .join(file.range.file_name());
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let tail = ltx::read_file_tail(file.size, |r| {
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        f.read_exact_at(&mut buf, r.start).map(|()| buf)
    })
    .unwrap();
    tail.index.len() as u64
}

fn lz4(db_mb: u32) {
    let n = page_count(db_mb);
    let mut buf = Vec::with_capacity(PAGE);
    let compressed: Vec<Vec<u8>> = (1..=n)
        .map(|p| {
            page(p, 1, &mut buf);
            lz4_flex::block::compress(&buf)
        })
        .collect();
    let start = Instant::now();
    let mut out = vec![0u8; PAGE];
    let mut total = 0usize;
    for c in &compressed {
        lz4_flex::block::decompress_into(c, &mut out).unwrap();
        total += lz4_flex::block::compress(&out).len();
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (n as usize * PAGE) as f64 / 1e6;
    println!(
        "bare lz4_flex decode+encode: {mb:.0} MB of pages in {secs:.2} s = {:.0} MB/s ({total} bytes out)",
        mb / secs
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["prepare", dir, mb, inputs] => {
            prepare(dir, mb.parse().unwrap(), inputs.parse().unwrap()).await;
        }
        ["run", dir] => run(dir, Level::new(1).unwrap()).await,
        ["snapshot", dir] => run(dir, Level::SNAPSHOT).await,
        ["lz4", mb] => lz4(mb.parse().unwrap()),
        _ => eprintln!("usage: compaction_bench prepare DIR DB_MB INPUTS | run DIR | lz4 DB_MB"),
    }
}
