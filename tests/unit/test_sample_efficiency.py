"""benchmarks/sample_efficiency: its metrics, problems and simulator, the smoke tier end to end, and
the promise that no tuner ever proposes an infeasible configuration or sets an inactive tunable."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.sample_efficiency import metrics, problems, runner
from benchmarks.sample_efficiency.problem import noise_rng
from benchmarks.sample_efficiency.simulator import IMPORTANT, LIVE_SET_MB, NO_EFFECT, JvmSimulator, throughput
from knobflow.tuners import base, registry
from knobflow.tuners.optuna import grid_values

# Metrics on a hand-made trace ------------------------------------------------------------------------


def test_incumbent_is_chosen_on_noisy_values_and_scored_on_true_ones() -> None:
    noisy = [10.0, 12.0, 11.0, 15.0, None]
    true = [10.0, 9.0, 14.0, 13.0, None]  # trial 1 measured lucky, trial 2 unlucky; trial 4 crashed
    inc = metrics.incumbents(noisy, true, maximize=True)
    assert inc == [10.0, 9.0, 9.0, 13.0, 13.0]

    scale = metrics.Scale(optimum=20.0, reference=10.0, maximize=True)
    assert metrics.regret_curve(inc, scale) == pytest.approx([1.0, 1.1, 1.1, 0.7, 0.7])
    assert metrics.gain(inc[-1], 10.0, maximize=True) == pytest.approx(0.3)
    # Final improvement 3; 90% of it (2.7) is first reached by the incumbent after 4 trials.
    assert metrics.trials_to_fraction(inc, 10.0, maximize=True) == 4
    # Each trial's own regret: 1.0, 1.1, 0.6, 0.7, and the crash counts REGRET_CAP.
    assert metrics.instantaneous_regrets(true, scale) == pytest.approx([1.0, 1.1, 0.6, 0.7, metrics.REGRET_CAP])
    assert metrics.cumulative_regret(true, scale) == pytest.approx(3.4 + metrics.REGRET_CAP)


def test_metrics_when_minimising_and_edge_cases() -> None:
    scale = metrics.Scale(optimum=1.0, reference=5.0, maximize=False)
    assert scale.regret(3.0) == pytest.approx(0.5)
    assert scale.regret(0.5) == 0.0  # better than the recorded optimum: clipped
    assert scale.regret(9.0) == pytest.approx(2.0)  # worse than the reference: above 1
    assert scale.regret(None) == math.inf
    inc = metrics.incumbents([4.0, 5.0, 2.0], [4.5, 1.0, 2.5], maximize=False)
    assert inc == [4.5, 4.5, 2.5]
    assert metrics.gain(2.5, 4.5, maximize=False) == pytest.approx(2.0 / 4.5)
    assert metrics.trials_to_fraction(inc, 4.5, maximize=False) == 3
    assert metrics.trials_to_fraction([4.5, 5.0], 4.5, maximize=False) is None  # never better than the default
    assert metrics.incumbents([None, None], [None, None], maximize=True) == [None, None]


def test_ranks_share_ties_and_average_over_cells() -> None:
    assert metrics.ranks({"a": 0.5, "b": 0.2, "c": 0.5}) == {"b": 1.0, "a": 2.5, "c": 2.5}
    assert metrics.ranks({"a": math.inf, "b": math.inf}) == {"a": 1.5, "b": 1.5}
    cells = {("p", 0, 10): {"a": 0.1, "b": 0.3}, ("p", 1, 10): {"a": 0.4, "b": 0.3}, ("q", 0, 10): {"a": 0.0, "b": 0.0}}
    assert metrics.average_ranks(cells) == {"a": pytest.approx(1.5), "b": pytest.approx(1.5)}
    cells[("p", 0, 10)] = {"a": 0.1, "b": 0.3}
    cells[("q", 1, 10)] = {"a": 0.1, "b": 0.9}
    assert metrics.average_ranks(cells) == {"a": pytest.approx(1.375), "b": pytest.approx(1.625)}
    with pytest.raises(ValueError):
        metrics.average_ranks({1: {"a": 0.0}, 2: {"b": 0.0}})


# Problems and the simulator -------------------------------------------------------------------------


def test_paired_seeds_give_every_tuner_the_same_noise() -> None:
    a = noise_rng("jvm-sim", 3, 5).standard_normal(4)
    assert list(a) == list(noise_rng("jvm-sim", 3, 5).standard_normal(4))
    assert list(a) != list(noise_rng("jvm-sim", 4, 5).standard_normal(4))
    assert list(a) != list(noise_rng("jvm-sim", 3, 6).standard_normal(4))

    runs = [runner.run_one(runner.Task("jvm-sim", t, 3, 12)) for t in ("random", "tpe")]
    factors = [[None if f is None else y / f for y, f in zip(r["noisy"], r["true"], strict=True)] for r in runs]
    assert runs[0]["true"][1:] != runs[1]["true"][1:]  # different configurations...
    compared = 0
    for x, y in zip(*factors, strict=True):
        if x is not None and y is not None:
            assert x == pytest.approx(y, rel=1e-12)  # ...the same noise at the same trial number
            compared += 1
    assert compared >= 3


def test_simulator_failure_regions_return_none() -> None:
    sim = JvmSimulator(constrained=False, noise=0.05)
    rng = noise_rng(sim.name, 0, 0)
    ok = sim.default
    assert throughput(ok) is not None
    for broken in (
        {"memory_limit_mb": 1024, "xmx_mb": 1000},  # heap above 90% of the memory limit: OOM-killed
        {"xms_mb": 512, "xmx_mb": 256},  # initial heap above the maximum: the JVM refuses to start
        {"xmx_mb": int(LIVE_SET_MB)},  # heap smaller than the live set: OutOfMemoryError
    ):
        assert sim.evaluate({**ok, **broken}, rng) == (None, None), broken
    assert sim.evaluate({**ok, "memory_limit_mb": 1024, "xmx_mb": 921}, rng)[1] is not None  # just within


def test_simulator_shape() -> None:
    flat, constrained = (JvmSimulator(constrained=c, noise=0.05) for c in (False, True))
    for sim in (flat, constrained):
        assert len(sim.space.params) == 31
        assert {p.layer for p in sim.space.params.values()} == {"container", "runtime", "stack", "os"}
        assert sim.important <= set(sim.space.names) and 4 <= len(sim.important) <= 5
        assert IMPORTANT.isdisjoint(NO_EFFECT)
    assert not flat.space.constraints and not flat.space.conditional
    assert [c.text for c in constrained.space.constraints] == ["xmx_mb <= memory_limit_mb * 0.9", "xms_mb <= xmx_mb"]
    assert constrained.space.params["max_gc_pause_millis"].condition is not None
    assert "max_gc_pause_millis" not in constrained.space.complete({"gc": "Parallel"})

    # A realistic default: a third to a half of the optimum.
    stats = constrained.stats()
    assert 0.3 <= stats.default_value / stats.optimum <= 0.5

    # The important tunables matter, the others barely: moving one tunable from the default.
    base_value = throughput(flat.default)
    assert base_value is not None
    assert throughput({**flat.default, "cpu_limit": 2.0}) > 1.3 * base_value  # type: ignore[operator]
    assert throughput({**flat.default, "db_pool_size": 2}) < 0.7 * base_value  # type: ignore[operator]
    for name in NO_EFFECT:
        d = flat.space.params[name].distribution
        assert throughput({**flat.default, name: d.high}) == pytest.approx(base_value, rel=1e-12)  # type: ignore[attr-defined]


def test_constrained_variant_defaults_are_feasible() -> None:
    sim = problems.get("jvm-sim-constrained")
    assert sim.space.problems(sim.default) == []
    y, f = sim.evaluate(sim.default, noise_rng(sim.name, 0, 0))
    assert y is not None and f is not None


@pytest.mark.parametrize("name", problems.names())
def test_optimum_is_at_least_every_value_seen(name: str) -> None:
    reason = problems.unavailable(name)
    if reason:
        pytest.skip(reason)
    problem = problems.get(name)
    stats = problem.stats()
    assert not problem.better(stats.default_value, stats.optimum)
    assert not problem.better(stats.random_median, stats.optimum)
    assert problem.better(problem.reference_value(), stats.optimum) is False
    run = runner.run_one(runner.Task(name, "tpe", 0, 15))
    for f in run["true"]:
        assert f is None or not problem.better(f, stats.optimum)
    assert problem.space.problems(problem.default) == []


# The smoke tier -----------------------------------------------------------------------------------------


def test_smoke_tier_runs_resumes_and_writes_the_table(tmp_path: Path) -> None:
    from benchmarks.sample_efficiency import run

    started = time.monotonic()
    assert run.main(["--tier", "smoke", "--out", str(tmp_path)]) == 0
    assert time.monotonic() - started < 60
    table = (tmp_path / "summary.md").read_text()
    assert table.splitlines()[2].startswith("| tuner | avg rank @10 | median NR @10 |")
    tuners = [t for t in run.TIERS["smoke"]["tuners"] if runner.tuner_unavailable(t) is None]
    for t in tuners:
        assert f"\n| {t} |" in table
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * len(tuners)
    assert all(len(r["true"]) == 15 and r["broken"] == [] for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["optimum_check"] == []
    for row in summary["tuners"].values():
        assert row["median_regret"]["10"] is not None and row["median_regret"]["10"] >= 0

    # A second run finds every run in the cache and runs nothing.
    assert run.main(["--tier", "smoke", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(records)


@pytest.mark.parametrize("tuner", ["tpe", "random"])
def test_a_run_stopped_after_any_trial_resumes_to_the_uninterrupted_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tuner: str
) -> None:
    """GP's runs take up to an hour: a run is saved trial by trial and resumes with the proposals
    an uninterrupted run makes (Optuna-sampler tuners keep no state outside the study)."""
    problem = "jvm-sim-constrained"  # conditions, constraints and failure regions: failed trials too
    whole = runner.run_one(runner.Task(problem, tuner, 3, 18))
    task = runner.Task(problem, tuner, 3, 18, str(tmp_path))
    path = runner.checkpoint_path(task)
    assert path is not None and runner.resumable(tuner) and not runner.resumable("auto")

    # Stop the run twice (after trials 5 and 13) as a killed process would, mid-line the second time.
    real_evaluate = problems.get(problem).evaluate
    calls = {"n": 0, "stop_at": 6}

    def evaluate(params: dict, rng: object) -> object:
        calls["n"] += 1
        if calls["n"] > calls["stop_at"]:
            raise KeyboardInterrupt
        return real_evaluate(params, rng)

    monkeypatch.setattr(problems.get(problem), "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        runner.run_one(task)
    assert len(path.read_text().splitlines()) == 6
    calls.update(n=0, stop_at=8)
    with pytest.raises(KeyboardInterrupt):
        runner.run_one(task)
    with open(path, "a") as fh:
        fh.write('{"number": 14, "params": {"trunc')  # a partly written line
    monkeypatch.setattr(problems.get(problem), "evaluate", real_evaluate)
    resumed = runner.run_one(task)

    assert not path.exists()  # removed once the run is done
    assert resumed["resumed_at"] == [6, 14]
    for key in ("noisy", "true", "sources", "broken", "rejections", "fingerprint"):
        assert resumed[key] == whole[key], key
    if tuner == "random":
        assert None in whole["noisy"][:14]  # a failed trial was among those replayed


def test_a_longer_cached_run_answers_a_shorter_task_except_for_budget_aware_tuners() -> None:
    def record(tuner: str, trials: int, seed: int = 0) -> dict:
        return {
            "problem": "jvm-sim", "tuner": tuner, "seed": seed, "trials": trials,
            "fingerprint": runner.fingerprint(tuner, "jvm-sim"),
            "noisy": list(range(trials)), "true": list(range(trials)), "ask_s": [0.0] * trials,
            "sources": ["x"] * trials, "broken": [{"trial": trials - 1, "problems": ["?"]}],
        }  # fmt: skip

    long_tpe, long_smac = record("tpe", 8), record("smac", 8)
    stale = {**record("random", 8), "fingerprint": "0" * 16}
    tasks = [runner.Task("jvm-sim", t, 0, 5) for t in ("tpe", "smac", "random")]
    got = runner.current([long_tpe, long_smac, stale], tasks)
    assert list(got) == [("jvm-sim", "tpe", 0, 5)]  # SMAC sizes its start from the budget; stale is stale
    short = got[("jvm-sim", "tpe", 0, 5)]
    assert short["trials"] == 5 and short["noisy"] == [0, 1, 2, 3, 4] and short["broken"] == []
    assert short["truncated_from"] == 8 and long_tpe["trials"] == 8  # the cached record is untouched
    exact = record("tpe", 5)
    exact["noisy"] = [9] * 5
    assert runner.current([long_tpe, exact], tasks[:1])[("jvm-sim", "tpe", 0, 5)]["noisy"] == [9] * 5


def test_the_cache_fingerprint_ignores_docstrings_and_type_hints_but_not_code() -> None:
    """A docstring or a type hint must not make hours of cached runs stale; any change to what the
    code does must."""
    src = """
