"""The online tuners in an experiment (knobflow.tuners.online_adapter): ``tuner: hybrid``,
``bluefin``, ``exp_weights`` and ``autoscope`` behind knobflow's propose/ask/tell.

The per-tuner feasibility checks of tests/unit/test_tuners.py and tests/unit/test_space.py run
these tuners too (they are in the registry); ``knobflow run`` end to end is in
tests/e2e/test_online_run.py."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from benchmarks.sample_efficiency import problems
from benchmarks.sample_efficiency.problem import noise_rng
from knobflow import spec
from knobflow.expr import compile_expr
from knobflow.space import Condition, Param, Space
from knobflow.store import Store
from knobflow.tuners import base, online_adapter, registry
from knobflow.tuners.online import OnlineTuner
from knobflow.tuners.online_adapter import ATTR, MAX_REJECTIONS, OnlineAdapter, ReplayError, knob, reward
from tests.conftest import REPO

ONLINE = ["autoscope", "bluefin", "exp_weights", "hybrid"]
Evaluate = Callable[[dict[str, Any], int], float | None]


def _study(space: Space, direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction=direction)
    study.enqueue_trial(space.defaults(), user_attrs={"baseline": True})
    return study


def _run(
    name: str,
    space: Space,
    f: Evaluate,
    n: int,
    *,
    seed: int | None = 3,
    study: optuna.Study | None = None,
    options: dict[str, Any] | None = None,
    direction: str = "maximize",
    infeasible: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[optuna.Study, OnlineAdapter]:
    """``n`` trials as the engine runs them (a new tuner object, like a new process, per call);
    ``f(params, number)`` is the measured value, None for a failed trial; ``infeasible(params)``
    marks a completed trial as breaking an SLO, as the engine does before telling."""
    study = study or _study(space, direction)
    tuner = registry.create(name, seed=seed, options=options, defaults=space.defaults())
    assert isinstance(tuner, OnlineAdapter)
    for _ in range(n):
        trial = base.ask(tuner, study, space, seed=seed)
        assert space.problems(dict(trial.params)) == [], (name, trial.params)
        y = f(dict(trial.params), trial.number)
        if y is not None and infeasible is not None and infeasible(dict(trial.params)):
            trial.set_user_attr("slo_violations", ["p99_ms <= 1.1 * baseline"])
        base.tell(study, trial.number, TrialState.COMPLETE if y is not None else TrialState.FAIL, y)
    return study, tuner


def _tight() -> Space:
    """Mixed, conditional and constrained, with the defaults on the constraint's edge (a <= b):
    half of BlueFin's first probes break it. ``c`` is active only when ``mode == "y"``."""
    return Space(
        [
            Param("a", IntDistribution(0, 100), 50, "stack"),
            Param("b", IntDistribution(0, 100), 50, "stack"),
            Param("mode", CategoricalDistribution(("x", "y", "z")), "x", "stack"),
            Param("c", FloatDistribution(0.1, 10.0, log=True), 1.0, "stack", Condition(equals=(("mode", ("y",)),))),
            Param("flag", CategoricalDistribution((False, True)), False, "stack"),
        ],
        [compile_expr("a <= b", boolean=True)],
    )


def _tight_value(p: dict[str, Any], _number: int) -> float:
    return 100 + p["a"] - 0.5 * abs(p["b"] - 70) + {"x": 0, "y": 5, "z": -5}[p["mode"]] + 3 * p.get("c", 0)


def _tuner_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if ATTR in t.system_attrs]


# 1. Feasibility ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ONLINE)
def test_never_an_infeasible_or_inactive_configuration_on_the_constrained_simulator(name: str) -> None:
    """jvm-sim-constrained (G1 flags conditional on gc, two constraints, undeclared crash regions):
    every trial is the tuner's own proposal (never knobflow's random fallback), feasible, with
    exactly the active tunables."""
    prob = problems.get("jvm-sim-constrained")
    study, _ = _run(name, prob.space, lambda p, n: prob.evaluate(p, noise_rng(prob.name, 3, n))[0], 40)
    sources = Counter(t.user_attrs.get("proposed_by") for t in study.trials[1:])
    assert set(sources) <= {name, f"{name}-fallback"}, sources
    assert sources[name] >= 30


