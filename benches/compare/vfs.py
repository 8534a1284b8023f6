#!/usr/bin/env python3
"""VFS benchmark: strata's read-replica VFS against Litestream 0.5.17's, in the sqlite3 shell.

Both extensions are loaded by the `sqlite3` shell, as a user loads them, and read the same
replica written by `litestream replicate` (the restore benchmark's ~330 MB database, built
here with an index on `name` so there is an index range to scan), served by `rclone serve
s3` behind `latency_proxy` adding 20 ms to every request. The proxy logs every request with
its time; the shell prints a time mark around every statement, so each statement's requests
are counted by kind (GET, LIST).

Per tool, alternating, `--runs` processes of each (`--scan-runs` of the two scans):

  * open: `.open` and the first read of the schema;
  * points: 20 lookups of random keys, then the same 20 again (warm);
  * range: 5 index range scans (`name` prefix, about 110 rows each, each row read from the
    table), then the same 5 again;
  * scan: 40,000 consecutive rows, then the same again;
  * full: every row with an aggregate, then again;

and one `--idle` seconds of an open connection doing nothing, counting LISTs. Each result is
checked against the same query on the source database. A process running past `--timeout`
is stopped and reported as such, with the requests it made by then.

    python3 benches/compare/vfs.py [--runs 3] [--scan-runs 1] [--latency-ms 20] [--timeout 300] [--idle 60]
"""

import argparse
import os
import random
import re
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

from common import (ROOT, TARGET, Service, build_release, cargo_build, env_for, free_port, log, wait_for_port,
                    write_json)
from restore import build_replica, s3_layout

REQUEST = re.compile(r"^(\d+\.\d+) (GET|PUT|POST|HEAD|DELETE) (\S+)")
RUN_TIME = re.compile(r"^Run Time: real (\d+\.\d+)")
MARK = "MARK "


