"""An experiment run by a real Airflow deployment with the CeleryExecutor and two Celery workers.

Redis (a database number of the test's own) is the broker, the PostgreSQL metadata database the
result backend; ``airflow api-server``, ``scheduler`` and ``dag-processor`` run beside two
``airflow celery worker`` processes (concurrency 2 each) that stand for two worker hosts; the knobflow
store is a PostgreSQL database that both workers share. The run is triggered and watched through the
REST API, and each trial task instance's worker is read from it (its ``hostname``: each worker
reports its own name, see ``tests.airflow_stack.hostname``) and checked against the workers' logs.
"""

from __future__ import annotations

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
    trial_spans,
    write_experiment,
)

pytestmark = pytest.mark.slow

# Trials at once: the switch between the two ways this test runs. With 1 (for now) the trials run one
# after another, each on whichever worker takes it, and the test checks that they did not overlap. With
# 2 the experiment gets a pool of two hosts (target.per_trial: one, see write_experiment), the DAG hands
# out two trials at a time, and the test asserts that both workers ran trials and that trials
# overlapped in time.
PARALLEL = 2  # two trials at once, each on its own host of a two-host local inventory
TRIALS = 3
WORKERS = ("worker-a", "worker-b")
CONCURRENCY = 2  # task slots per worker
NAME = "test-af-celery"
DAG_ID = f"knobflow_{NAME}"


@pytest.mark.timeout(900)
def test_celery_executor_spreads_an_experiment_over_two_workers(tmp_path: Path) -> None:
    started = time.monotonic()
    with postgres_database("knobflow_store") as store_db:
        storage = pg_url(store_db, "psycopg")
        exp_file = write_experiment(
            tmp_path / "experiment",
            NAME,
            trials=TRIALS,
            parallel=PARALLEL,
            storage=storage,
            # With trials at once, make each last long enough for the others to start beside it.
            bench_sleep=3 if PARALLEL > 1 else 0,
        )
        home = tmp_path / "knobflow"
        with airflow_stack(
            tmp_path / "stack", executor="CeleryExecutor", experiments=exp_file, knobflow_home=home, triggerer=False
        ) as stack:
            workers = {name: stack.start_celery_worker(name, concurrency=CONCURRENCY) for name in WORKERS}
            stack.wait_celery_workers()
            stack.wait_dag(DAG_ID)
            up = time.monotonic()
            run_id = stack.trigger(DAG_ID, {"trials": TRIALS})
            run = stack.wait_run(DAG_ID, run_id, timeout=400)
            ran = time.monotonic()
            assert run["state"] == "success", run

            tis, records = check_experiment_run(stack, DAG_ID, run_id, TRIALS)
            every_ti = stack.tasks(DAG_ID, run_id)
            ran_on = {f"{t['task_id']}[{t['map_index']}]": t["hostname"] for t in every_ti}
            print(f"task instances by worker: {ran_on}")
            assert set(ran_on.values()) <= set(WORKERS), ran_on
            assert all(t["queue"] == "default" for t in every_ti)
            # The workers' own logs agree: each task instance's workload was executed by the worker
            # the REST API names, and by no other.
            logs = {name: w.log.read_text(errors="replace") for name, w in workers.items()}
            for t in every_ti:
                executed = [name for name, text in logs.items() if t["id"] in text]
                assert executed == [t["hostname"]], (t["task_id"], t["map_index"], t["id"], executed)

            trial_hosts = {t["hostname"] for t in tis}
            if PARALLEL > 1:
                assert trial_hosts == set(WORKERS), f"both workers run trials: {ran_on}"
                assert overlapping(trial_spans(storage, NAME)), "trials ran at the same time"
            else:
                assert sorted(r["number"] for r in records) == list(range(TRIALS))
                assert not overlapping(trial_spans(storage, NAME)), "parallel = 1: one trial after the other"

        store = Store(storage)
        got = store.records(NAME)
        store.storage.engine.dispose()
        assert sorted((r.number, r.state) for r in got) == [(n, "complete") for n in range(TRIALS)]
    print(
        f"timings: deployment up and DAG parsed {up - started:.1f} s, run {ran - up:.1f} s, "
        f"total {time.monotonic() - started:.1f} s; trials on {sorted(trial_hosts)}"
    )