@pytest.mark.parametrize("name", ["hybrid", "bluefin", "autoscope"])
def test_infeasible_predictions_are_told_minus_one_and_never_run(name: str) -> None:
    space = _tight()
    study, tuner = _run(name, space, _tight_value, 30)
    rejected = sum(r.rejected for r in tuner.rounds)
    assert rejected > 0, "the defaults sit on the constraint: some predictions must have broken it"
    for t in study.trials:
        assert t.params["a"] <= t.params["b"]
        assert ("c" in t.params) == (t.params["mode"] == "y")
    # The last proposal's replay gave the algorithm -1 for each prediction rejected before a round.
    stored = [t.system_attrs[ATTR]["rejected"] for t in _tuner_trials(study)]
    assert [r.rejected for r in tuner.rounds] == stored[:-1]


def test_after_too_many_infeasible_predictions_the_incumbent_runs() -> None:
    """A constraint almost no prediction meets (a == 50): after MAX_REJECTIONS the trial runs the
    incumbent, marked as a fallback, and the algorithm does not learn from it."""
    space = Space([*_tight().params.values()], [compile_expr("a == 50", boolean=True)])
    study, tuner = _run("bluefin", space, _tight_value, 8)
    fallbacks = [t for t in study.trials if t.user_attrs.get("proposed_by") == "bluefin-fallback"]
    assert fallbacks, Counter(t.user_attrs.get("proposed_by") for t in study.trials)
    best = max((t for t in study.trials if t.number < fallbacks[0].number), key=lambda t: t.value)
    assert fallbacks[0].params == best.params
    assert fallbacks[0].system_attrs[ATTR]["config"] is None
    assert fallbacks[0].system_attrs[ATTR]["rejected"] == MAX_REJECTIONS
    assert all(r.reward is None for r in tuner.rounds if r.config is None)


def test_the_other_kind_of_tunable_stays_at_its_default() -> None:
    space = _tight()
    study, _ = _run("bluefin", space, _tight_value, 12)
    assert {t.params["mode"] for t in study.trials} == {"x"} and {t.params["flag"] for t in study.trials} == {False}
    assert len({(t.params["a"], t.params["b"]) for t in study.trials}) > 3
    study, _ = _run("exp_weights", space, _tight_value, 12)
    assert {(t.params["a"], t.params["b"]) for t in study.trials} == {(50, 50)}
    assert len({(t.params["mode"], t.params["flag"]) for t in study.trials}) > 3


def test_configurations_repeat_on_purpose() -> None:
    """Exponential weights replay their arms: 6 combinations, 20 rounds, every one the tuner's own
    (knobflow's "already measured" check would otherwise redraw them at random or stop)."""
    study, _ = _run("exp_weights", _tight(), _tight_value, 20)
    configs = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(configs)) <= 6 < len(configs)
    assert {t.user_attrs.get("proposed_by") for t in study.trials[1:]} == {"exp_weights"}