def litestream_extension():
    out = subprocess.run(["python3", "-c", "import litestream_vfs; print(litestream_vfs.loadable_path())"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def build_extension():
    """The loadable extension: STRATA_VFS_EXTENSION if set (scripts/test builds it on its
    own, as it must be: a build with the tests' features links a SQLite of its own), or a
    build of the package alone."""
    if os.environ.get("STRATA_VFS_EXTENSION"):
        return Path(os.environ["STRATA_VFS_EXTENSION"])
    cargo_build("-p", "strata-vfs")
    return TARGET / "libstrata_vfs.so"


class Requests:
    """The proxy's request log, read by time."""

    def __init__(self, path):
        self.path = path

    def between(self, start, end):
        counts = {"GET": 0, "LIST": 0}
        with open(self.path) as f:
            for line in f:
                m = REQUEST.match(line)
                if not m or not start <= float(m.group(1)) <= end:
                    continue
                method, target = m.group(2), m.group(3)
                kind = "LIST" if method == "GET" and ("list-type" in target or "prefix=" in target) else method
                counts[kind] = counts.get(kind, 0) + 1
        return counts


def mark():
    return f".shell echo {MARK}$(date +%s.%N)\n"


def script(ext, uri, steps):
    """A shell script: load, open, then each (name, sql) step between time marks."""
    text = f".load {ext}\n.mode list\n.timer on\n" + mark() + f".open {uri}\n"
    for _, sql in steps:
        # Each mark ends one step and starts the next.
        text += sql.rstrip(";") + ";\n" + mark()
    return text


def run_steps(tool, ext, uri, env, steps, timeout, requests):
    """Runs the steps in one shell; returns one dict per step that ran (seconds, rows,
    requests), the first step including the open."""
    text = script(ext, uri, steps)
    proc = subprocess.Popen(["sqlite3", "-batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd="/tmp")
    timed_out = False
    try:
        out, err = proc.communicate(text, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    killed_at = time.time()
    results, marks, rows, secs = [], [], [], None
    for line in out.splitlines():
        if line.startswith(MARK):
            marks.append(float(line[len(MARK):]))
            if len(marks) >= 2:
                name, _ = steps[len(results)]
                results.append({"name": name, "rows": rows, "run_time": secs,
                                "wall": marks[-1] - marks[-2], **requests.between(marks[-2], marks[-1])})
                rows, secs = [], None
        elif (m := RUN_TIME.match(line)):
            secs = float(m.group(1))
        else:
            rows.append(line)
    if timed_out and marks and len(results) < len(steps):
        name, _ = steps[len(results)]
        results.append({"name": name, "timed_out": True, "wall": killed_at - marks[-1],
                        **requests.between(marks[-1], killed_at)})
    elif proc.returncode != 0 or "Error" in err:
        raise RuntimeError(f"{tool}: sqlite3 failed ({proc.returncode}):\n{err}\n{out[-2000:]}")
    return results


def expected(db, steps):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    out = {}
    for name, sql in steps:
        rows = conn.execute(sql).fetchall()
        out[sql] = ["|".join("" if v is None else str(v) for v in row) for row in rows]
    conn.close()
    return out


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def fmt_s(x):
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-vfs"))
    ap.add_argument("--rows", type=int, default=320_000)
    ap.add_argument("--txns", type=int, default=150)
    ap.add_argument("--settle", type=float, default=15, help="seconds the new replica compacts before use")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scan-runs", type=int, default=1,
                    help="runs of the two scans (Litestream reads them one GET per page: minutes each)")
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--only", help="comma-separated query groups: open,points,range,scan,full,idle")
    ap.add_argument("--tools", default="strata,litestream", help="comma-separated: strata,litestream")
    ap.add_argument("--json", type=Path, help="also write the raw latencies here")
    args = ap.parse_args()

    build_release(("strata-benches", "latency_proxy"))
    ext = {"strata": build_extension(), "litestream": litestream_extension()}
    replica = build_replica(args.workdir, args.rows, args.txns, index=True, settle=args.settle)
    source = args.workdir / "source.db"
    s3root = args.workdir / "s3root"
    s3_layout(replica, s3root)

    rng = random.Random(7)
    keys = rng.sample(range(1, args.rows + 1), 20)
    prefixes = [f"item-{rng.randrange(1000, 3200)}" for _ in range(5)]
    start = rng.randrange(1, args.rows - 40_000)
    point = [("points", f"SELECT length(body), name FROM items WHERE id = {k}") for k in keys]
    ranged = [("range", f"SELECT count(*), sum(length(body)) FROM items WHERE name >= '{p}' AND name < '{p[:-1]}{chr(ord(p[-1]) + 1)}'")
              for p in prefixes]
    scan = [("scan", f"SELECT count(*), sum(length(body)) FROM items WHERE id BETWEEN {start} AND {start + 39_999}")]
    full = [("full", "SELECT count(*), sum(length(body)), max(name) FROM items")]
    schema = [("open", "SELECT count(*) FROM sqlite_master")]
    groups = {
        "open": schema,
        "points": schema + point + [("points-warm", sql) for _, sql in point],
        "range": schema + ranged + [("range-warm", sql) for _, sql in ranged],
        "scan": schema + scan + [("scan-warm", sql) for _, sql in scan],
        "full": schema + full + [("full-warm", sql) for _, sql in full],
    }
    only = set(args.only.split(",")) if args.only else set(groups) | {"idle"}
    tools = args.tools.split(",")
    truth = expected(source, [s for g in groups.values() for s in g])

    port, proxy_port = free_port(), free_port()
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "benchsecret", "AWS_REGION": "us-east-1"}
    url = f"s3://bench/db?endpoint=http://127.0.0.1:{proxy_port}&region=us-east-1&forcePathStyle=true"
    envs = {
        "strata": env_for("strata", {**creds, "STRATA_REPLICA_URL": url}),
        "litestream": env_for("litestream", {**creds, "LITESTREAM_REPLICA_URL": url}),
    }
    uris = {"strata": "file:bench.db?vfs=strata", "litestream": "file:bench.db?vfs=litestream"}
    proxy_log = args.workdir / "proxy.log"
    samples = {}  # (group, step name, tool) -> list of result dicts
    with Service(["rclone", "serve", "s3", str(s3root), "--addr", f"127.0.0.1:{port}",
                  "--auth-key", "bench,benchsecret"], args.workdir / "rclone.log"), \
         Service([str(TARGET / "latency_proxy"), f"127.0.0.1:{proxy_port}", f"127.0.0.1:{port}",
                  str(args.latency_ms)], proxy_log):
        wait_for_port(port)
        wait_for_port(proxy_port)
        requests = Requests(proxy_log)
        # The server's first listing of the bucket is slow (rclone builds its view of the
        # directory): one open by each tool first, not measured.
        for tool in tools:
            run_steps(tool, ext[tool], uris[tool], envs[tool], schema, args.timeout, requests)
        for run in range(args.runs):
            for group, steps in groups.items():
                if group not in only or (group in ("scan", "full") and run >= args.scan_runs):
                    continue
                order = ["strata", "litestream"] if run % 2 == 0 else ["litestream", "strata"]
                for tool in [t for t in order if t in tools]:
                    log(f"run {run + 1}/{args.runs}: {tool} {group}")
                    for i, r in enumerate(run_steps(tool, ext[tool], uris[tool], envs[tool], steps,
                                                    args.timeout, requests)):
                        sql = steps[i][1]
                        if not r.get("timed_out") and r["rows"] != truth[sql]:
                            raise RuntimeError(f"{tool} {r['name']}: {sql} gave {r['rows']}, the source {truth[sql]}")
                        samples.setdefault((group, r["name"], tool), []).append(r)
        idle = {}
        if "idle" in only:
            for tool in tools:
                log(f"{tool}: {args.idle:.0f} s open and idle")
                results = run_idle(ext[tool], uris[tool], envs[tool], args.idle, requests)
                idle[tool] = results

    text = report(samples, idle, args)
    print(text)
    (args.workdir / "results.md").write_text(text + "\n")
    write_json(args.json, {"latency_ms": args.latency_ms, "queries": raw(samples), "idle": idle})


def raw(samples):
    """Per query group and tool: cold and warm latencies in seconds (the open's wall time,
    the shell's Run Time for queries), and where a run was stopped, after how long."""
    out = {}
    for (group, name, tool), rs in samples.items():
        if name not in (group, f"{group}-warm"):
            continue  # the open before a group's queries
        entry = out.setdefault(group, {}).setdefault(tool, {"cold": [], "warm": []})
        for r in rs:
            if r.get("timed_out"):
                entry["warm_stopped_after" if name.endswith("-warm") else "stopped_after"] = r["wall"]
            else:
                entry["warm" if name.endswith("-warm") else "cold"].append(
                    r["wall"] if group == "open" else r["run_time"])
    return out


def run_idle(ext, uri, env, seconds, requests):
    """Requests made while an open connection that has read once sits idle."""
    text = (f".load {ext}\n.open {uri}\nSELECT count(*) FROM sqlite_master;\n" + mark()
            + f".shell sleep {seconds}\n" + mark())
    out = subprocess.run(["sqlite3", "-batch"], input=text, capture_output=True, text=True, env=env,
                         cwd="/tmp", check=True).stdout
    marks = [float(l[len(MARK):]) for l in out.splitlines() if l.startswith(MARK)]
    return requests.between(marks[0], marks[1])


def report(samples, idle, args):
    lines = [f"VFS queries through the sqlite3 shell; replica served by rclone serve s3 + "
             f"{args.latency_ms} ms per request; {args.runs} runs per tool ({args.scan_runs} of the scans; "
             f"median, and p99 where a run has several queries).", "",
             "| query | tool | cold p50 | cold p99 | warm p50 | warm p99 | GETs per query (cold) | LISTs per query (cold) |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"open": "open (plan + schema)", "points": "point lookup", "range": "index range (~110 rows)",
             "scan": "scan 40,000 rows", "full": "full scan + aggregate"}
    for group in ["open", "points", "range", "scan", "full"]:
        for tool in ["strata", "litestream"]:
            cold = samples.get((group, group, tool), [])
            warm = samples.get((group, f"{group}-warm", tool), [])
            if not cold:
                continue
            if any(r.get("timed_out") for r in cold):
                r = next(r for r in cold if r.get("timed_out"))
                lines.append(f"| {names[group]} | {tool} | > {fmt_s(r['wall'])} (stopped) | | | | > {r['GET']} | {r['LIST']} |")
                continue
            lat = [r["wall"] if group == "open" else r["run_time"] for r in cold]
            wlat = [r["run_time"] for r in warm if not r.get("timed_out")]
            gets = statistics.median(r["GET"] for r in cold)
            lists = statistics.median(r["LIST"] for r in cold)
            w = f"{fmt_s(statistics.median(wlat))} | {fmt_s(pct(wlat, 99))}" if wlat else "|"
            lines.append(f"| {names[group]} | {tool} | {fmt_s(statistics.median(lat))} | {fmt_s(pct(lat, 99))} "
                         f"| {w} | {gets:g} | {lists:g} |")
    if idle:
        lines += ["", f"Idle connection for {args.idle:.0f} s after one read:", "",
                  "| tool | LIST | GET |", "|---|---|---|"]
        for tool, c in idle.items():
            lines.append(f"| {tool} | {c['LIST']} | {c['GET']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
