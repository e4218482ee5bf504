"""The SQLite workload as a long-running service: a live target for continuous tuning.

It runs :class:`~knobflow.workloads.sqlite_workload.Workload` without end, in epochs of
``--epoch`` seconds. Between two epochs it looks at its configuration file (the JSON the
``sqlite_config`` role writes) and, when the file changed, reopens the database with the new
settings, as a service restarted by its deployment would (the database is rebuilt: ``page_size``
and ``journal_mode`` cannot change on a live connection); a configuration it cannot use is
reported in ``knobflow_sqlite_config_errors_total`` and the last good one keeps running. With
``--mix-file`` it also re-reads its request mix (a name or shares, as ``--mix``) every epoch, so
the load can drift while it runs.

It serves Prometheus text on ``http://HOST:PORT/metrics`` (``/healthz`` answers ``ok``):

* ``knobflow_sqlite_operations_total{op="read|aggregate|insert|update"}`` (counter): the rate of
  their sum is the throughput;
* ``knobflow_sqlite_read_latency_ms{quantile="0.5|0.99"}`` and
  ``knobflow_sqlite_commit_latency_ms{quantile=...}`` (gauges): over the last epoch;
* ``knobflow_sqlite_throughput_ops`` (gauge): operations per second in the last epoch;
* ``knobflow_sqlite_config_generation`` (gauge): how many configurations it has run, the first
  being 1; ``knobflow_sqlite_config_info{sha256="..."} 1``: the digest of the file it runs;
* ``knobflow_sqlite_config_errors_total`` (counter), ``knobflow_sqlite_up`` (gauge).

Usage::

    python -m knobflow.workloads.sqlite_service --config CONFIG --db DB --port 9464 [--mix M | --mix-file F]

It stops on SIGTERM or SIGINT and removes its database.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from knobflow.workloads.sqlite_workload import (
    MIX_ENV,
    MIXES,
    OPERATIONS,
    Workload,
    _percentile,
    load_config,
    parse_mix,
)


class Service:
    """The loop and its metrics; :meth:`exposition` is what ``/metrics`` serves."""

    def __init__(self, config: Path, db: Path, mix: str | None, mix_file: Path | None, epoch: float, seed: int) -> None:
        self.config_path, self.db, self.mix_file, self.epoch, self.seed = config, db, mix_file, epoch, seed
        self.mix_text = mix
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.totals = dict.fromkeys(OPERATIONS, 0)
        self.last: dict[str, float] = {}
        self.generation = 0
        self.errors = 0
        self.last_error = ""
        self.sha = ""
        self.workload: Workload | None = None
        self._seen: tuple[int, int] | None = None

    # -- configuration ---------------------------------------------------------------------------
    def _file_key(self) -> tuple[int, int] | None:
        try:
            st = self.config_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload_if_changed(self) -> bool:
        """Reopen the workload when the configuration file changed (or on the first call)."""
        key = self._file_key()
        if self.workload is not None and key == self._seen:
            return False
        self._seen = key
        try:
            data = self.config_path.read_bytes() if key is not None else b""
            config = load_config(self.config_path if key is not None else None)
            mix = self._mix()
            fresh = None
            if self.workload is not None:
                self.workload.close()
                self.workload = None
            fresh = Workload(config, self.db, self.seed + self.generation, mix)
        except (ValueError, sqlite3.Error, OSError) as exc:
            with self.lock:
                self.errors += 1
                self.last_error = str(exc)
            print(f"sqlite_service: configuration not applied: {exc}", file=sys.stderr, flush=True)
            if self.workload is None and self._good is not None:  # back to the last good one
                self.workload = Workload(self._good, self.db, self.seed + self.generation, self._mix())
            return False
        self.workload = fresh
        self._good = config
        with self.lock:
            self.generation += 1
            self.sha = hashlib.sha256(data).hexdigest()
        return True

    _good: dict[str, Any] | None = None

    def _mix(self) -> dict[str, float]:
        text = self.mix_text
        if self.mix_file is not None and self.mix_file.exists():
            text = self.mix_file.read_text().strip() or text
        return parse_mix(text)

    # -- the loop --------------------------------------------------------------------------------
    def step(self) -> None:
        self.reload_if_changed()
        assert self.workload is not None
        if self.mix_file is not None:
            try:
                self.workload.set_mix(self._mix())
            except (ValueError, OSError) as exc:
                with self.lock:
                    self.errors += 1
                    self.last_error = f"mix: {exc}"
        self.workload.run_for(self.epoch)
        st = self.workload.take()
        with self.lock:
            self.totals["read"] += len(st["reads"])
            self.totals["aggregate"] += st["aggregates"]
            self.totals["insert"] += st["inserts"]
            self.totals["update"] += st["updates"]
            self.last = {
                "throughput": st["ops"] / st["elapsed"] if st["elapsed"] > 0 else 0.0,
                "read_p50": _percentile(st["reads"], 0.5) * 1e3,
                "read_p99": _percentile(st["reads"], 0.99) * 1e3,
                "commit_p50": _percentile(st["commits"], 0.5) * 1e3,
                "commit_p99": _percentile(st["commits"], 0.99) * 1e3,
            }

    def serve_forever(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            if self.workload is not None:
                self.workload.close()

    # -- metrics ---------------------------------------------------------------------------------
    def exposition(self) -> str:
        with self.lock:
            totals, last, gen, errors, sha = dict(self.totals), dict(self.last), self.generation, self.errors, self.sha
        lines = [
            "# HELP knobflow_sqlite_operations_total Operations done since the service started, by kind.",
            "# TYPE knobflow_sqlite_operations_total counter",
            *(f'knobflow_sqlite_operations_total{{op="{op}"}} {totals[op]}' for op in OPERATIONS),
        ]
        if last:
            lines += [
                "# HELP knobflow_sqlite_throughput_ops Operations per second in the last epoch.",
                "# TYPE knobflow_sqlite_throughput_ops gauge",
                f"knobflow_sqlite_throughput_ops {last['throughput']!r}",
                "# HELP knobflow_sqlite_read_latency_ms Point-read latency over the last epoch.",
                "# TYPE knobflow_sqlite_read_latency_ms gauge",
                f'knobflow_sqlite_read_latency_ms{{quantile="0.5"}} {last["read_p50"]!r}',
                f'knobflow_sqlite_read_latency_ms{{quantile="0.99"}} {last["read_p99"]!r}',
                "# HELP knobflow_sqlite_commit_latency_ms Commit latency over the last epoch.",
                "# TYPE knobflow_sqlite_commit_latency_ms gauge",
                f'knobflow_sqlite_commit_latency_ms{{quantile="0.5"}} {last["commit_p50"]!r}',
                f'knobflow_sqlite_commit_latency_ms{{quantile="0.99"}} {last["commit_p99"]!r}',
            ]
        lines += [
            "# HELP knobflow_sqlite_config_generation Configurations run since the start, the first being 1.",
            "# TYPE knobflow_sqlite_config_generation gauge",
            f"knobflow_sqlite_config_generation {gen}",
            "# TYPE knobflow_sqlite_config_info gauge",
            f'knobflow_sqlite_config_info{{sha256="{sha}"}} 1',
            "# TYPE knobflow_sqlite_config_errors_total counter",
            f"knobflow_sqlite_config_errors_total {errors}",
            "# TYPE knobflow_sqlite_up gauge",
            "knobflow_sqlite_up 1",
        ]
        return "\n".join(lines) + "\n"


def _handler(service: Service) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                body, ctype = service.exposition().encode(), "text/plain; version=0.0.4; charset=utf-8"
            elif self.path == "/healthz":
                body, ctype = b"ok\n", "text/plain"
            else:
                self.send_error(404, "try /metrics")
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="JSON settings file, re-read when it changes")
    parser.add_argument("--db", type=Path, required=True, help="database file (rebuilt on each new configuration)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9464, help="metrics port (0: any free one, printed)")
    parser.add_argument("--epoch", type=float, default=0.5, help="seconds between two looks at the configuration")
    parser.add_argument("--seed", type=int, default=7)
    mix = parser.add_mutually_exclusive_group()
    mix.add_argument("--mix", help=f"request mix: {', '.join(MIXES)} or shares (default: ${MIX_ENV}, else default)")
    mix.add_argument("--mix-file", type=Path, help="a file holding the mix, re-read every epoch")
    args = parser.parse_args(argv)
    if not args.epoch > 0:
        parser.error("--epoch must be > 0")
    mix_text = args.mix if args.mix is not None else os.environ.get(MIX_ENV)
    service = Service(args.config, args.db, mix_text, args.mix_file, args.epoch, args.seed)
    try:
        parse_mix(mix_text)
        service.reload_if_changed()
    except (ValueError, sqlite3.Error, OSError) as exc:
        print(f"sqlite_service: {exc}", file=sys.stderr)
        return 2
    if service.workload is None:
        print(f"sqlite_service: cannot start: {service.last_error}", file=sys.stderr)
        return 2
    try:
        server = http.server.ThreadingHTTPServer((args.host, args.port), _handler(service))
    except OSError as exc:
        service.workload.close()
        print(f"sqlite_service: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def _stop(signum: int, frame: Any) -> None:
        service.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"sqlite_service: serving http://{args.host}:{server.server_address[1]}/metrics", flush=True)
    try:
        service.serve_forever()
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
