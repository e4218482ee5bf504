from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
