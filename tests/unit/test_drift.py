"""benchmarks/drift: the driver switches the workload's mix at the drift, every peer sees the same
mix and workload seed in a round, and the regret is computed as documented (a fake workload)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.drift import run as drift
from knobflow.tuners.online_adapter import reward
from tests.conftest import REPO


class FakeWorkload:
    """Throughput from the configuration and the mix: reads like a big cache, writes like synchronous=off."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, config: dict[str, Any], mix: str, seed: int) -> float:
        self.calls.append((mix, seed))
        if mix == "read-heavy":
            return 1000.0 + math.log(config["cache_size_kib"]) * 100
        return 2000.0 + (3000.0 if config["synchronous"] == "off" else 0.0) + config["batch_size"]


def test_the_mix_switches_at_the_drift_for_every_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNOBFLOW_HOME", str(tmp_path / "unused"))
    fake = FakeWorkload()
    records = drift.run_seed(3, 6, 3, fake, tmp_path / "home")
    assert len(records) == 5 * 6
    assert {r["peer"] for r in records} == set(drift.PEERS)
    # Round 0 is measured once (the defaults) and shared; then each of 5 peers measures once per round.
    assert len(fake.calls) == 1 + 5 * 5
    for mix, wseed in fake.calls:
        r = wseed - drift.workload_seed(3, 0)
        assert mix == ("read-heavy" if r < 3 else "write-heavy"), (r, mix)
    assert [m for m, _ in fake.calls].count("write-heavy") == 5 * 3
    defaults = drift.load_experiment("x", 3).defaults()
    baseline = fake(defaults, "read-heavy", 0)
    for rec in records:
        assert rec["mix"] == drift.phase_of(rec["round"], 3)
        assert rec["value"] == fake(rec["config"], rec["mix"], 0), rec  # measured under the round's mix
        assert rec["reward"] == reward(rec["value"], baseline, True)
        if rec["round"] == 0:
            assert rec["config"] == defaults and rec["value"] == baseline
    by = {(r["peer"], r["round"]): r for r in records}
    assert all(by[("default", n)]["config"] == defaults for n in range(6))
    # The restarted TPE starts again from the defaults at the drift; the hybrid's rounds are knobflow's.
    assert by[("tpe-restart", 3)]["config"] == defaults
    assert by[("tpe-restart", 1)]["config"] == by[("tpe", 1)]["config"]
    assert all(by[("hybrid", n)]["hybrid_reward"] == by[("hybrid", n)]["reward"] for n in range(1, 6))
    # The re-baselined hybrid measures the defaults at the drift; its later rewards are relative to that.
    rebased = [by[("hybrid-rebaseline", n)] for n in range(6)]
    assert rebased[3]["config"] == defaults and "hybrid_reward" not in rebased[3]
    new_base = fake(defaults, "write-heavy", 0)
    assert [r["hybrid_reward"] for r in rebased[4:]] == [reward(r["value"], new_base, True) for r in rebased[4:]]
    assert [r["hybrid_reward"] for r in rebased[1:3]] == [r["reward"] for r in rebased[1:3]]


def test_cumulative_regret_and_the_per_phase_optimum() -> None:
    records = [
        {"mix": "read-heavy", "value": 50.0},
        {"mix": "read-heavy", "value": 100.0},
        {"mix": "read-heavy", "value": 110.0},  # above v* by noise: negative regret
        {"mix": "write-heavy", "value": 30.0},
    ]
    got = drift.cumulative_regret(records, {"read-heavy": 100.0, "write-heavy": 40.0})
    assert got == pytest.approx({"read-heavy": 0.5 + 0.0 - 0.1, "write-heavy": 0.25})

    a, b = {"cache_size_kib": 1}, {"cache_size_kib": 2}
    rows = [
        {"candidate": 0, "mix": "read-heavy", "repeat": k, "value": v, "config": a} for k, v in enumerate((5, 9, 6))
    ] + [{"candidate": 1, "mix": "read-heavy", "repeat": k, "value": v, "config": b} for k, v in enumerate((8, 7, 1))]
    best = drift.best_per_phase(rows)["read-heavy"]
    assert best["candidate"] == 1 and best["value"] == 7 and best["config"] == b  # median 7 beats median 6
    assert best["medians"] == {0: 6, 1: 7}


def test_candidates_take_each_peers_best_per_phase_and_seed_plus_the_grid() -> None:
    d = {"synchronous": "normal", "batch_size": 100}
    recs = [
        {"seed": 1, "peer": "tpe", "mix": "read-heavy", "value": 5.0, "config": {**d, "batch_size": 7}},
        {"seed": 1, "peer": "tpe", "mix": "read-heavy", "value": 9.0, "config": {**d, "batch_size": 8}},
        {"seed": 1, "peer": "default", "mix": "read-heavy", "value": 99.0, "config": {**d, "batch_size": 9}},
    ]
    got = drift.candidates(recs, d)
    assert got[0] == d and {**d, "batch_size": 8} in got
    assert {**d, "batch_size": 7} not in got and {**d, "batch_size": 9} not in got
    assert len(got) == 1 + len(drift.GRID) + 1


def test_the_configuration_file_is_the_roles_format() -> None:
    assert drift.config_file({"journal_mode": "wal", "batch_size": 10}) == {
        "pragmas": {"journal_mode": "wal"},
        "batch_size": 10,
    }


@pytest.mark.slow
def test_the_live_drift_run_goes_through_real_rounds(tmp_path: Path) -> None:
    """benchmarks/drift/live.py, shortened: one round per phase against the live service."""
    argv = [sys.executable, "-m", "benchmarks.drift.live", "--rounds", "1", "--window", "0.6", "--settle", "0.2"]
    argv += ["--interval", "0.3", "--reference-windows", "1", "--out", str(tmp_path), "--no-plot"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert [(r["round"], r["phase"], r["action"]) for r in rounds] == [
        (0, "read-heavy", "baseline"),
        (1, "read-heavy", "predicted"),
        (2, "write-heavy", "predicted"),
    ]
    assert all(r["value"] > 0 and r["failed"] is None for r in rounds)
    summary = json.loads((tmp_path / "live-summary.json").read_text())
    assert set(summary["phases"]) == {"read-heavy", "write-heavy"}
    assert all(len(v) == 1 and v[0] > 0 for v in summary["reference"].values())
