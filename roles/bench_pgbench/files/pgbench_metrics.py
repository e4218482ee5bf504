"""Run pgbench once and print its metrics as one JSON line (knobflow's bench_pgbench role).

The role runs this file with ``python -c <source> ARGS`` through bench_command, which repeats it
and aggregates the metrics. Standard library only. pgbench runs with an argument vector (no shell)
and writes a per-transaction log (-l) into a temporary directory; the latency percentiles are
computed from that log. Exit status: pgbench's own when it fails, 2 for a bad argument or a server
that cannot be found.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

BUILTINS = ("tpcb-like", "simple-update", "select-only")


def percentile(ordered, q):
    """The q-quantile (0..1) of a sorted list, linearly interpolated between closest ranks."""
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def read_logs(prefix):
    """(latencies in ms, failed, skipped) from pgbench's per-transaction log files prefix.*."""
    latencies, failed, skipped = [], 0, 0
    for path in sorted(glob.glob(glob.escape(prefix) + ".*")):
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6:
                    continue
                value = fields[2]
                if value.isdigit():
                    latencies.append(int(value) / 1000.0)
                elif value == "skipped":
                    skipped += 1
                else:  # "failed", or "serialization"/"deadlock" with --failures-detailed
                    failed += 1
    latencies.sort()
    return latencies, failed, skipped


def parse_stdout(text):
    out = {}
    patterns = {
        "tps": r"^tps = ([\d.]+)",
        "latency_avg_ms": r"^latency average = ([\d.]+) ms",
        "transactions": r"^number of transactions actually processed: (\d+)",
        "failed_tx": r"^number of failed transactions: (\d+)",
        "connection_ms": r"^initial connection time = ([\d.]+) ms",
    }
    for key, pattern in patterns.items():
        m = re.search(pattern, text, re.MULTILINE)
        if m:
            out[key] = float(m.group(1))
    return out


def discover(datadir):
    """(socket directory, port) of the server running from datadir, read from its postmaster.pid."""
    path = os.path.join(datadir, "postmaster.pid")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        sys.exit(f"pgbench_metrics: the server is not running: no {path}")
    if len(lines) < 5:
        sys.exit(f"pgbench_metrics: {path} is incomplete (the server is starting or stopping)")
    return lines[4].strip() or "127.0.0.1", int(lines[3])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="pgbench_metrics", description=__doc__.splitlines()[0])
    ap.add_argument("--bindir", default="/usr/lib/postgresql/15/bin")
    ap.add_argument("--host", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--datadir", default="")
    ap.add_argument("--user", default="postgres")
    ap.add_argument("--database", default="pgbench")
    ap.add_argument("--builtin", choices=BUILTINS, default="tpcb-like")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--protocol", choices=("simple", "extended", "prepared"), default="simple")
    ap.add_argument("--sampling-rate", type=float, default=1.0)
    ap.add_argument("--checkpoint", action="store_true", help="run CHECKPOINT before pgbench")
    ap.add_argument("--extra-arg", action="append", default=[], help="one more pgbench argument (repeatable)")
    a = ap.parse_args(argv)
    if a.clients < 1 or a.threads < 1 or a.duration < 1:
        ap.error("--clients, --threads and --duration must be at least 1")
    if not 0 < a.sampling_rate <= 1:
        ap.error("--sampling-rate must be in (0, 1]")
    host, port = a.host, a.port
    if not host or not port:
        if not a.datadir:
            ap.error("give --host and --port, or --datadir to read them from postmaster.pid")
        found_host, found_port = discover(a.datadir)
        host, port = host or found_host, port or found_port
    conn = ["-h", host, "-p", str(port), "-U", a.user]
    env = dict(os.environ, PGAPPNAME="knobflow-pgbench")
    if a.checkpoint:
        proc = subprocess.run(
            [os.path.join(a.bindir, "psql"), "-X", "-q", *conn, "-d", a.database, "-c", "CHECKPOINT"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
    workdir = tempfile.mkdtemp(prefix="knobflow-pgbench-")
    prefix = os.path.join(workdir, "tx")
    try:
        cmd = [
            os.path.join(a.bindir, "pgbench"),
            *conn,
            "-b",
            a.builtin,
            "-c",
            str(a.clients),
            "-j",
            str(min(a.threads, a.clients)),
            "-T",
            str(a.duration),
            "-M",
            a.protocol,
            "-l",
            "--log-prefix",
            prefix,
            *(["--sampling-rate", repr(a.sampling_rate)] if a.sampling_rate < 1 else []),
            *a.extra_arg,
            a.database,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr or proc.stdout)
            return proc.returncode
        metrics = parse_stdout(proc.stdout)
        if "tps" not in metrics:
            sys.stderr.write("pgbench printed no tps line:\n" + proc.stdout[-2000:])
            return 3
        latencies, failed, skipped = read_logs(prefix)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not latencies:
        sys.stderr.write("pgbench completed no transaction (empty per-transaction log)\n")
        return 3
    metrics.setdefault("failed_tx", float(failed))
    metrics.update(
        latency_p50_ms=percentile(latencies, 0.50),
        latency_p95_ms=percentile(latencies, 0.95),
        latency_p99_ms=percentile(latencies, 0.99),
        latency_max_ms=latencies[-1],
        skipped_tx=float(skipped),
        logged_tx=float(len(latencies)),
    )
    print(json.dumps({k: round(v, 6) for k, v in sorted(metrics.items())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
