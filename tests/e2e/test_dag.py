"""The DAG files in dags/ as Airflow loads them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import DATA, REPO


def test_dagbag_loads_without_errors_and_has_the_trial_structure() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["knobflow_sqlite-demo"]
    assert {t.task_id for t in dag.tasks} == {"prepare", "trial", "finish"}
    trial = dag.get_task("trial")
    # One mapped task instance per trial, labelled with the trial number, one trial at a time, and
    # a second task instance started ahead: it waits for the running trial's host (standby).
    assert type(trial).__name__.endswith("MappedOperator")
    assert "knobflow_trial_label" in (trial.map_index_template or "")
    assert trial.max_active_tis_per_dagrun == 2
    assert dag.get_task("prepare").downstream_task_ids == {"trial"}
    assert dag.get_task("finish").upstream_task_ids == {"trial"}
    assert dag.get_task("finish").trigger_rule == "all_done"
    assert dag.max_active_runs == 1 and dag.schedule is None
    assert set(dag.params) == {"trials", "max_failed", "tuner", "parallel", "hosts", "dry_run", "note"}


def test_a_broken_experiment_file_is_skipped_and_the_rest_load(tmp_path) -> None:
    """$KNOBFLOW_EXPERIMENTS may name a broken file: it is logged, the others still load."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "print(sorted(b.dags), b.import_errors)\n"
    )
    env = {
        **os.environ,
        "KNOBFLOW_EXPERIMENTS": os.pathsep.join(
            [str(DATA / "bad_specs" / "zero_trials.yaml"), str(DATA / "experiments" / "flaky.yaml")]
        ),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'knobflow_sqlite-demo'" in out.stdout and "'knobflow_test-flaky'" in out.stdout
    assert "{}" in out.stdout  # no import error: the bad file is reported in the log instead
    assert "budget.trials" in out.stdout + out.stderr


def test_a_task_process_builds_only_the_dag_it_runs() -> None:
    """Airflow tells a task's process which DAG it parses the file for: the others are not built
    (nor validated), which saves every trial task seconds."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(REPO / 'dags' / 'knobflow_experiments.py')!r})\n"
        "print(sorted(b.dags))\n"
    )
    env = {
        **os.environ,
        "_AIRFLOW_PARSING_CONTEXT_DAG_ID": "knobflow_test-flaky",
        "KNOBFLOW_EXPERIMENTS": str(DATA / "experiments" / "flaky.yaml"),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "['knobflow_test-flaky']"
    env.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "'knobflow_sqlite-demo'" in out.stdout and "'knobflow_test-flaky'" in out.stdout
