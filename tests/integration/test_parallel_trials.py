"""Parallel trials over a pool of hosts, retried trial slots, killed trials, dry run and promote,
through the engine with real Ansible runs (tests/data/experiments/pool.yaml: two local "hosts")."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from knobflow import engine, spec
from knobflow.leases import host_key
from knobflow.store import Store

pytestmark = pytest.mark.slow


def _pool(exp_dir: Path, **changes: object) -> Path:
    """tests/data/experiments/pool.yaml with ``changes`` (dotted paths) applied, as a new file."""
    data = yaml.safe_load((exp_dir / "pool.yaml").read_text())
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    out = exp_dir / f"pool-{abs(hash(json.dumps(changes, sort_keys=True, default=str))) % 10**8}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _intervals(home: Path) -> list[tuple[str, int, float, float | None]]:
    """(host, pid, start, end or None) of every benchmark run, from pool_bench.py's log."""
    log = home / "bench-intervals.log"
    if not log.exists():
        return []
    starts: dict[int, tuple[str, float]] = {}
    out = []
    for line in log.read_text().splitlines():
        what, host, pid, t = line.split()
        if what == "start":
            starts[int(pid)] = (host, float(t))
        else:
            h, s = starts.pop(int(pid))
            out.append((h, int(pid), s, float(t)))
    out += [(h, pid, s, None) for pid, (h, s) in starts.items()]
    return out


TRIAL = (
    "import sys, json\n"
    "from knobflow import engine, spec\n"
    "exp = spec.load(sys.argv[1], overrides=json.loads(sys.argv[2]))\n"
    "slot = sys.argv[3] if len(sys.argv) > 3 else None\n"
    "try:\n"
    "    r = engine.run_trial(exp, engine.limits(exp), slot=slot, on_line=lambda s: print(s, file=sys.stderr))\n"
    "    print(json.dumps(r.as_dict(), default=str))\n"
    "except engine.ExperimentStopped as e:\n"
    "    print(json.dumps({'stopped': str(e)}))\n"
)


