"""The morris tuner (one-at-a-time trajectories for knobflow select) and the morris evaluator."""

from __future__ import annotations

import random
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from benchmarks.sample_efficiency import problems
from benchmarks.sample_efficiency.problem import noise_rng
from knobflow import select
from knobflow.space import Param, Space
from knobflow.tuners import base, registry
from knobflow.tuners.screening import ATTR, MorrisTuner


def _run(space: Space, f: Any, n: int, seed: int = 3, study: optuna.Study | None = None) -> optuna.Study:
    """``n`` trials of the morris tuner as the engine runs them: the defaults first, then proposals;
    ``f(params)`` is the measured value, None for a crash."""
    if study is None:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
        study.enqueue_trial(space.defaults(), user_attrs={"baseline": True})
    tuner = registry.create("morris", seed=seed, defaults=space.defaults())
    for _ in range(n):
        trial = base.ask(tuner, study, space, seed=seed)
        assert space.problems(dict(trial.params)) == []
        y = f(dict(trial.params))
        base.tell(study, trial.number, TrialState.COMPLETE if y is not None else TrialState.FAIL, y)
    return study


def _toy() -> Space:
    """12 knobs; only a, b and mode matter."""
    params = [Param(f"k{i}", FloatDistribution(0, 1), 0.5, "stack") for i in range(9)]
    params += [
        Param("a", FloatDistribution(0, 1), 0.1, "stack"),
        Param("b", FloatDistribution(0, 1), 0.1, "stack"),
        Param("mode", CategoricalDistribution(("x", "y", "z")), "x", "stack"),
    ]
    return Space(params)


def _toy_value(p: dict[str, Any], rng: random.Random) -> float:
    return 100 + 10 * p["a"] + 16 * (0.5 - abs(p["b"] - 0.5)) + {"x": 0, "y": 4, "z": 8}[p["mode"]] + rng.gauss(0, 0.2)


def _design(trials: list[FrozenTrial]) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    return [(t, t.system_attrs[ATTR]) for t in trials if ATTR in t.system_attrs]


@pytest.mark.parametrize("name", ["jvm-sim", "jvm-sim-constrained"])
def test_trajectories_move_one_knob_at_a_time_from_the_baseline(name: str) -> None:
    """On the simulator (its undeclared crash regions; conditions and constraints in the constrained
    variant): every step changes exactly one knob of the trial it moved from (knobs whose condition
    it switched aside), a crash is reverted (the next step moves from the last trial that ran),
    trajectory 0 starts at the baseline and each later one where the previous one ended."""
    prob = problems.get(name)
    space = prob.space
    study = _run(space, lambda p: prob.evaluate(p, noise_rng(prob.name, 3, 0))[0], 100)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    design = _design(trials)
    assert len(design) == 99 and design[0][1]["from"] == 0 and design[0][1]["traj"] == 0
    crashed = 0
    for t, attrs in design:
        origin = by_number[attrs["from"]]
        assert origin.state == TrialState.COMPLETE, "steps start from trials that ran"
        changed = {n for n in t.params if n in origin.params and t.params[n] != origin.params[n]}
        assert changed == {attrs["factor"]}, (t.number, changed, attrs)
        nxt = by_number.get(t.number + 1)
        if t.state == TrialState.FAIL and nxt is not None:
            crashed += 1
            assert nxt.system_attrs[ATTR]["from"] != t.number
    if name == "jvm-sim":
        assert crashed >= 1, "the design crosses the simulator's undeclared crash regions"
    trajectories: dict[int, list[str]] = {}
    for _, attrs in design:
        trajectories.setdefault(attrs["traj"], []).append(attrs["factor"])
    assert sorted(trajectories) == [0, 1, 2, 3]
    for tr in (0, 1, 2):
        moved = trajectories[tr]
        assert len(moved) == len(set(moved)), "a knob moves once per trajectory"
        # Every knob, but the G1 knobs when the trajectory's gc was not G1 (inactive: skipped).
        assert set(space.names) - set(moved) <= {"max_gc_pause_millis", "g1_heap_region_size_mb"}
        first = next(a for _, a in design if a["traj"] == tr + 1)
        last_ok = max(t.number for t, a in design if a["traj"] == tr and t.state == TrialState.COMPLETE)
        assert first["from"] == last_ok


def test_the_design_is_a_function_of_the_history_and_seed() -> None:
    """A screening resumed by another process (a new tuner, the same study) proposes what an
    uninterrupted one does; another seed, another design."""
    space = _toy()

    def f(p: dict[str, Any]) -> float:
        return _toy_value(p, random.Random(str(sorted(p.items()))))

    whole = _run(space, f, 30)
    half = _run(space, f, 12)
    resumed = _run(space, f, 18, study=half)
    assert [t.params for t in whole.trials] == [t.params for t in resumed.trials]
    other = _run(space, f, 30, seed=4)
    assert [t.params for t in other.trials] != [t.params for t in whole.trials]


def test_morris_evaluator_finds_the_important_knobs() -> None:
    space = _toy()
    rng = random.Random(0)
    study = _run(space, lambda p: _toy_value(p, rng), 4 * 13)
    trials = study.get_trials(deepcopy=False)
    assert select.is_screening(trials) and select.default_evaluator(trials) == "morris"
    ranking = select.rank(trials, maximize=True, names=space.names, k=3, bootstrap=20)
    assert {r.name for r in ranking[:3]} == {"a", "b", "mode"}
    assert all(r.effects >= 3 and r.sigma >= 0 for r in ranking)
    assert all(r.low <= r.importance <= r.high for r in ranking)
    assert sum(r.top_k_share for r in ranking[:3]) / 3 >= 0.8
    # Trials that are not a Morris design have no elementary effects to rank with.
    plain = [optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value) for t in trials]
    assert select.default_evaluator(plain) == "gp"
    with pytest.raises(select.SelectError, match="Morris screening"):
        select.rank(plain, maximize=True, names=space.names, k=3, evaluator="morris")


def test_failed_steps_count_as_the_worst_value_or_are_dropped() -> None:
    space = _toy()
    rng = random.Random(1)
    study = _run(space, lambda p: None if p["k0"] < 0.1 else _toy_value(p, rng), 30)
    trials = study.get_trials(deepcopy=False)
    assert any(t.state == TrialState.FAIL for t in trials)
    worst = select.elementary_effects(trials, maximize=True)
    dropped = select.elementary_effects(trials, maximize=True, failures="drop")
    n_worst = sum(f == "k0" for effects in worst.values() for f, _, _ in effects)
    n_dropped = sum(f == "k0" for effects in dropped.values() for f, _, _ in effects)
    assert n_worst > n_dropped


def test_options_are_checked() -> None:
    assert registry.check("morris", {"levels": 6}, {}) is None
    assert "unknown option 'delta'" in (registry.check("morris", {"delta": 0.5}, {}) or "")
    assert "levels must be an integer" in (registry.check("morris", {"levels": 2}, {}) or "")
    assert MorrisTuner(options={"levels": 6}).delta == pytest.approx(0.6)
