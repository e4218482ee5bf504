"""knobflow select: importance ranking with uncertainty, the reduced file, the screening file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from knobflow import select, spec
from knobflow.space import Param, Space
from tests.conftest import REPO, knobflow


def _screen(n: int, seed: int = 0) -> tuple[Space, list[optuna.trial.FrozenTrial]]:
    """12 knobs; only a, b and mode matter."""
    params = [Param(f"k{i}", FloatDistribution(0, 1), 0.5, "stack") for i in range(9)]
    params += [
        Param("a", FloatDistribution(0, 1), 0.1, "stack"),
        Param("b", FloatDistribution(0, 1), 0.1, "stack"),
        Param("mode", CategoricalDistribution(("x", "y", "z")), "x", "stack"),
    ]
    space = Space(params)
    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        p = space.random(rng)
        v = 10 * p["a"] + 16 * (0.5 - abs(p["b"] - 0.5)) + {"x": 0, "y": 4, "z": 8}[p["mode"]] + rng.gauss(0, 0.2)
        trials.append(
            optuna.trial.create_trial(params=p, distributions=space.distributions(), value=v, state=TrialState.COMPLETE)
        )
    return space, trials


@pytest.mark.parametrize("evaluator", select.MODEL_EVALUATORS)
def test_ranking_finds_the_important_knobs_with_uncertainty(evaluator: str) -> None:
    space, trials = _screen(96 if evaluator == "gp" else 160)
    ranking = select.rank(trials, maximize=True, names=space.names, k=3, bootstrap=10, evaluator=evaluator)
    top = {r.name for r in ranking[:3]}
    assert top == {"a", "b", "mode"}
    # The bootstrap shows how sure the ranking is: the important knobs are in the top 3 of most
    # resamples, the others in few.
    assert sum(r.top_k_share for r in ranking[:3]) / 3 >= 0.6
    assert all(r.top_k_share <= 0.5 and r.sd >= 0 for r in ranking[3:])
    assert all(r.low <= r.importance <= r.high for r in ranking)


def test_too_few_trials_asks_for_a_screening() -> None:
    space, trials = _screen(10)
    with pytest.raises(select.SelectError, match="needs at least 16"):
        select.rank(trials, maximize=True, names=space.names, k=3)


def test_reduced_file_pins_the_rest_and_is_valid() -> None:
    text = (REPO / "tests" / "data" / "bad_specs" / "condition_cycle.yaml").read_text()
    text = "".join(text.splitlines(keepends=True)[2:]).replace("    when: {max_pause_ms: 200}\n", "")
    data = yaml.safe_load(text)
    reduced = select.reduce(data, ["max_pause_ms", "xmx_mb"])
    exp = spec.parse(select.dump(reduced), base_dir=REPO / "experiments")
    kinds = {t.name: t.type for t in exp.tunables}
    assert kinds["gc"] == "categorical" and kinds["max_pause_ms"] == "int" and kinds["xmx_mb"] == "int"
    assert kinds["memory_mb"] == "categorical"  # pinned
    pinned = next(t for t in exp.tunables if t.name == "memory_mb")
    assert pinned.choices == [2048] and pinned.default == 2048
    gc = next(t for t in exp.tunables if t.name == "gc")
    assert gc.choices == ["G1", "Parallel", "Serial"], "the parent of a kept conditional knob stays tuned"
    assert exp.name == "bad-example-top2"
    assert exp.space().defaults() == spec.parse(text, base_dir=REPO / "experiments").space().defaults()
    screening = spec.parse(select.dump(select.screening_file(data)), base_dir=REPO / "experiments")
    assert screening.name == "bad-example-screening" and screening.model.tuner.name == "qmc"
    assert screening.model.budget.trials == select.screening_budget(5) == 24
    assert select.screening_budget(31) == 128  # four trajectories' worth: 4 x (k + 1)
    morris = spec.parse(select.dump(select.screening_file(data, design="morris")), base_dir=REPO / "experiments")
    assert morris.model.tuner.name == "morris" and morris.model.budget.trials == 24


def test_select_command_plans_a_screening_then_ranks_imported_trials(tmp_path: Path) -> None:
    """No trials: a screening run is planned. With 40 measured rows (imported), the two knobs that
    drive the throughput are ranked first and the reduced file keeps exactly them (and max_pause_ms's
    parent gc is tuned because it is in the top 2 anyway)."""
    text = (REPO / "tests" / "data" / "bad_specs" / "condition_cycle.yaml").read_text()
    text = "".join(text.splitlines(keepends=True)[2:]).replace("    when: {max_pause_ms: 200}\n", "")
    f = tmp_path / "jvm.yaml"
    f.write_text(text)
    home = tmp_path / "home"
    proc = knobflow("select", str(f), "--top", "2", home=home)
    assert proc.returncode == 1 and "screening run planned" in proc.stdout
    screening = spec.load(tmp_path / "jvm-screening.yaml")
    assert screening.model.tuner.name == "qmc" and screening.name == "bad-example-screening"

    exp = spec.load(f)
    space = exp.space()
    rng = random.Random(4)
    rows = ["gc,max_pause_ms,memory_mb,xmx_mb,xms_mb,throughput"]
    while len(rows) < 41:
        p = space.random(rng)
        if space.violations(p):
            continue
        v = p["xmx_mb"] / 10 + {"G1": 300, "Parallel": 0, "Serial": -300}[p["gc"]] + rng.gauss(0, 5)
        rows.append(f"{p['gc']},{p.get('max_pause_ms', '')},{p['memory_mb']},{p['xmx_mb']},{p['xms_mb']},{v:.2f}")
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    knobflow("import", str(tmp_path / "rows.csv"), "--into", str(f), home=home, check=True)
    proc = knobflow("select", str(f), "--top", "2", "--bootstrap", "10", home=home, check=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("* ")]
    assert {ln.split()[1] for ln in lines[:2]} == {"xmx_mb", "gc"}, proc.stdout
    reduced = spec.load(tmp_path / "jvm-top2.yaml")
    tuned = {t.name for t in reduced.tunables if not t.description.startswith("pinned at")}
    assert tuned == {"xmx_mb", "gc"}
    assert reduced.name == "bad-example-top2"


def test_select_plans_a_morris_screening_and_ranks_it_by_elementary_effects(tmp_path: Path, home: Path) -> None:
    """--design morris plans a Morris screening; its trials (run here through the store and the
    checked proposal path, as the engine runs them) are ranked by mu* without being told to."""
    from optuna.trial import TrialState

    from knobflow.store import Store
    from knobflow.tuners import base, registry

    text = (REPO / "tests" / "data" / "bad_specs" / "condition_cycle.yaml").read_text()
    text = "".join(text.splitlines(keepends=True)[2:]).replace("    when: {max_pause_ms: 200}\n", "")
    f = tmp_path / "jvm.yaml"
    f.write_text(text)
    proc = knobflow("select", str(f), "--screen", "--design", "morris", "--top", "2", home=home, check=True)
    assert "24 trials, tuner morris" in proc.stdout
    screening = spec.load(tmp_path / "jvm-screening.yaml")
    assert screening.model.tuner.name == "morris" and screening.model.tuner.seed == 0

    store = Store(screening.storage_url())
    study = store.open(screening)  # the baseline is queued first
    space = screening.space()
    tuner = registry.create("morris", seed=0, defaults=screening.defaults())
    rng = random.Random(5)
    for _ in range(screening.model.budget.trials):
        t = base.ask(tuner, study, space, seed=0)
        p = t.params
        v = p["xmx_mb"] / 10 + {"G1": 300, "Parallel": 0, "Serial": -300}[p["gc"]] + rng.gauss(0, 5)
        base.tell(study, t.number, TrialState.COMPLETE, v)
    proc = knobflow(
        "select", str(f), "--from", screening.name, "--top", "2", "--bootstrap", "10", home=home, check=True
    )
    assert "(morris;" in proc.stdout and "sigma" in proc.stdout, proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("* ")]
    assert {ln.split()[1] for ln in lines[:2]} == {"xmx_mb", "gc"}, proc.stdout
    proc = knobflow("select", str(f), "--from", screening.name, "--top", "2", "--json", home=home, check=True)
    out = json.loads(proc.stdout)
    assert out["evaluator"] == "morris" and all("sigma" in r for r in out["ranking"] if r["ranked"])


def test_pinned_at_the_best_trial_unless_the_baseline_would_break_a_constraint() -> None:
    text = (REPO / "tests" / "data" / "bad_specs" / "condition_cycle.yaml").read_text()
    text = "".join(text.splitlines(keepends=True)[2:]).replace("    when: {max_pause_ms: 200}\n", "")
    data = yaml.safe_load(text)
    space = spec.parse(text, base_dir=REPO / "experiments").space()
    best = {"gc": "G1", "max_pause_ms": 50, "memory_mb": 4096, "xmx_mb": 3000, "xms_mb": 2048}
    pin = select.pin_values(space, ["xmx_mb"], best)
    # memory_mb and the G1 pause take the best trial's values; xms_mb at 2048 would break
    # xms_mb <= xmx_mb with xmx_mb (kept) at its default 1024, so it stays at its default.
    assert pin == {"gc": "G1", "max_pause_ms": 50, "memory_mb": 4096, "xms_mb": 512}
    reduced = spec.parse(select.dump(select.reduce(data, ["xmx_mb"], pin=pin)), base_dir=REPO / "experiments")
    assert reduced.defaults() == {"gc": "G1", "max_pause_ms": 50, "memory_mb": 4096, "xmx_mb": 1024, "xms_mb": 512}
    memory = next(t for t in reduced.tunables if t.name == "memory_mb")
    assert memory.choices == [4096] and "best screening trial (default 2048)" in memory.description
    assert select.reduce_space(space, ["xmx_mb"], pin).defaults() == reduced.defaults()


def test_a_tunable_the_pins_make_inactive_for_good_is_dropped() -> None:
    """gc pinned at Parallel (the best trial's) makes the G1 pause inactive in every trial of the
    reduced file: it is left out (a single-choice tunable whose condition can never hold is an
    invalid experiment file), and so is a constraint naming it (it could never apply)."""
    text = (REPO / "tests" / "data" / "bad_specs" / "condition_cycle.yaml").read_text()
    text = "".join(text.splitlines(keepends=True)[2:]).replace("    when: {max_pause_ms: 200}\n", "")
    text = text.replace('  - "xms_mb <= xmx_mb"\n', '  - "xms_mb <= xmx_mb"\n  - "max_pause_ms <= xms_mb"\n')
    data = yaml.safe_load(text)
    space = spec.parse(text, base_dir=REPO / "experiments").space()
    best = {"gc": "Parallel", "memory_mb": 4096, "xmx_mb": 3000, "xms_mb": 1024}
    pin = select.pin_values(space, ["xmx_mb"], best)
    doc = select.reduce(data, ["xmx_mb"], pin=pin)
    assert [t["name"] for t in doc["tunables"]] == ["gc", "memory_mb", "xmx_mb", "xms_mb"]
    assert doc["constraints"] == ["xmx_mb <= memory_mb * 0.9", "xms_mb <= xmx_mb"]
    reduced = spec.parse(select.dump(doc), base_dir=REPO / "experiments")
    assert reduced.defaults() == {"gc": "Parallel", "memory_mb": 4096, "xmx_mb": 1024, "xms_mb": 1024}
    small = select.reduce_space(space, ["xmx_mb"], pin)
    assert small.names == ["gc", "memory_mb", "xmx_mb", "xms_mb"] and len(small.constraints) == 2
    # A kept G1 pause keeps gc tunable (its condition's parent): nothing is dropped then.
    assert "max_pause_ms" in select.reduce_space(space, ["max_pause_ms"], pin).names
