from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow import spec
from knobflow.store import Store, StoreError, distribution
from knobflow.tuners import registry
from knobflow.tuners.base import ask
from tests.conftest import REPO


@pytest.fixture
def exp(home: Path) -> spec.Experiment:
    return spec.load(REPO / "experiments" / "sqlite-demo.yaml")


def _store(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'knobflow.db'}")


def _dists(exp: spec.Experiment) -> dict:
    return {t.name: distribution(t) for t in exp.tunables}


def test_default_storage_is_under_knobflow_home(exp: spec.Experiment, home: Path) -> None:
    assert exp.storage_url() == f"sqlite:///{home.resolve() / 'knobflow.db'}"


def test_first_trial_is_the_baseline(exp: spec.Experiment, home: Path) -> None:
    store = _store(home)
    study = store.open(exp)
    tuner = registry.create("tpe", seed=1)
    t = ask(tuner, study, exp.space())
    assert t.number == 0
    assert t.params == exp.defaults()
    assert t.user_attrs["baseline"] is True
    t2 = ask(tuner, study, exp.space())
    assert not t2.user_attrs.get("baseline")


def test_reopening_resumes_and_a_changed_space_is_refused(exp: spec.Experiment, home: Path) -> None:
    store = _store(home)
    study = store.open(exp)
    tuner = registry.create("random", seed=1)
    t = ask(tuner, study, exp.space())
    store.finish(study, t.number, state=TrialState.COMPLETE, value=1.0, attrs={"metrics": {"x": 1}})
    again = _store(home).open(exp)
    assert len(again.trials) == 1 and again.trials[0].value == 1.0
    changed = spec.parse(
        exp.path.read_text().replace("high: 1000", "high: 999"),
        base_dir=exp.base_dir,  # type: ignore[union-attr]
    )
    with pytest.raises(StoreError, match="search space differs"):
        _store(home).open(changed)


def test_telling_twice_changes_nothing(exp: spec.Experiment, home: Path) -> None:
    store = _store(home)
    study = store.open(exp)
    t = ask(registry.create("tpe", seed=1), study, exp.space())
    assert store.finish(study, t.number, state=TrialState.COMPLETE, value=5.0, attrs={"a": 1})
    assert not store.finish(study, t.number, state=TrialState.FAIL, value=None, attrs={"a": 2})
    frozen = store.trials(study)[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 5.0 and frozen.user_attrs["a"] == 1


def test_stale_trial_of_a_dead_process_is_failed_and_requeued(exp: spec.Experiment, home: Path) -> None:
    store = _store(home)
    study = store.open(exp)
    t = ask(registry.create("tpe", seed=1), study, exp.space())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t.set_user_attr("owner", {"host": socket.gethostname(), "pid": dead.pid, "create_time": 1.0})
    t.set_user_attr("started", 0.0)
    assert store.recover(study, grace_s=3600) == [0]
    trials = store.trials(study)
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["interrupted"] is True
    assert "interrupted" in trials[0].user_attrs["reason"]
    assert trials[1].state == TrialState.WAITING
    p = store.progress(study)
    assert (p.done, p.failed, p.waiting) == (0, 0, 1)
    # The requeued baseline is still the baseline.
    again = ask(registry.create("tpe", seed=1), study, exp.space())
    assert again.params == exp.defaults() and again.user_attrs["baseline"] is True


def test_running_trial_of_a_live_process_is_left_alone(exp: spec.Experiment, home: Path) -> None:
    store = _store(home)
    study = store.open(exp)
    t = ask(registry.create("tpe", seed=1), study, exp.space())
    store.mark_started(study, t, "run-1")
    assert store.recover(study, grace_s=3600) == []
    assert store.trials(study)[0].state == TrialState.RUNNING


def test_trial_of_another_host_is_stale_only_after_the_grace(exp: spec.Experiment, home: Path) -> None:
    import time

    store = _store(home)
    study = store.open(exp)
    t = ask(registry.create("tpe", seed=1), study, exp.space())
    t.set_user_attr("owner", {"host": "elsewhere", "pid": 1, "create_time": 1.0})
    t.set_user_attr("started", time.time())
    assert store.recover(study, grace_s=3600) == []
    assert store.recover(study, grace_s=-1) == [0]


def test_trial_without_owner_is_stale_after_a_short_grace(exp: spec.Experiment, home: Path) -> None:
    from knobflow import store as store_mod

    store = _store(home)
    study = store.open(exp)
    ask(registry.create("tpe", seed=1), study, exp.space())  # killed before it was stamped
    assert store.recover(study, grace_s=3600) == []
    old = store_mod.OWNERLESS_GRACE_S
    store_mod.OWNERLESS_GRACE_S = -1.0
    try:
        assert store.recover(study, grace_s=3600) == [0]
    finally:
        store_mod.OWNERLESS_GRACE_S = old
