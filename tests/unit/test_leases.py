"""Host and slot leases in the store: all-or-none, freed when the holder dies, one winner per key."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from knobflow.leases import Leases, host_key, slot_key


def _leases(tmp_path: Path, **kw: float) -> Leases:
    return Leases(sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}", connect_args={"timeout": 30}), **kw)


def test_a_set_of_keys_is_taken_all_or_none(tmp_path: Path) -> None:
    leases = _leases(tmp_path)
    a = leases.try_acquire([host_key("h1")], {"experiment": "a"})
    assert a is not None
    # h2 is free but h1 is not: nothing is taken.
    assert leases.try_acquire([host_key("h2"), host_key("h1")], {"experiment": "b"}) is None
    assert {lease.key for lease in leases.held()} == {"host:h1"}
    b = leases.try_acquire([host_key("h2"), slot_key("b", 0)], {"experiment": "b"})
    assert b is not None
    assert {lease.key for lease in leases.held()} == {"host:h1", "host:h2", "slot:b:0"}
    leases.release(a)
    assert {lease.key for lease in leases.held()} == {"host:h2", "slot:b:0"}
    assert leases.try_acquire([host_key("h1")], {"experiment": "c"}) is not None


def test_a_lease_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    code = (
        "import sqlalchemy as sa\n"
        "from knobflow.leases import Leases\n"
        f"l = Leases(sa.create_engine('sqlite:///{db}'))\n"
        "print(l.try_acquire(['host:h1'], {'experiment': 'dead'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() not in ("", "None")
    leases = _leases(tmp_path)
    [held] = leases.held()
    assert held.holder["experiment"] == "dead"
    # Its process has exited: the lease is free again, to try_acquire and to free_dead alike.
    assert leases.free_dead() == ["host:h1"]
    assert leases.try_acquire(["host:h1"], {"experiment": "alive"}) is not None


def test_a_holder_on_another_machine_keeps_its_lease_while_its_heartbeat_is_fresh(tmp_path: Path) -> None:
    leases = _leases(tmp_path, stale_s=2.0)
    now = time.time()
    with leases.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO knobflow_leases (key, token, holder, acquired, heartbeat) VALUES (:k, 't', :h, :n, :n)"
            ),
            {"k": "host:h1", "h": json.dumps({"host": "another-machine", "pid": 1, "create_time": 0}), "n": now},
        )
    assert leases.try_acquire(["host:h1"], {"experiment": "x"}) is None
    assert leases.free_dead() == []
    time.sleep(2.2)  # no heartbeat for longer than stale_s: its holder is taken for gone
    assert leases.try_acquire(["host:h1"], {"experiment": "x"}) is not None


def test_keep_alive_refreshes_the_heartbeat(tmp_path: Path) -> None:
    leases = _leases(tmp_path)
    token = leases.try_acquire(["host:h1"], {"experiment": "x"})
    assert token is not None
    first = leases.held()[0].heartbeat
    with leases.keep_alive(token, every_s=0.1):
        time.sleep(0.5)
    assert leases.held()[0].heartbeat > first


def test_processes_racing_for_one_host_get_it_one_at_a_time(tmp_path: Path) -> None:
    """Eight processes each take the host 5 times, hold it briefly and write down when: the
    intervals never overlap."""
    db = tmp_path / "store.db"
    _leases(tmp_path)  # create the table first
    log = tmp_path / "intervals"
    code = (
        "import sqlalchemy as sa, sys, time, os\n"
        "from knobflow.leases import Leases\n"
        f"l = Leases(sa.create_engine('sqlite:///{db}', connect_args={{'timeout': 30}}))\n"
        "done = 0\n"
        "while done < 5:\n"
        "    t = l.try_acquire(['host:h1'], {'experiment': 'race'})\n"
        "    if t is None:\n"
        "        time.sleep(0.005); continue\n"
        "    a = time.time(); time.sleep(0.01); b = time.time()\n"
        f"    open({str(log)!r}, 'a').write(f'{{a}} {{b}}\\n')\n"
        "    l.release(t); done += 1\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(8)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 40
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "two processes held the same host at once"
