"""Per-trial overhead and parallel speed-up of knobflow under a real Airflow scheduler.

Usage (from the repository root, after `make venv` and `make services`, PostgreSQL and Redis up):

    .venv/bin/python benchmarks/airflow_scheduler/run.py [--part all|overhead|parallel]

Both parts start a real Airflow deployment with tests/airflow_stack.py (PostgreSQL metadata
database; api-server, scheduler and dag-processor as separate processes; the DAG file dags/ parsed
by the dag-processor; the run triggered and awaited through the REST API) and a knobflow store in a
PostgreSQL database of its own. The experiment is tests/airflow_stack.py's `write_experiment` (one
int tunable, tests/data/experiments' bench.py and noop_layer role, the `random` tuner), with the
tunable's range widened from 0-10 to 0-100000 so that no run exhausts its 11 configurations.

1. overhead (LocalExecutor, triggerer too): a benchmark that sleeps 0 s, `--trials` trials in one
   DAG run (`parallel: 1`). The per-trial time is the steady-state cycle from one trial's start to
   the next one's (the trials' `started` timestamps in the store; also from the trial task
   instances' start dates), against ONE bare `ansible-playbook` run of the same trial playbook
   (playbooks/trial.yml) with the same inventory, limit, roles path and extra variables (the
   `knobflow` variable written as knobflow writes it), half of the bare runs before the DAG run and
   half after, with the deployment up and idle. The generated DAG starts one trial task instance
   ahead of the running trial (the standby), which waits for the host; the cycle is split, from the
   store's timestamps and the trial records' `timings` (place_s, ask_s, playbook_s,
   benchmark_task_s, tell_s; tell_s only in the XCom record), into: the playbook run; the trial's
   record and tell; the hand-over (from the tell until the next trial holds the host: the lease
   released, the standby's next look); and the next trial's ask after placing. What the standby
   overlaps with the running trial is reported beside it from the task instances' queued and
   start/end dates and their logs: the next task instance's start-up (the task process parsing the
   DAG file, the operator), the scheduler queueing it, the executor starting it, the trial task's
   wrap-up.
2. parallel (CeleryExecutor, Redis broker, two `airflow celery worker`s with 2 slots each): the
   experiment on a pool of two local hosts (`target.per_trial: one`, `parallel: 2` in the file), a
   benchmark that sleeps `--bench-sleep` s, `--par-trials` trials per DAG run, triggered with conf
   {"parallel": 1} and {"parallel": 2} in the order 1, 2, 2, 1 (`--pairs 2`; each run's `trials`
   conf adds `--par-trials` to the study's total, so every run runs exactly that many). Reported:
   each DAG run's wall time (its start and end dates from the REST API), the trials' span, the
   speed-up, and, from the store's trials (`targets`, `started`, `finished`), that no host was in
   two trials at once (a trial's benchmark runs inside its [started, finished] span, which lies
   inside the time it holds its host's lease).

The machine's load is recorded for each phase: the CPU busy and `nice` shares from /proc/stat (a
low-priority background job shows up as `nice`), load averages, and the processes outside this
benchmark that used the most CPU meanwhile.

Results: benchmarks/airflow_scheduler/results/{overhead,parallel}.json and a Markdown summary on
stdout (also results/summary.md).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "airflow_scheduler" / "results"
sys.path[:0] = [str(REPO / "src"), str(REPO)]

OVERHEAD_NAME = "bench-af-overhead"
PARALLEL_NAME = "bench-af-parallel"
WORKERS = ("worker-a", "worker-b")
START_UP = [
    "start_up_to_first_log_line_s",
    "start_up_before_parse_s",
    "start_up_dag_file_parse_s",
    "start_up_after_parse_s",
]


# ------------------------------------------------------------------------------------------------
# Small helpers


def ts(value: str | None) -> float | None:
    """An ISO 8601 date of the REST API as Unix time."""
    return None if value is None else datetime.fromisoformat(value).timestamp()


def spread(xs: list[float]) -> dict[str, Any]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0], xs[0], xs[0]]
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "mean": statistics.fmean(xs),
        "min": xs[0],
        "max": xs[-1],
        "p25": q[0],
        "p75": q[2],
        "values": xs,
    }


def fmt(s: dict[str, Any]) -> str:
    return f"{s['median']:.2f} s | {s['min']:.2f} to {s['max']:.2f} s ({s['p25']:.2f} to {s['p75']:.2f} s) | {s['n']}"


def widen(exp_file: Path) -> None:
    """The test experiment's tunable is an int 0-10: 11 configurations, which the tuner exhausts.
    Widen it (nothing else changes: the benchmark's duration does not depend on x)."""
    text = exp_file.read_text()
    assert text.count("    high: 10\n") == 1, text
    exp_file.write_text(text.replace("    high: 10\n", "    high: 100000\n"))


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("apache-airflow", "apache-airflow-providers-celery", "celery", "ansible-core", "ansible-runner"):
        with contextlib.suppress(Exception):
            out[pkg] = version(pkg)
    with contextlib.suppress(Exception):
        import psycopg

        from tests.airflow_stack import PG_HOST, PG_PORT, PG_USER

        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres") as conn:
            out["postgresql"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"head": git("rev-parse", "HEAD"), "modified": git("status", "--short", "--untracked-files=no").splitlines()}


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    """A temporary folder for the experiment, the deployment and their logs (kept with --keep)."""
    d = Path(tempfile.mkdtemp(prefix="knobflow-afsched-"))
    try:
        yield d
    finally:
        if args.keep:
            print(f"kept {d}", flush=True)
        else:
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The machine's load


def _cpu_times() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1:]]