def _trial_process(path: Path, overrides: dict | None = None, slot: str | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", TRIAL, str(path), json.dumps(overrides or {})] + ([slot] if slot else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_workers(path: Path, workers: int, trials: int, overrides: dict | None = None) -> list[dict]:
    """``workers`` worker threads, each starting trial processes until ``trials`` have been started."""
    started = 0
    lock = threading.Lock()
    results: list[dict] = []

    def worker() -> None:
        nonlocal started
        while True:
            with lock:
                if started >= trials:
                    return
                started += 1
            p = _trial_process(path, overrides)
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
            with lock:
                results.append(json.loads(out.strip().splitlines()[-1]))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _overlaps(spans: list[tuple[str, int, float, float | None]]) -> list[tuple]:
    """Pairs of benchmark runs on the same host that overlapped in time."""
    bad = []
    for i, (h1, _, s1, e1) in enumerate(spans):
        for h2, _, s2, e2 in spans[i + 1 :]:
            if h1 == h2 and s1 < (e2 or float("inf")) and s2 < (e1 or float("inf")):
                bad.append((h1, s1, e1, s2, e2))
    return bad


def _benchmark_running(proc: subprocess.Popen[str], home: Path) -> tuple[str, int]:
    """Wait until the trial process ``proc`` runs its benchmark, the first one logged; (host, benchmark pid)."""
    deadline = time.monotonic() + 180
    while not _intervals(home):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the benchmark never started"
        time.sleep(0.2)
    [(host, bench_pid, _, _)] = _intervals(home)
    return host, bench_pid


def _killed_mid_benchmark(path: Path, home: Path) -> tuple[str, int, int]:
    """Start a trial process (slot run-1#0), SIGKILL it once its benchmark runs; (host, benchmark
    pid, trial process pid)."""
    proc = _trial_process(path, slot="run-1#0")
    host, bench_pid = _benchmark_running(proc, home)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return host, bench_pid, proc.pid


def test_parallel_2_runs_two_trials_at_once_one_per_host(home: Path, exp_dir: Path) -> None:
    # Benchmarks long enough (8 s) to overlap although each trial's Ansible start-up takes its own time.
    path = _pool(exp_dir, **{"vars.bench_sleep": 8})
    results = _run_workers(path, workers=3, trials=4)  # three workers compete for two hosts
    assert sorted(r["number"] for r in results) == list(range(4))
    assert all((r["state"] == "complete") == (r["params"]["mode"] == "ok") for r in results), [
        (r["params"], r["reason"]) for r in results
    ]
    spans = _intervals(home)
    assert len(spans) == 4 and all(end is not None for *_, end in spans)
    assert not _overlaps(spans), "a host ran two benchmarks at once"
    assert {h for h, *_ in spans} == {"h1", "h2"}
    # The two hosts did work at the same time (that is the point of parallel trials).
    assert any(h1 != h2 and s1 < e2 and s2 < e1 for h1, _, s1, e1 in spans for h2, _, s2, e2 in spans if e1 and e2), (
        spans
    )
    # Each trial records the host it ran on; the lease table is empty afterwards.
    exp = spec.load(path)
    store = Store(exp.storage_url())
    records = store.records(exp.name)
    assert sorted(r.attrs["targets"][0] for r in records) == sorted(h for h, *_ in spans)
    assert engine._leases(store).held() == []


def test_parallel_1_runs_one_trial_at_a_time_whatever_the_workers(home: Path, exp_dir: Path) -> None:
    """The run's ``parallel`` (1 here, a trigger parameter) bounds the trials in flight through the
    experiment's slot leases, even with two hosts free and two workers asking."""
    path = _pool(exp_dir, **{"vars.bench_sleep": 1})
    results = _run_workers(path, workers=2, trials=4, overrides={"parallel": 1})
    assert sorted(r["number"] for r in results) == list(range(4))
    spans = sorted(_intervals(home), key=lambda s: s[2])
    assert len(spans) == 4
    for (_, _, _, end), (_, _, start, _) in itertools.pairwise(spans):
        assert end is not None and start >= end, "two trials ran at once with parallel 1"


def test_a_retried_slot_returns_its_finished_trial_and_runs_nothing(home: Path, exp_dir: Path) -> None:
    ok = _pool(exp_dir, **{"vars.bench_sleep": 0})
    exp = spec.load(ok)
    first = engine.run_trial(exp, engine.limits(exp), slot="run-1#0")
    again = engine.run_trial(exp, engine.limits(exp), slot="run-1#0")
    assert (first.number, first.replayed) == (0, False)
    assert (again.number, again.replayed, again.state, again.value) == (0, True, "complete", first.value)
    assert len(Store(exp.storage_url()).records(exp.name)) == 1
    assert len(_intervals(home)) == 1  # the benchmark ran once
    other = engine.run_trial(exp, engine.limits(exp), slot="run-1#1")
    assert (other.number, other.replayed) == (1, False)


def test_a_retried_slot_of_a_failed_trial_fails_again_without_running(home: Path, exp_dir: Path) -> None:
    crash = _pool(exp_dir, **{"vars.bench_sleep": 0})
    data = yaml.safe_load(crash.read_text())
    data["tunables"][1]["default"] = "crash"  # the baseline crashes
    crash.write_text(yaml.safe_dump(data))
    exp = spec.load(crash)
    first = engine.run_trial(exp, engine.limits(exp), slot="run-1#0")
    again = engine.run_trial(exp, engine.limits(exp), slot="run-1#0")
    assert first.state == "fail" and "boom" in (first.reason or "") + json.dumps(first.metrics)
    assert (again.number, again.state, again.replayed, again.reason) == (0, "fail", True, first.reason)
    store = Store(exp.storage_url())
    assert store.progress(store.load(exp.name)).failed == 1
    assert len(_intervals(home)) == 1


def test_a_killed_trial_is_failed_with_its_reason_its_host_reverted_and_run_again(home: Path, exp_dir: Path) -> None:
    """SIGKILL the process running a trial mid-benchmark; the next run (a retry of the same slot)
    fails it as interrupted, reverts its host, and runs its configuration again."""
    path = _pool(exp_dir, **{"vars.bench_sleep": 20})
    host, bench_pid, pid = _killed_mid_benchmark(path, home)
    assert (home / f"target-{host}.json").exists()  # the configuration was applied
    exp = spec.load(path)
    store = Store(exp.storage_url())
    held = engine._leases(store).held()  # still in the table, but their holder is dead
    assert {lease.key for lease in held} == {host_key(host), "slot:test-pool:0"}
    assert {lease.holder["pid"] for lease in held} == {pid}
    retry = engine.run_trial(exp, engine.limits(exp), slot="run-1#0")  # the retried task
    [killed, *_] = store.records(exp.name)
    assert killed.state == "fail" and killed.interrupted
    assert "interrupted: the process running it" in (killed.reason or "")
    assert f"target {host} reverted" in (killed.reason or "")
    # The playbook run the killed process left behind (ansible-runner's child ignores SIGHUP) was
    # stopped before the revert: its benchmark never finished behind the next trial's back.
    assert "its playbook run left running" in (killed.reason or "")
    assert [end for _, pid, _, end in _intervals(home) if pid == bench_pid] == [None]
    # The retry ran the interrupted configuration (the baseline) again, as a new trial.
    assert retry.number == 1 and not retry.replayed and retry.baseline and retry.state == "complete"
    assert retry.params == killed.params
    p = store.progress(store.load(exp.name))
    assert (p.done, p.failed) == (1, 0)  # an interrupted trial counts neither toward the budget nor as failed


def test_a_trial_waiting_when_the_running_one_is_killed_cleans_up_before_it_runs(home: Path, exp_dir: Path) -> None:
    """The generated DAG starts a trial task ahead (standby), which waits in place() for the running
    trial's slot. When the running trial's process is SIGKILLed, the waiting one takes its place only
    after stopping the playbook run the dead one left and reverting its host: the dead trial is
    failed with that reason before the new benchmark starts, never after."""
    path = _pool(exp_dir, **{"vars.bench_sleep": 30})
    first = _trial_process(path, overrides={"parallel": 1}, slot="run-1#0")
    host, bench_pid = _benchmark_running(first, home)
    waiting = _trial_process(path, overrides={"parallel": 1}, slot="run-1#1")
    time.sleep(8)  # past its start-up and recovery check: it is waiting for the slot now
    assert waiting.poll() is None
    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.time()
    first.wait(timeout=30)
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert "waiting for a trial slot: all 1 of the experiment's (parallel 1) are running trials" in err
    result = json.loads(out.strip().splitlines()[-1])
    exp = spec.load(path)
    store = Store(exp.storage_url())
    [killed, *_] = store.records(exp.name)
    assert killed.state == "fail" and killed.interrupted
    assert "its playbook run left running" in (killed.reason or "") and f"target {host} reverted" in (
        killed.reason or ""
    )
    # The dead trial's benchmark was stopped (never ended); the waiting trial's ran after the kill.
    spans = _intervals(home)
    assert [end for _, pid, _, end in spans if pid == bench_pid] == [None]
    [(_, _, start, end)] = [s for s in spans if s[1] != bench_pid]
    assert start > killed_at and end is not None
    assert result["number"] == 1 and result["state"] == "complete"
    assert engine._leases(store).held() == []


def test_a_dead_trial_is_recovered_once_by_the_trial_that_took_its_host(home: Path, exp_dir: Path) -> None:
    """Two processes may find the same dead trial: the one holding its host (a trial placed there,
    which recovers before it runs) does the revert; any other leaves the trial to it rather than
    recording "not reverted" for a host that is about to be reverted."""
    path = _pool(exp_dir, **{"vars.bench_sleep": 20})
    host, _, _ = _killed_mid_benchmark(path, home)
    exp = spec.load(path)
    store, study = engine.open_study(exp)
    leases = engine._leases(store)
    # A trial of this experiment took the host (as place() does once the holder is dead).
    token = leases.try_acquire([host_key(host)], {"experiment": exp.name})
    assert token is not None
    assert engine.recover(exp, store, study) == []  # another process: leaves it to the holder
    [t] = store.records(exp.name)
    assert t.state == "running"
    assert engine.recover(exp, store, study, held=[host]) == [0]  # the holder
    [t, _queued] = store.records(exp.name)
    assert t.state == "fail" and "its playbook run left running" in (t.reason or "")
    assert f"target {host} reverted" in (t.reason or "")
    leases.release(token)


def test_a_dead_trials_host_held_by_another_experiment_is_named_and_left_alone(home: Path, exp_dir: Path) -> None:
    path = _pool(exp_dir, **{"vars.bench_sleep": 20})
    host, _, _ = _killed_mid_benchmark(path, home)
    exp = spec.load(path)
    store, study = engine.open_study(exp)
    leases = engine._leases(store)
    token = leases.try_acquire([host_key(host)], {"experiment": "other-exp", "why": "finish"})
    assert token is not None
    assert engine.recover(exp, store, study) == [0]
    [t, *_] = store.records(exp.name)
    assert t.state == "fail" and t.interrupted
    assert f"target {host} not reverted: another process holds it now (experiment other-exp, finish)" in (
        t.reason or ""
    )
    leases.release(token)


def test_hosts_held_elsewhere_make_a_trial_wait_then_give_up_naming_them(home: Path, exp_dir: Path) -> None:
    exp = spec.load(_pool(exp_dir))
    store, study = engine.open_study(exp)
    leases = engine._leases(store)
    token = leases.try_acquire([host_key("h1"), host_key("h2")], {"experiment": "other-exp", "trial": 7})
    assert token is not None
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(engine.HostsBusy, match="no target host of 'pool' became free in 1 s"):
        engine.place(exp, store, study, parallel=2, wait_s=1, on_line=lines.append)
    assert time.monotonic() - t0 < 30
    assert "h1 (experiment other-exp, a trial for " in lines[0] and "h2 (experiment other-exp" in lines[0]
    leases.release(token)
    placed = engine.place(exp, store, study, parallel=2, wait_s=1)
    assert placed.hosts == ["h1"] and placed.pattern == "h1"


def test_a_host_whose_trials_fail_goes_last() -> None:
    class T:
        def __init__(self, number: int, state: str, host: str):
            from optuna.trial import TrialState

            self.number, self.state = number, TrialState[state]
            self.user_attrs = {"targets": [host]}

    history = [T(0, "COMPLETE", "h1"), T(1, "FAIL", "h1"), T(2, "COMPLETE", "h2"), T(3, "FAIL", "h1")]
    assert engine._host_order(["h1", "h2"], history) == ["h2", "h1"]
    assert engine._host_order(["h1", "h2"], history[:1]) == ["h1", "h2"]


def test_dry_run_checks_the_target_and_records_nothing(home: Path, exp_dir: Path) -> None:
    exp = spec.load(_pool(exp_dir))
    report = engine.dry_run(exp)
    assert report.ok, report.lines
    text = "\n".join(report.lines)
    assert "target hosts (pool, per trial: one): h1, h2" in text
    assert "no study yet" in text and "nothing was changed and nothing was recorded" in text
    assert not (home / "knobflow.db").exists()  # not even the store was created
    assert not list(home.glob("target-*"))  # check mode changed nothing
    broken = spec.load(_pool(exp_dir), overrides={"target.hosts": "nosuch"})
    bad = engine.dry_run(broken)
    assert not bad.ok and "nosuch" in (bad.problem or "")


def test_promote_applies_the_best_configuration_to_the_promote_hosts_only(home: Path, exp_dir: Path) -> None:
    path = _pool(exp_dir, **{"vars.bench_sleep": 0, "promote.hosts": "h2", "finish": "revert"})
    exp = spec.load(path)
    for _ in range(4):
        engine.run_trial(exp, engine.limits(exp))
    engine.finish(exp, engine.limits(exp))
    assert not (home / "target-h2.json").exists()  # reverted at the finish
    summary = engine.summarize(exp)
    applied = engine.promote(exp)
    assert applied["hosts"] == ["h2"] and applied["trial"] == summary.best.number
    on_target = json.loads((home / "target-h2.json").read_text())
    assert on_target == summary.best.params
    assert not (home / "target-h1.json").exists()
    study = Store(exp.storage_url()).load(exp.name)
    assert study.user_attrs["promoted"][-1]["trial"] == summary.best.number


def test_promote_without_a_completed_trial_applies_nothing(home: Path, exp_dir: Path) -> None:
    exp = spec.load(_pool(exp_dir, **{"promote.hosts": "h2"}))
    engine.open_study(exp)
    with pytest.raises(engine.PromoteFailed, match="no completed feasible trial"):
        engine.promote(exp)
    assert not list(home.glob("target-*"))


def test_a_trial_stopped_by_the_tasks_execution_timeout_is_failed_not_requeued(home: Path, exp_dir: Path) -> None:
    """Airflow stops a task past its execution_timeout by raising AirflowTaskTimeout (a BaseException)
    inside it: the trial failed (it counts toward max_failed); it is not an interruption to re-run."""
    from airflow.sdk.exceptions import AirflowTaskTimeout

    exp = spec.load(_pool(exp_dir, **{"vars.bench_sleep": 30}))

    def line(text: str) -> None:
        if "Run the benchmark command" in text:
            raise AirflowTaskTimeout("Timeout, PID: 1")

    with pytest.raises(AirflowTaskTimeout):
        engine.run_trial(exp, engine.limits(exp), on_line=line)
    store = Store(exp.storage_url())
    [trial] = store.records(exp.name)
    assert trial.state == "fail" and not trial.interrupted
    assert "timed out (the task's execution_timeout)" in (trial.reason or "")
    p = store.progress(store.load(exp.name))
    assert (p.failed, p.waiting) == (1, 0)  # counted, and not queued to run again
    assert engine._leases(store).held() == []


def test_holding_hosts_waits_for_a_trial_elsewhere_and_gives_up_naming_the_hosts(home: Path, exp_dir: Path) -> None:
    exp = spec.load(_pool(exp_dir))
    store, _ = engine.open_study(exp)
    leases = engine._leases(store)
    token = leases.try_acquire([host_key("h1")], {"experiment": "other"})
    with (
        pytest.raises(engine.HostsBusy, match="hosts h1, h2 stayed busy"),
        engine.holding_hosts(exp, store, ["h1", "h2"], why="finish", wait_s=1),
    ):
        pass
    leases.release(token)
    with engine.holding_hosts(exp, store, ["h1", "h2"], why="finish", wait_s=1):
        assert {lease.holder["why"] for lease in leases.held()} == {"finish"}
    assert leases.held() == []


def test_knobflow_promote_applies_the_best_after_confirmation(home: Path, exp_dir: Path) -> None:
    from tests.conftest import knobflow

    path = _pool(exp_dir, **{"vars.bench_sleep": 0, "promote.hosts": "h1"})
    exp = spec.load(path)
    for _ in range(3):
        engine.run_trial(exp, engine.limits(exp))
    refused = knobflow("promote", str(path), home=home)  # no terminal to ask on, no --yes
    assert refused.returncode != 0 and "--yes" in refused.stderr
    engine.finish(exp, engine.limits(exp))  # reverts: nothing is left on the hosts
    assert not list(home.glob("target-*"))
    done = knobflow("promote", str(path), "--yes", "--hosts", "h2", home=home)
    assert done.returncode == 0, done.stderr
    best = engine.summarize(exp).best
    assert json.loads((home / "target-h2.json").read_text()) == best.params  # --hosts wins over promote.hosts
    assert not (home / "target-h1.json").exists()
