#!/usr/bin/env python3
"""Capture benchmark: a write workload with no replication, under `strata replicate`, and under
`litestream replicate` (0.5.17), each replicating to a local directory at the default 1 s
interval.

Workload (one writer, Python's SQLite): N small transactions (one row each), then a burst of
large ones (a few MB each). Reported per mode: writer throughput; replication lag from commit
to an L0 file containing it appearing in the replica (p50, p99); CPU seconds and peak RSS of
the replicating process.

Lag: every transaction also records its sequence number in a `progress` table. A watcher
notes when each L0 file first appears; afterwards each L0 TXID is restored (with strata, which
reads both tools' replicas) to read the highest sequence number it holds.

    python3 benches/compare/replicate.py [--small 20000] [--large 20] [--runs N]
        [--app-autocheckpoint on|off] [--synchronous full|normal] [--workdir DIR] [--json F]
"""

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import TARGET, build_release, env_for, log, rmtree, write_json

# Rows 1..? without generate_series, which not every SQLite build has.
SERIES = "RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"

LITESTREAM_CONFIG = """\
dbs:
  - path: {db}
    replica:
      type: file
      path: {replica}
"""


def make_db(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.execute("CREATE TABLE progress (seq INTEGER)")
    conn.execute("INSERT INTO progress VALUES (0)")
    conn.execute(f"WITH {SERIES} INSERT INTO rows (body) SELECT printf('seed row %d', i) FROM n", (20000,))
    conn.close()


def workload(db, small, large, autocheckpoint, synchronous):
    """Runs the transactions; returns commit times (index = sequence number) and phase times."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    if not autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint=0")
    commits = [0.0]
    start = time.time()
    for seq in range(1, small + 1):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO rows (body) VALUES (?)", (f"row {seq} " * 4,))
        conn.execute("UPDATE progress SET seq = ?", (seq,))
        conn.execute("COMMIT")
        commits.append(time.time())
    small_time = time.time() - start
    start = time.time()
    for i in range(large):
        seq = small + 1 + i
        conn.execute("BEGIN")
        conn.execute(f"WITH {SERIES} INSERT INTO blobs (data) SELECT randomblob(4000) FROM n", (1000,))
        conn.execute("UPDATE progress SET seq = ?", (seq,))
        conn.execute("COMMIT")
        commits.append(time.time())
    large_time = time.time() - start
    conn.close()
    return commits, small_time, large_time


def watch(l0_dir, out):
    """Runs in its own process (so it takes nothing from the writer): notes when each L0
    file first appears, one "name time" line each, until killed."""
    seen = set()
    with open(out, "w") as f:
        while True:
            if os.path.isdir(l0_dir):
                now = time.time()
                for name in os.listdir(l0_dir):
                    if name.endswith(".ltx") and name not in seen:
                        seen.add(name)
                        f.write(f"{name} {now}\n")
                        f.flush()
            time.sleep(0.01)


class Watcher:
    """The watcher process, and what it saw."""

    def __init__(self, l0_dir, out):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, __file__, "--watch", str(l0_dir), str(out)])

    def finish(self):
        self.proc.kill()
        self.proc.wait()
        lines = Path(self.out).read_text().split()
        return {name: float(t) for name, t in zip(lines[::2], lines[1::2])}


def max_seq_per_txid(replica, names, work):
    """Restores each L0 TXID and reads the highest sequence number it holds."""
    out = {}
    for name in sorted(names):
        txid = name.split("-")[1].split(".")[0]
        db = work / "probe.db"
        db.unlink(missing_ok=True)
        subprocess.run([str(TARGET / "strata"), "restore", "--force", "--txid", txid, "-o", str(db), f"file://{replica}"],
                       check=True, capture_output=True, env=env_for("strata"))
        conn = sqlite3.connect(db)
        out[name] = conn.execute("SELECT seq FROM progress").fetchone()[0]
        conn.close()
    return out


# Seconds per point of the writer-throughput-over-time series.
THROUGHPUT_BIN = 0.25


def binned(times, width):
    """Commits per second in consecutive `width`-second bins from the first commit."""
    if not times:
        return []
    counts = [0] * (int((times[-1] - times[0]) / width) + 1)
    for t in times:
        counts[int((t - times[0]) / width)] += 1
    return [c / width for c in counts]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(mode, work, small, large, app_autocheckpoint, synchronous):
    rmtree(work)
    work.mkdir(parents=True)
    db, replica = work / "app.db", work / "replica"
    make_db(db)
    proc, watcher = None, None
    if mode == "strata":
        proc = subprocess.Popen([str(TARGET / "strata"), "replicate", str(db), str(replica)],
                                stdout=subprocess.DEVNULL, stderr=open(work / "log", "w"), env=env_for("strata"))
    elif mode == "litestream":
        (work / "litestream.yml").write_text(LITESTREAM_CONFIG.format(db=db, replica=replica))
        proc = subprocess.Popen(["litestream", "replicate", "-config", str(work / "litestream.yml")],
                                stdout=subprocess.DEVNULL, stderr=open(work / "log", "w"), env=env_for("litestream"))
    if proc:
        watcher = Watcher(replica / "ltx" / "0", work / "seen")
        time.sleep(3)  # the first (full) sync happens before the workload
    # Without a replicator nothing else checkpoints, so the application keeps SQLite's default.
    commits, small_time, large_time = workload(db, small, large, app_autocheckpoint or mode == "none", synchronous)
    result = {"mode": mode, "small_tps": small / small_time, "large_tps": large / large_time,
              "throughput": binned(commits[1:small + 1], THROUGHPUT_BIN)}
    if proc:
        time.sleep(3)  # let the tail replicate
        seen = watcher.finish()
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        result["cpu"] = usage.ru_utime + usage.ru_stime
        result["rss"] = usage.ru_maxrss / 1024
        seqs = max_seq_per_txid(replica, seen, work)
        by_seq = sorted((seqs[name], seen[name]) for name in seqs)
        lags = []
        for seq in range(1, len(commits)):
            visible = next((t for s, t in by_seq if s >= seq), None)
            if visible is None:
                raise RuntimeError(f"{mode}: transaction {seq} never reached the replica")
            lags.append(visible - commits[seq])
        result["lag_p50"] = statistics.median(lags)
        result["lag_p99"] = percentile(lags, 99)
        result["files"] = len(seqs)
    log(f"{mode}: " + str({k: v for k, v in result.items() if k != "throughput"}))
    return result


def main():
    if sys.argv[1:2] == ["--watch"]:
        return watch(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-replicate"))
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--large", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--app-autocheckpoint", choices=["on", "off"], default="on",
                    help="off: the application sets wal_autocheckpoint=0 and leaves checkpoints to the "
                         "replicator, as both tools recommend")
    ap.add_argument("--synchronous", choices=["full", "normal"], default="full",
                    help="the application's PRAGMA synchronous (full is SQLite's default; normal is "
                         "safe in WAL mode and the usual recommendation)")
    ap.add_argument("--json", type=Path, help="also write the raw results (with throughput over time) here")
    args = ap.parse_args()
    build_release(("strata", "strata"))
    results = []
    for i in range(args.runs):
        for mode in ["none", "strata", "litestream"] if i % 2 == 0 else ["litestream", "strata", "none"]:
            results.append(run(mode, args.workdir / mode, args.small, args.large, args.app_autocheckpoint == "on",
                               args.synchronous))
    def cell(rs, key, fmt):
        values = [r[key] for r in rs]
        text = fmt(statistics.median(values))
        return text if len(values) < 2 else f"{text} ({fmt(min(values))}-{fmt(max(values))})"

    lines = ["| mode | small txn/s | large txn/s | lag p50 | lag p99 | CPU | peak RSS | L0 files |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in ["none", "strata", "litestream"]:
        rs = [r for r in results if r["mode"] == mode]
        tps = cell(rs, "small_tps", lambda v: f"{v:.0f}")
        large = cell(rs, "large_tps", lambda v: f"{v:.1f}")
        if mode == "none":
            lines.append(f"| none | {tps} | {large} | | | | | |")
        else:
            med = lambda k: statistics.median(r[k] for r in rs)
            lines.append(f"| {mode} | {tps} | {large} | {cell(rs, 'lag_p50', lambda v: f'{v:.2f} s')} | "
                         f"{cell(rs, 'lag_p99', lambda v: f'{v:.2f} s')} | {med('cpu'):.2f} s | {med('rss'):.0f} MiB | "
                         f"{med('files'):.0f} |")
    lines.insert(0, f"Application autocheckpoint {args.app_autocheckpoint}, synchronous={args.synchronous}; "
                    f"median of {args.runs} runs (min-max).\n")
    text = "\n".join(lines)
    print(text)
    (args.workdir / "results.md").write_text(text + "\n")
    write_json(args.json, {"throughput_bin_s": THROUGHPUT_BIN, "runs": results})


if __name__ == "__main__":
    main()
