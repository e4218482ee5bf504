"""The ``knobflow`` command line: validate | run | list | best | delete.

``run`` drives the experiment's Airflow DAG in-process with ``dag.test()`` on an embedded SQLite
metadata database under ``$KNOBFLOW_HOME/airflow``; the tuning itself happens in
:mod:`knobflow.engine`, as it does under a real scheduler.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from knobflow import _paths

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in params.items())


# --------------------------------------------------------------------------------------------
# validate


def cmd_validate(args: argparse.Namespace) -> int:
    from knobflow import spec

    status = EXIT_OK
    for f in args.files:
        try:
            exp = spec.load(f)
        except spec.SpecError as exc:
            for p in exc.problems:
                print(p.format(exc.source), file=sys.stderr)
            print(f"{f}: invalid ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''})", file=sys.stderr)
            status = EXIT_INVALID
            continue
        m = exp.model
        print(
            f"{f}: ok: experiment {m.name!r}, {len(m.tunables)} tunables, {exp.objective_text()}, "
            f"tuner {m.tuner.name}, {m.budget.trials} trials"
        )
    return status


# --------------------------------------------------------------------------------------------
# run


def _airflow_env(home: Path) -> dict[str, str]:
    # $KNOBFLOW_AIRFLOW_HOME lets several knobflow homes share one embedded Airflow (the tests do).
    af = Path(os.environ.get("KNOBFLOW_AIRFLOW_HOME") or home / "airflow").resolve()
    return {
        "AIRFLOW_HOME": str(af),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{af / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(_paths.dags_dir()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(af / "logs"),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }


def _ensure_airflow_db(env: dict[str, str], log: Path) -> None:
    """Create or migrate the embedded Airflow DB when this Airflow version has not done so yet."""
    import airflow

    af = Path(env["AIRFLOW_HOME"])
    af.mkdir(parents=True, exist_ok=True)
    stamp = af / ".knobflow-migrated"
    if stamp.exists() and stamp.read_text().strip() == airflow.__version__:
        return
    print(f"preparing the embedded Airflow database in {af} (once) ...", flush=True)
    airflow_bin = Path(sys.executable).parent / "airflow"
    cmd = [str(airflow_bin) if airflow_bin.exists() else "airflow", "db", "migrate"]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` failed (exit {proc.returncode}); see {log}")
    stamp.write_text(airflow.__version__)


@contextlib.contextmanager
def _experiment_lock(home: Path, name: str) -> Iterator[None]:
    lock_dir = home / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{name}.lock"
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RuntimeError(f"experiment {name!r} is already running ({holder}); wait for it or stop it") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def _quiet_fds(log_path: Path) -> Iterator[IO[str]]:
    """Send everything written to fds 1 and 2 (Airflow's logging, subprocesses) to ``log_path``.

    Yields a stream on the original stdout for knobflow's own progress lines.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with log_path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            console.close()


def _trial_line(r: Any, labels: list[str]) -> str:
    head = f"trial {r.number:>3}{' (baseline)' if r.baseline else ''}"
    if r.state == "complete":
        values = r.values if r.values is not None else [r.value]
        shown = "  ".join(f"{k}={_fmt_value(v)}" for k, v in zip(labels, values, strict=False))
        best = f"best {_fmt_value(r.best_value)} (#{r.best_number})" if r.best_value is not None else ""
        infeasible = f"  INFEASIBLE: breaks {'; '.join(r.violations)}" if r.violations else ""
        body = f"{shown}{infeasible}  {best}"
    else:
        body = f"FAILED: {r.reason}"
    secs = r.timings.get("ask_s", 0) + r.timings.get("playbook_s", 0) + r.timings.get("tell_s", 0)
    return f"{head:<20} {body}  [{secs:.1f}s]  {_fmt_params(r.params)}"


def _print_summary(summary: Any, out: IO[str]) -> None:
    m, d = summary.metric, summary.direction
    print("", file=out)
    print(f"experiment {summary.experiment}: {summary.trials} trials ({summary.failed} failed)", file=out)
    if summary.infeasible:
        print(f"{summary.infeasible} trials broke an SLO (infeasible: never reported as best)", file=out)
    if len(summary.objectives) > 1:
        labels = [o["name"] for o in summary.objectives]
        if not summary.pareto:
            print("no feasible trial completed: no Pareto front", file=out)
        else:
            print(
                f"Pareto front ({len(summary.pareto)} trials; "
                + ", ".join(f"{o['direction']} {o['name']}" for o in summary.objectives)
                + "):",
                file=out,
            )
            for r in summary.pareto:
                vals = "  ".join(f"{k}={_fmt_value(v)}" for k, v in zip(labels, r.values or [], strict=False))
                print(f"  trial {r.number}: {vals}  {_fmt_params(r.params)}", file=out)
    elif summary.best is None:
        print("no feasible trial completed: no best configuration", file=out)
    else:
        b = summary.best
        value = summary.best_value if summary.best_value is not None else b.value
        runs = f", median of {summary.best_measurements} measurements" if summary.best_measurements > 1 else ""
        print(f"best: trial {b.number}, {m} = {_fmt_value(value)} ({d}{runs})", file=out)
        for k, v in b.params.items():
            print(f"  {k}: {_fmt_value(v)}", file=out)
    if summary.baseline is not None:
        print(f"baseline: trial {summary.baseline.number}, {m} = {_fmt_value(summary.baseline.value)}", file=out)
    if summary.gain_pct is not None:
        ratio = ""
        best_v = (
            summary.best_value if summary.best_value is not None else (summary.best.value if summary.best else None)
        )
        if best_v and summary.baseline and summary.baseline.value:
            r = best_v / summary.baseline.value
            ratio = f" ({r:.1f}x)" if d == "maximize" else f" ({1 / r:.1f}x lower)" if r else ""
        print(f"gain over the baseline: {summary.gain_pct:+.1f}%{ratio}", file=out)
    if summary.stop_reason:
        print(f"stopped because: {summary.stop_reason}", file=out)
    action = {
        "revert": "target reverted to its original configuration",
        "best": "best configuration applied to the target",
        "keep": "target left with the last trial's configuration",
    }[summary.finish_action]
    print(f"finish: {action}" if not summary.finish_error else f"finish: {summary.finish_error}", file=out)


def cmd_run(args: argparse.Namespace) -> int:
    from knobflow import spec

    try:
        exp = spec.load(args.file)
    except spec.SpecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    home = _paths.knobflow_home()
    env = _airflow_env(home)
    os.environ.update(env)
    os.environ["KNOBFLOW_EXPERIMENTS"] = str(exp.path)
    os.environ["KNOBFLOW_HOME"] = str(home)
    run_log = home / "logs" / exp.name / "airflow-run.log"
    try:
        with _experiment_lock(home, exp.name):
            return _run_locked(exp, args, env, run_log)
    except RuntimeError as exc:
        print(f"knobflow run: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run_locked(exp: Any, args: argparse.Namespace, env: dict[str, str], run_log: Path) -> int:
    from knobflow import engine, progress
    from knobflow.store import StoreError

    # Open the study before Airflow starts: a store problem is reported plainly.
    lim = engine.limits(exp, trials=args.trials, max_failed=args.max_failed)
    try:
        store, study = engine.open_study(exp)
        p = store.progress(study)
    except StoreError as exc:
        print(f"knobflow run: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _ensure_airflow_db(env, run_log.parent / "airflow-db-migrate.log")
    m = exp.model
    if p.done:
        print(f"resuming experiment {m.name}: {p.done} of {lim.trials} trials done ({p.failed} failed)", flush=True)
    else:
        print(
            f"experiment {m.name}: {lim.trials} trials, {exp.objective_text()}, tuner {m.tuner.name}",
            flush=True,
        )
    print(f"  Airflow log: {run_log}\n  trial logs: {engine.trial_log_path(exp, 0).parent}", flush=True)

    started = time.monotonic()
    with _quiet_fds(run_log) as console:
        finished: list[Any] = []
        labels = exp.objectives().labels

        def listener(kind: str, payload: Any) -> None:
            if kind == "finish":
                finished.append(payload)
            if kind == "trial":
                console.write(_trial_line(payload, labels) + "\n")
                console.flush()

        unsubscribe = progress.subscribe(listener)
        try:
            from airflow.dag_processing.dagbag import DagBag

            from knobflow.airflow.dag_factory import dag_id_for

            bag = DagBag(dag_folder=str(_paths.dags_dir()))
            dag = bag.dags.get(dag_id_for(m.name))
            if dag is None:
                errors = "; ".join(f"{k}: {v}" for k, v in bag.import_errors.items()) or "none"
                console.write(f"knobflow run: the DAG for {m.name!r} did not load (import errors: {errors})\n")
                return EXIT_FAILED
            dagrun = dag.test(run_conf={"trials": args.trials, "max_failed": args.max_failed})
        finally:
            unsubscribe()
    # The finish task's own summary says what it did to the target; without one, it did not run.
    summary = finished[-1] if finished else engine.summarize(exp, lim)
    if not finished:
        summary.finish_error = "the finish step did not run; the target may hold the last trial's configuration"
    _print_summary(summary, sys.stdout)
    state = str(getattr(dagrun, "state", ""))
    print(f"Airflow run {getattr(dagrun, 'run_id', '?')}: {state} in {time.monotonic() - started:.0f} s")
    if summary.stop_reason and not summary.stop_reason.startswith("budget"):
        print(summary.stop_reason, file=sys.stderr)
        return EXIT_FAILED
    if "success" not in state:
        failed = [ti.task_id for ti in dagrun.get_task_instances() if str(ti.state).endswith("failed")]
        if failed == ["trial"] * len(failed):
            return EXIT_OK  # failed trials below max_failed are results, not a failed experiment
        print(f"the Airflow run did not succeed (failed tasks: {sorted(set(failed))}); see {run_log}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# list / best / delete


def _store_for(args: argparse.Namespace) -> Any:
    """The store to read; None when it is a SQLite file that does not exist (reading creates nothing)."""
    from knobflow.store import Store

    url = args.storage or f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    return Store(url)


def _no_store(args: argparse.Namespace, command: str, name: str) -> int:
    url = args.storage or f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}"
    print(f"knobflow {command}: no experiment named {name!r}: there is no store at {url}", file=sys.stderr)
    return EXIT_INVALID


def _resolve_name(args: argparse.Namespace) -> str:
    """NAME may be an experiment name or its file (whose storage is then used)."""
    from knobflow import spec

    p = Path(args.name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        exp = spec.load(p)
        args.storage = args.storage or exp.storage_url()
        return exp.name
    return str(args.name)


def _named_store(args: argparse.Namespace) -> tuple[str, Any]:
    """The experiment NAME (or FILE) names, and its store (None when the store does not exist)."""
    name = _resolve_name(args)
    return name, _store_for(args)


def cmd_list(args: argparse.Namespace) -> int:
    import optuna

    store = _store_for(args)
    if store is None:
        print("[]" if args.json else "no experiments (the store does not exist yet)")
        return EXIT_OK
    rows = []
    for s in optuna.get_all_study_summaries(store.storage):
        recs = [t for t in store.storage.get_all_trials(s._study_id, deepcopy=False)]
        done = sum(t.state.is_finished() and not t.user_attrs.get("interrupted") for t in recs)
        failed = sum(t.state.name == "FAIL" and not t.user_attrs.get("interrupted") for t in recs)
        best = s.best_trial.value if s.best_trial is not None else None
        rows.append((s.study_name, done, failed, best))
    if args.json:
        print(json.dumps([{"name": n, "trials": d, "failed": f, "best": b} for n, d, f, b in rows], indent=2))
        return EXIT_OK
    if not rows:
        print(f"no experiments in {store.url}")
        return EXIT_OK
    print(f"{'experiment':<30} {'trials':>6} {'failed':>6}  best")
    for n, d, f, b in rows:
        print(f"{n:<30} {d:>6} {f:>6}  {_fmt_value(b) if b is not None else '-'}")
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "best", name)
    try:
        records = store.records(name)
    except StoreError as exc:
        print(f"knobflow best: {exc}", file=sys.stderr)
        return EXIT_INVALID
    study = store.load(name)
    maximize = study.direction.name == "MAXIMIZE"
    done = [r for r in records if r.state == "complete" and r.value is not None]
    failed = [r for r in records if r.state == "fail" and not r.interrupted]
    best = (max if maximize else min)(done, key=lambda r: r.value or 0.0) if done else None
    baseline = next((r for r in done if r.baseline), None)
    gain = None
    if best and baseline and baseline.value:
        delta = (best.value or 0.0) - baseline.value
        gain = 100.0 * (delta if maximize else -delta) / abs(baseline.value)
    if args.json:
        print(
            json.dumps(
                {
                    "experiment": name,
                    "best": None
                    if best is None
                    else {"trial": best.number, "value": best.value, "params": best.params, "metrics": best.metrics},
                    "baseline": None if baseline is None else {"trial": baseline.number, "value": baseline.value},
                    "gain_pct": gain,
                    "failed": [{"trial": r.number, "reason": r.reason} for r in failed],
                },
                indent=2,
            )
        )
        return EXIT_OK if best else EXIT_FAILED
    if best is None:
        print(f"experiment {name}: no completed trial")
    else:
        print(f"experiment {name}: best trial {best.number}, value {_fmt_value(best.value)}")
        for k, v in best.params.items():
            print(f"  {k}: {_fmt_value(v)}")
        if baseline is not None:
            print(f"baseline (trial {baseline.number}): {_fmt_value(baseline.value)}")
        if gain is not None:
            print(f"gain over the baseline: {gain:+.1f}%")
    for r in failed:
        print(f"failed trial {r.number}: {r.reason}")
    return EXIT_OK if best else EXIT_FAILED


def cmd_delete(args: argparse.Namespace) -> int:
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "delete", name)
    try:
        store.delete(name)
    except StoreError as exc:
        print(f"knobflow delete: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"deleted experiment {name}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knobflow", description="Tune software environments with Airflow, Ansible and Optuna."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check experiment files; nothing is created")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run (or resume) an experiment through its Airflow DAG")
    p.add_argument("file")
    p.add_argument("--trials", type=int, help="total trial budget (raise it to add trials to a finished experiment)")
    p.add_argument("--max-failed", type=int, help="stop after this many failed trials")
    p.set_defaults(func=cmd_run)

    for name, func, text in (
        ("best", cmd_best, "the best configuration of an experiment, its gain, and failed trials"),
        ("delete", cmd_delete, "delete an experiment's study and all its trials"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="experiment name, or its file")
        p.add_argument("--storage", help="storage URL (default: the file's, or $KNOBFLOW_HOME/knobflow.db)")
        if name == "best":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("list", help="experiments in the store")
    p.add_argument("--storage", help="storage URL (default: $KNOBFLOW_HOME/knobflow.db)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run" and (
        (args.trials is not None and args.trials < 1) or (args.max_failed is not None and args.max_failed < 1)
    ):
        print("knobflow run: --trials and --max-failed must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    from knobflow.spec import SpecError

    try:
        return int(args.func(args))
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
