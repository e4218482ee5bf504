"""Leases on target hosts and on trial slots, kept in the knobflow store.

A trial holds a lease on every host it runs on, so one host never runs two benchmarks at once,
whichever experiment, DAG run, worker or ``knobflow`` command started them. With ``parallel: K``
a trial also holds one of the experiment's K slot leases, which bounds how many of its trials run
at once even when a DAG run is triggered with a lower ``parallel`` than the file's.

Leases live in one table of the store's database (``knobflow_leases``), one row per key
(``host:<name>`` or ``slot:<experiment>:<i>``). Taking a set of keys is one transaction: all or
none. The holder refreshes its leases' heartbeat while its trial runs; a lease is free again when
its holder is gone: a dead process on this machine at once, a holder elsewhere when its heartbeat
is older than ``stale_s``. This is knobflow's equivalent of an Airflow pool per host: pools are
fixed per task when a DAG is parsed, while a trial's host is chosen when it starts.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

HEARTBEAT_S = 10.0
STALE_S = 90.0

_metadata = sa.MetaData()
_table = sa.Table(
    "knobflow_leases",
    _metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),
    sa.Column("holder", sa.Text, nullable=False),  # JSON: experiment, trial, host, pid, create_time
    sa.Column("acquired", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
)


def host_key(host: str) -> str:
    return f"host:{host}"


def slot_key(experiment: str, i: int) -> str:
    return f"slot:{experiment}:{i}"


@dataclass(frozen=True)
class Lease:
    key: str
    token: str
    holder: dict[str, Any]
    acquired: float
    heartbeat: float


def _me() -> dict[str, Any]:
    proc = psutil.Process()
    return {"host": socket.gethostname(), "pid": proc.pid, "create_time": proc.create_time()}


def holder_alive(holder: dict[str, Any], heartbeat: float, *, stale_s: float, now: float) -> bool:
    """Whether a lease's holder may still be running: on this machine, its process lives; elsewhere,
    its heartbeat is fresh."""
    if holder.get("host") == socket.gethostname():
        try:
            proc = psutil.Process(int(holder["pid"]))
            return abs(proc.create_time() - float(holder["create_time"])) < 1.0
        except (psutil.Error, KeyError, ValueError, TypeError):
            return False
    return now - heartbeat < stale_s


class Leases:
    """The lease table of one store (its SQLAlchemy engine)."""

    def __init__(self, engine: sa.engine.Engine, *, stale_s: float = STALE_S):
        self.engine = engine
        self.stale_s = stale_s
        for attempt in range(5):
            try:
                _metadata.create_all(engine, checkfirst=True)
                break
            except (OperationalError, IntegrityError) as exc:  # another process created it first
                if ("already exists" not in str(exc) and "UNIQUE" not in str(exc).upper()) or attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def held(self) -> list[Lease]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_table)).all()
        return [Lease(r.key, r.token, json.loads(r.holder), r.acquired, r.heartbeat) for r in rows]

    def try_acquire(self, keys: list[str], holder: dict[str, Any]) -> str | None:
        """Take every key in ``keys`` (all or none). Returns the lease token, or None when a key is
        held by a live holder. Leases of dead holders are taken over."""
        token = uuid.uuid4().hex
        now = time.time()
        record = json.dumps({**holder, **_me()}, default=str)
        try:
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(_table).where(_table.c.key.in_(keys))).all()
                for r in rows:
                    if holder_alive(json.loads(r.holder), r.heartbeat, stale_s=self.stale_s, now=now):
                        return None
                if rows:
                    # Delete exactly the dead rows we saw; a row renewed since then survives and the insert fails.
                    for r in rows:
                        conn.execute(sa.delete(_table).where(_table.c.key == r.key, _table.c.token == r.token))
                conn.execute(
                    sa.insert(_table),
                    [{"key": k, "token": token, "holder": record, "acquired": now, "heartbeat": now} for k in keys],
                )
        except IntegrityError:  # another process took a key between our read and our insert
            return None
        except OperationalError as exc:  # SQLite: the database is locked by another writer right now
            if "locked" in str(exc):
                return None
            raise
        return token

    def heartbeat(self, token: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(sa.update(_table).where(_table.c.token == token).values(heartbeat=time.time())).rowcount

    def release(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(_table).where(_table.c.token == token))

    def _sweep(self) -> tuple[list[Lease], list[Lease]]:
        """Read the table once; remove the leases of holders that are gone. (live, gone)."""
        now = time.time()
        live: list[Lease] = []
        gone: list[Lease] = []
        for lease in self.held():
            alive = holder_alive(lease.holder, lease.heartbeat, stale_s=self.stale_s, now=now)
            (live if alive else gone).append(lease)
        if gone:
            with self.engine.begin() as conn:
                for lease in gone:
                    conn.execute(sa.delete(_table).where(_table.c.key == lease.key, _table.c.token == lease.token))
        return live, gone

    def free_dead(self) -> list[str]:
        """Remove the leases of holders that are gone; returns their keys."""
        return [lease.key for lease in self._sweep()[1]]

    def live(self) -> list[Lease]:
        """The leases whose holders may still be running (those of holders that are gone are removed)."""
        return self._sweep()[0]

    @contextmanager
    def keep_alive(self, token: str, *, every_s: float = HEARTBEAT_S) -> Iterator[None]:
        """Refresh the lease's heartbeat from a background thread while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every_s):
                with contextlib.suppress(Exception):  # a database hiccup: the next beat tries again
                    self.heartbeat(token)

        t = threading.Thread(target=beat, name="knobflow-lease-heartbeat", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=5)
