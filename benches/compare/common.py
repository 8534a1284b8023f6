"""Shared pieces of the comparison harnesses: tools, timing, servers."""

import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# STRATA_BENCH_PROFILE=debug runs the harnesses on debug builds: a smoke check (CI) that
# each still runs and that both tools agree, with numbers not worth reading.
PROFILE = os.environ.get("STRATA_BENCH_PROFILE", "release")
if PROFILE not in ("release", "debug"):
    sys.exit(f"STRATA_BENCH_PROFILE must be release or debug, not {PROFILE!r}")
TARGET = ROOT / "target" / PROFILE


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tool_path():
    """PATH with the Python scripts directory first, where pip puts litestream and rclone."""
    return sysconfig.get_path("scripts") + os.pathsep + os.environ["PATH"]


def cargo_build(*args):
    """`cargo build` in the harnesses' profile (see PROFILE)."""
    cmd = ["cargo", "build", "-q", *(["--release"] if PROFILE == "release" else []), *args]
    log(" ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)


def build_release(*bins):
    """Builds the binaries the harness runs (release unless STRATA_BENCH_PROFILE=debug)."""
    for package, binary in bins:
        cargo_build("-p", package, "--bin", binary)


def env_for(tool, extra=None):
    env = dict(os.environ, PATH=tool_path())
    env.update(extra or {})
    if tool == "litestream":
        # Litestream's S3 client refuses a custom endpoint while a CA bundle is set.
        env.pop("AWS_CA_BUNDLE", None)
    return env


def run_measured(cmd, env):
    """Runs a command; returns (wall seconds, peak RSS in MiB, user+sys CPU seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({status}):\n{stderr}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


class Service:
    """A background process stopped on exit."""

    def __init__(self, cmd, log_path, env=None):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env or env_for("strata"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def summarize(samples):
    """Median, min and max of a list of numbers."""
    return statistics.median(samples), min(samples), max(samples)


def write_json(path, data):
    """A harness's raw results, for the report's charts (`strata-bench-charts`)."""
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")


def fmt_spread(samples, unit="s", digits=2):
    """`median unit (min-max)` of a list of numbers (the median alone for one)."""
    med, lo, hi = summarize(samples)
    if len(samples) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
