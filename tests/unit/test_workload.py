from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from knobflow.workloads import sqlite_workload


def test_defaults_and_tuned_settings_both_run(tmp_path: Path) -> None:
    base = sqlite_workload.run({"pragmas": {}, "batch_size": 1}, tmp_path / "a.db", 0.3)
    tuned = sqlite_workload.run(
        {"pragmas": {"journal_mode": "wal", "synchronous": "normal", "cache_size_kib": 65536}, "batch_size": 200},
        tmp_path / "b.db",
        0.3,
    )
    for m in (base, tuned):
        assert m["ops"] > 0 and m["reads"] > 0 and m["writes"] > 0
        assert m["read_p99_ms"] >= m["read_p50_ms"] >= 0
    # Batching writes and relaxing fsync is much faster than SQLite's defaults; the demo relies on it.
    assert tuned["throughput_ops"] > 3 * base["throughput_ops"]
    assert not (tmp_path / "a.db").exists(), "the workload cleans up its database"


def _workload(cfg: Path, db: Path) -> subprocess.CompletedProcess[str]:
    argv = ["-m", "knobflow.workloads.sqlite_workload", "--config", str(cfg), "--db", str(db), "--duration", "0.2"]
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True)


def test_cli_prints_one_json_line_and_rejects_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"pragmas": {"journal_mode": "wal"}, "batch_size": 10}))
    out = _workload(cfg, tmp_path / "x.db")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip())["throughput_ops"] > 0
    cfg.write_text(json.dumps({"pragmas": {"journal_mode": "wal; DROP TABLE x"}}))
    bad = _workload(cfg, tmp_path / "x.db")
    assert bad.returncode == 2 and "bad value for pragma journal_mode" in bad.stderr


def test_the_mix_changes_the_operation_shares(tmp_path: Path) -> None:
    cfg = {"pragmas": {"journal_mode": "wal", "synchronous": "off"}, "batch_size": 100}
    shares = {}
    for name in ("default", "read-heavy", "write-heavy"):
        m = sqlite_workload.run(cfg, tmp_path / "m.db", 0.2, mix=sqlite_workload.parse_mix(name))
        assert m["ops"] == m["reads"] + m["aggregates"] + m["writes"] and m["writes"] == m["inserts"] + m["updates"]
        shares[name] = {k: m[k] / m["ops"] for k in ("reads", "aggregates", "inserts", "updates")}
    for name, got in shares.items():
        want = sqlite_workload.MIXES[name]
        for op, key in (("read", "reads"), ("aggregate", "aggregates"), ("insert", "inserts"), ("update", "updates")):
            assert abs(got[key] - want[op]) < 0.05, (name, op, got, want)
    assert shares["read-heavy"]["reads"] > 0.8 > shares["default"]["reads"]
    assert shares["write-heavy"]["inserts"] + shares["write-heavy"]["updates"] > 0.9


def test_parse_mix_and_the_environment_variable(tmp_path: Path) -> None:
    assert sqlite_workload.parse_mix(None) == sqlite_workload.MIXES["default"]
    assert sqlite_workload.parse_mix("read=3,insert=1") == {
        "read": 0.75,
        "aggregate": 0.0,
        "insert": 0.25,
        "update": 0.0,
    }
    for bad in ("sideways", "read=x", "read=-1", "read=0", "scan=1"):
        with pytest.raises(ValueError, match="bad mix"):
            sqlite_workload.parse_mix(bad)
    argv = ["-m", "knobflow.workloads.sqlite_workload", "--db", str(tmp_path / "e.db"), "--duration", "0.1"]
    env = {**os.environ, sqlite_workload.MIX_ENV: "insert=1"}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip())
    assert m["inserts"] == m["ops"] > 0 and m["reads"] == 0
    out = subprocess.run([sys.executable, *argv, "--mix", "read=1"], capture_output=True, text=True, env=env)
    assert json.loads(out.stdout.strip())["reads"] == json.loads(out.stdout.strip())["ops"]  # --mix wins
    bad = subprocess.run([sys.executable, *argv, "--mix", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "bad mix" in bad.stderr
