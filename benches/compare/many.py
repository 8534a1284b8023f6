#!/usr/bin/env python3
"""Many databases in one process: strata against Litestream 0.5.17 with the same config.

For each tool: N databases (default 200) in one `replicate -config`, each to its own
directory replica. Measured from /proc: CPU over an idle minute, RSS and threads; then the
same with W of them (default 20) written steadily, and the replication lag of those writes
(commit to the first L0 file in the replica that holds it, checked by restoring each L0 file
of a few sampled databases with `strata restore --txid`).

    python3 benches/compare/many.py [--dbs 200] [--written 20] [--seconds 60] [--rate 10]
"""

import argparse
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TARGET, build_release, env_for, log, rmtree, write_json  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_dbs(root, n):
    root.mkdir(parents=True)
    paths = []
    for i in range(n):
        db = root / f"t{i:03}.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE progress(seq INTEGER)")
        conn.execute("INSERT INTO progress VALUES (0)")
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        conn.commit()
        conn.close()
        paths.append(db)
    return paths


def write_config(path, dbs, replicas):
    lines = ["dbs:"]
    for db in dbs:
        lines += [f"  - path: {db}", "    replica:", "      type: file", f"      path: {replicas / db.name}"]
    path.write_text("\n".join(lines) + "\n")


class CpuMeter:
    """CPU seconds a process has run, from its threads' schedstat (nanoseconds, where
    /proc/PID/stat counts 10 ms ticks: too coarse for a process nearly idle). A thread that
    exits keeps the time last read for it, so the total never goes back."""

    def __init__(self, pid):
        self.pid = pid
        self.last = {}

    def read(self):
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                self.last[task.name] = int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that just exited
        return sum(self.last.values()) / 1e9


def proc_status(pid):
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


def measure(pid, seconds, window=10):
    """CPU (% of one core) over `seconds`, and per `window`-second window for the spread;
    RSS and threads at the end, peak RSS sampled every second."""
    meter = CpuMeter(pid)
    cpu0, t0 = meter.read(), time.monotonic()
    peak_rss, threads = 0, 0
    windows, w_cpu, w_t = [], cpu0, t0
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        cpu = meter.read()  # every second, so a thread that exits loses at most a second
        rss, threads = proc_status(pid)
        peak_rss = max(peak_rss, rss)
        now = time.monotonic()
        if now - w_t >= window:
            windows.append(100 * (cpu - w_cpu) / (now - w_t))
            w_cpu, w_t = cpu, now
    cpu = meter.read() - cpu0
    wall = time.monotonic() - t0
    rss, threads = proc_status(pid)
    return {"cpu_pct": 100 * cpu / wall, "cpu_windows": windows, "rss": rss, "peak_rss": peak_rss,
            "threads": threads}


def spread(windows, digits):
    if len(windows) < 2:
        return ""
    return f" ({min(windows):.{digits}f}-{max(windows):.{digits}f})"


def writer(db, rate, stop, commits):
    conn = sqlite3.connect(db, timeout=10)
    conn.execute("PRAGMA synchronous=NORMAL")
    seq, start = 0, time.monotonic()
    while not stop.is_set():
        seq += 1
        conn.execute("INSERT INTO t(v) VALUES (?)", (random.randbytes(200),))
        conn.execute("UPDATE progress SET seq = ?", (seq,))
        conn.commit()
        commits.append(time.time())
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    conn.close()


def watch(dirs, out, stop):
    """First time each L0 file is seen, per directory."""
    seen = {d: {} for d in dirs}
    while not stop.is_set():
        now = time.time()
        for d in dirs:
            try:
                for name in os.listdir(d):
                    if name.endswith(".ltx"):
                        seen[d].setdefault(name, now)
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    out.update(seen)


def seq_at(replica, txid, work):
    probe = work / "probe.db"
    probe.unlink(missing_ok=True)
    subprocess.run([str(TARGET / "strata"), "restore", "--force", "--txid", txid, "-o", str(probe), f"file://{replica}"],
                   check=True, capture_output=True, env=env_for("strata"))
    conn = sqlite3.connect(probe)
    seq = conn.execute("SELECT seq FROM progress").fetchone()[0]
    conn.close()
    return seq


