"""An experiment run by a real Airflow deployment: LocalExecutor, PostgreSQL everywhere.

Unlike ``knobflow run`` (``dag.test()`` in one process), this is how a deployment runs knobflow:
``airflow api-server``, ``scheduler``, ``dag-processor`` and ``triggerer`` as separate processes on a
PostgreSQL metadata database, the DAG file in ``dags/`` parsed by the dag-processor, the run triggered
and watched only through the public REST API, and the knobflow store in PostgreSQL too (a second
database), as several workers would share it. See tests/airflow_stack.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from knobflow.store import Store
from tests.airflow_stack import (
    airflow_stack,
    check_experiment_run,
    overlapping,
    pg_url,
    postgres_database,
    ti_spans,
    trial_spans,
    write_experiment,
)
from tests.conftest import knobflow

pytestmark = pytest.mark.slow

NAME = "test-af-local"
DAG_ID = f"knobflow_{NAME}"
TRIALS = 3  # given at trigger time (conf); the file's budget says more, so the conf must win


@pytest.mark.timeout(900)
def test_local_executor_runs_an_experiment_triggered_through_the_rest_api(tmp_path: Path) -> None:
    started = time.monotonic()
    with postgres_database("knobflow_store") as store_db:
        storage = pg_url(store_db, "psycopg")
        exp_file = write_experiment(tmp_path / "experiment", NAME, trials=TRIALS + 3, storage=storage)
        home = tmp_path / "knobflow"
        with airflow_stack(
            tmp_path / "stack", executor="LocalExecutor", experiments=exp_file, knobflow_home=home
        ) as stack:
            dag = stack.wait_dag(DAG_ID)
            assert dag["is_paused"], "a new DAG starts paused (dags_are_paused_at_creation)"
            up = time.monotonic()
            run_id = stack.trigger(DAG_ID, {"trials": TRIALS})
            run = stack.wait_run(DAG_ID, run_id, timeout=400)
            ran = time.monotonic()
            assert run["state"] == "success", run
            assert run["conf"]["trials"] == TRIALS

            tis, records = check_experiment_run(stack, DAG_ID, run_id, TRIALS)
            # parallel = 1: one trial after the other, in order; the task instances overlap, since
            # the DAG starts one ahead (standby), which waits for the running trial's host.
            assert sorted(r["number"] for r in records) == list(range(TRIALS))
            assert not overlapping(trial_spans(storage, NAME)), "parallel = 1: one trial after the other"
            assert overlapping(ti_spans(tis)), "the standby trial task started while a trial ran"
            assert all(t["hostname"] for t in tis)
            assert min(records, key=lambda r: r["number"])["params"] == {"x": 2}  # the baseline: the tunable's default

        # The store, read back as a user would: the CLI in another process, and the store itself.
        show = knobflow("show", str(exp_file), "--json", home=home, check=True)
        info = json.loads(show.stdout)
        assert [(t["number"], t["state"]) for t in info["trials"]] == [(n, "complete") for n in range(TRIALS)]
        assert info["baseline"]["trial"] == 0 and info["best"]["value"] == max(r["value"] for r in records)
        best = knobflow("best", str(exp_file), home=home, check=True)
        assert "best trial" in best.stdout, best.stdout
        store = Store(storage)
        got = store.records(NAME)
        store.storage.engine.dispose()
        assert [(r.number, r.state, r.value) for r in got] == sorted(
            (r["number"], "complete", r["value"]) for r in records
        )
        assert not (home / "knobflow.db").exists(), "the store is the PostgreSQL database, not the default SQLite file"
    print(
        f"timings: deployment up and DAG parsed {up - started:.1f} s, run {ran - up:.1f} s, "
        f"total {time.monotonic() - started:.1f} s"
    )
