"""`knobflow run` end to end: Airflow dag.test() on dags/, ansible-runner, the store."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow import spec
from knobflow.store import Store
from tests.conftest import BIN, REPO, knobflow

pytestmark = pytest.mark.slow


def _store(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'knobflow.db'}")


def _trial_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"^trial +\d+", line)]


def _sqlite_fast(tmp_path: Path) -> Path:
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("name: sqlite-demo", "name: test-sqlite-fast").replace('- "1"', '- "0.2"')
    text = text.replace("repeats: 3", "repeats: 1").replace("trials: 20", "trials: 3")
    f = tmp_path / "fast.yaml"
    f.write_text(text)
    return f


def test_run_then_a_larger_budget_adds_trials(tmp_path: Path, home: Path) -> None:
    f = _sqlite_fast(tmp_path)
    proc = knobflow("run", str(f), home=home, check=True)
    lines = _trial_lines(proc.stdout)
    assert len(lines) == 3, proc.stdout
    assert "(baseline)" in lines[0]
    assert "throughput_ops=" in lines[0]
    assert "best: trial" in proc.stdout and "gain over the baseline:" in proc.stdout
    assert "finish: target reverted" in proc.stdout
    # The target is back as it was: no configuration file.
    assert not (home / "targets" / "test-sqlite-fast" / "config.json").exists()
    assert not (home / "targets" / "sqlite-demo" / "config.json").exists()

    # The same budget again: nothing to do, nothing lost.
    again = knobflow("run", str(f), home=home, check=True)
    assert _trial_lines(again.stdout) == []
    assert "resuming experiment test-sqlite-fast: 3 of 3" in again.stdout

    more = knobflow("run", str(f), "--trials", "5", home=home, check=True)
    new = _trial_lines(more.stdout)
    assert [int(line.split()[1]) for line in new] == [3, 4]
    trials = _store(home).trials(_store(home).load("test-sqlite-fast"))
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # parallel = 1: every suggestion was made after the previous trial's result was in.
    for prev, nxt in itertools.pairwise(trials):
        assert nxt.user_attrs["started"] >= prev.user_attrs["finished"]
        assert nxt.datetime_start >= prev.datetime_complete

    best = knobflow("best", "test-sqlite-fast", home=home, check=True)
    assert "best trial" in best.stdout and "gain over the baseline" in best.stdout
    listed = knobflow("list", home=home, check=True)
    assert re.search(r"test-sqlite-fast\s+5\s+0", listed.stdout)

    # XCom: each trial task instance carries its trial.
    af = Path(os.environ["KNOBFLOW_AIRFLOW_HOME"]) / "airflow.db"
    import sqlite3

    rows = (
        sqlite3.connect(af)
        .execute(
            "select rendered_map_index, state from task_instance where dag_id='knobflow_test-sqlite-fast' "
            "and task_id='trial'"
        )
        .fetchall()
    )
    labels = {r[0] for r in rows}
    assert {"trial 0 (baseline)", "trial 1", "trial 2", "trial 3", "trial 4"} <= labels
    xcoms = _trial_xcoms("knobflow_test-sqlite-fast")
    assert sorted(x["number"] for x in xcoms) == [0, 1, 2, 3, 4]
    assert all(x["params"] and x["metrics"]["throughput_ops"] > 0 for x in xcoms)


def _trial_xcoms(dag_id: str) -> list[dict]:
    """The trial records that the trial task instances left in XCom (Airflow's metadata DB)."""
    import json
    import sqlite3

    af = Path(os.environ["KNOBFLOW_AIRFLOW_HOME"]) / "airflow.db"
    rows = (
        sqlite3.connect(af)
        .execute("select value from xcom where dag_id=? and task_id='trial' and key='trial'", (dag_id,))
        .fetchall()
    )
    return [json.loads(r[0]) for r in rows]


def _flaky(exp_dir: Path, **changes: str) -> Path:
    f = exp_dir / "flaky.yaml"
    text = f.read_text()
    for old, new in changes.items():
        text = text.replace(old.replace("_", " "), new) if old not in text else text.replace(old, new)
    f.write_text(text)
    return f


def _enqueue(f: Path, configs: list[dict]) -> None:
    exp = spec.load(f)
    store = Store(exp.storage_url())
    study = store.open(exp)
    for c in configs:
        study.enqueue_trial(c)


def test_failed_trials_are_recorded_with_the_reason_and_the_run_goes_on(exp_dir: Path, home: Path) -> None:
    f = _flaky(exp_dir)
    _enqueue(f, [{"x": 3, "mode": "crash"}, {"x": 4, "mode": "garbage"}, {"x": 7, "mode": "ok"}])
    proc = knobflow("run", str(f), "--trials", "5", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _trial_lines(proc.stdout)
    assert len(lines) == 5
    assert "FAILED" in lines[1] and "exited with status 3" in lines[1] and "boom" in lines[1]
    assert "FAILED" in lines[2] and "printed no metrics" in lines[2]
    assert "score=100" in lines[3]
    recs = {r.number: r for r in _store(home).records("test-flaky")}
    assert recs[1].state == "fail" and "Run the benchmark command" in (recs[1].reason or "")
    assert recs[2].state == "fail" and "printed no metrics" in (recs[2].reason or "")
    assert recs[3].state == "complete" and recs[3].value == 100.0
    assert len(recs) == 5
    best = knobflow("best", str(f), home=home)
    assert "failed trial 1:" in best.stdout and "boom" in best.stdout
    failed_xcom = [x for x in _trial_xcoms("knobflow_test-flaky") if x["number"] == 1]
    assert failed_xcom and failed_xcom[-1]["state"] == "fail" and "boom" in failed_xcom[-1]["reason"]


def test_max_failed_stops_the_experiment_with_a_clear_message(exp_dir: Path, home: Path) -> None:
    f = _flaky(exp_dir)
    _enqueue(f, [{"x": 1, "mode": "crash"}, {"x": 2, "mode": "garbage"}, {"x": 3, "mode": "crash"}])
    proc = knobflow("run", str(f), "--trials", "6", "--max-failed", "2", home=home)
    assert proc.returncode == 1
    lines = _trial_lines(proc.stdout)
    assert len(lines) == 3, proc.stdout  # baseline, crash, garbage: then it stops
    assert "stopped: 2 trials failed, which reaches max_failed=2" in proc.stderr
    recs = _store(home).records("test-flaky")
    assert [r.state for r in recs[:3]] == ["complete", "fail", "fail"]
    assert all(r.state == "waiting" for r in recs[3:])  # the last queued config has not run
    # Nothing recorded is lost, and a higher limit continues the experiment.
    more = knobflow("run", str(f), "--trials", "6", "--max-failed", "5", home=home)
    assert more.returncode == 0, more.stdout + more.stderr
    assert [int(line.split()[1]) for line in _trial_lines(more.stdout)] == [3, 4, 5]


def test_a_killed_run_resumes_the_same_study(exp_dir: Path, home: Path) -> None:
    f = exp_dir / "flaky.yaml"
    f.write_text(f.read_text().replace("max_failed: 10", "max_failed: 10\nvars:\n  bench_sleep: 1.5"))
    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    proc = subprocess.Popen(
        [str(BIN / "knobflow"), "run", str(f)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    store = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if (home / "knobflow.db").exists():
                store = store or _store(home)
                if store.exists("test-flaky"):
                    trials = store.trials(store.load("test-flaky"))
                    done = [t for t in trials if t.state == TrialState.COMPLETE]
                    running = [t for t in trials if t.state == TrialState.RUNNING]
                    if len(done) >= 2 and running:
                        break
        else:
            pytest.fail("the run did not get two trials done in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert store is not None
    before = {t.number: t for t in store.trials(store.load("test-flaky"))}
    killed = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert killed, "a trial was running when the run was killed"

    again = knobflow("run", str(f), home=home)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming experiment test-flaky" in again.stdout
    after = {t.number: t for t in _store(home).trials(_store(home).load("test-flaky"))}
    # Finished trials are kept as they were, the interrupted one is marked so and its config re-run.
    for n, t in before.items():
        if t.state == TrialState.COMPLETE:
            assert after[n].state == TrialState.COMPLETE and after[n].value == t.value
    k = killed[0]
    assert after[k].state == TrialState.FAIL and after[k].user_attrs["interrupted"] is True
    assert "interrupted" in after[k].user_attrs["reason"]
    rerun = [t for t in after.values() if t.user_attrs.get("requeued_from") == k]
    assert len(rerun) == 1 and rerun[0].params == before[k].params and rerun[0].state.is_finished()
    counted = [t for t in after.values() if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 6  # the budget, not one more, not one less
