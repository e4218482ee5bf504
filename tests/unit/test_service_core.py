"""The tuning service's core over a store several service processes share: per-process caches of
parsed experiment files and finished trials, trials created in one step, and what an ask and a
tell cost in SQL statements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from knobflow.service.core import Service, ServiceError
from knobflow.store import Store
from knobflow.tuners import base as tuners_base

EXPERIMENT: dict[str, Any] = {
    "name": "core-demo",
    "runner": "client",
    "objective": {"metric": "throughput", "direction": "maximize"},
    "tunables": [
        {"name": "threads", "layer": "runtime", "type": "int", "low": 1, "high": 64, "default": 8},
        {"name": "heap_mb", "layer": "container", "type": "int", "low": 256, "high": 4096, "step": 256, "default": 512},
        {"name": "ratio", "layer": "runtime", "type": "float", "low": 0.1, "high": 0.9, "default": 0.5},
        {"name": "gc", "layer": "runtime", "type": "categorical", "choices": ["G1", "Parallel"], "default": "G1"},
        {
            "name": "g1_region_mb",
            "layer": "runtime",
            "type": "int",
            "low": 1,
            "high": 32,
            "default": 4,
            "when": {"gc": ["G1"]},
        },
    ],
    "constraints": ["heap_mb >= threads * 32"],
    "tuner": {"name": "tpe", "seed": 3},
    "budget": {"trials": 12, "max_failed": 3},
}


def value_of(p: dict[str, Any]) -> float:
    return p["threads"] * 3.0 - abs(p["heap_mb"] - 2048) / 200 + p["ratio"] + (p["gc"] == "G1")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def _pair(s: Service, name: str) -> dict[str, Any]:
    [t] = s.ask(name)
    return s.tell(name, t["number"], value=value_of(t["params"]))


def test_a_trial_the_service_starts_is_recorded_as_knobflow_run_records_one(url: str) -> None:
    s = Service(url)
    exp = s.create(EXPERIMENT)
    _pair(s, "core-demo")  # the baseline, queued at creation
    [t] = s.ask("core-demo", note="from a test")
    frozen = optuna.load_study(study_name="core-demo", storage=url).trials[t["number"]]
    assert frozen.state == optuna.trial.TrialState.RUNNING
    space = exp.space()
    assert space.problems(frozen.params) == []
    # every active tunable, with the distribution the space gives it, and no inactive one
    expected = {n: d for n, d in space.distributions().items() if n in frozen.params}
    assert frozen.distributions == expected
    assert ("g1_region_mb" in frozen.params) == (frozen.params["gc"] == "G1")
    assert frozen.user_attrs["proposed_by"] == "tpe" and frozen.user_attrs["note"] == "from a test"
    assert isinstance(frozen.user_attrs["started"], float)
    told = s.tell("core-demo", t["number"], value=1.5)
    again = s.trial("core-demo", t["number"])
    assert told == again  # the answer built without reading back is what the store holds
    assert again["state"] == "complete" and again["value"] == 1.5 and again["finished"] is not None


def test_two_service_processes_on_one_store_see_each_others_trials(url: str) -> None:
    one, two = Service(url), Service(url)
    one.create(EXPERIMENT)
    [a] = one.ask("core-demo")
    two.tell("core-demo", a["number"], value=1.0)  # told through the other process
    [b] = one.ask("core-demo")  # one's cache must not still hold trial a as running
    assert b["number"] == a["number"] + 1
    assert one.trial("core-demo", a["number"])["state"] == "complete"
    assert [t["state"] for t in one.trials("core-demo")] == ["complete", "running"]
    one.tell("core-demo", b["number"], value=2.0)
    with pytest.raises(ServiceError) as err:
        two.tell("core-demo", b["number"], value=3.0)
    assert err.value.status == 409 and "already finished" in err.value.message
    for _ in range(4):
        _pair(two if _ % 2 else one, "core-demo")
    numbers = [t["number"] for t in two.trials("core-demo")]
    assert numbers == list(range(6))
    keys = {tuple(sorted(t["params"].items())) for t in one.trials("core-demo")}
    assert len(keys) == 6  # no configuration measured twice across the two processes
    assert one.summary("core-demo")["progress"]["done"] == two.summary("core-demo")["progress"]["done"] == 6


def test_an_experiment_recreated_under_its_name_elsewhere_is_read_afresh(url: str) -> None:
    serving, other = Service(url), Service(url)
    serving.create(EXPERIMENT)
    _pair(serving, "core-demo")
    _pair(serving, "core-demo")
    other.archive("core-demo")
    other.create({**EXPERIMENT, "budget": {"trials": 3}, "tuner": {"name": "random", "seed": 1}})
    summary = serving.summary("core-demo")
    assert summary["budget"]["trials"] == 3 and summary["tuner"] == "random"
    # the new experiment's queued baseline, not the old experiment's trials
    assert [(t["number"], t["state"], t["baseline"]) for t in serving.trials("core-demo")] == [(0, "waiting", True)]
    for _ in range(3):
        _pair(serving, "core-demo")
    with pytest.raises(ServiceError, match="budget spent: 3 of 3"):
        serving.ask("core-demo")


def test_the_per_process_caches_keep_the_experiments_used_last(url: str) -> None:
    s = Service(url, known_limit=2)
    for name in ("e0", "e1", "e2"):
        s.create({**EXPERIMENT, "name": name})
        _pair(s, name)
    ids = {n: s.store.storage.get_study_id_from_name(n) for n in ("e0", "e1", "e2")}
    assert list(s._known) == [ids["e1"], ids["e2"]]
    cached = s.storage._studies  # type: ignore[attr-defined]
    assert ids["e0"] not in cached and ids["e2"] in cached
    _pair(s, "e0")  # forgotten, not broken: read again from the store
    assert [t["number"] for t in s.trials("e0")] == [0, 1]
    assert list(s._known) == [ids["e2"], ids["e0"]]
    s.archive("e2")  # an archived experiment is forgotten at once
    assert list(s._known) == [ids["e0"]] and ids["e2"] not in cached


def test_an_ask_and_a_tell_cost_a_bounded_number_of_sql_statements(url: str) -> None:
    """The service reads each experiment's trials once per ask through a cache of finished trials
    and creates a trial with its parameters in one step. Before, a pair took about 145 statements
    at this point (six full listings of the trials); a pair of raw Optuna ask/suggest/tell, 55."""
    s = Service(url)
    s.create(EXPERIMENT)
    for _ in range(8):
        _pair(s, "core-demo")
    statements: list[str] = []
    engine = s.store.engine
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(3):
        _pair(s, "core-demo")
    per_pair = len(statements) / 3
    assert per_pair <= 55, f"{per_pair:.0f} statements per ask+tell"
    history = optuna.load_study(study_name="core-demo", storage=Store(url).storage).trials
    assert [t.state.name for t in history] == ["COMPLETE"] * 11
    assert len(tuners_base.measured(s.experiment("core-demo").space(), history)) == 11
