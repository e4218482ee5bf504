"""Continuous tuning (knobflow.continuous): the round's bookkeeping and guardrails with a fake
"apply + measure" injected. The real path (Ansible, the SQLite workload, ``knobflow round``) is
tests/e2e/test_continuous.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from knobflow import continuous, spec
from knobflow.continuous import Measurement, clamp, load_state, run_round
from knobflow.store import Store
from knobflow.tuners.online import from_state
from knobflow.tuners.online_adapter import KINDS, build, knob, knobs, reward
from tests.conftest import REPO, knobflow

BASE = 100.0

TEXT = """
name: cont-test
objective: {metric: throughput, direction: maximize}
tunables:
  - {name: gc, layer: stack, type: categorical, choices: [G1, Parallel, Serial], default: G1}
  - {name: ratio, layer: stack, type: float, low: 0.0, high: 100.0, default: 50.0}
  - {name: memory_mb, layer: stack, type: int, low: 512, high: 8192, step: 256, default: 2048}
  - {name: cache_kib, layer: stack, type: int, low: 512, high: 262144, log: true, default: 2000}
layers: {stack: {role: sqlite_config}}
benchmark: {role: bench_command, vars: {bench_command_argv: [echo, '{"throughput": 1}']}}
tuner: {name: hybrid, seed: 7}
budget: {trials: 5}
mode: continuous
continuous: {max_step: MAX_STEP, reward_floor: -0.2, pause_after: 2}
storage: STORAGE
"""


def _file(tmp_path: Path, max_step: float = 0.1, extra: str = "") -> Path:
    f = tmp_path / "cont.yaml"
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    f.write_text(TEXT.replace("MAX_STEP", str(max_step)).replace("STORAGE", storage) + extra)
    return f


class Fake:
    """Records every configuration measured and applied; ``plan`` gives a round's outcome:
    a value, None (the benchmark failed) or an exception to raise (the round dies)."""

    def __init__(self, plan: list[Any] | None = None):
        self.plan = list(plan or [])
        self.measured: list[dict[str, Any]] = []
        self.applied: list[dict[str, Any]] = []

    def measure(self, exp: spec.Experiment, config: dict[str, Any], attrs: dict[str, Any]) -> Measurement:
        self.measured.append(dict(config))
        outcome = self.plan.pop(0) if self.plan else BASE
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            return Measurement(len(self.measured), None, reason="the benchmark printed no metrics")
        return Measurement(len(self.measured), float(outcome))

    def apply(self, exp: spec.Experiment, config: dict[str, Any], label: str) -> str | None:
        self.applied.append(dict(config))
        return None

    def round(self, f: Path) -> continuous.RoundReport:
        # A fresh Experiment every round: nothing but the store carries state between rounds.
        return run_round(spec.load(f), measure=self.measure, apply=self.apply)


def _state(f: Path) -> continuous.State:
    exp = spec.load(f)
    return load_state(Store(exp.storage_url()).load(exp.name))


def test_continuous_block_defaults_and_offline_default(tmp_path: Path) -> None:
    exp = spec.load(_file(tmp_path))
    assert exp.model.mode == "continuous" and exp.continuous.max_step == 0.1 and exp.continuous.schedule == "@hourly"
    demo = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    assert demo.model.mode == "offline" and demo.continuous.pause_after == 3


def test_first_round_measures_the_baseline_then_rounds_predict(tmp_path: Path) -> None:
    f, fake = _file(tmp_path), Fake([BASE, 110.0])
    r0 = fake.round(f)
    assert r0.action == "baseline" and r0.round == 0 and r0.reward is None
    assert fake.measured == [spec.load(f).defaults()]
    r1 = fake.round(f)
    assert r1.action == "predicted" and r1.round == 1 and r1.predicted is not None
    assert r1.reward == pytest.approx(0.1)
    s = _state(f)
    assert s.baseline == BASE and s.rounds == 2 and s.pending is None and s.bad == 0
    assert s.current == s.last_good == r1.config == fake.measured[1]
    assert not from_state(s.tuner).get_tuning_requests()  # the reward reached the learner


def test_a_round_dying_after_predict_reapplies_its_configuration(tmp_path: Path) -> None:
    f, fake = _file(tmp_path), Fake([BASE, RuntimeError("killed"), 120.0])
    fake.round(f)
    with pytest.raises(RuntimeError, match="killed"):
        fake.round(f)
    s = _state(f)
    assert s.pending is not None and s.rounds == 1
    assert from_state(s.tuner).get_tuning_requests(), "the learner's pending request was persisted"
    r = fake.round(f)
    assert r.action == "re-applied" and r.round == 1
    assert fake.measured[2] == fake.measured[1] == r.config == s.pending["config"]
    s = _state(f)
    assert s.pending is None and s.rounds == 2 and not from_state(s.tuner).get_tuning_requests()
    assert s.log[-1]["action"] == "re-applied" and s.log[-1]["reward"] == pytest.approx(0.2)


def test_reward_below_the_floor_restores_the_last_good_configuration(tmp_path: Path) -> None:
    f, fake = _file(tmp_path), Fake([BASE, 101.0, 50.0])
    fake.round(f)
    good = fake.round(f).config
    bad = fake.round(f)
    assert bad.reward == pytest.approx(-0.5)
    assert fake.applied == [good]
    assert any("below reward_floor" in g and "restored" in g for g in bad.guardrails)
    s = _state(f)
    assert s.current == s.last_good == good and s.bad == 1 and not s.paused


def test_failed_benchmark_is_reward_minus_one_and_keeps_the_state(tmp_path: Path) -> None:
    f, fake = _file(tmp_path), Fake([BASE, None])
    fake.round(f)
    r = fake.round(f)
    assert r.failed == "the benchmark printed no metrics" and r.reward == -1.0
    assert fake.applied == [spec.load(f).defaults()]  # the last good is the baseline
    s = _state(f)
    assert s.baseline == BASE and s.rounds == 2 and s.log[-1]["failed"] == r.failed
    assert s.log[-1]["reward"] == -1.0 and not from_state(s.tuner).get_tuning_requests()


def test_pause_after_n_bad_rounds_then_resume(tmp_path: Path) -> None:
    f, fake = _file(tmp_path), Fake([BASE, None, 10.0, 100.0])
    fake.round(f)
    fake.round(f)
    second = fake.round(f)
    assert second.paused and any("paused" in g for g in second.guardrails)
    measured = len(fake.measured)
    for _ in range(2):
        r = fake.round(f)
        assert r.action == "paused" and r.paused
    assert len(fake.measured) == measured, "a paused experiment measures nothing"
    exp = spec.load(f)
    assert continuous.resume(Store(exp.storage_url()), exp.name) is True
    s = _state(f)
    assert not s.paused and s.bad == 0
    r = fake.round(f)
    assert r.action == "predicted" and len(fake.measured) == measured + 1


def test_resume_from_the_command_line(tmp_path: Path, home: Path) -> None:
    f, fake = _file(tmp_path), Fake([BASE, None, None])
    for _ in range(3):
        fake.round(f)
    assert _state(f).paused
    proc = knobflow("resume", str(f), home=home, check=True)
    assert "resumed" in proc.stdout and not _state(f).paused


def test_clamp_moves_each_numeric_tunable_at_most_max_step() -> None:
    exp = spec.parse(TEXT.replace("MAX_STEP", "0.1").replace("STORAGE", "sqlite:///x.db"), base_dir=REPO)
    space = exp.space()
    params = knobs(KINDS["hybrid"], space.distributions(), space.defaults())
    by = {k.name: k for k in params}
    current = {"gc": "G1", "ratio": 50.0, "memory_mb": 2048, "cache_kib": 2000}
    predicted = {"gc": "Serial", "ratio": 95.0, "memory_mb": 512, "cache_kib": by["cache_kib"].param.max}
    config, clamped = clamp(params, predicted, current, 0.1)
    assert config["gc"] == "Serial"  # categoricals are not clamped
    assert config["ratio"] == pytest.approx(60.0)  # 0.1 of the range 0..100
    assert config["memory_mb"] == 2048 - 3 * 256  # 0.1 * 7680 = 768, three whole steps
    lo, hi = by["cache_kib"].param.min, by["cache_kib"].param.max  # log space
    assert config["cache_kib"] == round(2000 * math.exp(0.1 * (hi - lo)))
    assert sorted(clamped) == ["cache_kib", "memory_mb", "ratio"]
    # Within max_step: unchanged; a tiny max_step still allows one step of an int.
    same, none = clamp(
        params, {**predicted, "ratio": 55.0, "memory_mb": 2304, "cache_kib": math.log(2100)}, current, 0.1
    )
    assert none == [] and same["ratio"] == 55.0 and same["memory_mb"] == 2304
    assert same["cache_kib"] == 2100
    tiny, _ = clamp(params, predicted, current, 0.001)
    assert tiny["memory_mb"] == 2048 - 256 and tiny["ratio"] == pytest.approx(50.1)
    assert knob("ratio", space.distributions()["ratio"], 60.0).param.val == 60.0


def test_rounds_move_within_max_step(tmp_path: Path) -> None:
    f = _file(tmp_path, max_step=0.02)
    options = "options: {numerical_algorithm_args: {feedback: 2, delta: 0.4, random_seed: 7}}"
    f.write_text(f.read_text().replace("seed: 7}", f"seed: 7, {options}}}"))
    fake = Fake([BASE] + [BASE + i for i in range(6)])
    reports = [fake.round(f) for _ in range(7)]
    assert any(r.clamped for r in reports[1:])
    for prev, cur in zip(fake.measured, fake.measured[1:], strict=False):
        assert abs(cur["ratio"] - prev["ratio"]) <= 2.0 + 1e-9
        assert abs(cur["memory_mb"] - prev["memory_mb"]) <= 256


def test_state_survives_a_new_process_and_continues_the_learner_exactly(tmp_path: Path) -> None:
    """Rounds in separate objects (and the state read by another process) give the predictions of one
    uninterrupted learner fed the same rewards."""
    f = _file(tmp_path, max_step=1.0)
    values = [BASE, 104.0, 97.0, None, 112.0, 90.0]
    fake = Fake(values)
    reports = [fake.round(f) for _ in values]
    exp = spec.load(f)
    space = exp.space()
    params = knobs(KINDS["hybrid"], space.distributions(), space.defaults())
    learner = build("hybrid", {}, 7, params)
    for r, v in zip(reports[1:], values[1:], strict=True):
        predicted, _ = learner.predict()
        assert predicted == r.predicted
        learner.set_reward(reward(v, BASE, True), None)
    script = (
        "import json, sys; from knobflow import spec; from knobflow.store import Store;"
        "e = spec.load(sys.argv[1]); print(json.dumps(Store(e.storage_url()).load(e.name).user_attrs['continuous']))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(f)], capture_output=True, text=True, check=True, cwd=REPO)
    doc = json.loads(out.stdout)
    assert doc["rounds"] == 6 and doc["baseline"] == BASE and doc["pending"] is None
    assert _without_ids(doc["tuner"]) == _without_ids(learner.dump())  # request ids are fresh UUIDs
    assert [e["round"] for e in doc["log"]] == list(range(6))
    # The next round, in yet another object, predicts what the uninterrupted learner predicts.
    nxt = Fake([BASE]).round(f)
    assert nxt.predicted == learner.predict()[0]


def _without_ids(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _without_ids(v) for k, v in doc.items() if k != "id"}
    if isinstance(doc, list):
        return [_without_ids(v) for v in doc]
    return doc


def test_round_and_run_refuse_the_wrong_mode(tmp_path: Path, home: Path) -> None:
    proc = knobflow("run", str(_file(tmp_path)), home=home)
    assert proc.returncode == 2 and "knobflow round" in proc.stderr
    proc = knobflow("round", str(REPO / "experiments" / "sqlite-demo.yaml"), home=home)
    assert proc.returncode == 2 and "not continuous" in proc.stderr
    assert not (home / "knobflow.db").exists()


def test_a_prediction_that_breaks_a_constraint_is_not_run(tmp_path: Path) -> None:
    f = _file(tmp_path, max_step=1.0, extra='constraints: ["ratio <= 50"]\n')
    fake = Fake()
    reports = [fake.round(f) for _ in range(6)]
    assert all(c["ratio"] <= 50 for c in fake.measured)
    assert any("broke a constraint" in g for r in reports for g in r.guardrails)
    s = _state(f)
    assert s.rounds == 6 and not from_state(s.tuner).get_tuning_requests()
