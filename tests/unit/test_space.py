"""Expressions, the search space (conditions, constraints), objectives and SLOs, stop rules."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from knobflow import engine, objective, results, spec
from knobflow.expr import ExprError, compile_expr
from knobflow.space import Condition, Param, Space, SpaceError
from knobflow.store import Store
from knobflow.tuners import registry
from knobflow.tuners.base import SpaceExhausted, ask, tell
from tests.conftest import REPO

BAD = REPO / "tests" / "data" / "bad_specs" / "condition_cycle.yaml"


def _jvm_text() -> str:
    """A valid file: the base of the condition/constraint cases in tests/data/bad_specs."""
    lines = BAD.read_text().splitlines(keepends=True)[2:]  # drop the # expect/# message header
    return "".join(lines).replace("    default: G1\n    when: {max_pause_ms: 200}\n", "    default: G1\n")


def test_expressions_are_checked_and_safe() -> None:
    e = compile_expr("xmx_mb <= memory_mb * 0.9", known={"xmx_mb", "memory_mb"}, boolean=True)
    assert e.names == {"xmx_mb", "memory_mb"}
    assert e({"xmx_mb": 900, "memory_mb": 1000}) is True
    assert e({"xmx_mb": 901, "memory_mb": 1000}) is False
    assert compile_expr("max(a, b) / 2")({"a": 3, "b": 8}) == 4
    assert compile_expr("gc in ['G1', 'Z'] and not tiered")({"gc": "Z", "tiered": False}) is True
    for bad, why in [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "attribute access"),
        ("a.__class__", "attribute access"),
        ("[x for x in a]", "not allowed"),
        ("a[0]", "not allowed"),
        ("a <=", "not a valid expression"),
        ("", "non-empty string"),
    ]:
        with pytest.raises(ExprError, match=why):
            compile_expr(bad)
    with pytest.raises(ExprError, match="unknown tunable 'xmx'"):
        compile_expr("xmx <= 1", known={"xmx_mb"}, what="tunable")
    with pytest.raises(ExprError, match="cannot be evaluated: ZeroDivisionError"):
        compile_expr("a / b").evaluate({"a": 1, "b": 0})


def _space() -> Space:
    return Space(
        [
            Param("pause", IntDistribution(10, 500), 200, "runtime", Condition(equals=(("gc", ("G1",)),))),
            Param("gc", CategoricalDistribution(("G1", "Parallel")), "G1", "runtime"),
            Param("mem", IntDistribution(512, 4096, step=512), 1024, "container"),
            Param("xmx", IntDistribution(256, 4096), 512, "runtime"),
            Param("ratio", FloatDistribution(0.1, 10.0, log=True), 1.0, "runtime"),
        ],
        [compile_expr("xmx <= mem * 0.9", boolean=True)],
    )


def test_conditions_order_and_activity() -> None:
    s = _space()
    assert s.names.index("gc") < s.names.index("pause"), "parents come first"
    assert s.defaults() == {"gc": "G1", "pause": 200, "mem": 1024, "xmx": 512, "ratio": 1.0}
    assert "pause" not in s.complete({"gc": "Parallel"})
    assert s.problems({"gc": "Parallel", "pause": 100, "mem": 1024, "xmx": 512, "ratio": 1.0}) == [
        "pause is set but inactive (its condition gc == 'G1' does not hold)"
    ]
    assert s.problems({"gc": "G1", "mem": 1024, "xmx": 512, "ratio": 1.0}) == ["pause is missing"]
    assert s.problems({**s.defaults(), "xmx": 1000}) == ["breaks the constraint xmx <= mem * 0.9"]
    assert s.problems({**s.defaults(), "mem": 1000}) == ["mem=1000 is outside its domain ([512, 4096] step 512)"]
    with pytest.raises(SpaceError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        Space(
            [
                Param("a", IntDistribution(0, 1), 0, "os", Condition(equals=(("b", (0,)),))),
                Param("b", IntDistribution(0, 1), 0, "os", Condition(equals=(("a", (0,)),))),
            ]
        )


def test_random_draws_respect_conditions_and_domains() -> None:
    s = _space()
    rng = random.Random(1)
    draws = [s.random_feasible(rng) for _ in range(300)]
    assert all(d is not None and s.problems(d) == [] for d in draws)
    assert {d["gc"] for d in draws if d} == {"G1", "Parallel"}


@pytest.mark.parametrize("name", [n for n in registry.names() if n != "gp" or not registry.check("gp", {}, {})])
def test_every_tuner_proposes_only_feasible_active_configurations(name: str, home: Path) -> None:
    """Every trial of every tuner: constraints hold, inactive knobs unset (jvm-like space)."""
    exp = spec.parse(_jvm_text(), base_dir=REPO / "experiments")
    space = exp.space()
    study = Store(f"sqlite:///{home / 'k.db'}").open(exp)
    tuner = registry.create(name, seed=5, defaults=exp.defaults())
    for i in range(15):
        t = ask(tuner, study, space, seed=5)
        assert space.problems(dict(t.params)) == [], (name, t.params)
        tell(study, t.number, optuna.trial.TrialState.COMPLETE, float(t.params["xmx_mb"] % 97 + i))


def test_exhausted_space_stops_instead_of_repeating(home: Path) -> None:
    # Only the gc tunable (three choices): the fourth ask has nothing new left to run.
    exp = spec.parse(_jvm_text().split("  - name: max_pause_ms")[0] + "layers:" + _jvm_text().split("layers:")[1])
    study = Store(f"sqlite:///{home / 'k.db'}").open(exp)
    tuner = registry.create("random", seed=1)
    seen = []
    for _ in range(3):
        t = ask(tuner, study, exp.space(), seed=1)
        seen.append(t.params["gc"])
        tell(study, t.number, optuna.trial.TrialState.COMPLETE, 1.0)
    assert sorted(seen) == ["G1", "Parallel", "Serial"]
    with pytest.raises(SpaceExhausted, match="no configuration is left"):
        ask(tuner, study, exp.space(), seed=1)


def test_objectives_and_slos() -> None:
    text = _jvm_text().replace(
        "objective:\n  metric: throughput\n  direction: maximize\n",
        "objectives:\n  - {name: efficiency, expression: throughput / p99_ms, direction: maximize}\n"
        "  - {metric: p99_ms, direction: minimize}\n"
        'slos: ["p99_ms <= 1.1 * baseline", "errors == 0"]\n',
    )
    exp = spec.parse(text, base_dir=REPO / "experiments")
    objs = exp.objectives()
    assert objs.labels == ["efficiency", "p99_ms"] and objs.multi
    ok = objs.evaluate({"throughput": 1000, "p99_ms": 20, "errors": 0}, {"p99_ms": 20})
    assert ok.values == [50.0, 20.0] and ok.feasible and ok.constraint_values[0] < 0
    slow = objs.evaluate({"throughput": 1000, "p99_ms": 25, "errors": 0}, {"p99_ms": 20})
    assert slow.violations == ["p99_ms <= 1.1 * baseline"] and not slow.feasible
    assert slow.constraint_values[0] == pytest.approx((25 - 22) / 22)
    unknown = objs.evaluate({"throughput": 1000, "p99_ms": 5, "errors": 0}, None)
    assert "cannot be checked" in unknown.violations[0]
    missing = objs.evaluate({"throughput": 1000}, None)
    assert missing.values is None and "'p99_ms' that objective 'efficiency' needs" in (missing.reason or "")
    assert objs.pareto([("a", [5.0, 10.0]), ("b", [6.0, 12.0]), ("c", [4.0, 12.0])]) == ["a", "b"]
    with pytest.raises(ExprError, match="right-hand side"):
        objective.compile_slo("baseline >= p99_ms")


def test_stop_rules_patience_and_time(home: Path) -> None:
    text = _jvm_text().replace("  trials: 5\n", "  trials: 50\n  patience: 3\n  time_limit: 1m\n")
    exp = spec.parse(text, base_dir=REPO / "experiments")
    store = Store(exp.storage_url())
    study = store.open(exp)
    base = exp.defaults()
    lim = engine.limits(exp)
    for i, v in enumerate([10.0, 12.0, 11.0, 9.0]):
        study.add_trial(
            optuna.trial.create_trial(
                params={**base, "xmx_mb": 600 + i},
                distributions=exp.space().distributions(),
                value=v,
            )
        )
    assert engine.stop_reason(exp, store, study, lim) is None  # 2 trials since the best (12)
    study.add_trial(
        optuna.trial.create_trial(params={**base, "xmx_mb": 700}, distributions=exp.space().distributions(), value=11.5)
    )
    assert "patience exhausted: no improvement in the last 3 trials" in (
        engine.stop_reason(exp, store, study, lim) or ""
    )
    trials = store.trials(study)
    assert results.trials_since_improvement(exp.objectives(), trials) == 3
    # Time: the trials' start-to-end durations add up against budget.time_limit (1m).
    start = dt.datetime(2026, 1, 1)
    study.add_trial(
        optuna.trial.create_trial(
            params={**base, "xmx_mb": 800},
            distributions=exp.space().distributions(),
            value=20.0,
        )
    )
    last = store.trials(study)[-1]
    with store.storage.engine.begin() as conn:  # a trial that ran for 61 s
        from sqlalchemy import text as sql

        conn.execute(
            sql("UPDATE trials SET datetime_start = :a, datetime_complete = :b WHERE trial_id = :i"),
            {"a": start, "b": start + dt.timedelta(seconds=61), "i": last._trial_id},
        )
    assert results.busy_seconds(store.trials(study)) >= 61
    assert "time limit reached" in (engine.stop_reason(exp, store, study, lim) or "")


def test_remeasured_best_is_judged_on_its_median(home: Path) -> None:
    exp = spec.parse(_jvm_text(), base_dir=REPO / "experiments")
    store = Store(exp.storage_url())
    study = store.open(exp)
    base = exp.defaults()
    dists = exp.space().distributions()
    lucky = {**base, "xmx_mb": 700}
    steady = {**base, "xmx_mb": 800}
    for params, v in [(lucky, 20.0), (steady, 15.0), (lucky, 10.0), (lucky, 11.0)]:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=v))
    top = results.best(exp.space(), exp.objectives(), store.trials(study))
    assert top is not None and top.record.params == steady and top.value == 15.0