# Parameters ---------------------------------------------------------------------------------------------
def test_every_tunable_maps_to_a_parameter_whose_default_comes_back() -> None:
    """int (with step), log-scale int and float (tuned in log space), float with a step (a grid
    index), categorical with non-string choices, bool: ``val`` is the default and decodes to it."""
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    spaces = [exp.space(), problems.get("jvm-sim-constrained").space, _tight()]
    kinds = set()
    for space in spaces:
        for name, p in space.params.items():
            k = knob(name, p.distribution, p.default)
            kinds.add(
                (type(k.param).__name__, getattr(p.distribution, "log", None), getattr(p.distribution, "step", 0))
            )
            assert k.decode(k.param.val) == p.default and type(k.decode(k.param.val)) is type(p.default), name
    log_int = knob("x", IntDistribution(512, 262144, log=True), 2000)
    assert log_int.param.to_dict() == {
        "type": "real",
        "name": "x",
        "val": math.log(2000),
        "min": math.log(512),
        "max": math.log(262144),
        "step": None,
    }
    assert log_int.decode(math.log(262144)) == 262144 and log_int.decode(math.log(512) + 1e-9) == 512
    stepped = knob("r", FloatDistribution(0.5, 2.0, step=0.25), 1.0)
    assert stepped.param.to_dict()["type"] == "integer" and (stepped.param.val, stepped.param.max) == (2, 6)  # type: ignore[union-attr]
    assert [stepped.decode(i) for i in range(7)] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    page = knob("page", CategoricalDistribution((1024, 4096)), 4096)
    assert page.param.categories == ("1024", "4096") and page.decode("4096") == 4096  # type: ignore[union-attr]
    mixed = knob("m", CategoricalDistribution(("1", 1)), 1)
    assert mixed.param.categories == ('"1"', "1") and mixed.decode("1") == 1  # type: ignore[union-attr]
    assert ("Real", True, None) in kinds and ("Integer", False, 0.25) in kinds and ("Categorical", None, 0) in kinds


