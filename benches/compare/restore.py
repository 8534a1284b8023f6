#!/usr/bin/env python3
"""Restore benchmark: strata against Litestream 0.5.17 on the same replica.

At each size (rows of ~1 KiB; by default about 33, 100 and 330 MB), builds (once, cached in
the work directory) a replica with the real `litestream replicate`: the rows, then small
write transactions a little over a second apart, so the replica holds a database-sized base
plus many L0, L1 and L2 files. Then restores it with both tools, alternating, and reports median wall time, peak RSS
and CPU, against `cat` of the planned files as the floor:

  1. from the local directory;
  2. from S3: `rclone serve s3` over the same files in Litestream's S3 layout, behind a
     proxy adding 20 ms to every request (a nearby region).

    python3 benches/compare/restore.py [--sizes 32000,100000,320000] [--runs 5] [--json F]
"""

import argparse
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

from common import (TARGET, Service, build_release, env_for, fmt_spread, free_port, log, rmtree,
                    run_measured, sha256, summarize, wait_for_port, write_json)

LITESTREAM_CONFIG = """\
levels:
  - interval: 10s
  - interval: 1m
snapshot:
  interval: 24h
dbs:
  - path: {db}
    replica:
      type: file
      path: {replica}
"""


def build_replica(work, rows, txns, index=False, settle=15):
    """A replica written by `litestream replicate` from a database of `rows` ~1 KiB rows
    (with `index`, an index on `name` too), left to compact for `settle` seconds at the end."""
    replica = work / "replica"
    done = work / "replica.done"
    if done.exists():
        log(f"reusing {replica}")
        return replica
    rmtree(work)
    work.mkdir(parents=True)
    db = work / "source.db"
    log(f"building {db}: {rows} rows")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
    batch = 20_000
    for start in range(0, rows, batch):
        conn.execute(
            "INSERT INTO items (name, body) SELECT 'item-' || value || '-' || hex(randomblob(8)), "
            "randomblob(800) FROM generate_series(?, ?)" if has_series(conn) else
            "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO items (name, body) SELECT 'item-' || i || '-' || hex(randomblob(8)), randomblob(800) FROM n",
            (start, min(start + batch, rows) - 1),
        )
        conn.commit()
    if index:
        conn.execute("CREATE INDEX items_name ON items (name)")
        conn.commit()
    conn.close()
    config = work / "litestream.yml"
    config.write_text(LITESTREAM_CONFIG.format(db=db, replica=replica))
    with Service(["litestream", "replicate", "-config", str(config)], work / "replicate.log", env_for("litestream")):
        first = replica / "ltx" / "0" / "0000000000000001-0000000000000001.ltx"
        while not first.exists():
            time.sleep(0.5)
        time.sleep(3)
        log(f"{txns} small transactions, one per sync")
        conn = sqlite3.connect(db)
        for _ in range(txns):
            ids = random.sample(range(1, rows + 1), 20)
            conn.executemany("UPDATE items SET body = randomblob(800) WHERE id = ?", [(i,) for i in ids])
            conn.commit()
            time.sleep(1.1)
        conn.close()
        time.sleep(settle)  # let L1 and L2 compact the tail
    done.touch()
    return replica


def has_series(conn):
    try:
        conn.execute("SELECT value FROM generate_series(1, 1)").fetchall()
        return True
    except sqlite3.OperationalError:
        return False


