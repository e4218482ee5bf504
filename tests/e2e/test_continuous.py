"""Continuous tuning end to end: ``knobflow round`` on the SQLite demo target, real ansible-runner on
localhost, the store; the guardrail's restore checked on the target (its config file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow.continuous import ATTR
from knobflow.store import Store
from tests.conftest import REPO, knobflow

pytestmark = pytest.mark.slow


def test_rounds_of_knobflow_round_on_the_sqlite_demo(tmp_path: Path, home: Path) -> None:
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("name: sqlite-demo", "name: test-sqlite-continuous").replace('- "1"', '- "0.2"')
    text = text.replace("repeats: 3", "repeats: 1").replace("name: auto", "name: hybrid")
    text += "mode: continuous\ncontinuous:\n  schedule: '*/30 * * * *'\n  pause_after: 5\n"
    f = tmp_path / "continuous.yaml"
    f.write_text(text)

    outputs = [knobflow("round", str(f), home=home, check=True).stdout for _ in range(4)]
    assert "round 0: measured the baseline" in outputs[0], outputs[0]
    for n, out in enumerate(outputs[1:], start=1):
        assert f"round {n}: predicted" in out and "reward = " in out, out

    # A benchmark that crashes: reward -1, the last good configuration is restored on the target.
    f.write_text(text.replace("knobflow.workloads.sqlite_workload", "knobflow.no_such_workload"))
    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    before = store.load("test-sqlite-continuous").user_attrs[ATTR]
    last = knobflow("round", str(f), home=home, check=True).stdout
    assert "round 4: predicted" in last and "trial 4: failed" in last and "reward = -1" in last, last
    assert "restored the last good configuration" in last, last
    target = json.loads((home / "targets" / "sqlite-demo" / "config.json").read_text())
    good = before["last_good"]
    assert target["batch_size"] == good["batch_size"], (target, good)
    assert {k: target["pragmas"][k] for k in ("journal_mode", "synchronous", "page_size")} == {
        k: good[k] for k in ("journal_mode", "synchronous", "page_size")
    }, (target, good)

    study = store.load("test-sqlite-continuous")
    state = study.user_attrs[ATTR]
    assert state["rounds"] == 5 and state["pending"] is None and state["baseline"] > 0
    # An earlier round may have been bad too on a noisy machine (reward below the floor by chance):
    # the crash adds one to the run of bad rounds, whatever it was.
    assert state["current"] == before["last_good"] and state["bad"] == before["bad"] + 1
    assert [e["round"] for e in state["log"]] == [0, 1, 2, 3, 4]
    assert all(isinstance(e["reward"], float) for e in state["log"][1:])
    trials = store.trials(study)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [TrialState.FAIL]
    assert trials[4].user_attrs["reason"] and state["log"][4]["reward"] == -1.0
    assert trials[0].user_attrs["baseline"] is True
    assert [t.user_attrs.get("continuous_round") for t in trials[1:]] == [1, 2, 3, 4]
    assert "best trial" in knobflow("best", "test-sqlite-continuous", home=home, check=True).stdout
    shown = json.loads(knobflow("show", "test-sqlite-continuous", "--json", home=home, check=True).stdout)
    assert shown["continuous"]["rounds"] == 5 and "tuner" not in shown["continuous"]


DAG_SCRIPT = """
import os, sys
from pathlib import Path
from knobflow import cli
from knobflow.airflow.dag_factory import dag_id_for
home = Path(os.environ["KNOBFLOW_HOME"])
env = cli._airflow_env(home)
os.environ.update(env)
cli._ensure_airflow_db(env, home / "airflow-migrate.log")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags[dag_id_for("test-sqlite-continuous-dag")]
print("tasks", sorted(t.task_id for t in dag.tasks), "tags", sorted(dag.tags), "runs", dag.max_active_runs)
print("schedule", dag.schedule)
for _ in range(2):
    run = dag.test()
    print("state", run.state)
"""


def test_a_continuous_dag_runs_one_round_per_run_and_continues(tmp_path: Path, home: Path) -> None:
    """The DAG of a ``mode: continuous`` file, loaded from dags/ and run twice with ``dag.test()``:
    the first run measures the baseline, the second continues from the persisted state."""
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("name: sqlite-demo", "name: test-sqlite-continuous-dag").replace('- "1"', '- "0.2"')
    text = text.replace("repeats: 3", "repeats: 1").replace("name: auto", "name: hybrid")
    text += "mode: continuous\ncontinuous:\n  schedule: '*/30 * * * *'\n"
    f = tmp_path / "continuous-dag.yaml"
    f.write_text(text)
    env = {**os.environ, "KNOBFLOW_HOME": str(home), "KNOBFLOW_EXPERIMENTS": str(f)}
    proc = subprocess.run(
        [sys.executable, "-c", DAG_SCRIPT, str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tasks ['round'] tags ['continuous', 'knobflow'] runs 1" in proc.stdout, proc.stdout
    assert "schedule */30 * * * *" in proc.stdout, proc.stdout
    assert proc.stdout.count("state success") == 2, proc.stdout + proc.stderr[-3000:]

    study = Store(f"sqlite:///{home / 'knobflow.db'}").load("test-sqlite-continuous-dag")
    state = study.user_attrs[ATTR]
    assert state["rounds"] == 2 and state["pending"] is None
    assert [e["action"] for e in state["log"]] == ["baseline", "predicted"]
    assert isinstance(state["log"][1]["reward"], float) and state["tuner"] is not None