# 2. Rewards -----------------------------------------------------------------------------------------------
def test_reward_mapping() -> None:
    assert reward(110.0, 100.0, True) == pytest.approx(0.1)
    assert reward(90.0, 100.0, True) == pytest.approx(-0.1)
    assert reward(90.0, 100.0, False) == pytest.approx(0.1)  # minimise: lower is a gain
    assert reward(130.0, 100.0, False) == pytest.approx(-0.3)
    assert reward(350.0, 100.0, True) == 1.0 and reward(-300.0, 100.0, True) == -1.0  # clipped
    assert reward(-90.0, -100.0, True) == pytest.approx(0.1)  # relative to |baseline|
    assert reward(None, 100.0, True) == -1.0 and reward(None, 100.0, False) == -1.0  # failed
    assert reward(150.0, 100.0, True, feasible=False) == -1.0  # broke an SLO
    assert (reward(2.0, 0.0, True), reward(-2.0, 0.0, True), reward(0.0, 0.0, True)) == (1.0, -1.0, 0.0)
    assert reward(5.0, None, True) == 0.0


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_algorithm_learns_the_mapped_rewards(direction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reward the algorithm is given, in order: -1 per rejected prediction, then the trial's
    mapped reward: failures (here b > 65) and SLO-infeasible trials (a < 40) -1."""
    space = _tight()

    def f(p: dict[str, Any], n: int) -> float | None:
        return None if p["b"] > 65 else _tight_value(p, n)

    study = _study(space, direction)
    for _ in range(3):  # three processes, each continuing the last one's study
        study, _ = _run("hybrid", space, f, 8, study=study, direction=direction, infeasible=lambda p: p["a"] < 40)
    trials = study.get_trials(deepcopy=False)
    assert any(t.state == TrialState.FAIL for t in trials), "the test must cover failures"
    assert any(t.user_attrs.get("slo_violations") for t in trials), "and SLO-infeasible trials"
    base_value = trials[0].value
    sign = 1 if direction == "maximize" else -1
    expected: list[float] = []
    for t in _tuner_trials(study):
        expected += [-1.0] * t.system_attrs[ATTR]["rejected"]
        if t.state == TrialState.FAIL or t.user_attrs.get("slo_violations"):
            expected.append(-1.0)
        else:
            expected.append(max(-1.0, min(1.0, sign * (t.value - base_value) / abs(base_value))))
    given: list[float] = []
    original = OnlineTuner.set_reward

    def spy(self: OnlineTuner, r: float | None, context_id: Any = "") -> None:
        if type(self).__name__ == "HybridSolver":
            given.append(r)  # type: ignore[arg-type]
        original(self, r, context_id)

    monkeypatch.setattr(OnlineTuner, "set_reward", spy)
    tuner = registry.create("hybrid", seed=3)
    tuner.propose(study, space, study.get_trials(deepcopy=False), base.Rejecter(space, [], True))
    assert given[: len(expected)] == pytest.approx(expected, abs=1e-15)
    assert sum(1 for r in expected if -1 < r < 1) > 0


def test_a_failed_baseline_makes_the_first_completed_round_the_reference() -> None:
    space = _tight()

    def f(p: dict[str, Any], n: int) -> float | None:
        return None if n == 0 else _tight_value(p, n)

    study, tuner = _run("hybrid", space, f, 6)
    first = next(r for r in tuner.rounds if r.reward is not None)
    assert first.reward == 0.0
    ref = study.trials[first.trial].value
    for r in tuner.rounds[1:]:
        if r.reward is not None:
            assert r.reward == pytest.approx(max(-1, min(1, (study.trials[r.trial].value - ref) / abs(ref))))


# 3. Resume -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ONLINE)
def test_a_resumed_experiment_proposes_what_an_uninterrupted_one_does(name: str) -> None:
    space = _tight()
    whole, _ = _run(name, space, _tight_value, 24)
    part, _ = _run(name, space, _tight_value, 9)
    part, _ = _run(name, space, _tight_value, 6, study=part)  # a new process: a new tuner object
    part, _ = _run(name, space, _tight_value, 9, study=part)
    assert [t.params for t in part.trials] == [t.params for t in whole.trials]
    other, _ = _run(name, space, _tight_value, 24, seed=4)
    assert [t.params for t in other.trials] != [t.params for t in whole.trials]


def test_without_a_seed_the_drawn_seed_is_stored_and_a_resume_continues_it() -> None:
    space = _tight()
    first, _ = _run("hybrid", space, _tight_value, 10, seed=None)
    seeds = {t.system_attrs[ATTR]["seed"] for t in _tuner_trials(first)}
    assert len(seeds) == 1
    copies = []
    for _ in range(2):  # the same stored study continued twice, by different tuner objects
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
        study.add_trials(first.get_trials())
        copies.append(_run("hybrid", space, _tight_value, 10, seed=None, study=study)[0])
    assert [t.params for t in copies[0].trials] == [t.params for t in copies[1].trials]
    assert {t.system_attrs[ATTR]["seed"] for t in _tuner_trials(copies[0])} == seeds


def test_an_interrupted_trial_takes_its_reward_from_the_rerun(home: Path) -> None:
    """The store's crash recovery: the running trial is failed as interrupted and its configuration
    queued again; the round gets the re-run's result and the experiment goes on as if uninterrupted."""
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text().replace("name: auto", "name: hybrid")
    exp = spec.parse(text, base_dir=REPO / "experiments")
    space = exp.space()

    def value(p: dict[str, Any]) -> float:
        return 1000 + p["mmap_size_mib"] - 20 * abs(math.log(p["cache_size_kib"]) - 9) + 3 * len(p["journal_mode"])

    def run(store: Store, n: int, crash_at: int | None = None) -> optuna.Study:
        study = store.open(exp)
        tuner = registry.create("hybrid", seed=exp.model.tuner.seed, defaults=exp.defaults())
        for _ in range(n):
            trial = base.ask(tuner, study, space, seed=exp.model.tuner.seed)
            if trial.number == crash_at:  # the process dies: recovery finds the trial RUNNING
                store.recover(study, grace_s=0)
                tuner = registry.create("hybrid", seed=exp.model.tuner.seed)
                continue
            base.tell(study, trial.number, TrialState.COMPLETE, value(dict(trial.params)))
        return study

    whole = run(Store(f"sqlite:///{home / 'a.db'}"), 12)
    crashed = run(Store(f"sqlite:///{home / 'b.db'}"), 13, crash_at=5)
    trials = crashed.get_trials(deepcopy=False)
    assert trials[5].user_attrs["interrupted"] and trials[6].user_attrs["requeued_from"] == 5
    assert [t.params for t in trials if t.number != 5] == [t.params for t in whole.get_trials(deepcopy=False)]


def test_a_tampered_history_is_refused_rather_than_learnt_wrongly() -> None:
    space = _tight()
    study, _ = _run("bluefin", space, _tight_value, 5)
    trials = study.get_trials()
    t = _tuner_trials(study)[2]
    attrs = dict(t.system_attrs[ATTR])
    attrs["config"] = {**attrs["config"], "a": attrs["config"]["a"] + 1}  # as if the code had changed
    trials[t.number].system_attrs = {**t.system_attrs, ATTR: attrs}
    copy = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    copy.add_trials(trials)
    with pytest.raises(ReplayError, match=f"replaying trial {t.number} predicted"):
        _run("bluefin", space, _tight_value, 1, study=copy)


def test_other_options_start_a_new_learner() -> None:
    space = _tight()
    study, _ = _run("hybrid", space, _tight_value, 6)
    study, tuner = _run("hybrid", space, _tight_value, 2, study=study, options={"hold_categorical_for_pair": False})
    assert len(tuner.rounds) == 1  # only its own first round; the earlier rounds belong to the other key
    study, tuner = _run("hybrid", space, _tight_value, 1, study=study)
    assert len(tuner.rounds) == 5  # back to the first options: their learner continues (trials 1-5)


def test_replay_stays_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The learner is rebuilt for every proposal. A new tuner object (a new process) replays every
    round, quickly; the same object replays only the rounds added since its last proposal."""
    import time

    prob = problems.get("jvm-sim-constrained")
    study, tuner = _run("hybrid", prob.space, lambda p, n: prob.evaluate(p, noise_rng(prob.name, 3, n))[0], 300)
    history = study.get_trials(deepcopy=False)
    start = time.perf_counter()
    registry.create("hybrid", seed=3).propose(study, prob.space, history, base.Rejecter(prob.space, [], True))
    assert time.perf_counter() - start < 2.0  # 299 rounds; measured 0.15 s on a busy 2-core machine
    calls = Counter[str]()
    original = OnlineTuner.predict

    def spy(self: OnlineTuner, context: Any = None) -> Any:
        calls[type(self).__name__] += 1
        return original(self, context)

    monkeypatch.setattr(OnlineTuner, "predict", spy)
    tuner.propose(study, prob.space, history, base.Rejecter(prob.space, [], True))
    assert calls["HybridSolver"] == 2  # the last trial's round, then the new prediction (none was rejected)


# 5. Validation --------------------------------------------------------------------------------------------
def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(spec.SpecError) as info:
        spec.parse(text, base_dir=REPO / "experiments")
    return [(p.path, p.message) for p in info.value.problems]


SQLITE = (REPO / "experiments" / "sqlite-demo.yaml").read_text()


def _only(kind: str) -> str:
    """The demo with only its categorical (or only its numeric) tunables."""
    head, rest = SQLITE.split("tunables:\n")
    body, tail = rest.split("\nlayers:")
    blocks = ["  - name:" + b for b in body.split("  - name:")[1:]]
    keep = [b for b in blocks if ("type: categorical" in b) == (kind == "categorical")]
    return head + "tunables:\n" + "".join(keep) + "\nlayers:" + tail


def test_validation_names_the_field() -> None:
    only_cat = _only("categorical").replace("name: auto", "name: bluefin")
    [(path, msg)] = _problems(only_cat)
    assert path == "tuner.name"
    assert "bluefin tuner tunes numeric (int or float) tunables only" in msg
    assert "(journal_mode, synchronous, page_size and temp_store are categorical or constant): use hybrid" in msg
    [(path, msg)] = _problems(_only("numeric").replace("name: auto", "name: exp_weights"))
    assert path == "tuner.name" and "exp_weights tuner tunes categorical (or bool) tunables only" in msg
    [(path, msg)] = _problems(_only("categorical").replace("name: auto", "name: autoscope"))
    assert path == "tuner.name" and "autoscope tuner tunes numeric" in msg
    assert spec.parse(_only("categorical").replace("name: auto", "name: exp_weights"), base_dir=REPO / "experiments")

    multi = SQLITE.replace(
        "objective:\n  metric: throughput_ops\n  direction: maximize\n",
        "objectives:\n  - {metric: throughput_ops, direction: maximize}\n  - {metric: p99_ms, direction: minimize}\n",
    ).replace("name: auto", "name: hybrid")
    [(path, msg)] = _problems(multi)
    assert path == "tuner.name" and "the hybrid tuner maximises one reward and this experiment has 2 objectives" in msg

    for name, options, needle in [
        (
            "hybrid",
            "{numerical_args: {feedback: 2}}",
            "unknown option 'numerical_args'; hybrid takes categorical_algorithm",
        ),
        ("bluefin", "{feedback: 3}", "feedback must be 1 (one-point) or 2 (two-point), got 3"),
        ("bluefin", "{eta: -1}", "eta must be positive"),
        ("hybrid", "{numerical_algorithm_args: {feedbak: 2}}", "unexpected keyword argument 'feedbak'"),
        ("hybrid", "{categorical_algorithm: slates}", "categorical_algorithm must be one of"),
        ("exp_weights", "{slates: 1}", "slates must be true or false"),
        ("autoscope", "{features: [{name: host, values: [a, b]}]}", "with features, give context"),
        ("autoscope", "{context: {host: a}}", "context has unknown feature 'host'"),
    ]:
        text = SQLITE.replace("name: auto\n", f"name: {name}\n  options: {options}\n")
        [(path, msg)] = _problems(text)
        assert path == "tuner.options", (name, options, path, msg)
        assert msg.startswith(f"options not accepted by the {name} tuner: ") and needle in msg, msg


def test_options_reach_the_algorithm() -> None:
    space = _tight()
    tuner = registry.create(
        "hybrid",
        seed=5,
        options={
            "numerical_algorithm_args": {"feedback": 1, "eta": 0.05},
            "categorical_algorithm": "exponential_weights_slates",
        },
    )
    algo, _ = tuner.replay(space, [])  # type: ignore[attr-defined]
    args = algo.dump()["args"]
    assert args["numerical_algorithm_args"] == {"feedback": 1, "eta": 0.05, "random_seed": 5}
    assert args["categorical_algorithm_args"] == {"random_seed": 5}
    assert args["categorical_algorithm"] == "exponential_weights_slates"
    bf, _ = registry.create("bluefin", seed=5, options={"random_seed": 9}).replay(space, [])  # type: ignore[attr-defined]
    assert bf.dump()["args"]["feedback"] == 2 and bf.dump()["args"]["random_seed"] == 9
    sl, _ = registry.create("exp_weights", seed=5, options={"slates": True}).replay(space, [])  # type: ignore[attr-defined]
    assert sl.algorithm == "exponential_weights_slates"
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        registry.create("bluefin", options={"nope": 1})


def test_joint_exponential_weights_over_too_many_combinations_is_refused() -> None:
    dists = {f"k{i}": CategoricalDistribution(tuple("abcdefghij")) for i in range(6)}  # 10**6 arms
    why = registry.check("exp_weights", {}, dists)
    assert why is not None and "1,000,000 arms" in why and "slates: true" in why
    assert registry.check("exp_weights", {"slates": True}, dists) is None
    why = registry.check("hybrid", {}, dists)
    assert why is not None and "categorical_algorithm: exponential_weights_slates" in why


def test_registry_lists_and_describes_the_online_tuners() -> None:
    assert set(ONLINE) <= set(registry.names())
    described = registry.describe()
    assert all(described[n].startswith("online: ") for n in ONLINE)
    assert online_adapter.names() == ONLINE


def test_sample_efficiency_runs_hybrid_and_its_cache_tracks_the_online_code() -> None:
    from benchmarks.sample_efficiency import runner

    assert "hybrid" in runner.DEFAULT_TUNERS and runner.tuner_unavailable("hybrid") is None
    sources = runner._tuner_sources("hybrid")
    tuners_dir = REPO / "src" / "knobflow" / "tuners"
    for path in [tuners_dir / "online_adapter.py", *sorted((tuners_dir / "online").glob("*.py"))]:
        assert path.read_text() in sources, path
