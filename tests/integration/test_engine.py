"""The engine without Airflow: finish actions, a user's benchmark playbook, errors mid-trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow import engine, spec
from knobflow.ansible import bridge
from knobflow.store import Store


def _exp(exp_dir: Path, **replace: str) -> spec.Experiment:
    f = exp_dir / "flaky.yaml"
    text = f.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    f.write_text(text)
    return spec.load(f)


def _enqueue(exp: spec.Experiment, configs: list[dict]) -> None:
    study = Store(exp.storage_url()).open(exp)
    for c in configs:
        study.enqueue_trial(c)


def test_finish_best_applies_the_best_configuration(exp_dir: Path, home: Path) -> None:
    exp = _exp(exp_dir, **{"max_failed: 10": "max_failed: 10\nfinish: best"})
    _enqueue(exp, [{"x": 7, "mode": "ok"}, {"x": 1, "mode": "ok"}])
    lim = engine.limits(exp, trials=3)
    assert engine.prepare(exp, lim).slots == 3
    values = [engine.run_trial(exp, lim).value for _ in range(3)]
    assert values == [75.0, 100.0, 64.0]
    with pytest.raises(engine.ExperimentStopped, match="budget spent"):
        engine.run_trial(exp, lim)
    summary = engine.finish(exp, lim)
    assert summary.best is not None and summary.best.number == 1
    assert summary.gain_pct == pytest.approx(100 * (100 - 75) / 75)
    assert json.loads((home / "noop-layer.json").read_text()) == {"x": 7, "mode": "ok"}


def test_finish_revert_removes_what_the_layer_wrote(exp_dir: Path, home: Path) -> None:
    exp = _exp(exp_dir)
    lim = engine.limits(exp, trials=1)
    engine.prepare(exp, lim)
    engine.run_trial(exp, lim)
    assert (home / "noop-layer.json").exists()
    engine.finish(exp, lim)
    assert not (home / "noop-layer.json").exists()


def test_benchmark_playbook_mode(exp_dir: Path, home: Path) -> None:
    exp = _exp(
        exp_dir,
        **{"  role: bench_command\n": "  playbook: bench-playbook.yml\n"},
    )
    _enqueue(exp, [{"x": 6, "mode": "ok"}, {"x": 6, "mode": "crash"}])
    lim = engine.limits(exp, trials=3)
    engine.prepare(exp, lim)
    base = engine.run_trial(exp, lim)
    ok = engine.run_trial(exp, lim)
    assert base.state == ok.state == "complete" and ok.value == 99.0
    bad = engine.run_trial(exp, lim)
    assert bad.state == "fail" and "Run the test benchmark" in (bad.reason or "")
    # The engine reverted the layer after the user's playbook failed.
    assert not (home / "noop-layer.json").exists()


def test_an_error_inside_knobflow_fails_the_trial_instead_of_leaving_it_running(
    exp_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = _exp(exp_dir)
    lim = engine.limits(exp, trials=2)
    engine.prepare(exp, lim)

    def broken(*args: object, **kwargs: object) -> bridge.RunResult:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bridge, "run_playbook", broken)
    with pytest.raises(RuntimeError):
        engine.run_trial(exp, lim)
    store = Store(exp.storage_url())
    t = store.trials(store.load(exp.name))[0]
    assert t.state == TrialState.FAIL
    assert (
        "knobflow error while running the trial" in t.user_attrs["reason"] and "disk on fire" in t.user_attrs["reason"]
    )


def test_objective_metric_missing_is_a_failed_trial(exp_dir: Path, home: Path) -> None:
    exp = _exp(exp_dir, **{"metric: score": "metric: latency_ms"})
    lim = engine.limits(exp, trials=1)
    engine.prepare(exp, lim)
    r = engine.run_trial(exp, lim)
    assert r.state == "fail"
    assert "did not report the objective metric 'latency_ms'" in (r.reason or "")
    assert "score" in (r.reason or "")


def test_a_trial_killed_for_its_time_limit_is_failed_and_the_target_reverted(exp_dir: Path, home: Path) -> None:
    exp = _exp(exp_dir, **{"  max_failed: 10": "  max_failed: 10\n  trial_timeout: 4\nvars:\n  bench_sleep: 30"})
    lim = engine.limits(exp, trials=1)
    engine.prepare(exp, lim)
    r = engine.run_trial(exp, lim)
    assert r.state == "fail" and "timed out after 4 s" in (r.reason or "")
    assert not (home / "noop-layer.json").exists(), "the layer must be reverted after a timeout"


def test_a_terminated_trial_is_interrupted_and_its_configuration_queued_again(
    exp_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminated(BaseException):  # what Airflow raises in a task on SIGTERM
        pass

    exp = _exp(exp_dir)
    lim = engine.limits(exp, trials=2)
    engine.prepare(exp, lim)

    def terminated(*args: object, **kwargs: object) -> bridge.RunResult:
        raise Terminated("SIGTERM")

    with monkeypatch.context() as patch, pytest.raises(Terminated):
        patch.setattr(bridge, "run_playbook", terminated)
        engine.run_trial(exp, lim)
    store = Store(exp.storage_url())
    trials = store.trials(store.load(exp.name))
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"] is True
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["baseline"] is True
    assert store.progress(store.load(exp.name)).done == 0
    r = engine.run_trial(exp, lim)
    assert r.number == 1 and r.baseline and r.state == "complete"
