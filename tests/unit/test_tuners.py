from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow import spec
from knobflow.store import Store, distribution
from knobflow.tuners import registry
from tests.conftest import REPO


@pytest.mark.parametrize("name", registry.names())
def test_suggestions_are_in_bounds_and_on_step(name: str, home: Path) -> None:
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    store = Store(f"sqlite:///{home / 'k.db'}")
    study = store.open(exp)
    tuner = registry.create(name, seed=7)
    dists = {t.name: distribution(t) for t in exp.tunables}
    for i in range(12):
        t = tuner.ask(study, dists)
        for tun in exp.tunables:
            v = t.params[tun.name]
            if tun.type == "categorical":
                assert v in tun.choices  # type: ignore[operator]
            else:
                assert tun.low <= v <= tun.high  # type: ignore[operator]
                if tun.step:
                    assert (v - tun.low) % tun.step == 0  # type: ignore[operator]
        tuner.tell(study, t.number, TrialState.COMPLETE, float(i % 5))


def test_same_seed_same_suggestions(tmp_path: Path) -> None:
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    dists = {t.name: distribution(t) for t in exp.tunables}
    runs = []
    for k in range(2):
        store = Store(f"sqlite:///{tmp_path / f'{k}.db'}")
        study = store.open(exp)
        tuner = registry.create("tpe", seed=11)
        seq = []
        for i in range(8):
            t = tuner.ask(study, dists)
            seq.append(t.params)
            tuner.tell(study, t.number, TrialState.COMPLETE, float(len(str(t.params)) + i))
        runs.append(seq)
    assert runs[0] == runs[1]


def test_unknown_tuner() -> None:
    with pytest.raises(ValueError, match="unknown tuner"):
        registry.create("nope")
