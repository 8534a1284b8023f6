#!/usr/bin/env python3
"""Follower lag benchmark: how long after a commit on the primary it is visible to a reader of
a follower, at a steady commit rate.

Followers (each a local database read by a separate reader process):
  strata-stream     `strata restore -f -o F http://ADDR/app.db` (pushed by `strata replicate
                    --addr`, object storage only to catch up)
  strata-poll       `strata restore -f -o F file://REPLICA` (polls the replica every 1 s)
  litestream-poll   `litestream restore -f -o F file://REPLICA` (polls every 1 s)
The two strata followers run together against one `strata replicate`; the Litestream one
against `litestream replicate` of the same workload. Both replicators run at their default
1 s sync interval.

The writer commits one row per transaction at the given rate (`synchronous=FULL`), each row
carrying its commit time. A reader polls its follower every millisecond for new rows and notes
when it first sees each: the lag is that time minus the commit time (one clock: same machine).
At the end every follower must hold every row, or the run fails. Also reported: each
follower's peak RSS (memory per follower).

    python3 benches/compare/lag.py [--rates 10,100,1000] [--seconds 10] [--workdir DIR] [--json F]
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

from common import TARGET, build_release, env_for, free_port, log, rmtree, write_json

LITESTREAM_CONFIG = """\
dbs:
  - path: {db}
    replica:
      type: file
      path: {replica}