def _cpu_share(a: list[int], b: list[int]) -> dict[str, float]:
    d = [y - x for x, y in zip(a, b, strict=False)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = d[3] + d[4]
    return {"busy": (total - idle) / total, "nice": d[1] / total, "busy_cpu_s": (total - idle) / CLK_TCK}


CLK_TCK = os.sysconf("SC_CLK_TCK")
LOAD_AT_START = os.getloadavg()
SERVICES = ("postgres", "redis")  # the servers this benchmark shares with whatever else runs


def _procs() -> dict[tuple[int, float], dict[str, Any]]:
    """Every process: its CPU seconds alone (``own_s``) and with its reaped children (``all_s``)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "nice", "create_time", "cpu_times"]):
        info = p.info
        c = info["cpu_times"]
        if c is None:
            continue
        out[(info["pid"], info["create_time"])] = {
            "pid": info["pid"],
            "name": info["name"],
            "cmd": " ".join(info["cmdline"] or []).strip()[:100] or info["name"],
            "nice": info["nice"],
            "own_s": c.user + c.system,
            "all_s": c.user + c.system + c.children_user + c.children_system,
        }
    return out


def _ours() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid, *(c.pid for c in me.children(recursive=True))}


def _service(p: dict[str, Any]) -> bool:
    return str(p["name"]).startswith(SERVICES)


class Monitor:
    """Samples the machine every 5 s (CPU busy and nice shares, load, which processes outside this
    benchmark used CPU) and measures phases: the CPU seconds this benchmark's processes used
    (Airflow, tasks, Ansible, with their reaped children), PostgreSQL and Redis, and everything
    else (the machine's busy time from /proc/stat minus those two)."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []
        self.phases: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        prev_cpu, prev = _cpu_times(), _procs()
        while not self._stop.wait(5):
            cpu, procs, ours = _cpu_times(), _procs(), _ours()
            foreign: dict[str, float] = {}
            for key, p in procs.items():
                if key in prev and p["pid"] not in ours and not _service(p):
                    used = p["own_s"] - prev[key]["own_s"]
                    if used >= 0.1:
                        foreign[p["cmd"]] = foreign.get(p["cmd"], 0) + used
            self.samples.append(
                {"t": time.time(), "load1": os.getloadavg()[0], **_cpu_share(prev_cpu, cpu), "foreign": foreign}
            )
            prev_cpu, prev = cpu, procs

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _tree(procs: dict[tuple[int, float], dict[str, Any]], ours: set[int]) -> tuple[dict[Any, float], ...]:
        mine = {k: p["all_s"] for k, p in procs.items() if p["pid"] in ours}
        services = {k: p["all_s"] for k, p in procs.items() if _service(p) and p["pid"] not in ours}
        return mine, services

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        mine0, services0 = self._tree(_procs(), _ours())
        cpu = _cpu_times()
        t0, wall0 = time.monotonic(), time.time()
        try:
            yield
        finally:
            wall = time.monotonic() - t0
            share = _cpu_share(cpu, _cpu_times())
            mine1, services1 = self._tree(_procs(), _ours())
            ours_s = sum(v - mine0.get(k, 0.0) for k, v in mine1.items())
            services_s = sum(v - services0.get(k, 0.0) for k, v in services1.items())
            foreign_s = max(0.0, share["busy_cpu_s"] - ours_s - services_s)
            seen: dict[str, float] = {}
            for smp in self.samples:
                if smp["t"] >= wall0:
                    for cmd, used in smp["foreign"].items():
                        seen[cmd] = seen.get(cmd, 0) + used
            top = sorted(seen.items(), key=lambda kv: -kv[1])[:5]
            self.phases[name] = {
                "wall_s": wall,
                "cpus": os.cpu_count(),
                "cpu_busy_share": round(share["busy"], 3),
                "cpu_nice_share": round(share["nice"], 3),
                "cpu_s_busy": round(share["busy_cpu_s"], 1),
                "cpu_s_this_benchmark": round(ours_s, 1),
                "cpu_s_postgres_redis": round(services_s, 1),
                "cpu_s_other_processes": round(foreign_s, 1),
                "load1_samples": [round(s["load1"], 2) for s in self.samples if s["t"] >= wall0],
                "other_processes_seen": [{"cmd": c, "cpu_s": round(u, 1)} for c, u in top],
            }


# ------------------------------------------------------------------------------------------------
# Bare ansible-playbook runs of the trial playbook


class Bare:
    """`ansible-playbook` of the trial's playbook with the trial's inventory, limit, roles path and
    extra variables (those of trial 0, the defaults), outside knobflow and Airflow."""

    def __init__(self, exp_file: Path, home: Path, workdir: Path) -> None:
        from knobflow import engine, spec
        from knobflow.ansible.bridge import write_data_vars

        os.environ["KNOBFLOW_HOME"] = str(home)  # `knobflow.home` in the extra variables, as in the tasks
        home.mkdir(parents=True, exist_ok=True)  # (the first trial's logs would create it)
        exp = spec.load(exp_file)
        extravars = engine._extravars(exp, 0, exp.defaults())
        knobflow_var = extravars.pop("knobflow")
        (workdir / "bare-extravars.json").write_text(json.dumps(extravars))
        write_data_vars(workdir / "bare-knobflow.yml", {"knobflow": knobflow_var})
        self.playbook = engine._playbook_for(exp, workdir)
        self.cmd = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(exp.inventory()),
            "--limit",
            exp.model.target.hosts,
            str(self.playbook),
            "-e",
            f"@{workdir / 'bare-extravars.json'}",
            "-e",
            f"@{workdir / 'bare-knobflow.yml'}",
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KNOBFLOW_"))}
        # The environment knobflow's bridge gives ansible-playbook (ansible-runner adds its own
        # event callback on top, which a bare run does not have).
        self.env = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            "KNOBFLOW_HOME": str(home),
            "ANSIBLE_ROLES_PATH": os.pathsep.join(str(p) for p in exp.roles_path()),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_SYSTEM_WARNINGS": "False",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        }
        self.cwd = workdir

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            proc = subprocess.run(self.cmd, env=self.env, cwd=self.cwd, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0 or "failed=0" not in proc.stdout:
                raise SystemExit(f"bare ansible-playbook failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
        return times


# ------------------------------------------------------------------------------------------------
# 1. Per-trial overhead under the LocalExecutor


def _store_trials(storage: str, name: str) -> dict[int, Any]:
    from knobflow.store import Store

    store = Store(storage)
    try:
        return {t.number: t for t in store.trials(store.load(name))}
    finally:
        store.storage.engine.dispose()


def task_log_marks(airflow_home: Path, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, float]:
    """Times from a task instance's Airflow log (its last attempt): the task runner's first line, the
    end of its parse of the DAG file (``Worker startup parse complete``, with ``dag_file_parse_ms``),
    the end of its pre-execute group, the start of its post-execute group, its last line."""
    folder = airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    if map_index >= 0:
        folder = folder / f"map_index={map_index}"
    logs = sorted(folder.glob("attempt=*.log"))
    marks: dict[str, float] = {}
    if not logs:
        return marks
    for line in logs[-1].read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        t = ts(ev.get("timestamp"))
        if t is None:
            continue
        marks.setdefault("first_line", t)
        marks["last_line"] = t
        event = ev.get("event")
        if event == "Worker startup parse complete":
            marks["parse_done"] = t
            marks["dag_file_parse_s"] = float(ev.get("dag_file_parse_ms", 0)) / 1000
        elif event == "::endgroup::" and "parse_done" in marks:
            marks.setdefault("pre_execute_done", t)
        elif event == "::group::Post Execute":
            marks["post_execute"] = t
    return marks


def part_overhead(args: argparse.Namespace, mon: Monitor) -> dict[str, Any]:
    from tests.airflow_stack import airflow_stack, check_experiment_run, pg_url, postgres_database, write_experiment

    dag_id = f"knobflow_{OVERHEAD_NAME}"
    t_begin = time.monotonic()
    with workdir(args) as tmp, postgres_database("knobflow_store") as store_db:
        storage = pg_url(store_db, "psycopg")
        exp_file = write_experiment(tmp / "experiment", OVERHEAD_NAME, trials=args.trials, storage=storage)
        widen(exp_file)
        home = tmp / "knobflow"
        with airflow_stack(tmp / "stack", executor="LocalExecutor", experiments=exp_file, knobflow_home=home) as stack:
            stack.wait_dag(dag_id)
            up_s = time.monotonic() - t_begin
            print(f"[overhead] deployment up and DAG parsed after {up_s:.0f} s", flush=True)
            bare = Bare(exp_file, home, tmp)
            with mon.phase("overhead: bare runs before"):
                bare_before = bare.run(args.bare // 2)
            with mon.phase("overhead: DAG run"):
                run_id = stack.trigger(dag_id, {"trials": args.trials})
                run = stack.wait_run(dag_id, run_id, timeout=60 + 30 * args.trials)
            with mon.phase("overhead: bare runs after"):
                bare_after = bare.run(args.bare - args.bare // 2)
            print(f"[overhead] DAG run {run['state']}; bare runs {bare_before + bare_after}", flush=True)
            tis, records = check_experiment_run(stack, dag_id, run_id, args.trials)
            every = {t["task_id"]: t for t in stack.tasks(dag_id, run_id) if t["task_id"] != "trial"}
            marks = {
                t["map_index"]: task_log_marks(stack.airflow_home, dag_id, run_id, "trial", t["map_index"]) for t in tis
            }
        trials = _store_trials(storage, OVERHEAD_NAME)

    rows = []
    for ti, rec in zip(tis, records, strict=True):
        a = trials[rec["number"]].user_attrs
        rows.append(
            {
                "number": rec["number"],
                "map_index": ti["map_index"],
                "hostname": ti["hostname"],
                "ti_scheduled": ts(ti.get("scheduled_when")),
                "ti_queued": ts(ti.get("queued_when")),
                "ti_start": ts(ti["start_date"]),
                "ti_end": ts(ti["end_date"]),
                "started": a["started"],
                "finished": a["finished"],
                "ask_s": a["timings"]["ask_s"],
                "place_s": a["timings"]["place_s"],
                "waited_for_host_s": a.get("waited_for_host_s", 0.0),
                "playbook_s": a["timings"]["playbook_s"],
                "benchmark_task_s": a["timings"]["benchmark_task_s"],
                "tell_s": rec["timings"]["tell_s"],
                "log": marks[ti["map_index"]],
            }
        )
    rows.sort(key=lambda r: r["started"])
    cycles = []
    for cur, nxt in itertools.pairwise(rows):
        queued = nxt["ti_queued"] if nxt["ti_queued"] is not None else nxt["ti_start"]
        told = cur["finished"] + cur["tell_s"]
        # when the next trial held its slot and host (wall clock), from its timings
        placed = nxt["started"] - (nxt["ask_s"] - nxt["place_s"])
        c = {
            "from_trial": cur["number"],
            "cycle_s": nxt["started"] - cur["started"],
            "ti_cycle_s": nxt["ti_start"] - cur["ti_start"],
            # the next trial's task instance had started before this one's ended: the standby
            "pipelined": nxt["ti_start"] < cur["ti_end"],
            # the parts, which add up to cycle_s
            "playbook_s": cur["playbook_s"],
            "record_and_tell_s": (cur["finished"] - cur["started"] - cur["playbook_s"]) + cur["tell_s"],
            "hand_over_s": placed - told,
            "ask_after_place_s": nxt["ask_s"] - nxt["place_s"],
            # inside the playbook run
            "benchmark_task_s": cur["benchmark_task_s"],
            # the next trial task's start-up and wait, overlapped with this trial when pipelined
            "next_started_before_trial_end_s": told - nxt["ti_start"],
            "next_task_start_up_s": (nxt["started"] - nxt["ask_s"]) - nxt["ti_start"],
            "next_waited_for_host_s": nxt["waited_for_host_s"],
            # without the standby, the hand-over is this task's wrap-up, the scheduler, the executor,
            # the next task's start-up and its ask before placing
            "task_wrap_up_s": cur["ti_end"] - told,
            "scheduler_queues_next_s": queued - cur["ti_end"],
            "executor_starts_next_s": nxt["ti_start"] - queued,
        }
        log = nxt["log"]
        if {"first_line", "parse_done", "dag_file_parse_s"} <= log.keys():
            # the task's start-up, from its task log: until the task runner logs its first line;
            # the task runner before its parse of the DAG file; the parse; after the parse, until
            # knobflow's run_trial begins (the rest of pre-execute, the operator, loading the file)
            c["start_up_to_first_log_line_s"] = log["first_line"] - nxt["ti_start"]
            c["start_up_before_parse_s"] = log["parse_done"] - log["dag_file_parse_s"] - log["first_line"]
            c["start_up_dag_file_parse_s"] = log["dag_file_parse_s"]
            c["start_up_after_parse_s"] = (nxt["started"] - nxt["ask_s"]) - log["parse_done"]
        cycles.append(c)
    parts = ["playbook_s", "record_and_tell_s", "hand_over_s", "ask_after_place_s"]
    others = [
        "benchmark_task_s",
        "next_started_before_trial_end_s",
        "next_task_start_up_s",
        "next_waited_for_host_s",
        "task_wrap_up_s",
        "scheduler_queues_next_s",
        "executor_starts_next_s",
        *START_UP,
    ]
    bare_all = bare_before + bare_after
    bare_s = spread(bare_all)
    cycle_s = spread([c["cycle_s"] for c in cycles])
    run_start, run_end = ts(run["start_date"]), ts(run["end_date"])
    assert run_start is not None and run_end is not None
    prepare, finish = every["prepare"], every["finish"]
    return {
        "what": "per-trial overhead under a real scheduler (LocalExecutor, PostgreSQL metadata DB and store)",
        "trials": args.trials,
        "deployment_up_s": up_s,
        "bare_ansible_playbook_s": {**bare_s, "before": bare_before, "after": bare_after, "cmd": bare.cmd},
        "cycle_s": cycle_s,
        "ti_cycle_s": spread([c["ti_cycle_s"] for c in cycles]),
        "ratio_cycle_to_bare": cycle_s["median"] / bare_s["median"],
        "ratio_cycle_to_bare_range": [cycle_s["min"] / bare_s["median"], cycle_s["max"] / bare_s["median"]],
        "target_ratio": 2.0,
        "split_median_s": {
            k: statistics.median(c[k] for c in cycles) for k in [*parts, *others] if all(k in c for c in cycles)
        },
        "pipelined_cycles": sum(c["pipelined"] for c in cycles),
        "playbook_s": spread([r["playbook_s"] for r in rows]),
        "run": {
            "wall_s": run_end - run_start,
            "per_trial_s": (run_end - run_start) / args.trials,
            "ratio_per_trial_to_bare": (run_end - run_start) / args.trials / bare_s["median"],
            "queued_to_start_s": run_start - (ts(run.get("queued_at")) or run_start),
            "start_to_first_trial_task_s": rows[0]["ti_start"] - run_start,
            "prepare_task_s": (ts(prepare["end_date"]) or 0) - (ts(prepare["start_date"]) or 0),
            "last_trial_task_end_to_finish_task_start_s": (ts(finish["start_date"]) or 0) - rows[-1]["ti_end"],
            "finish_task_s": (ts(finish["end_date"]) or 0) - (ts(finish["start_date"]) or 0),
            "finish_task_end_to_run_end_s": run_end - (ts(finish["end_date"]) or 0),
        },
        "trial_rows": rows,
        "cycles": cycles,
    }


# ------------------------------------------------------------------------------------------------
# 2. Parallel speed-up under the CeleryExecutor


def _overlaps(spans: list[tuple[float, float, int]]) -> list[tuple[int, int]]:
    """Pairs of trials whose spans overlap (spans: start, end, trial number)."""
    out = []
    for i, (s1, e1, n1) in enumerate(spans):
        for s2, e2, n2 in spans[i + 1 :]:
            if s1 < e2 and s2 < e1:
                out.append((n1, n2))
    return out


def _max_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _check_run(stack: Any, dag_id: str, run_id: str, n: int, storage: str, parallel: int) -> dict[str, Any]:
    run = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    tis = stack.tasks(dag_id, run_id)
    trial_tis = sorted((t for t in tis if t["task_id"] == "trial"), key=lambda t: t["map_index"])
    if run["state"] != "success" or len(trial_tis) != n or any(t["state"] != "success" for t in trial_tis):
        raise SystemExit(
            f"run {run_id} (parallel {parallel}): {run['state']}; trial task instances: "
            + ", ".join(f"[{t['map_index']}] {t['state']}" for t in trial_tis)
        )
    trials = [t for t in _store_trials(storage, PARALLEL_NAME).values() if t.user_attrs.get("run_id") == run_id]
    if len(trials) != n or any(t.state.name != "COMPLETE" for t in trials):
        raise SystemExit(f"run {run_id}: {len(trials)} trials in the store, states {[t.state.name for t in trials]}")
    rows = sorted(
        (
            {
                "number": t.number,
                "targets": list(t.user_attrs["targets"]),
                "started": t.user_attrs["started"],
                "finished": t.user_attrs["finished"],
                "waited_for_host_s": t.user_attrs.get("waited_for_host_s"),
                "playbook_s": t.user_attrs["timings"]["playbook_s"],
                "benchmark_task_s": t.user_attrs["timings"]["benchmark_task_s"],
                "place_s": t.user_attrs["timings"]["place_s"],
                "ask_s": t.user_attrs["timings"]["ask_s"],
                "worker": t.user_attrs.get("owner", {}).get("host"),
            }
            for t in trials
        ),
        key=lambda r: r["started"],
    )
    by_host: dict[str, list[tuple[float, float, int]]] = {}
    for r in rows:
        for h in r["targets"]:
            by_host.setdefault(h, []).append((r["started"], r["finished"], r["number"]))
    host_overlaps = {h: _overlaps(sp) for h, sp in by_host.items()}
    # between two trials on one host: from one's end (recorded) to the next one's start (asked)
    gaps = [b[0] - a[1] for sp in by_host.values() for a, b in itertools.pairwise(sorted(sp))]
    ti_spans = [(ts(t["start_date"]) or 0.0, ts(t["end_date"]) or 0.0) for t in trial_tis]
    run_start, run_end = ts(run["start_date"]), ts(run["end_date"])
    assert run_start is not None and run_end is not None
    return {
        "run_id": run_id,
        "parallel": parallel,
        "trials": n,
        "wall_s": run_end - run_start,
        "trials_span_s": rows[-1]["finished"] - rows[0]["started"],
        "trials_per_host": {h: len(sp) for h, sp in sorted(by_host.items())},
        "host_overlaps": host_overlaps,
        "no_host_in_two_trials_at_once": not any(host_overlaps.values()),
        "max_trials_at_once": _max_at_once([(r["started"], r["finished"]) for r in rows]),
        "max_trial_tasks_at_once": _max_at_once(ti_spans),
        "trial_tasks_per_worker": {
            w: sum(1 for t in trial_tis if t["hostname"] == w) for w in sorted({t["hostname"] for t in trial_tis})
        },
        "waited_for_host_s_total": sum(r["waited_for_host_s"] or 0 for r in rows),
        "host_gap_s": spread(gaps) if gaps else None,
        "playbook_s_median": statistics.median(r["playbook_s"] for r in rows),
        "trial_rows": rows,
        "trial_task_spans": [
            {"map_index": t["map_index"], "worker": t["hostname"], "start": s, "end": e}
            for t, (s, e) in zip(trial_tis, ti_spans, strict=True)
        ],
    }


def part_parallel(args: argparse.Namespace, mon: Monitor) -> dict[str, Any]:
    from tests.airflow_stack import airflow_stack, pg_url, postgres_database, write_experiment

    dag_id = f"knobflow_{PARALLEL_NAME}"
    order = ([1, 2, 2, 1] * args.pairs)[: 2 * args.pairs]  # 1, 2, 2, 1, 1, 2, ...
    t_begin = time.monotonic()
    runs = []
    with workdir(args) as tmp, postgres_database("knobflow_store") as store_db:
        storage = pg_url(store_db, "psycopg")
        exp_file = write_experiment(
            tmp / "experiment",
            PARALLEL_NAME,
            trials=args.par_trials,
            parallel=2,
            storage=storage,
            bench_sleep=args.bench_sleep,
        )
        widen(exp_file)
        home = tmp / "knobflow"
        with airflow_stack(
            tmp / "stack", executor="CeleryExecutor", experiments=exp_file, knobflow_home=home, triggerer=False
        ) as stack:
            for name in WORKERS:
                stack.start_celery_worker(name, concurrency=2)
            stack.wait_celery_workers()
            stack.wait_dag(dag_id)
            up_s = time.monotonic() - t_begin
            print(f"[parallel] deployment with two Celery workers up and DAG parsed after {up_s:.0f} s", flush=True)
            total = 0
            for i, parallel in enumerate(order):
                total += args.par_trials
                with mon.phase(f"parallel: run {i + 1} (parallel {parallel})"):
                    run_id = stack.trigger(dag_id, {"trials": total, "parallel": parallel})
                    stack.wait_run(dag_id, run_id, timeout=120 + args.par_trials * (args.bench_sleep + 30))
                r = _check_run(stack, dag_id, run_id, args.par_trials, storage, parallel)
                runs.append(r)
                print(
                    f"[parallel] run {i + 1}: parallel {parallel}, wall {r['wall_s']:.1f} s, "
                    f"trials per host {r['trials_per_host']}, at most {r['max_trials_at_once']} trials at once, "
                    f"host overlaps {sum(len(v) for v in r['host_overlaps'].values())}",
                    flush=True,
                )

    def med(p: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["parallel"] == p)

    return {
        "what": "parallel speed-up under the CeleryExecutor (two workers, 2 slots each), a pool of two local hosts",
        "trials_per_run": args.par_trials,
        "bench_sleep_s": args.bench_sleep,
        "order": order,
        "deployment_up_s": up_s,
        "speed_up_wall": med(1, "wall_s") / med(2, "wall_s"),
        "speed_up_trials_span": med(1, "trials_span_s") / med(2, "trials_span_s"),
        "no_host_in_two_trials_at_once": all(r["no_host_in_two_trials_at_once"] for r in runs),
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------------
# Report


def machine(mon: Monitor) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "load1_samples_every_5s": [round(s["load1"], 2) for s in mon.samples],
        "cpu_busy_share_samples_every_5s": [round(s["busy"], 2) for s in mon.samples],
        "cpu_nice_share_samples_every_5s": [round(s["nice"], 2) for s in mon.samples],
        "loadavg_at_start": LOAD_AT_START,
        "phases": mon.phases,
        **versions(),
    }


def report_overhead(o: dict[str, Any]) -> list[str]:
    s = o["split_median_s"]
    cyc = o["cycle_s"]["median"]
    r = o["run"]
    names = {
        "playbook_s": "the playbook run (ansible-runner; the benchmark itself sleeps 0 s)",
        "record_and_tell_s": "recording the trial and telling the tuner",
        "hand_over_s": "hand-over: from the tell to the next trial holding the host (its lease released, "
        "the waiting standby task sees it)",
        "ask_after_place_s": "the next trial after placing: recovery check, the tuner's ask, trial marked started",
    }
    lines = [
        f"### Per-trial overhead (LocalExecutor, {o['trials']} trials, benchmark sleeps 0 s)",
        "",
        "| measure | median | min to max (p25 to p75) | n |",
        "|---|---|---|---|",
        f"| bare `ansible-playbook` of the trial playbook, same extra vars | {fmt(o['bare_ansible_playbook_s'])} |",
        f"| trial cycle, trial start to next trial start (store) | {fmt(o['cycle_s'])} |",
        f"| trial cycle, task instance start to next start (REST API) | {fmt(o['ti_cycle_s'])} |",
        f"| the trial's playbook run under ansible-runner | {fmt(o['playbook_s'])} |",
        "",
        f"**Ratio trial cycle / bare run: {o['ratio_cycle_to_bare']:.2f}** (target <= 2; cycles from "
        f"{o['ratio_cycle_to_bare_range'][0]:.2f} to {o['ratio_cycle_to_bare_range'][1]:.2f} x the bare median; "
        f"means: cycle {o['cycle_s']['mean']:.2f} s, bare {o['bare_ansible_playbook_s']['mean']:.2f} s, "
        f"{o['cycle_s']['mean'] / o['bare_ansible_playbook_s']['mean']:.2f}x). "
        f"Whole DAG run: {r['wall_s']:.1f} s, {r['per_trial_s']:.2f} s per trial "
        f"({r['ratio_per_trial_to_bare']:.2f} x bare) with the one-off prepare and finish. "
        f"{o['pipelined_cycles']} of {len(o['cycles'])} cycles pipelined (the next trial's task instance "
        "had started before the trial ended: the standby).",
        "",
        "| part of the cycle (medians) | s | share |",
        "|---|---|---|",
        *(f"| {names[k]} | {s[k]:.2f} | {100 * s[k] / cyc:.0f}% |" for k in names),
        f"| sum of the medians (the cycle's median: {cyc:.2f} s) | {sum(s[k] for k in names):.2f} | |",
        "",
    ]
    hidden = {
        "next_started_before_trial_end_s": "the next trial task instance started this long before the trial's tell",
        "next_task_start_up_s": "its start-up, start date to knobflow's run_trial (the task process, the DAG "
        "file's parse, the operator)",
        "next_waited_for_host_s": "then it waited for the slot and host",
        "task_wrap_up_s": "the trial's task wrap-up after the tell (best so far, XCom, the end reported)",
        "scheduler_queues_next_s": "the scheduler queued the next task instance, from the previous one's end "
        "(negative: before it)",
        "executor_starts_next_s": "the LocalExecutor started it (queued to start date)",
    }
    lines += [
        "Overlapped with the running trial (medians; they are in the cycle only when it is not pipelined):",
        "",
        "| | s |",
        "|---|---|",
        *(f"| {hidden[k]} | {s[k]:.2f} |" for k in hidden if k in s),
        "",
    ]
    sub = {
        "start_up_to_first_log_line_s": "start date to the task runner's first log line",
        "start_up_before_parse_s": "task runner, before parsing the DAG file (bundle)",
        "start_up_dag_file_parse_s": "parsing the DAG file (`dag_file_parse_ms`)",
        "start_up_after_parse_s": "after the parse until knobflow's run_trial (pre-execute, operator, file)",
    }
    if all(k in s for k in sub):
        lines += [
            "| the task start-up, from the task logs (medians) | s |",
            "|---|---|",
            *(f"| {sub[k]} | {s[k]:.2f} |" for k in sub),
            "",
        ]
    lines += [
        f"One-off per DAG run: run start to first trial task {r['start_to_first_trial_task_s']:.1f} s "
        f"(`prepare` task {r['prepare_task_s']:.1f} s), last trial task end to `finish` start "
        f"{r['last_trial_task_end_to_finish_task_start_s']:.1f} s, `finish` {r['finish_task_s']:.1f} s, "
        f"then {r['finish_task_end_to_run_end_s']:.1f} s to the run's end.",
    ]
    return lines


def report_parallel(p: dict[str, Any]) -> list[str]:
    lines = [
        f"### Parallel speed-up (CeleryExecutor, 2 workers x 2 slots, {p['trials_per_run']} trials per run, "
        f"benchmark sleeps {p['bench_sleep_s']:g} s, pool of 2 local hosts)",
        "",
        "| run | parallel | DAG run wall | trials span | trials per host | most trials at once "
        "| most trial tasks at once | trial tasks per worker | a host's gap between trials (median) "
        "| a host in two trials at once |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(p["runs"], 1):
        workers = ", ".join(f"{w}: {n}" for w, n in r["trial_tasks_per_worker"].items())
        lines.append(
            f"| {i} | {r['parallel']} | {r['wall_s']:.1f} s | {r['trials_span_s']:.1f} s | "
            f"{', '.join(f'{h}: {n}' for h, n in r['trials_per_host'].items())} | {r['max_trials_at_once']} | "
            f"{r['max_trial_tasks_at_once']} | {workers} | "
            f"{'' if r['host_gap_s'] is None else format(r['host_gap_s']['median'], '.1f') + ' s'} | "
            f"{'never' if r['no_host_in_two_trials_at_once'] else 'YES: ' + json.dumps(r['host_overlaps'])} |"
        )
    lines += [
        "",
        f"**Speed-up parallel 2 over parallel 1: {p['speed_up_wall']:.2f}x** in DAG run wall time "
        f"({p['speed_up_trials_span']:.2f}x over the trials' span, first trial start to last trial end; "
        "medians of the runs of each kind).",
    ]
    return lines


def report_machine(m: dict[str, Any]) -> list[str]:
    lines = [
        "### Machine",
        "",
        f"{m['nproc']} CPUs; Python {m['python']}, Airflow {m.get('apache-airflow')}, "
        f"ansible-core {m.get('ansible-core')}, ansible-runner {m.get('ansible-runner')}, "
        f"Celery {m.get('celery')}, PostgreSQL {m.get('postgresql')}.",
        "",
        "| phase | wall | CPU busy | niced (low-priority) | CPUs used by this benchmark / PostgreSQL+Redis / "
        "other processes | 1-min load | other processes seen (CPU s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ph in m["phases"].items():
        loads = ph["load1_samples"]
        load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else ""
        w = ph["wall_s"]
        others = "; ".join(f"`{o['cmd'][:60]}` {o['cpu_s']:.0f}" for o in ph["other_processes_seen"][:3])
        lines.append(
            f"| {name} | {w:.0f} s | {100 * ph['cpu_busy_share']:.0f}% | {100 * ph['cpu_nice_share']:.0f}% | "
            f"{ph['cpu_s_this_benchmark'] / w:.2f} / {ph['cpu_s_postgres_redis'] / w:.2f} / "
            f"{ph['cpu_s_other_processes'] / w:.2f} | {load} | {others} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "overhead", "parallel"], default="all")
    ap.add_argument("--trials", type=int, default=12, help="trials of the overhead run (sleep 0)")
    ap.add_argument("--bare", type=int, default=10, help="bare ansible-playbook runs (half before, half after)")
    ap.add_argument("--par-trials", type=int, default=8, help="trials per DAG run of the parallel part")
    ap.add_argument("--bench-sleep", type=float, default=10, help="seconds the parallel part's benchmark sleeps")
    ap.add_argument("--pairs", type=int, default=2, help="1: runs parallel 1, 2; 2: runs 1, 2, 2, 1")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the deployments' folders (logs) under /tmp")
    args = ap.parse_args()

    started = time.monotonic()
    mon = Monitor()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python benchmarks/airflow_scheduler/run.py " + " ".join(sys.argv[1:]),
        "git": git_state(),
    }
    out: dict[str, dict[str, Any]] = {}
    try:
        if args.part in ("all", "overhead"):
            out["overhead"] = part_overhead(args, mon)
        if args.part in ("all", "parallel"):
            out["parallel"] = part_parallel(args, mon)
    finally:
        mon.close()
    m = machine(mon)
    meta["total_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    for part, data in out.items():
        (args.out / f"{part}.json").write_text(json.dumps({**meta, "machine": m, part: data}, indent=1) + "\n")

    lines = [f"## knobflow under a real Airflow scheduler ({meta['date']}, {meta['total_s'] / 60:.1f} min)", ""]
    if "overhead" in out:
        lines += [*report_overhead(out["overhead"]), ""]
    if "parallel" in out:
        lines += [*report_parallel(out["parallel"]), ""]
    lines += report_machine(m)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (args.out / "summary.md").write_text(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
