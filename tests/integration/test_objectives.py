"""Objectives through the real engine (Ansible + the test benchmark): SLOs, several objectives,
stop rules. The benchmark reports score = 100 - (x - 7)**2 and x."""

from __future__ import annotations

from pathlib import Path

import pytest

from knobflow import engine, spec
from knobflow.store import Store


def _exp(exp_dir: Path, objective: str, extra: str = "", budget: str = "") -> spec.Experiment:
    f = exp_dir / "flaky.yaml"
    text = f.read_text()
    old = "objective:\n  metric: score\n  direction: maximize\n"
    assert old in text
    text = text.replace(old, objective + extra)
    text = text.replace("  max_failed: 10\n", "  max_failed: 10\n" + budget)
    f.write_text(text)
    return spec.load(f)


def _run(exp: spec.Experiment, xs: list[int]) -> list[engine.TrialResult]:
    study = Store(exp.storage_url()).open(exp)
    for x in xs:
        study.enqueue_trial({"x": x, "mode": "ok"})
    lim = engine.limits(exp, trials=len(xs) + 1)
    engine.prepare(exp, lim)
    return [engine.run_trial(exp, lim) for _ in range(len(xs) + 1)]


def test_slo_infeasible_trial_is_never_best(exp_dir: Path, home: Path) -> None:
    """x = 7 scores best (100) but breaks `x <= 5`; the best reported is x = 5 (96), and a relative
    SLO (score at least 0.9 x the baseline's 75) makes x = 0 (51) infeasible too."""
    exp = _exp(
        exp_dir,
        "objective:\n  metric: score\n  direction: maximize\n",
        'slos:\n  - "x <= 5"\n  - "score >= 0.9 * baseline"\n',
    )
    results = _run(exp, [7, 5, 0])
    by_x = {r.params["x"]: r for r in results}
    assert by_x[7].state == "complete" and by_x[7].value == 100.0
    assert by_x[7].violations == ["x <= 5"]
    assert by_x[0].violations == ["score >= 0.9 * baseline"]
    assert by_x[5].violations == [] and by_x[2].violations == []  # the baseline meets its own relative SLO
    assert by_x[7].best_number != by_x[7].number
    summary = engine.summarize(exp)
    assert summary.best is not None and summary.best.params["x"] == 5
    assert summary.best_value == 96.0
    assert summary.infeasible == 2
    trials = Store(exp.storage_url()).trials(Store(exp.storage_url()).load(exp.name))
    seven = next(t for t in trials if t.params.get("x") == 7)
    assert seven.system_attrs["constraints"][0] > 0  # what constraint-aware samplers learn from


def test_two_objectives_report_the_pareto_front(exp_dir: Path, home: Path) -> None:
    """Maximise score, minimise x: x in 0..7 trade off (each is on the front), x = 9 is dominated
    by x = 5 (same score 96, smaller x)."""
    exp = _exp(
        exp_dir,
        "objectives:\n  - {metric: score, direction: maximize}\n"
        "  - {name: size, expression: x * 1, direction: minimize}\n",
    )
    results = _run(exp, [9, 5, 7])
    assert all(r.state == "complete" and r.values is not None and len(r.values) == 2 for r in results)
    summary = engine.summarize(exp)
    assert summary.best is None
    front = sorted(r.params["x"] for r in summary.pareto)
    assert front == [2, 5, 7]
    assert [o["name"] for o in summary.objectives] == ["score", "size"]


def test_target_and_patience_stop_the_experiment(exp_dir: Path, home: Path) -> None:
    exp = _exp(exp_dir, "objective:\n  metric: score\n  direction: maximize\n", budget="  target: 96\n")
    study = Store(exp.storage_url()).open(exp)
    study.enqueue_trial({"x": 5, "mode": "ok"})
    lim = engine.limits(exp, trials=10)
    engine.run_trial(exp, lim)
    engine.run_trial(exp, lim)
    with pytest.raises(engine.ExperimentStopped, match="target reached: best 96"):
        engine.run_trial(exp, lim)
    assert engine.prepare(exp, lim).slots == 0
    assert "target reached" in (engine.summarize(exp, lim).stop_reason or "")


def test_a_gain_over_a_baseline_that_broke_an_slo_says_so(exp_dir: Path, home: Path) -> None:
    """The baseline (x = 2) breaks `x >= 4`: the summary still shows the gain, marked as over an
    infeasible baseline, in `knobflow run`'s summary and in `knobflow best`."""
    import io

    from knobflow import cli

    exp = _exp(exp_dir, "objective:\n  metric: score\n  direction: maximize\n", 'slos:\n  - "x >= 4"\n')
    _run(exp, [5])
    summary = engine.summarize(exp)
    assert summary.baseline is not None and not summary.baseline.feasible
    assert summary.best is not None and summary.best.params["x"] == 5
    out = io.StringIO()
    cli._print_summary(summary, out)
    assert "(it broke an SLO: the gain is over an infeasible baseline)" in out.getvalue()
