from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow import spec
from knobflow.store import Store
from knobflow.tuners import registry
from knobflow.tuners.base import ask, tell
from knobflow.tuners.optuna import grid_values, missing_modules
from tests.conftest import REPO

ONLINE = ("hybrid", "bluefin", "exp_weights", "autoscope")  # knobflow.tuners.online_adapter: no extra packages
RUNNABLE = [n for n in registry.names() if n in ("identity", "auto", "morris", *ONLINE) or not missing_modules(n)]


def test_the_dev_install_has_every_tuner_but_gp() -> None:
    """CI installs scipy and cmaes (the dev extra); torch for gp is optional."""
    assert set(registry.names()) - set(RUNNABLE) <= {"gp"}


@pytest.mark.parametrize("name", RUNNABLE)
def test_suggestions_are_in_bounds_and_on_step(name: str, home: Path) -> None:
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    store = Store(f"sqlite:///{home / 'k.db'}")
    study = store.open(exp)
    tuner = registry.create(name, seed=7, defaults=exp.defaults())
    for i in range(12):
        t = ask(tuner, study, exp.space())
        for tun in exp.tunables:
            v = t.params[tun.name]
            if tun.type == "categorical":
                assert v in tun.choices  # type: ignore[operator]
            else:
                assert tun.low <= v <= tun.high  # type: ignore[operator]
                if tun.step:
                    assert (v - tun.low) % tun.step == 0  # type: ignore[operator]
        tell(study, t.number, TrialState.COMPLETE, float(i % 5))


@pytest.mark.parametrize("name", ["tpe", "auto"])
def test_same_seed_same_suggestions(name: str, tmp_path: Path) -> None:
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    runs = []
    for k in range(2):
        store = Store(f"sqlite:///{tmp_path / f'{k}.db'}")
        study = store.open(exp)
        tuner = registry.create(name, seed=11)
        seq = []
        for i in range(8):
            t = ask(tuner, study, exp.space())
            seq.append(t.params)
            tell(study, t.number, TrialState.COMPLETE, float(len(str(t.params)) + i))
        runs.append(seq)
    assert runs[0] == runs[1]


def test_unknown_tuner() -> None:
    with pytest.raises(ValueError, match="unknown tuner"):
        registry.create("nope")


def test_identity_runs_the_defaults_every_time(home: Path) -> None:
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    store = Store(f"sqlite:///{home / 'k.db'}")
    study = store.open(exp)
    tuner = registry.create("identity", defaults=exp.defaults())
    for _ in range(3):
        t = ask(tuner, study, exp.space())
        assert t.params == exp.defaults()
        tell(study, t.number, TrialState.COMPLETE, 1.0)
    assert len(study.trials) == 3


def test_grid_values() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert grid_values(CategoricalDistribution(("a", "b")), 5) == ["a", "b"]
    assert grid_values(IntDistribution(0, 4), 5) == [0, 1, 2, 3, 4]
    assert grid_values(IntDistribution(0, 1024, step=64), 5) == [0, 256, 512, 768, 1024]
    assert grid_values(IntDistribution(1, 1000, log=True), 4) == [1, 10, 100, 1000]
    assert grid_values(FloatDistribution(0.0, 1.0), 3) == [0.0, 0.5, 1.0]


def test_grid_covers_the_grid_without_repeats(home: Path) -> None:
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    exp = spec.parse(text.replace("name: auto", "name: grid\n  options: {points: 2}"), base_dir=REPO / "experiments")
    store = Store(f"sqlite:///{home / 'g.db'}")
    study = store.open(exp)
    tuner = registry.create("grid", seed=1, options={"points": 2})
    seen = set()
    for _ in range(30):
        t = ask(tuner, study, exp.space())
        seen.add(tuple(sorted(t.params.items())))
        tell(study, t.number, TrialState.COMPLETE, 0.0)
    assert len(seen) == 30  # measured configurations (the baseline too) are not proposed again


def test_missing_packages_are_named_at_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from knobflow.tuners import optuna as optuna_tuners

    monkeypatch.setattr(optuna_tuners.importlib.util, "find_spec", lambda name: None)
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text().replace("name: auto", "name: cmaes")
    with pytest.raises(spec.SpecError) as info:
        spec.parse(text, base_dir=REPO / "experiments")
    assert [p.path for p in info.value.problems] == ["tuner.name"]
    assert "pip install 'knobflow[cmaes]'" in info.value.problems[0].message


def test_bool_tunables(home: Path) -> None:
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("tunables:\n", "tunables:\n  - {name: use_index, layer: stack, type: bool, default: true}\n", 1)
    exp = spec.parse(text, base_dir=REPO / "experiments")
    study = Store(f"sqlite:///{home / 'b.db'}").open(exp)
    tuner = registry.create("random", seed=3)
    values = set()
    for _ in range(12):
        t = ask(tuner, study, exp.space())
        values.add(t.params["use_index"])
        tell(study, t.number, TrialState.COMPLETE, 0.0)
    assert values == {True, False}
    with pytest.raises(spec.SpecError, match="must be true or false"):
        spec.parse(text.replace("type: bool, default: true", "type: bool, default: 1"), base_dir=REPO / "experiments")
