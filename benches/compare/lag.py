#!/usr/bin/env python3
"""Follower lag benchmark: how long after a commit on the primary it is visible to a reader of
a follower, at a steady commit rate.

Followers (each read by a separate reader process):
  strata-stream     `strata restore -f -o F http://ADDR/app.db` (pushed by `strata replicate
                    --addr`, object storage only to catch up)
  strata-poll       `strata restore -f -o F file://REPLICA` (polls the replica every 1 s)
  strata-vfs        strata's VFS with `replica=REPLICA&primary=http://ADDR/app.db`, in the
                    `sqlite3` shell (pushed files on top of the replica, polled every 1 s)
  litestream-poll   `litestream restore -f -o F file://REPLICA` (polls every 1 s)
  litestream-vfs    Litestream's VFS (litestream-vfs 0.5.17) on REPLICA, in the `sqlite3`
                    shell (polls every 1 s)
The strata followers run together against one `strata replicate`; the Litestream ones
against `litestream replicate` of the same workload. Both replicators run at their default
1 s sync interval. A VFS reader's peak RSS is its `sqlite3` shell's.

The writer commits one row per transaction at the given rate (`synchronous=FULL`), each row
carrying its commit time. A reader polls its follower every millisecond for new rows and notes
when it first sees each: the lag is that time minus the commit time (one clock: same machine).
At the end every follower must hold every row, or the run fails. Litestream's follower writes
pages into its file behind SQLite's back, which a connection kept open never notices: its
reader opens a new connection for each poll; the others keep one. Also reported: each
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
from vfs import build_extension, litestream_extension

LITESTREAM_CONFIG = """\
dbs:
  - path: {db}
    replica:
      type: file
      path: {replica}
"""


def note(f, rows, seen):
    """Writes each new row's lag (now minus its commit time); returns the newest row seen."""
    now = time.time()
    for rowid, at in rows:
        f.write(f"{rowid} {now - at}\n")
        seen = rowid
    if rows:
        f.flush()
    return seen


def read(follower, out, stop_file, reopen="keep"):
    """Reader process: notes when each row first shows in `follower`, until `stop_file`.
    `reopen`: "each" opens a new connection for every poll (Litestream's follower writes
    pages behind SQLite's back, which a connection kept open never notices)."""
    seen = 0
    with open(out, "w") as f:
        conn, inode = None, None
        while not os.path.exists(stop_file):
            try:
                # A follower may put a new file in place (Litestream restores to a temporary
                # file and renames it): a connection to the old one would see nothing new.
                now_inode = os.stat(follower).st_ino if os.path.exists(follower) else None
                if conn is not None and now_inode != inode:
                    conn.close()
                    conn = None
                if conn is None:
                    if now_inode is None:
                        time.sleep(0.01)
                        continue
                    conn, inode = sqlite3.connect(f"file:{follower}?mode=ro", uri=True), now_inode
                rows = conn.execute("SELECT id, at FROM t WHERE id > ? ORDER BY id", (seen,)).fetchall()
            except sqlite3.Error:
                rows = []
                time.sleep(0.01)
            seen = note(f, rows, seen)
            if reopen == "each" and conn is not None:
                conn.close()
                conn = None
            time.sleep(0.001)


def start_reader(follower, out, stop_file, reopen="keep"):
    return subprocess.Popen([sys.executable, __file__, "--read", str(follower), str(out), str(stop_file), reopen])


END = "-- end --"


