"""A real SQLite workload: an order-processing table under a mix of reads and writes.

It reads its settings from a JSON file written by the ``sqlite_config`` role::

    {"pragmas": {"journal_mode": "wal", "synchronous": "normal", ...}, "batch_size": 100}

then recreates the database, loads it, and for ``--duration`` seconds runs a mix of operations:
by default 55% point reads by key, 25% inserts, 15% updates, 5% aggregate queries over a range.
``--mix`` (or the environment variable ``KNOBFLOW_SQLITE_MIX`` when ``--mix`` is not given) picks
another mix: a name of :data:`MIXES` (``default``, ``read-heavy``, ``write-heavy``) or explicit
shares such as ``read=0.6,aggregate=0.3,insert=0.05,update=0.05`` (normalised to sum 1).
Writes are grouped into transactions of ``batch_size`` write operations. At the end it prints one
JSON line of metrics: throughput_ops (operations per second), read_p50_ms, read_p99_ms,
commit_p50_ms, commit_p99_ms, ops, reads, writes, aggregates, inserts, updates, elapsed_s.

Usage: python -m knobflow.workloads.sqlite_workload --config CONFIG --db DB [--duration 1] [--mix M]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

PRAGMA_ORDER = (
    "page_size",
    "journal_mode",
    "synchronous",
    "cache_size_kib",
    "mmap_size_mib",
    "temp_store",
    "locking_mode",
    "wal_autocheckpoint",
)
ROWS = 20_000
PAYLOAD = 200
MIX_ENV = "KNOBFLOW_SQLITE_MIX"
OPERATIONS = ("read", "aggregate", "insert", "update")
# Shares of each operation, in OPERATIONS order. "default" is the workload's original mix.
MIXES: dict[str, dict[str, float]] = {
    "default": {"read": 0.55, "aggregate": 0.05, "insert": 0.25, "update": 0.15},
    "read-heavy": {"read": 0.90, "aggregate": 0.08, "insert": 0.01, "update": 0.01},
    "write-heavy": {"read": 0.05, "aggregate": 0.0, "insert": 0.50, "update": 0.45},
}


def parse_mix(text: str | None) -> dict[str, float]:
    """A mix by name (:data:`MIXES`) or as ``op=share,...`` over :data:`OPERATIONS` (missing
    operations get 0); the shares are normalised to sum 1."""
    text = (text or "default").strip()
    if text in MIXES:
        return dict(MIXES[text])
    shares = dict.fromkeys(OPERATIONS, 0.0)
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in shares:
            raise ValueError(
                f"bad mix {text!r}: give one of {', '.join(MIXES)} or shares like read=0.5,insert=0.5"
                f" over {', '.join(OPERATIONS)}"
            )
        try:
            shares[name] = float(value)
        except ValueError:
            raise ValueError(f"bad mix {text!r}: share of {name} is not a number") from None
        if not shares[name] >= 0:
            raise ValueError(f"bad mix {text!r}: share of {name} is negative")
    total = sum(shares.values())
    if not 0 < total < float("inf"):
        raise ValueError(f"bad mix {text!r}: the shares must add up to more than 0")
    return {k: v / total for k, v in shares.items()}


def _pragma_sql(name: str, value: Any) -> str:
    if name == "cache_size_kib":
        return f"PRAGMA cache_size = -{int(value)}"
    if name == "mmap_size_mib":
        return f"PRAGMA mmap_size = {int(value) * 1024 * 1024}"
    if isinstance(value, str) and not value.replace("_", "").isalnum():
        raise ValueError(f"bad value for pragma {name}: {value!r}")
    return f"PRAGMA {name} = {value}"


def load_config(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {"pragmas": {}, "batch_size": 1}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the configuration must be a JSON object")
    data.setdefault("pragmas", {})
    data.setdefault("batch_size", 1)
    return data


def _fresh(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(db) + suffix)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


class Workload:
    """An open database under load: :meth:`run_for` runs the mix for a while and can be called
    again (the live service does, between checks of its configuration); :meth:`close` removes the
    database. Counts and latencies accumulate in :attr:`stats` until :meth:`take` hands them over."""

    def __init__(self, config: dict[str, Any], db: Path, seed: int = 7, mix: dict[str, float] | None = None) -> None:
        self.db = db
        self.set_mix(mix or MIXES["default"])
        db.parent.mkdir(parents=True, exist_ok=True)
        _fresh(db)
        self.conn = sqlite3.connect(str(db), isolation_level=None)
        try:
            pragmas = config.get("pragmas") or {}
            for name in PRAGMA_ORDER:
                if name in pragmas:
                    self.conn.execute(_pragma_sql(name, pragmas[name])).fetchall()
            unknown = set(pragmas) - set(PRAGMA_ORDER)
            if unknown:
                raise ValueError(f"unknown pragmas in the configuration: {sorted(unknown)}")
            self.batch = max(1, int(config.get("batch_size") or 1))
            self.rng = rng = random.Random(seed)
            self.conn.execute(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, status INTEGER NOT NULL,"
                " amount REAL NOT NULL, payload BLOB NOT NULL)"
            )
            self.conn.execute("CREATE INDEX orders_customer ON orders(customer)")
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO orders (id, customer, status, amount, payload) VALUES (?, ?, ?, ?, ?)",
                (
                    (i, rng.randrange(2000), rng.randrange(5), rng.random() * 100, rng.randbytes(PAYLOAD))
                    for i in range(ROWS)
                ),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.close()
            raise
        self.next_id = ROWS
        self.take()

    def set_mix(self, mix: dict[str, float]) -> None:
        # Cumulative thresholds on one uniform draw per operation: read, aggregate, insert, else update.
        self.t_read = mix.get("read", 0.0)
        self.t_aggregate = self.t_read + mix.get("aggregate", 0.0)
        self.t_insert = self.t_aggregate + mix.get("insert", 0.0)

    def take(self) -> dict[str, Any]:
        """The counts and sorted latencies (seconds) since the last call, and reset them."""
        out = getattr(self, "stats", None)
        self.stats: dict[str, Any] = dict.fromkeys(("ops", "writes", "aggregates", "inserts", "updates"), 0)
        self.stats.update(reads=[], commits=[], elapsed=0.0)
        if out is not None:
            out["reads"].sort()
            out["commits"].sort()
        return out or {}

    def run_for(self, duration: float) -> None:
        """Run the mix for ``duration`` seconds; the last transaction is committed before it returns."""
        conn, rng, st = self.conn, self.rng, self.stats
        reads, commits, batch = st["reads"], st["commits"], self.batch
        t_read, t_aggregate, t_insert = self.t_read, self.t_aggregate, self.t_insert
        ops = writes = pending = aggregates = inserts = updates = 0
        in_tx = False
        start = time.perf_counter()
        deadline = start + duration
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            r = rng.random()
            if r < t_read:
                t0 = time.perf_counter()
                conn.execute(
                    "SELECT amount, payload FROM orders WHERE id = ?", (rng.randrange(self.next_id),)
                ).fetchone()
                reads.append(time.perf_counter() - t0)
            elif r < t_aggregate:
                aggregates += 1
                c = rng.randrange(2000)
                conn.execute(
                    "SELECT status, count(*), sum(amount) FROM orders WHERE customer BETWEEN ? AND ? GROUP BY status",
                    (c, c + 20),
                ).fetchall()
            else:
                if not in_tx:
                    conn.execute("BEGIN")
                    in_tx = True
                if r < t_insert:
                    inserts += 1
                    conn.execute(
                        "INSERT INTO orders (id, customer, status, amount, payload) VALUES (?, ?, ?, ?, ?)",
                        (self.next_id, rng.randrange(2000), 0, rng.random() * 100, rng.randbytes(PAYLOAD)),
                    )
                    self.next_id += 1
                else:
                    updates += 1
                    conn.execute(
                        "UPDATE orders SET status = ?, amount = amount + 1 WHERE id = ?",
                        (rng.randrange(5), rng.randrange(self.next_id)),
                    )
                writes += 1
                pending += 1
                if pending >= batch:
                    t0 = time.perf_counter()
                    conn.execute("COMMIT")
                    commits.append(time.perf_counter() - t0)
                    in_tx = False
                    pending = 0
            ops += 1
        if in_tx:
            t0 = time.perf_counter()
            conn.execute("COMMIT")
            commits.append(time.perf_counter() - t0)
        st["elapsed"] += time.perf_counter() - start
        for key, n in (("ops", ops), ("writes", writes), ("aggregates", aggregates), ("inserts", inserts)):
            st[key] += n
        st["updates"] += updates

    def close(self) -> None:
        self.conn.close()
        _fresh(self.db)


def metrics_of(stats: dict[str, Any]) -> dict[str, float]:
    """The benchmark's metrics from :meth:`Workload.take`'s counts."""
    reads, commits, elapsed = stats["reads"], stats["commits"], stats["elapsed"]
    return {
        "throughput_ops": stats["ops"] / elapsed if elapsed > 0 else 0.0,
        "read_p50_ms": _percentile(reads, 0.50) * 1e3,
        "read_p99_ms": _percentile(reads, 0.99) * 1e3,
        "commit_p50_ms": _percentile(commits, 0.50) * 1e3,
        "commit_p99_ms": _percentile(commits, 0.99) * 1e3,
        "ops": stats["ops"],
        "reads": len(reads),
        "writes": stats["writes"],
        "aggregates": stats["aggregates"],
        "inserts": stats["inserts"],
        "updates": stats["updates"],
        "elapsed_s": elapsed,
    }


def run(
    config: dict[str, Any], db: Path, duration: float, seed: int = 7, mix: dict[str, float] | None = None
) -> dict[str, float]:
    """Create and load the database, run the mix for ``duration`` seconds, remove the database."""
    workload = Workload(config, db, seed, mix)
    try:
        workload.run_for(duration)
    finally:
        workload.close()
    return metrics_of(workload.take())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="JSON settings file (absent: SQLite defaults)")
    parser.add_argument("--db", type=Path, required=True, help="database file (recreated each run)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds of measured load")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--mix",
        help=f"request mix: {', '.join(MIXES)} or shares like read=0.5,insert=0.5 (default: ${MIX_ENV}, else default)",
    )
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix if args.mix is not None else os.environ.get(MIX_ENV))
        config = load_config(args.config)
        metrics = run(config, args.db, args.duration, args.seed, mix)
    except (ValueError, sqlite3.Error, OSError) as exc:
        print(f"sqlite_workload: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