"""


def read(follower, out, stop_file):
    """Reader process: notes when each row first shows in `follower`, until `stop_file`."""
    seen = 0
    with open(out, "w") as f:
        conn = None
        while not os.path.exists(stop_file):
            try:
                if conn is None:
                    if not os.path.exists(follower):
                        time.sleep(0.01)
                        continue
                    conn = sqlite3.connect(f"file:{follower}?mode=ro", uri=True)
                rows = conn.execute("SELECT id, at FROM t WHERE id > ? ORDER BY id", (seen,)).fetchall()
            except sqlite3.Error:
                rows = []
                time.sleep(0.01)
            now = time.time()
            for rowid, at in rows:
                f.write(f"{rowid} {now - at}\n")
                seen = rowid
            if rows:
                f.flush()
            time.sleep(0.001)


def start_reader(follower, out, stop_file):
    return subprocess.Popen([sys.executable, __file__, "--read", str(follower), str(out), str(stop_file)])


def write(db, rate, seconds):
    """Commits one row per transaction at `rate` per second; returns how many."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA synchronous=FULL")
    start = time.time()
    n = int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        conn.execute("INSERT INTO t(at) VALUES (?)", (time.time(),))
    took = time.time() - start
    conn.close()
    return n, took


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def stop(proc):
    """SIGTERM, then the peak RSS in MiB."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, _, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return 0.0
    return usage.ru_maxrss / 1024


def run(tool, work, rate, seconds):
    rmtree(work)
    work.mkdir(parents=True)
    db, replica = work / "app.db", work / "replica"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL)")
    conn.close()
    strata = str(TARGET / "strata")
    procs, followers = [], {}
    logs = lambda name: open(work / f"{name}.log", "w")
    if tool == "strata":
        addr = f"127.0.0.1:{free_port()}"
        procs.append(subprocess.Popen([strata, "replicate", "--addr", addr, str(db), f"file://{replica}"],
                                      stdout=subprocess.DEVNULL, stderr=logs("replicate"), env=env_for("strata")))
        time.sleep(2)
        followers["strata-stream"] = subprocess.Popen(
            [strata, "restore", "-f", "-o", str(work / "stream.db"), f"http://{addr}/app.db",
             "--replica", f"file://{replica}"],
            stdout=subprocess.DEVNULL, stderr=logs("stream"), env=env_for("strata"))
        followers["strata-poll"] = subprocess.Popen(
            [strata, "restore", "-f", "-o", str(work / "poll.db"), f"file://{replica}"],
            stdout=subprocess.DEVNULL, stderr=logs("poll"), env=env_for("strata"))
        paths = {"strata-stream": work / "stream.db", "strata-poll": work / "poll.db"}
    else:
        (work / "litestream.yml").write_text(LITESTREAM_CONFIG.format(db=db, replica=replica))
        procs.append(subprocess.Popen(["litestream", "replicate", "-config", str(work / "litestream.yml")],
                                      stdout=subprocess.DEVNULL, stderr=logs("replicate"), env=env_for("litestream")))
        time.sleep(3)
        followers["litestream-poll"] = subprocess.Popen(
            ["litestream", "restore", "-f", "-o", str(work / "follow.db"), f"file://{replica}"],
            stdout=subprocess.DEVNULL, stderr=logs("follow"), env=env_for("litestream"))
        paths = {"litestream-poll": work / "follow.db"}
    stop_file = work / "stop"
    readers = {name: start_reader(path, work / f"{name}.seen", stop_file) for name, path in paths.items()}
    # Every follower has restored the (empty) database before the first commit.
    deadline = time.time() + 60
    while not all(p.exists() for p in paths.values()):
        if time.time() > deadline:
            raise RuntimeError(f"{tool}: followers did not start; see {work}")
        time.sleep(0.1)
    time.sleep(2)
    commits, took = write(db, rate, seconds)
    # Wait for every follower to see every row (polling ones need a sync and a poll).
    deadline = time.time() + 30
    results = []
    while True:
        counts = {}
        for name in paths:
            text = (work / f"{name}.seen").read_text()
            counts[name] = len(text.split("\n")) - 1 if text else 0
        if all(c >= commits for c in counts.values()) or time.time() > deadline:
            break
        time.sleep(0.2)
    stop_file.touch()
    for r in readers.values():
        r.wait()
    for name, path in paths.items():
        lags = [float(line.split()[1]) for line in (work / f"{name}.seen").read_text().split("\n") if line]
        if len(lags) != commits:
            raise RuntimeError(f"{name}: saw {len(lags)} of {commits} commits; see {work}")
        rss = stop(followers[name])
        results.append({"follower": name, "rate": rate, "achieved": commits / took, "commits": commits,
                        "p50": statistics.median(lags), "p99": percentile(lags, 99), "max": max(lags),
                        "rss": rss, "lags": lags})
        log(f"{name} at {rate}/s: p50 {results[-1]['p50'] * 1000:.1f} ms, p99 {results[-1]['p99'] * 1000:.1f} ms, "
            f"max {results[-1]['max'] * 1000:.0f} ms, RSS {rss:.0f} MiB")
    for p in procs:
        stop(p)
    return results


def main():
    if sys.argv[1:2] == ["--read"]:
        return read(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-lag"))
    ap.add_argument("--rates", default="10,100,1000")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--json", type=Path, help="also write the raw results (every lag) here")
    args = ap.parse_args()
    build_release(("strata", "strata"))
    results = []
    for rate in [int(r) for r in args.rates.split(",")]:
        for tool in ["strata", "litestream"]:
            results += run(tool, args.workdir / f"{tool}-{rate}", rate, args.seconds)
    ms = lambda v: f"{v * 1000:.0f} ms" if v >= 0.0995 else f"{v * 1000:.1f} ms"
    lines = [f"One writer, one row per transaction, `synchronous=FULL`, {args.seconds:g} s per rate; "
             "lag from commit to a reader of the follower seeing the row.\n",
             "| commits/s (achieved) | follower | p50 | p99 | max | follower peak RSS |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rate']} ({r['achieved']:.0f}) | {r['follower']} | {ms(r['p50'])} | {ms(r['p99'])} | "
                     f"{ms(r['max'])} | {r['rss']:.0f} MiB |")
    text = "\n".join(lines)
    print(text)
    (args.workdir / "results.md").write_text(text + "\n")
    write_json(args.json, {"runs": results})


if __name__ == "__main__":
    main()