@dataclass
class T:
    \"\"\"Doc.\"\"\"
    d: int
    k: ClassVar[int] = 3

    def f(self, x: int) -> list[int]:
        \"\"\"What f does.\"\"\"
        parts = [x, 1]  # a comment
        return parts
"""
    same = """
@dataclass
class T:
    d: float
    k: ClassVar[int] = 3

    def f(self, x):
        parts: list[Any] = [x, 1]
        return parts
"""
    assert runner.meaning(src) == runner.meaning(same)
    for changed in (
        same.replace("[x, 1]", "[x, 2]"),
        same.replace("    d: float\n", ""),  # a dataclass field is code
        same.replace("k: ClassVar[int] = 3", "k: int = 3"),  # a ClassVar is not a field
        "    " + same.replace("\n", "\n    "),  # indentation is not meaning: same
    ):
        assert (runner.meaning(changed) == runner.meaning(src)) is changed.startswith("    "), changed


def test_a_samplers_fingerprint_follows_the_helpers_its_factory_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """gp's runs depend on the wrapper that repairs its refused proposals and on that wrapper's
    constant; TPE's do not, so a change there leaves TPE's cached runs current."""
    from knobflow.tuners import optuna as kopt

    before = {t: runner.fingerprint(t, "jvm-sim") for t in ("gp", "tpe")}
    monkeypatch.setattr(kopt, "REPAIR_RAMP", kopt.REPAIR_RAMP + 1)
    assert runner.fingerprint("gp", "jvm-sim") != before["gp"]
    assert runner.fingerprint("tpe", "jvm-sim") == before["tpe"]
    sources = runner._tuner_sources("gp")
    assert any(p.startswith("class RepairingSampler") for p in sources)


# No infeasible configuration, whatever the tuner ---------------------------------------------------------


def _grid_points(space: object) -> int:
    n = 1
    for d in space.distributions().values():  # type: ignore[attr-defined]
        n *= len(grid_values(d, 5))
    return n


@pytest.mark.parametrize("name", [*registry.names(), "smac"])
def test_every_tuner_proposes_only_feasible_configurations(name: str) -> None:
    problem = problems.get("jvm-sim-constrained")
    space = problem.space
    reason = runner.tuner_unavailable(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    if name == "grid":
        # Optuna's GridSampler materialises every grid point in memory: 31 tunables would exhaust
        # it, so knobflow refuses such a grid when the experiment file is validated.
        assert _grid_points(space) > 10**6
        why = registry.check("grid", {}, space.distributions())
        assert why is not None and "points (more than 1,000,000)" in why
        return
    trials = 12 if name == "smac" else 25  # SMAC refits its forest on every rejected proposal: seconds each
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    study.enqueue_trial(space.defaults(), user_attrs={"baseline": True})
    tuner = runner.make_tuner(name, 5, space, trials)
    try:
        for _ in range(trials):
            trial = base.ask(tuner, study, space, seed=5)
            params = dict(trial.params)
            assert space.problems(params) == [], (trial.number, params)
            y, _f = problem.evaluate(params, noise_rng(problem.name, 5, trial.number))
            base.tell(study, trial.number, TrialState.COMPLETE if y is not None else TrialState.FAIL, y)
    finally:
        if hasattr(tuner, "close"):
            tuner.close()
    assert len(study.trials) == trials
