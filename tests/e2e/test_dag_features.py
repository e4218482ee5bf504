"""The generated DAGs' trigger form, knobflow's operators in DAGs of one's own (dags/example_*),
retried trial tasks, dry runs and the best-configuration Asset, under Airflow's dag.test()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from knobflow import spec
from knobflow.store import Store
from tests.conftest import DATA, REPO


def _bag(folder: Path, monkeypatch: pytest.MonkeyPatch, experiments: list[Path] | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if experiments is not None:
        monkeypatch.setenv("KNOBFLOW_EXPERIMENTS", ":".join(str(p) for p in experiments))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag


PARSE_FOR_A_TASK = (
    "import json, sys\n"
    "from airflow.dag_processing.dagbag import DagBag\n"
    "from airflow.sdk.definitions.param import ParamsDict\n"
    "bag = DagBag(dag_folder=sys.argv[1])\n"
    "dag = bag.dags['knobflow_test-pool']\n"
    "params = ParamsDict(dict(dag.params.items()))\n"
    "params.update(json.loads(sys.argv[2]))\n"
    "params.validate()\n"
    "print(json.dumps({'dags': sorted(bag.dags), 'errors': bag.import_errors,\n"
    "    'enums': sorted(n for n in dag.params if 'enum' in dag.params.get_param(n).schema),\n"
    "    'inventory_read': 'ansible.inventory.manager' in sys.modules}))\n"
)


def test_a_task_process_parses_only_its_dag_and_skips_the_forms_choices(tmp_path: Path) -> None:
    """Airflow parses the DAG file again in each task's process (every trial): there the file builds
    only the task's DAG, and the form keeps its types and bounds but not the choices that cost time
    (reading the inventory, checking every tuner); the run's values, checked by the full form when
    the run was triggered, still validate."""
    conf = {"parallel": 2, "hosts": "h2", "tuner": "tpe", "trials": 9}
    env = {**os.environ, "KNOBFLOW_EXPERIMENTS": str(DATA / "experiments" / "pool.yaml")}
    runs = {}
    for who, extra in {
        "dag-processor": {},
        "task": {"_AIRFLOW_PARSING_CONTEXT_DAG_ID": "knobflow_test-pool", "_AIRFLOW_PARSING_CONTEXT_TASK_ID": "trial"},
    }.items():
        out = subprocess.run(
            [sys.executable, "-c", PARSE_FOR_A_TASK, str(REPO / "dags"), json.dumps(conf)],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        runs[who] = json.loads(out.stdout.strip().splitlines()[-1])
    full, task = runs["dag-processor"], runs["task"]
    assert full["errors"] == task["errors"] == {}
    assert {"knobflow_sqlite-demo", "knobflow_test-pool"} <= set(full["dags"])
    assert [d for d in task["dags"] if d.startswith("knobflow_")] == ["knobflow_test-pool"]
    assert full["enums"] == ["hosts", "tuner"] and full["inventory_read"]
    assert task["enums"] == [] and not task["inventory_read"]


def test_the_trigger_form_refuses_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    bag = _bag(REPO / "dags", monkeypatch, [DATA / "experiments" / "pool.yaml"])
    pool, demo = bag.dags["knobflow_test-pool"], bag.dags["knobflow_sqlite-demo"]

    def check(dag, conf: dict) -> None:
        params = ParamsDict(dict(dag.params.items()))
        params.update(conf)
        params.validate()

    for good in ({}, {"trials": 8, "parallel": 2, "hosts": "h2", "tuner": "tpe", "note": "x", "dry_run": True}):
        check(pool, good)
    bad = [
        {"parallel": 3},  # two hosts in the pool
        {"parallel": 0},
        {"tuner": "no-such-tuner"},
        {"hosts": "no-such-group"},
        {"trials": 0},
        {"trials": "ten"},
        {"max_failed": -1},
        {"dry_run": "yes"},
        {"note": "x" * 501},
    ]
    for conf in bad:
        with pytest.raises(ParamValidationError):
            check(pool, conf)
    # sqlite-demo runs each trial on all its hosts (per_trial: all): one trial at a time.
    with pytest.raises(ParamValidationError):
        check(demo, {"parallel": 2})
    assert demo.params.get_param("parallel").schema["maximum"] == 1
    assert pool.params.get_param("parallel").schema["maximum"] == 2
    assert set(pool.params.get_param("hosts").schema["enum"]) >= {None, "pool", "h1", "h2"}
    # The generated DAG's trial tasks may run as many at once as the pool has hosts.
    # ... plus one standby trial task, started ahead and waiting for a host (its start-up overlaps).
    assert pool.get_task("trial").max_active_tis_per_dagrun == 3
    # The dag-processor sends each DAG to the scheduler through a serialiser that refuses str
    # subclasses: the form's choices, read with Ansible (whose strings are its own tagged type), must
    # be plain str (dag.test() never takes this path; a real dag-processor dropped the DAG).
    from airflow.serialization.serialized_objects import DagSerialization

    for dag in (pool, demo):
        for name in dag.params:
            for value in dag.params.get_param(name).schema.get("enum", []):
                assert type(value) in (str, type(None)), (name, type(value))
        json.dumps(DagSerialization.to_dict(dag))


DAG_TEST = """
import json, os, sys
from pathlib import Path
from knobflow import cli
home = Path(os.environ["KNOBFLOW_HOME"])
env = cli._airflow_env(home)
env["AIRFLOW__CORE__DAGS_FOLDER"] = sys.argv[1]
os.environ.update(env)
cli._ensure_airflow_db(env, home / "airflow-migrate.log")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags[sys.argv[2]].test(run_conf=json.loads(sys.argv[3]))
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
from sqlalchemy import select
with create_session() as session:
    events = [
        dict(e.extra)
        for e in session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)).all()
        if e.asset.uri.startswith("knobflow://")
    ]
