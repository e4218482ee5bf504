"""knobflow select: importance ranking with uncertainty, the reduced file, the screening file."""

from __future__ import annotations

import math
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


@pytest.mark.parametrize("evaluator", select.EVALUATORS)
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
    assert screening.model.budget.trials == select.screening_budget(5)
    assert not math.isnan(select.screening_budget(31))


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
