#!/usr/bin/env python3
"""Requests per hour per database, strata against Litestream 0.5.17, counted in the S3
server's own request log (moto_server on loopback), and bytes written per level.

Each tool replicates its own database to its own bucket with its defaults (levels L1 30 s,
L2 5 min, L3 1 h, snapshots 24 h, L0 retention 5 min) through two phases: `--busy` seconds
of a steady writer (`--rate` small transactions a second), then `--idle` seconds with no
writes. Requests are counted by kind (LIST, GET, HEAD, PUT, DELETE) per phase and scaled to
an hour; bytes written per level are read from the bucket at the end.

    python3 benches/compare/requests.py [--busy 300] [--idle 300] [--rate 10] [--window 60] [--json F]
"""

import argparse
import os
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from common import TARGET, Service, build_release, env_for, free_port, log, rmtree, wait_for_port, write_json

LINE = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (/[^ ]*) HTTP')


def kind(method, path):
    bucket_path, _, query = path.partition("?")
    parts = bucket_path.strip("/").split("/", 1)
    if method == "GET" and (len(parts) == 1 or "list-type" in query or "prefix=" in query):
        return parts[0], "LIST"
    if method == "POST" and "delete" in query:
        return parts[0], "DELETE"
    if method == "POST":
        return parts[0], "PUT"  # multipart steps
    return parts[0], method


def count(log_path, start, end):
    """Requests per bucket and kind logged between byte offsets start and end."""
    counts = {}
    with open(log_path, "rb") as f:
        f.seek(start)
        for line in f.read(end - start).decode(errors="replace").splitlines():
            m = LINE.search(line)
            if not m:
                continue
            bucket, k = kind(m.group(1), m.group(2))
            counts.setdefault(bucket, {}).setdefault(k, 0)
            counts[bucket][k] += 1
    return counts


def writer(db, rate, stop):
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    i = 0
    while not stop.is_set():
        conn.execute("INSERT INTO t (body) VALUES (?)", (f"row {i} " + "x" * 100,))
        i += 1
        time.sleep(1 / rate)
    conn.close()


def level_bytes(s3, bucket):
    """Bytes and files per level (S3 layout: <prefix>/<level %04x>/...)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            parts = obj["Key"].split("/")
            if len(parts) >= 2 and len(parts[-2]) == 4:
                level = int(parts[-2], 16)
                files, size = out.get(level, (0, 0))
                out[level] = (files + 1, size + obj["Size"])
    return out


def windows(moto_log, seconds, window):
    """Sleeps `seconds`; returns the requests logged in each `window` seconds of it (the
    last one shorter if it does not divide), with each window's length."""
    out, left = [], seconds
    start = moto_log.stat().st_size
    while left > 0:
        step = min(window, left)
        t0 = time.monotonic()
        time.sleep(step)
        end = moto_log.stat().st_size
        out.append((count(moto_log, start, end), time.monotonic() - t0))
        start, left = end, left - step
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busy", type=float, default=300)
    ap.add_argument("--idle", type=float, default=300)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--window", type=float, default=60, help="seconds per window, for the spread")
    ap.add_argument("--workdir", default="/tmp/strata-bench-requests")
    ap.add_argument("--json", type=Path, help="also write the raw counts here")
    args = ap.parse_args()
    import boto3

    build_release(("strata", "strata"))
    work = Path(args.workdir)
    rmtree(work)
    work.mkdir(parents=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    os.environ.update(creds)
    moto_log = work / "moto.log"
    with Service(["moto_server", "-H", "127.0.0.1", "-p", str(port)], moto_log, env_for("moto", creds)):
        wait_for_port(port)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        procs, stops, threads = {}, {}, {}
        for tool in ["strata", "litestream"]:
            s3.create_bucket(Bucket=tool)
            db = work / f"{tool}.db"
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
            conn.commit()
            conn.close()
            url = f"s3://{tool}/db?endpoint={endpoint}&region=us-east-1&forcePathStyle=true"
            config = work / f"{tool}.yml"
            config.write_text(f"dbs:\n  - path: {db}\n    replica:\n      url: {url}\n")
            cmd = [str(TARGET / "strata") if tool == "strata" else "litestream", "replicate",
                   "-config", str(config)]
            procs[tool] = Service(cmd, work / f"{tool}.log", env_for(tool, creds))
        time.sleep(3)
        for tool in procs:
            stops[tool] = threading.Event()
            threads[tool] = threading.Thread(target=writer, args=(work / f"{tool}.db", args.rate, stops[tool]))
            threads[tool].start()
        log(f"busy for {args.busy:.0f} s at {args.rate:g} txn/s each")
        busy = windows(moto_log, args.busy, args.window)
        for tool in procs:
            stops[tool].set()
            threads[tool].join()
        time.sleep(5)
        log(f"idle for {args.idle:.0f} s")
        idle = windows(moto_log, args.idle, args.window)
        levels = {tool: level_bytes(s3, tool) for tool in procs}
        for p in procs.values():
            p.stop()
    kinds = ["LIST", "GET", "HEAD", "PUT", "DELETE"]
    print(f"\nRequests per hour per database (busy: {args.rate:g} txn/s for {args.busy:.0f} s; idle {args.idle:.0f} s): "
          f"the whole phase, and in brackets the least and most of its {args.window:.0f}-second windows\n")
    print("| phase | tool | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    raw = {}
    for phase, spans in [("busy", busy), ("idle", idle)]:
        for tool in ["strata", "litestream"]:
            row = []
            for k in kinds:
                per_window = [c.get(tool, {}).get(k, 0) * 3600 / secs for c, secs in spans]
                total = sum(c.get(tool, {}).get(k, 0) for c, _ in spans) * 3600 / sum(secs for _, secs in spans)
                raw.setdefault(phase, {}).setdefault(tool, {})[k] = {"per_hour": total, "windows": per_window}
                cell = f"{total:.0f}"
                if len(per_window) > 1 and max(per_window) > 0:
                    cell += f" ({min(per_window):.0f}-{max(per_window):.0f})"
                row.append(cell)
            print(f"| {phase} | {tool} | " + " | ".join(row) + " |")
    print("\nFiles and bytes per level at the end\n")
    print("| tool | " + " | ".join(f"L{l}" for l in range(10)) + " |")
    print("|---|" + "---|" * 10)
    for tool in ["strata", "litestream"]:
        cells = []
        for l in range(10):
            files, size = levels[tool].get(l, (0, 0))
            cells.append(f"{files} / {size / 1e6:.2f} MB" if files else "")
        print(f"| {tool} | " + " | ".join(cells) + " |")
    write_json(args.json, {"rate": args.rate, "busy_s": args.busy, "idle_s": args.idle, "requests": raw,
                           "levels": {tool: {str(l): v for l, v in levels[tool].items()} for tool in levels}})


if __name__ == "__main__":
    main()