def plan_files(url, env, replica_dir):
    """The files strata's plan reads, as local paths, from `strata restore --dry-run`."""
    out = subprocess.run([str(TARGET / "strata"), "restore", "--dry-run", url], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    files = []
    for line in out[1:]:
        level, name = line.split()[:2]
        files.append(replica_dir / "ltx" / level[1:] / name)
    return out[0], files


def s3_layout(replica, root):
    """Hard links of the replica's files in Litestream's S3 layout: <bucket>/<prefix>/<%04x>/."""
    rmtree(root)
    for f in (replica / "ltx").glob("*/*.ltx"):
        dest = root / "bench" / "db" / f"{int(f.parent.name):04x}" / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.hardlink_to(f)


def compare(name, url, env_extra, work, runs, cat_files):
    """Alternates strata and litestream restores of `url`; returns result rows."""
    out = work / "out.db"
    commands = {
        "strata": [str(TARGET / "strata"), "restore", "--force", "-o", str(out), url],
        "litestream": ["litestream", "restore", "-force", "-o", str(out), url],
    }
    samples = {tool: [] for tool in commands}
    digests = {}
    for i in range(runs):
        order = list(commands) if i % 2 == 0 else list(reversed(commands))
        for tool in order:
            clean(out)
            samples[tool].append(run_measured(commands[tool], env_for(tool, env_extra)))
            digests.setdefault(tool, sha256(out))
            log(f"{name} {tool} run {i + 1}: {samples[tool][-1][0]:.2f}s, {samples[tool][-1][1]:.0f} MiB")
    if digests["strata"] != digests["litestream"]:
        raise RuntimeError(f"{name}: strata and litestream restored different bytes")
    if cat_files:
        sh = "cat " + " ".join(map(str, cat_files)) + f" > {out}"
        for name, cmd in [("cat", sh), ("cat + fsync", f"{sh} && sync {out}")]:
            samples[name] = []
            for _ in range(runs):
                clean(out)
                samples[name].append(run_measured(["sh", "-c", cmd], env_for("cat")))
    out.unlink(missing_ok=True)
    return samples


def clean(out):
    """Every run starts alike: no previous output, and nothing dirty left to write back."""
    out.unlink(missing_ok=True)
    os.sync()


def table(rows, local):
    """One table, a row per database size: wall time median (min-max), ratio, memory."""
    head = "| database | strata | litestream | litestream / strata | strata RSS | litestream RSS |"
    if local:
        head += " cat + fsync |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for size, samples in rows:
        med = {tool: summarize([r[0] for r in runs])[0] for tool, runs in samples.items()}
        rss = {tool: summarize([r[1] for r in runs])[0] for tool, runs in samples.items()}
        cells = [size, fmt_spread([r[0] for r in samples["strata"]]), fmt_spread([r[0] for r in samples["litestream"]]),
                 f"**{med['litestream'] / med['strata']:.1f}x**", f"{rss['strata']:.0f} MiB", f"{rss['litestream']:.0f} MiB"]
        if local:
            cells.append(f"{med['cat + fsync']:.2f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-restore"))
    ap.add_argument("--sizes", default="32000,100000,320000",
                    help="database sizes, as rows of ~1 KiB (comma-separated); each replica is built once")
    ap.add_argument("--txns", type=int, default=150)
    ap.add_argument("--settle", type=float, default=15, help="seconds the new replica compacts before use")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    args = ap.parse_args()

    build_release(("strata", "strata"), ("strata-benches", "latency_proxy"))
    local_rows, s3_rows, plans, raw = [], [], [], []
    for rows in [int(r) for r in args.sizes.split(",")]:
        work = args.workdir / f"rows-{rows}"
        replica = build_replica(work, rows, args.txns, settle=args.settle)
        total = sum(f.stat().st_size for f in replica.glob("ltx/*/*.ltx"))
        count = len(list(replica.glob("ltx/*/*.ltx")))
        url = f"file://{replica}"
        plan_line, files = plan_files(url, env_for("strata"), replica)
        db_mib = (work / "source.db").stat().st_size / 2**20
        size = f"{db_mib:.0f} MiB"
        log(f"{size}: replica of {count} files, {total / 2**20:.0f} MiB; {plan_line}")
        plans.append(f"- {size}: {plan_line} (the replica holds {count} files)")
        entry = {"rows": rows, "db_mib": db_mib}
        if not args.skip_local:
            samples = compare("local", url, {}, work, args.runs, files)
            local_rows.append((size, samples))
            entry["local"] = {tool: [r[0] for r in runs] for tool, runs in samples.items()}
        if not args.skip_s3:
            samples = s3_compare(replica, work, args)
            s3_rows.append((size, samples))
            entry["s3"] = {tool: [r[0] for r in runs] for tool, runs in samples.items()}
        raw.append(entry)

    parts = [f"Wall time, median of {args.runs} runs (min-max); peak RSS median. Each replica was written by "
             f"`litestream replicate`: a database-sized base, then {args.txns} small transactions a sync apart "
             "(L0, L1 and L2 files on top). What each restore reads:", "", *plans]
    if local_rows:
        parts += ["", "### Local directory", "", table(local_rows, True)]
    if s3_rows:
        parts += ["", f"### S3 (rclone serve s3 + {args.latency_ms} ms per request)", "", table(s3_rows, False)]
    text = "\n".join(parts)
    print(text)
    (args.workdir / "results.md").write_text(text + "\n")
    write_json(args.json, {"latency_ms": args.latency_ms, "sizes": raw})


def s3_compare(replica, work, args):
    """The same comparison from S3: rclone serve s3 over the replica's files in Litestream's
    S3 layout, behind the latency proxy."""
    s3root = work / "s3root"
    s3_layout(replica, s3root)
    port, proxy_port = free_port(), free_port()
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "benchsecret", "AWS_REGION": "us-east-1"}
    with Service(["rclone", "serve", "s3", str(s3root), "--addr", f"127.0.0.1:{port}",
                  "--auth-key", "bench,benchsecret"], work / "rclone.log"), \
         Service([str(TARGET / "latency_proxy"), f"127.0.0.1:{proxy_port}", f"127.0.0.1:{port}",
                  str(args.latency_ms)], work / "proxy.log"):
        wait_for_port(port)
        wait_for_port(proxy_port)
        s3url = f"s3://bench/db?endpoint=http://127.0.0.1:{proxy_port}&region=us-east-1&forcePathStyle=true"
        return compare("s3", s3url, creds, work, args.runs, None)


if __name__ == "__main__":
    main()