tis = [[ti.task_id, ti.map_index, str(ti.state), ti.try_number] for ti in run.get_task_instances()]
print("RESULT " + json.dumps({"state": str(run.state), "tis": tis, "events": events}, default=str))
"""


def _dag_test(folder: Path, dag_id: str, home: Path, conf: dict | None = None, **env: str) -> dict:
    """Run one DAG with dag.test() in a fresh process (its own embedded Airflow under ``home``)."""
    full = {**os.environ, "KNOBFLOW_HOME": str(home), **env}
    full.pop("KNOBFLOW_AIRFLOW_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", DAG_TEST, str(folder), dag_id, json.dumps(conf or {})],
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_retried_trial_tasks_never_report_a_trial_twice(home: Path) -> None:
    """Every trial task of tests/data/dags/knobflow_retry_test_dag.py fails once after its trial was
    recorded, and Airflow retries it: the retries return the recorded trials and run nothing."""
    out = _dag_test(DATA / "dags", "knobflow_retry_test", home)
    tasks = {i: (state, tries) for t, i, state, tries in out["tis"] if t == "knobflow.trial"}
    assert sorted(tasks) == [0, 1, 2]
    exp = spec.load(DATA / "experiments" / "pool.yaml")
    records = Store(exp.storage_url()).records(exp.name)
    assert sorted(r.number for r in records) == [0, 1, 2]  # three trials, none twice
    intervals = (home / "bench-intervals.log").read_text().splitlines()
    assert sum(line.startswith("start") for line in intervals) == 3  # three benchmarks ran, not six
    by_slot = {int(r.attrs["slot"].split("#")[1]): r for r in records}
    assert sorted(by_slot) == [0, 1, 2]
    for slot, (state, tries) in tasks.items():
        if by_slot[slot].state == "complete":
            # Failed once after the trial was recorded, retried, and the retry returned the recorded trial.
            assert (state, tries) == ("success", 2), (slot, state, tries)
        else:
            # A failed trial fails its task for good (AirflowFailException): a retry would not run it again.
            assert (state, tries) == ("failed", 1), (slot, state, tries)
    assert any(r.state == "complete" for r in records)


def test_the_composed_example_dag_dry_runs_tunes_and_publishes_the_best(home: Path) -> None:
    out = _dag_test(REPO / "dags", "example_knobflow_composed", home, KNOBFLOW_EXPERIMENTS="")
    states = {(t, i): s for t, i, s, _ in out["tis"]}
    assert states[("dry_run", -1)] == "success"
    assert states[("tune.finish", -1)] == "success" and states[("report", -1)] == "success"
    assert [s for (t, _), s in states.items() if t == "tune.trial"] == ["success"] * 4
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    records = Store(exp.storage_url()).records(exp.name)
    assert len(records) == 4 and all(r.attrs.get("note") == "example_knobflow_composed" for r in records)
    # The finish step published the best configuration as an Asset event other DAGs are scheduled on.
    top = max((r for r in records if r.state == "complete"), key=lambda r: r.value or 0)
    [event] = out["events"]
    assert event["experiment"] == "sqlite-demo" and event["trial"] == top.number
    assert event["params"] == top.params


def test_a_dry_run_of_the_generated_dag_changes_and_records_nothing(home: Path) -> None:
    pool = DATA / "experiments" / "pool.yaml"
    out = _dag_test(REPO / "dags", "knobflow_test-pool", home, {"dry_run": True}, KNOBFLOW_EXPERIMENTS=str(pool))
    states = {t: s for t, i, s, _ in out["tis"] if i < 0}
    assert states["prepare"] == "success" and states["finish"] == "skipped"
    exp = spec.load(pool)
    assert not Store(exp.storage_url()).exists(exp.name)
    assert not list(home.glob("target-*"))
    assert out["events"] == []


def test_promote_adds_an_approval_step_except_under_knobflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (DATA / "experiments" / "pool.yaml").read_text().replace("name: test-pool", "name: test-pool-promote")
    f = DATA / "experiments" / "pool.yaml"
    promoted = tmp_path / "pool-promote.yaml"
    promoted.write_text(text + "promote:\n  hosts: h2\n")
    for name in ("pool-inventory.yml", "pool_bench.py"):
        (tmp_path / name).write_text((f.parent / name).read_text())
    (tmp_path / "roles").symlink_to(f.parent / "roles")
    dag = _bag(REPO / "dags", monkeypatch, [promoted]).dags["knobflow_test-pool-promote"]
    assert dag.get_task("approve").downstream_task_ids == {"promote"}
    assert dag.get_task("finish").downstream_task_ids == {"approve"}
    assert type(dag.get_task("approve")).__name__ == "ApprovalOperator"
    # `knobflow run` drives the DAG with dag.test(): nobody could approve, so no approval step.
    monkeypatch.setenv("KNOBFLOW_DRIVER", "cli")
    dag = _bag(REPO / "dags", monkeypatch, [promoted]).dags["knobflow_test-pool-promote"]
    assert {t.task_id for t in dag.tasks} == {"prepare", "trial", "finish"}


def test_a_tuner_chosen_at_trigger_time_does_not_inherit_the_files_tuner_options(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from knobflow.airflow.operators import KnobflowPrepareOperator

    f = tmp_path / "sqlite-demo.yaml"
    f.write_text((REPO / "experiments" / "sqlite-demo.yaml").read_text() + "\n")
    text = f.read_text()
    assert "  name: auto\n" in text
    f.write_text(text.replace("  name: auto\n", "  name: auto\n  options: {n_init: 2}\n"))
    assert spec.load(f).model.tuner.options == {"n_init": 2}
    same = KnobflowPrepareOperator(task_id="p", experiment=str(f), tuner="auto")
    other = KnobflowPrepareOperator(task_id="q", experiment=str(f), tuner="random")
    assert "tuner.options" not in same.overrides()
    assert other.overrides() == {"tuner.name": "random", "tuner.options": {}}
    assert other.load_experiment().model.tuner.options == {}  # auto's n_init would be refused by random
    bad = KnobflowPrepareOperator(task_id="r", experiment=str(f), parallel=2)
    with pytest.raises(AirflowFailException, match=r"parallel.*set by the run's parameters: parallel = 2"):
        bad.load_experiment()


def test_only_a_failed_stop_fails_the_experiment() -> None:
    from knobflow import engine

    for planned in ("budget spent: 5 of 5", "time limit reached: ...", "target reached: best 9", "patience exhausted"):
        assert not engine.failed_stop(planned)
    for failed in ("stopped: 5 trials failed, which reaches max_failed=5", "set-up failed: x", "stopped: no config"):
        assert engine.failed_stop(failed)
    assert not engine.failed_stop(None)