def lags(replica, seen, commits, work):
    """Seconds from each commit to the first L0 file that holds it."""
    by_seq = []
    for name, t in seen.items():
        if name.startswith("0000000000000001-"):
            continue  # the first full copy, before the workload
        by_seq.append((seq_at(replica, name.split("-")[1].split(".")[0], work), t))
    by_seq.sort()
    out = []
    for seq, committed in enumerate(commits, start=1):
        visible = next((t for s, t in by_seq if s >= seq), None)
        if visible is None:
            raise RuntimeError(f"transaction {seq} of {replica} never reached the replica")
        out.append(visible - committed)
    return out


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(tool, work, args):
    rmtree(work)
    dbs = make_dbs(work / "dbs", args.dbs)
    replicas = work / "replicas"
    config = work / "config.yml"
    write_config(config, dbs, replicas)
    cmd = {
        "strata": [str(TARGET / "strata"), "replicate", "--config", str(config)],
        "litestream": ["litestream", "replicate", "-config", str(config)],
    }[tool]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "log", "w"), env=env_for(tool))
    started = time.monotonic()
    while not all((replicas / db.name / "ltx" / "0").is_dir() and os.listdir(replicas / db.name / "ltx" / "0")
                  for db in dbs):
        if time.monotonic() - started > 120 or proc.poll() is not None:
            raise RuntimeError(f"{tool} did not replicate every database: see {work / 'log'}")
        time.sleep(0.2)
    ready = time.monotonic() - started
    time.sleep(5)
    result = {"tool": tool, "ready_s": ready}
    log(f"{tool}: every database replicated after {ready:.1f}s; idle minute")
    result["idle"] = measure(proc.pid, args.seconds)
    log(f"{tool}: idle {result['idle']}; {args.written} writers at {args.rate} txn/s")
    written = dbs[: args.written]
    sampled = written[: args.sampled]
    stop, watch_stop, seen = threading.Event(), threading.Event(), {}
    commits = {db: [] for db in written}
    watcher = threading.Thread(target=watch, args=([replicas / db.name / "ltx" / "0" for db in sampled], seen, watch_stop))
    watcher.start()
    writers = [threading.Thread(target=writer, args=(db, args.rate, stop, commits[db])) for db in written]
    for w in writers:
        w.start()
    result["busy"] = measure(proc.pid, args.seconds)
    stop.set()
    for w in writers:
        w.join()
    time.sleep(3)
    watch_stop.set()
    watcher.join()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    log(f"{tool}: busy {result['busy']}; measuring lag")
    all_lags = []
    for db in sampled:
        all_lags += lags(replicas / db.name, seen[replicas / db.name / "ltx" / "0"], commits[db], work)
    result["lag_p50"] = statistics.median(all_lags)
    result["lag_p99"] = percentile(all_lags, 99)
    result["commits"] = sum(len(c) for c in commits.values())
    log(f"{tool}: {result}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dbs", type=int, default=200)
    ap.add_argument("--written", type=int, default=20)
    ap.add_argument("--sampled", type=int, default=3, help="written databases whose lag is measured")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=float, default=10, help="transactions per second per written database")
    ap.add_argument("--tools", default="strata,litestream")
    ap.add_argument("--work", type=Path, default=Path("/tmp/strata-many"))
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    build_release(("strata", "strata"))
    results = [run(tool, args.work / tool, args) for tool in args.tools.split(",")]
    print(f"\n{args.dbs} databases, {args.written} written at {args.rate:g} txn/s each; CPU (% of one core) "
          f"over {args.seconds} s, and in brackets the least and most of its 10-second windows\n")
    print("| tool | idle CPU | idle RSS | threads | busy CPU | busy RSS | lag p50 | lag p99 | ready |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        i, b = r["idle"], r["busy"]
        print(f"| {r['tool']} | {i['cpu_pct']:.2f}%{spread(i['cpu_windows'], 2)} | {i['rss']:.0f} MiB | "
              f"{i['threads']} | {b['cpu_pct']:.1f}%{spread(b['cpu_windows'], 1)} | {b['peak_rss']:.0f} MiB | "
              f"{r['lag_p50']:.2f} s | {r['lag_p99']:.2f} s | {r['ready_s']:.1f} s |")
    write_json(args.json, {"dbs": args.dbs, "written": args.written, "results": results})


if __name__ == "__main__":
    main()
