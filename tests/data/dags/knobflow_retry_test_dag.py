"""A test DAG (loaded by tests/e2e/test_dag_features.py): the pool experiment's trials with Airflow
retries, each trial task failing once *after* its trial was recorded (as a worker lost between the
tell and the task's success would), so that every trial task is retried."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from knobflow.airflow.operators import knobflow_experiment

EXPERIMENT = str(Path(__file__).resolve().parent.parent / "experiments" / "pool.yaml")


def fail_the_first_try(context: Any, result: Any) -> None:
    if context["ti"].try_number == 1:
        raise RuntimeError("the worker was lost after the trial was recorded (simulated by the test DAG)")


with DAG(dag_id="knobflow_retry_test", schedule=None, catchup=False) as dag:
    knobflow_experiment(
        EXPERIMENT,
        experiment_name="test-pool",
        max_parallel=2,
        trials=3,
        trial_retries=1,
        trial_kwargs={"retry_delay": timedelta(seconds=0), "post_execute": fail_the_first_try},
    )