def read_vfs(ext, uri, out, stop_file):
    """Reader process through a VFS: a `sqlite3` shell (line-buffered) asked for new rows
    every millisecond, each query one read transaction; notes when each row first shows.
    Its last line is the shell's peak RSS in MiB."""
    shell = subprocess.Popen(["stdbuf", "-oL", "sqlite3", "-batch"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    shell.stdin.write(f".load {ext}\n.open {uri}\n.mode list\n")
    seen = 0
    with open(out, "w") as f:
        while not os.path.exists(stop_file):
            shell.stdin.write(f"SELECT id, at FROM t WHERE id > {seen} ORDER BY id;\nSELECT '{END}';\n")
            shell.stdin.flush()
            rows = []
            while (line := shell.stdout.readline().rstrip("\n")) != END:
                if not line:
                    raise RuntimeError(f"the sqlite3 shell on {uri} stopped")
                rowid, at = line.split("|")
                rows.append((int(rowid), float(at)))
            seen = note(f, rows, seen)
            time.sleep(0.001)
        shell.stdin.close()
        _, _, usage = os.wait4(shell.pid, 0)
        f.write(f"rss {usage.ru_maxrss / 1024}\n")


def start_vfs_reader(ext, uri, out, stop_file, env):
    return subprocess.Popen([sys.executable, __file__, "--read-vfs", str(ext), uri, str(out), str(stop_file)],
                            env=env)


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
        vfs = {"strata-vfs": (build_extension(),
                              f"file:app.db?vfs=strata&replica={replica}&primary=http://{addr}/app.db",
                              env_for("strata"))}
    else:
        (work / "litestream.yml").write_text(LITESTREAM_CONFIG.format(db=db, replica=replica))
        procs.append(subprocess.Popen(["litestream", "replicate", "-config", str(work / "litestream.yml")],
                                      stdout=subprocess.DEVNULL, stderr=logs("replicate"), env=env_for("litestream")))
        time.sleep(3)
        followers["litestream-poll"] = subprocess.Popen(
            ["litestream", "restore", "-f", "-o", str(work / "follow.db"), f"file://{replica}"],
            stdout=subprocess.DEVNULL, stderr=logs("follow"), env=env_for("litestream"))
        paths = {"litestream-poll": work / "follow.db"}
        vfs = {"litestream-vfs": (litestream_extension(), "file:app.db?vfs=litestream",
                                  env_for("litestream", {"LITESTREAM_REPLICA_URL": f"file://{replica}"}))}
    stop_file = work / "stop"
    readers = {name: start_reader(path, work / f"{name}.seen", stop_file,
                                  "each" if name.startswith("litestream") else "keep")
               for name, path in paths.items()}
    # Every follower has restored the (empty) database before the first commit, and the
    # replica has it for the VFS readers.
    deadline = time.time() + 60
    while not all(p.exists() for p in paths.values()) or not any(replica.rglob("*.ltx")):
        if time.time() > deadline:
            raise RuntimeError(f"{tool}: followers did not start; see {work}")
        time.sleep(0.1)
    time.sleep(1)
    for name, (ext, uri, env) in vfs.items():
        readers[name] = start_vfs_reader(ext, uri, work / f"{name}.seen", stop_file, env)
    time.sleep(2)
    commits, took = write(db, rate, seconds)
    # Wait for every follower to see every row (polling ones need a sync and a poll).
    deadline = time.time() + 30
    results = []
    while True:
        counts = {}
        for name in readers:
            text = (work / f"{name}.seen").read_text()
            counts[name] = len(text.split("\n")) - 1 if text else 0
        if all(c >= commits for c in counts.values()) or time.time() > deadline:
            break
        time.sleep(0.2)
    stop_file.touch()
    for r in readers.values():
        r.wait()
    for name in readers:
        lines = [line.split() for line in (work / f"{name}.seen").read_text().split("\n") if line]
        lags = [float(lag) for rowid, lag in lines if rowid != "rss"]
        if len(lags) != commits:
            raise RuntimeError(f"{name}: saw {len(lags)} of {commits} commits; see {work}")
        if name in followers:
            rss = stop(followers[name])
        else:
            rss = next(float(v) for k, v in lines if k == "rss")
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
        return read(*sys.argv[2:6])
    if sys.argv[1:2] == ["--read-vfs"]:
        return read_vfs(*sys.argv[2:6])
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
