#!/usr/bin/env python3
"""Compaction throughput and memory: one pass of strata's compactor over a directory replica,
each in its own process (`compaction_bench`, this crate's binary), so the peak RSS is the
pass's own; next to bare LZ4 (decode + encode of the same pages) as the floor.

Passes: an L1 pass over 10, 100 and 1,000 L0 files that together rewrite a database of
`--mb` MB, and a snapshot pass over a `--snapshot-mb` MB snapshot and 10 L0 files rewriting
it. Every run prepares its replica afresh. Litestream compacts inside `replicate`, with no
pass of its own to time, so this area has no peer column.

    python3 benches/compare/compaction.py [--mb 100] [--snapshot-mb 500] [--runs 3] [--json F]
"""

import argparse
import re
import statistics
import subprocess
from pathlib import Path

from common import TARGET, build_release, fmt_spread, log, rmtree, write_json

PASS = re.compile(r"(\d+) MB of pages .* in ([\d.]+) s = (\d+) MB/s; .*peak RSS (\d+) MiB")
LZ4 = re.compile(r"(\d+) MB of pages in ([\d.]+) s = (\d+) MB/s")


def bench(*args):
    out = subprocess.run([str(TARGET / "compaction_bench"), *map(str, args)], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def one_pass(work, mb, inputs, snapshot):
    rmtree(work)
    bench("prepare", work, mb, inputs)
    line = bench("snapshot" if snapshot else "run", work)
    m = PASS.search(line)
    if not m:
        raise RuntimeError(f"compaction_bench printed {line!r}")
    rmtree(work)
    return {"mb": int(m.group(1)), "secs": float(m.group(2)), "mb_s": float(m.group(3)),
            "rss": float(m.group(4))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--snapshot-mb", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/strata-bench-compaction"))
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    build_release(("strata-benches", "compaction_bench"))

    cases = [("L1 from 10 L0 files", args.mb, 10, False),
             ("L1 from 100 L0 files", args.mb, 100, False),
             ("L1 from 1,000 L0 files", args.mb, 1000, False),
             ("snapshot from a snapshot + 10 L0 files", args.snapshot_mb, 10, True)]
    results = {}
    for name, mb, inputs, snapshot in cases:
        runs = []
        for i in range(args.runs):
            runs.append(one_pass(args.workdir, mb, inputs, snapshot))
            log(f"{name}, run {i + 1}: {runs[-1]}")
        results[name] = runs
    floor = [float(LZ4.search(bench("lz4", args.mb)).group(3)) for _ in range(args.runs)]

    lines = [f"One pass each in its own process, median of {args.runs} runs (min-max); text-like 4 KiB "
             "pages that compress ~3x; a local directory replica (decode, k-way merge, encode, "
             "checksums, a synced scratch file, the link into place).", "",
             "| pass | page data merged | time | throughput | peak RSS |", "|---|---|---|---|---|"]
    for name, runs in results.items():
        lines.append(f"| {name} | {runs[0]['mb']:,} MB | {fmt_spread([r['secs'] for r in runs])} | "
                     f"{fmt_spread([r['mb_s'] for r in runs], 'MB/s', 0)} | "
                     f"{statistics.median(r['rss'] for r in runs):.0f} MiB |")
    lines.append(f"| bare `lz4_flex` decode + encode, same pages | {args.mb:,} MB | | "
                 f"{statistics.median(floor):.0f} MB/s | |")
    text = "\n".join(lines)
    print(text)
    write_json(args.json, {"passes": results, "lz4_mb_s": floor})


if __name__ == "__main__":
    main()
