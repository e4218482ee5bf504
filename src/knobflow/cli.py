"""The ``knobflow`` command line: validate | run | round | resume | list | show | best | export | report |
import | delete | kruize | select | serve.

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

from knobflow import _paths, views

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


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
        # The generated DAG leaves out promote's approval step: dag.test() has no person to ask
        # (nor a scheduler to time the wait out). `knobflow promote` applies the best instead.
        "KNOBFLOW_DRIVER": "cli",
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
        broke = "" if summary.baseline.feasible else " (it broke an SLO: the gain is over an infeasible baseline)"
        print(f"baseline: trial {summary.baseline.number}, {m} = {_fmt_value(summary.baseline.value)}{broke}", file=out)
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
    if exp.model.mode == "continuous":
        print(
            f"knobflow run: {exp.name} is a continuous experiment (mode: continuous): "
            f"run one round with `knobflow round {args.file}`",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if exp.model.runner == "client":
        print(
            f"knobflow run: clients of the tuning service run the trials of {exp.name} (runner: client): "
            "create it there (`knobflow serve`, POST /api/v1/experiments) and let them ask and tell",
            file=sys.stderr,
        )
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
    history = _history_line(study.user_attrs.get("warm_start"), p)
    if history:
        print(f"  {history}", flush=True)
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
    if engine.failed_stop(summary.stop_reason):
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
# Continuous tuning: round / resume


def cmd_round(args: argparse.Namespace) -> int:
    from knobflow import continuous, spec
    from knobflow.store import StoreError

    try:
        exp = spec.load(args.file)
    except spec.SpecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    if exp.model.mode != "continuous":
        print(f"knobflow round: {exp.name} is not continuous (give it mode: continuous)", file=sys.stderr)
        return EXIT_INVALID
    try:
        with _experiment_lock(_paths.knobflow_home(), exp.name):
            report = continuous.run_round(exp)
    except ValueError as exc:  # a host's context that the inventory does not give, no host
        print(f"knobflow round: {exp.name}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (RuntimeError, StoreError) as exc:
        print(f"knobflow round: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print_round(report)
    return EXIT_FAILED if report.action == "busy" else EXIT_OK


def _print_round(r: Any) -> None:
    if r.action in ("paused", "busy"):
        print(f"experiment {r.experiment}: {r.action}" + (f" ({r.failed})" if r.failed else ""))
    elif r.action == "per-host":
        print(f"experiment {r.experiment}, round {r.round}: {len(r.hosts)} hosts, one after another")
        for h in r.hosts:
            if h.action == "done":
                print(f"  host {h.host}: done before this round was interrupted")
                continue
            _print_step(
                h, f"  host {h.host}" + (f" (context {_fmt_params(h.context)})" if h.context else "") + ": ", "    "
            )
    else:
        _print_step(r, f"experiment {r.experiment}, round {r.round}: ", "  ")
    for g in r.guardrails:
        print(f"  guardrail: {g}")


def _print_step(r: Any, head: str, indent: str) -> None:
    what = {"baseline": "measured the baseline", "predicted": "predicted", "re-applied": "re-applied"}[r.action]
    if r.action == "re-applied":
        what += " the pending configuration of a round that did not finish"
    print(f"{head}{what}")
    print(f"{indent}config: {_fmt_params(r.config or {})}")
    if r.clamped:
        print(f"{indent}clamped by max_step: {', '.join(r.clamped)}")
    trial = f"trial {r.trial}: " if r.trial is not None else ""
    if r.failed:
        print(f"{indent}{trial}failed: {r.failed}")
    else:
        print(f"{indent}{trial}value = {_fmt_value(r.value)}")
    if r.reward is not None:
        print(f"{indent}reward = {r.reward:.4g}")
    if r.hosts == [] and r.host is not None:
        for g in r.guardrails:
            print(f"{indent}guardrail: {g}")


def cmd_resume(args: argparse.Namespace) -> int:
    from knobflow import continuous
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "resume", name)
    try:
        was = continuous.resume(store, name)
    except (StoreError, ValueError) as exc:
        print(f"knobflow resume: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"experiment {name}: " + ("resumed; the next round tunes again" if was else "was not paused"))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Reading the store: list / show / best / export


def _default_url(args: argparse.Namespace) -> str:
    return str(args.storage or f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}")


def _store_for(args: argparse.Namespace) -> Any:
    """The store to read; None when it is a SQLite file that does not exist (reading creates nothing)."""
    from knobflow.store import Store

    url = _default_url(args)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    return Store(url)


def _no_store(args: argparse.Namespace, command: str, name: str) -> int:
    print(
        f"knobflow {command}: no experiment named {name!r}: there is no store at {_default_url(args)}", file=sys.stderr
    )
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


def _history_line(info: Any, p: Any) -> str | None:
    """What a study holds besides its own trials: warm-start copies and imported rows."""
    parts = []
    if isinstance(info, dict):
        text = f"warm start from {info.get('from')}: {info.get('copied', 0)} of {info.get('source_complete', 0)} "
        text += "complete trials copied"
        if info.get("skipped"):
            text += f" ({info['skipped']} skipped: `knobflow show` says why)"
        if info.get("best"):
            text += f"; the best (trial {info['best']['trial']}) is measured again after the baseline"
        parts.append(text)
    if p.imported:
        parts.append(f"{p.imported} imported trials")
    if not parts:
        return None
    return "; ".join(parts) + " (not counted in the budget)"


def cmd_list(args: argparse.Namespace) -> int:
    from knobflow.store import is_archive

    store = _store_for(args)
    if store is None:
        print("[]" if args.json else "no experiments (the store does not exist yet)")
        return EXIT_OK
    rows = []
    for name in store.names():
        if is_archive(name) and not args.all:
            continue
        v = views.view(store, name)
        reason = views.stop_reason(store, v)
        outcome = views.outcome(v)
        best = outcome["best"]
        rows.append(
            {
                "name": name,
                "trials": v.progress.done,
                "failed": v.progress.failed,
                "best": None if best is None else best["value"],
                "best_trial": None if best is None else best["trial"],
                "pareto": None if outcome["pareto"] is None else len(outcome["pareto"]),
                "objectives": outcome["objectives"],
                "status": views.status(v, reason),
                "stop_reason": reason,
                "imported": v.progress.imported,
                "warm_start": v.progress.warm_start,
                "objective_text": views.objectives_text(v, short=True),
            }
        )
    if args.json:
        for r in rows:
            del r["objective_text"]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no experiments in {store.url}")
        return EXIT_OK
    width = max(30, *(len(r["name"]) for r in rows))
    print(f"{'experiment':<{width}} {'trials':>6} {'failed':>6}  {'objective':<28} {'best':<18} status")
    for r in rows:
        if r["pareto"] is not None:
            best = f"pareto: {r['pareto']}"
        elif r["best"] is not None:
            best = f"{_fmt_value(r['best'])} (#{r['best_trial']})"
        else:
            best = "-"
        counts = f"{r['trials']:>6} {r['failed']:>6}"
        if len(r["objective_text"]) > 28:
            r["objective_text"] = r["objective_text"][:27] + "…"
        print(f"{r['name']:<{width}} {counts}  {r['objective_text']:<28} {best:<18} {r['status']}")
    return EXIT_OK


def _failed(v: views.View) -> list[dict[str, Any]]:
    return [
        {"trial": t.number, "reason": t.user_attrs.get("reason"), "source": views.trial_source(t)}
        for t in v.trials
        if t.state.name == "FAIL" and not t.user_attrs.get("interrupted")
    ]


def cmd_remeasure(args: argparse.Namespace) -> int:
    from knobflow import engine, remeasure, spec
    from knobflow.store import StoreError

    try:
        exp = spec.load(args.file)
    except spec.SpecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    home = _paths.knobflow_home()

    def on_run(label: str, i: int, value: float | None, why: str) -> None:
        shown = remeasure.fmt(value) if value is not None else f"FAILED: {why}"
        print(f"  run {i:>2} {label:<10} {shown}", flush=True)

    try:
        with _experiment_lock(home, exp.name):
            result = remeasure.remeasure(exp, times=args.times, trial=args.trial, keep=args.keep, on_run=on_run)
    except (ValueError, StoreError) as exc:
        print(f"knobflow remeasure: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except (RuntimeError, engine.SetupFailed) as exc:
        print(f"knobflow remeasure: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(remeasure.report(result))
    path = remeasure.write(result, args.out)
    print(f"written: {path}")
    return EXIT_OK if result.baseline.values and result.candidate.values else EXIT_FAILED


def cmd_promote(args: argparse.Namespace) -> int:
    from knobflow import engine, spec
    from knobflow.store import StoreError

    try:
        exp = spec.load(args.file)
    except spec.SpecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    try:
        summary = engine.summarize(exp)
    except StoreError as exc:
        print(f"knobflow promote: {exc}", file=sys.stderr)
        return EXIT_INVALID
    best = summary.best
    if best is None:
        print(f"knobflow promote: experiment {exp.name} has no completed feasible trial to promote", file=sys.stderr)
        return EXIT_FAILED
    where = args.hosts or (exp.model.promote.hosts if exp.model.promote else None) or exp.model.target.hosts
    print(f"best trial {best.number}: {summary.metric} = {summary.best_value} {best.params}")
    if not args.yes:
        if not sys.stdin.isatty():
            print("knobflow promote: confirm with --yes (no terminal to ask on)", file=sys.stderr)
            return EXIT_INVALID
        answer = input(f"apply it to {where!r} and leave it there? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing applied")
            return EXIT_FAILED
    try:
        applied = engine.promote(exp, hosts=args.hosts, on_line=print)
    except engine.PromoteFailed as exc:
        print(f"knobflow promote: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"applied trial {applied['trial']} to {', '.join(applied['hosts'])}")
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "best", name)
    try:
        v = views.view(store, name)
    except StoreError as exc:
        print(f"knobflow best: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = views.outcome(v)
    failed = _failed(v)
    found = bool(out["best"] or out["pareto"])
    if args.json:
        print(json.dumps({"experiment": name, **out, "failed": failed}, indent=2, default=str))
        return EXIT_OK if found else EXIT_FAILED
    _print_outcome(name, v, out)
    for f in failed:
        print(f"failed trial {f['trial']}: {f['reason']}")
    return EXIT_OK if found else EXIT_FAILED


def _print_outcome(name: str, v: views.View, out: dict[str, Any]) -> None:
    labels = [o["name"] for o in out["objectives"]]
    if out["pareto"] is not None:
        if not out["pareto"]:
            print(f"experiment {name}: no feasible completed trial: no Pareto front")
        else:
            print(f"experiment {name}: Pareto front of {len(out['pareto'])} trials ({views.objectives_text(v)}):")
            for r in out["pareto"]:
                vals = "  ".join(f"{k}={_fmt_value(x)}" for k, x in zip(labels, r["values"] or [], strict=False))
                print(f"  trial {r['trial']}: {vals}  {_fmt_params(r['params'])}")
    elif out["best"] is None:
        print(f"experiment {name}: no feasible completed trial")
    else:
        b = out["best"]
        runs = f", median of {len(b['measurements'])} measurements" if len(b["measurements"]) > 1 else ""
        source = f", {b['source']}" if b["source"] and b["source"] != "baseline" else ""
        print(f"experiment {name}: best trial {b['trial']}, {labels[0]} = {_fmt_value(b['value'])}{runs}{source}")
        for k, x in b["params"].items():
            print(f"  {k}: {_fmt_value(x)}")
    if out["baseline"] is not None:
        vals = ", ".join(_fmt_value(x) for x in out["baseline"]["values"] or [])
        broke = "" if out["baseline"]["feasible"] else " (it broke an SLO)"
        print(f"baseline (trial {out['baseline']['trial']}): {vals}{broke}")
    if out["gain_pct"] is not None:
        print(f"gain over the baseline: {out['gain_pct']:+.1f}%")
    if out["infeasible"]:
        print(f"{_count(out['infeasible'], 'trial')} broke an SLO (infeasible: never reported as best)")


def _describe_tunable(t: dict[str, Any]) -> str:
    kind = t.get("type", "?")
    if kind == "categorical":
        domain = f"one of {t.get('choices')}"
    elif kind == "bool":
        domain = "true/false"
    else:
        domain = f"[{t.get('low')}, {t.get('high')}]"
        if t.get("step") is not None:
            domain += f" step {t['step']}"
        if t.get("log"):
            domain += " log"
    when = f"  when {t['when']}" if t.get("when") is not None else ""
    return f"{t.get('name')} ({t.get('layer')}, {kind} {domain}, default {t.get('default')!r}){when}"


def _continuous_state(study: Any) -> dict[str, Any] | None:
    """A continuous experiment's round bookkeeping, without the learner's internal state."""
    doc = study.user_attrs.get("continuous")
    return None if not isinstance(doc, dict) else {k: v for k, v in doc.items() if k != "tuner"}


def cmd_show(args: argparse.Namespace) -> int:
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "show", name)
    try:
        v = views.view(store, name)
    except StoreError as exc:
        print(f"knobflow show: {exc}", file=sys.stderr)
        return EXIT_INVALID
    reason = views.stop_reason(store, v)
    out = views.outcome(v)
    p = v.progress
    spec = v.spec
    budget = (spec.get("budget") or {}).get("trials")
    trials = []
    for t in v.trials:
        complete = t.state.name == "COMPLETE" and t.values is not None
        trials.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "values": list(t.values) if complete else None,
                "feasible": (not t.user_attrs.get("slo_violations")) if complete else None,
                "violations": list(t.user_attrs.get("slo_violations") or []),
                "source": views.trial_source(t),
                "params": dict(t.params),
                "reason": t.user_attrs.get("reason"),
            }
        )
    data = {
        "experiment": name,
        "status": views.status(v, reason),
        "archived": v.study.user_attrs.get("archived"),
        "description": spec.get("description", ""),
        "created": v.study.user_attrs.get("created"),
        "storage": store.url,
        **{k: out[k] for k in ("objectives",)},
        "slos": list(spec.get("slos") or []),
        "constraints": list(spec.get("constraints") or []),
        "tunables": list(spec.get("tunables") or []),
        "layers": {k: (x or {}).get("role") for k, x in (spec.get("layers") or {}).items()},
        "benchmark": spec.get("benchmark"),
        "tuner": spec.get("tuner"),
        "budget": {
            "trials": budget,
            "done": p.done,
            "completed": p.completed,
            "failed": p.failed,
            "running": p.running,
            "waiting": p.waiting,
            "imported": p.imported,
            "warm_start": p.warm_start,
        },
        "warm_start": v.study.user_attrs.get("warm_start"),
        "continuous": _continuous_state(v.study),
        "stop_reason": reason,
        **{k: out[k] for k in ("best", "pareto", "baseline", "gain_pct", "infeasible")},
        "trials": trials,
    }
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    print(f"experiment {name} ({data['status']})")
    if data["archived"]:
        print(f"  archived from {data['archived'].get('from')} at {data['archived'].get('at')}")
    if data["description"]:
        print(f"  description: {' '.join(str(data['description']).split())}")
    print(f"  created: {data['created'] or '?'}  storage: {store.url}")
    print(f"  objective{'s' if len(out['objectives']) > 1 else ''}: {views.objectives_text(v)}")
    for s in data["slos"]:
        print(f"  SLO: {s}")
    for c in data["constraints"]:
        print(f"  constraint: {c}")
    if data["tunables"]:
        print(f"  tunables ({len(data['tunables'])}):")
        for t in data["tunables"]:
            print(f"    {_describe_tunable(t)}")
    if data["layers"]:
        print(f"  layers: {', '.join(f'{k} -> {r}' for k, r in data['layers'].items())}")
    b = data["benchmark"] or {}
    if b:
        print(f"  benchmark: {'role ' + str(b.get('role')) if b.get('role') else 'playbook ' + str(b.get('playbook'))}")
    tuner = data["tuner"] or {}
    if tuner:
        seed = f" (seed {tuner['seed']})" if tuner.get("seed") is not None else ""
        print(f"  tuner: {tuner.get('name')}{seed}")
    print(
        f"  budget: {p.done} of {budget if budget is not None else '?'} trials done ({p.failed} failed), "
        f"{p.running} running, {p.waiting} waiting"
    )
    history = _history_line(data["warm_start"], p)
    if history:
        print(f"  {history}")
    ws = data["warm_start"]
    if isinstance(ws, dict):
        if ws.get("dropped_tunables"):
            print(f"    warm start dropped tunables this experiment lacks: {', '.join(ws['dropped_tunables'])}")
        if ws.get("filled_defaults"):
            filled = ", ".join(f"{k} ({n} trials)" for k, n in ws["filled_defaults"].items())
            print(f"    warm start filled defaults for: {filled}")
        for s in ws.get("skipped_why") or []:
            print(f"    skipped source trial {s['trial']}: {s['why']}")
    if reason:
        print(f"  stopped because: {reason}")
    _print_outcome(name, v, out)
    labels = [o["name"] for o in out["objectives"]]
    print("trials:")
    head = "  ".join(f"{x:>12}" for x in labels)
    print(f"  {'#':>4}  {'state':<8}  {head}  {'feasible':<8}  {'source':<15}  params")
    for t in trials:
        vals = (
            "  ".join(f"{_fmt_value(x):>12}" for x in t["values"])
            if t["values"]
            else "  ".join(f"{'-':>12}" for _ in labels)
        )
        feas = "-" if t["feasible"] is None else ("yes" if t["feasible"] else "NO")
        tail = f"  ({t['reason']})" if t["state"] == "fail" and t["reason"] else ""
        print(
            f"  {t['number']:>4}  {t['state']:<8}  {vals}  {feas:<8}  {t['source']:<15}  {_fmt_params(t['params'])}"
            f"{tail}"
        )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from knobflow.importer import write_export
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "export", name)
    try:
        v = views.view(store, name)
    except StoreError as exc:
        print(f"knobflow export: {exc}", file=sys.stderr)
        return EXIT_INVALID
    fmt = args.format
    if fmt is None:
        ext = Path(args.output).suffix.lower() if args.output else ""
        fmt = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(ext, "csv")
    tunables = [str(t.get("name")) for t in v.spec.get("tunables") or [] if isinstance(t, dict)]
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            n = write_export(v.trials, tunables, fmt, f)
        print(f"exported {n} trials of experiment {name} to {args.output} ({fmt})", file=sys.stderr)
    else:
        write_export(v.trials, tunables, fmt, sys.stdout)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# report


def cmd_report(args: argparse.Namespace) -> int:
    from knobflow import report
    from knobflow.store import StoreError

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "report", name)
    try:
        page = report.render_experiment(store, name)
    except StoreError as exc:
        print(f"knobflow report: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except report.ReportError as exc:
        print(f"knobflow report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.output) if args.output else Path(f"{name}-report.html")
    out.write_text(page, encoding="utf-8")
    print(f"report of experiment {name} written to {out}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    from knobflow.service.serve import ServeError, serve

    try:
        serve(
            storage=_default_url(args),
            host=args.host,
            port=args.port,
            token_file=args.token_file,
            workers=args.workers,
            log_level=args.log_level,
        )
    except ServeError as exc:
        print(f"knobflow serve: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# import


def cmd_import(args: argparse.Namespace) -> int:
    from knobflow import importer, spec
    from knobflow.store import Store, StoreError

    exp = spec.load(args.into)
    url = exp.storage_url()
    store_exists = not (url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists())
    store = Store(url) if store_exists else None  # a dry run creates nothing
    study_baseline = None
    if store is not None and store.exists(exp.name):
        study_baseline = importer.measured_baseline(store.trials(store.load(exp.name)))
    try:
        plan = importer.plan_import(exp, Path(args.file), args.format, study_baseline=study_baseline, source=args.file)
    except importer.ImportFileError as exc:
        print(f"knobflow import: {exc}", file=sys.stderr)
        return EXIT_INVALID
    lines = [r.format(args.file) for r in plan.rejected]
    good, total = len(plan.trials), plan.total
    if total == 0:
        print(f"knobflow import: {args.file} has no rows", file=sys.stderr)
        return EXIT_INVALID
    if plan.rejected and (args.strict or not good):
        why = "(--strict)" if args.strict and good else "(no row can be imported)"
        print(
            f"knobflow import: imported nothing into experiment {exp.name}: "
            f"{len(lines)} of {total} rows rejected {why}:",
            file=sys.stderr,
        )
        for line in lines:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    if args.dry_run:
        head = f"would import {good} of {total} rows into experiment {exp.name} (dry run: nothing written)"
    else:
        try:
            study = (store or Store(url)).open(exp)
        except StoreError as exc:
            print(f"knobflow import: {exc}", file=sys.stderr)
            return EXIT_INVALID
        plan.apply(study)
        head = f"imported {good} of {total} rows into experiment {exp.name}"
    print(head + (f"; {len(lines)} rejected:" if lines else ""))
    for line in lines:
        print(line)
    relative = [s.text for s in exp.objectives().slos if s.relative]
    if relative and plan.baseline_from == "none":
        print(
            f"note: the SLOs {'; '.join(relative)} compare with the baseline, which neither the study nor the file "
            "(a row with baseline=true) has measured: the imported rows are recorded as breaking them",
            file=sys.stderr,
        )
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# delete


def _confirm(name: str, action: str) -> bool:
    print(f"This will {action}.")
    try:
        typed = input(f"Type the experiment's name ({name}) to confirm: ")
    except EOFError:
        print("\nknobflow delete: not confirmed (no input); pass --yes to delete without asking", file=sys.stderr)
        return False
    if typed.strip() != name:
        print(f"knobflow delete: you typed {typed.strip()!r}, not {name!r}: nothing deleted", file=sys.stderr)
        return False
    return True


def cmd_delete(args: argparse.Namespace) -> int:
    from knobflow.store import StoreError, is_archive

    name, store = _named_store(args)
    if store is None:
        return _no_store(args, "delete", name)
    archives = store.archives(name) if args.purge and args.all_archives else []
    exists = store.exists(name)
    if not exists and not archives:
        try:
            store.load(name)
        except StoreError as exc:
            print(f"knobflow delete: {exc}", file=sys.stderr)
        return EXIT_INVALID
    purge = args.purge or is_archive(name)
    parts = []
    if exists:
        count = len(store.trials(store.load(name)))
        if purge:
            parts.append(f"destroy {'archive' if is_archive(name) else 'experiment'} {name} and its {count} trials")
        else:
            parts.append(f"archive experiment {name} ({count} trials) and free its name (--purge destroys it instead)")
    if archives:
        parts.append(f"destroy its {len(archives)} archive{'s' if len(archives) != 1 else ''} ({', '.join(archives)})")
    if not args.yes and not _confirm(name, " and ".join(parts)):
        return EXIT_FAILED
    home = _paths.knobflow_home()
    lock = _experiment_lock(home, name) if home.is_dir() and not is_archive(name) else contextlib.nullcontext()
    try:
        with lock:
            if exists and purge:
                store.delete(name)
                print(f"deleted {'archive' if is_archive(name) else 'experiment'} {name} for good")
            elif exists:
                target = store.archive(name)
                print(
                    f"archived experiment {name} as {target}; the name {name} is free "
                    f"(`knobflow delete '{target}' --yes` destroys the archive)"
                )
            for a in archives:
                store.delete(a)
                print(f"deleted archive {a} for good")
    except RuntimeError as exc:
        print(f"knobflow delete: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreError as exc:
        print(f"knobflow delete: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# kruize


def cmd_kruize_import(args: argparse.Namespace) -> int:
    from knobflow import kruize, spec

    try:
        roles = dict(kruize.parse_assignment(x, "--role") for x in args.role)
        layers = {k: v.strip() for k, v in (kruize.parse_assignment(x, "--layer") for x in args.layer)}
        defaults = dict(kruize.parse_assignment(x, "--default") for x in args.default)
        bench_vars = {
            k: kruize.yaml_value(v)
            for k, v in (kruize.parse_assignment(x, "--benchmark-var") for x in args.benchmark_var)
        }
        variables = {k: kruize.yaml_value(v) for k, v in (kruize.parse_assignment(x, "--var") for x in args.var)}
    except ValueError as exc:
        print(f"knobflow kruize import: {exc}", file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.force:
        print(f"knobflow kruize import: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return EXIT_INVALID
    try:
        conv = kruize.to_experiment(
            kruize.load_search_space(Path(args.file)),
            source=args.file,
            roles=roles,
            layers=layers,
            defaults=defaults,
            benchmark_role=args.benchmark_role,
            benchmark_vars=bench_vars,
            variables=variables,
        )
    except kruize.KruizeError as exc:
        for p in exc.problems:
            print(f"{exc.source}: {p}", file=sys.stderr)
        print(
            f"{exc.source}: cannot convert ({_count(len(exc.problems), 'problem')})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    text = kruize.experiment_yaml(conv, args.file)
    for w in conv.warnings:
        print(f"warning: {w}", file=sys.stderr)
    where = str(out) if out is not None else "<stdout>"
    problems: list[str] = []
    try:
        spec.parse(text, source=where, base_dir=(out.parent if out is not None else Path.cwd()).resolve())
    except spec.SpecError as exc:
        problems = [p.format(where) for p in exc.problems]
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        d = conv.data
        print(
            f"wrote {out}: experiment {d['name']!r}, {len(d['tunables'])} tunables, tuner {d['tuner']['name']}, "
            f"{d['budget']['trials']} trials ({len(conv.warnings)} warnings)",
            file=sys.stderr,
        )
    if problems:
        print("the experiment file does not validate yet; edit it before running it:", file=sys.stderr)
        for p in problems:
            print(p, file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_kruize_export(args: argparse.Namespace) -> int:
    from knobflow import kruize, spec

    exp = spec.load(args.file)
    try:
        conv = kruize.from_experiment(exp)
    except kruize.KruizeError as exc:
        for p in exc.problems:
            print(f"{args.file}: {p}", file=sys.stderr)
        print(
            f"{args.file}: Kruize cannot express this experiment ({_count(len(exc.problems), 'problem')})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    for w in conv.warnings:
        print(f"warning: {w}", file=sys.stderr)
    text = json.dumps(conv.data, indent=2) + "\n"
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.force:
            print(f"knobflow kruize export: {out} exists; pass --force to overwrite it", file=sys.stderr)
            return EXIT_INVALID
        out.write_text(text)
        print(f"wrote {out}: Kruize search space {exp.name!r}, {len(conv.data['tunables'])} tunables", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# select


def cmd_select(args: argparse.Namespace) -> int:
    """Rank an experiment's tunables by importance and write a reduced experiment file."""
    import yaml

    from knobflow import select, spec
    from knobflow.store import StoreError

    exp = spec.load(args.file)
    data = yaml.safe_load(Path(args.file).read_text())
    stem = Path(args.file).with_suffix("")
    if exp.multi_objective:
        print("knobflow select: ranking needs a single objective (this experiment has several)", file=sys.stderr)
        return EXIT_INVALID
    if args.top is None:
        args.top = min(select.DEFAULT_TOP, len(exp.tunables))
    if args.top < 1 or args.top > len(exp.tunables):
        print(f"knobflow select: --top must be between 1 and {len(exp.tunables)}", file=sys.stderr)
        return EXIT_INVALID

    def plan_screening(reason: str) -> int:
        out = Path(f"{stem}-screening.yaml")
        screening = select.screening_file(data, trials=args.screen_trials, design=args.design)
        kept = ""
        if out.exists():  # never overwrite: it may have been edited, or be running
            screening = yaml.safe_load(out.read_text())
            kept = ", already there: not rewritten"
        else:
            out.write_text(f"# Written by knobflow select: {reason}\n" + select.dump(screening))
        print(
            f"{reason}\nscreening run planned: {out} ({screening['budget']['trials']} trials, tuner "
            f"{screening['tuner']['name']}{kept}). Run it, then rank from it:\n"
            f"  knobflow run {out}\n  knobflow select {args.file} --from {screening['name']} --top {args.top}"
        )
        return EXIT_OK if args.screen else EXIT_FAILED

    if args.screen:
        return plan_screening("a screening run explores the whole space, which a ranking needs")
    source = args.source or exp.name
    args.storage = args.storage or exp.storage_url()
    store = _store_for(args)
    try:
        if store is None:
            raise StoreError(f"no experiment named {source!r}: there is no store at {_default_url(args)}")
        trials = store.trials(store.load(source))
    except StoreError as exc:
        return plan_screening(f"knobflow select: {exc}")
    names = [t.name for t in exp.tunables]
    evaluator = args.evaluator or select.default_evaluator(trials)
    try:
        ranking = select.rank(
            trials,
            maximize=exp.maximize,
            names=names,
            k=args.top,
            evaluator=evaluator,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except select.SelectError as exc:
        if "usable trials" in str(exc):
            return plan_screening(f"knobflow select: {exc}")
        print(f"knobflow select: {exc}", file=sys.stderr)
        return EXIT_INVALID
    keep = [r.name for r in ranking if r.ranked][: args.top]
    best = select.best_params(trials, maximize=exp.maximize) if args.pin == "best" else None
    pin = select.pin_values(exp.space(), keep, best) if best is not None else None
    reduced = select.reduce(data, keep, pin=pin)
    pinned_at = "the values of the best trial" if pin is not None else "their defaults"
    out = Path(args.output) if args.output else Path(f"{stem}-top{args.top}.yaml")
    dropped = [n for n in names if n not in {t["name"] for t in reduced["tunables"]}]
    left_out = f" Left out (inactive for good under the pinned values): {', '.join(dropped)}." if dropped else ""
    header = (
        f"# Written by knobflow select from experiment {source!r} ({len(select.usable_trials(trials))} trials, "
        f"{evaluator} importance, {args.bootstrap} bootstrap resamples): the top {args.top} tunables are "
        f"tuned, the others pinned at {pinned_at}.{left_out}\n"
    )
    out.write_text(header + select.dump(reduced))
    spec.load(out)  # the reduced file must be valid; a bug here should fail loudly, not later
    if args.json:
        rows = [
            {
                "tunable": r.name,
                "importance": r.importance,
                "sd": r.sd,
                "top_k_share": r.top_k_share,
                "ranked": r.ranked,
                "kept": r.name in reduced_keep(reduced),
                "dropped": r.name in dropped,
                **({"sigma": r.sigma, "effects": r.effects} if evaluator == "morris" else {}),
            }
            for r in ranking
        ]
        doc = {"source": source, "evaluator": evaluator, "ranking": rows, "file": str(out), "pinned_at": args.pin}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    kept = reduced_keep(reduced)
    morris = evaluator == "morris"
    print(
        f"importance of {len(names)} tunables from {len(select.usable_trials(trials))} trials of {source!r} "
        f"({evaluator}; median and 10-90% range over {args.bootstrap} bootstrap resamples; "
        f"'in top {args.top}': share of resamples"
        + ("; importance is mu*, the mean absolute elementary effect; sigma their spread)" if morris else ")")
    )
    extra = f" {'sigma':>7} {'effects':>7}" if morris else ""
    print(f"{'':2}{'tunable':<32} {'importance':>10} {'range':>15} {'in top ' + str(args.top):>10}{extra}")
    for r in ranking:
        mark = "* " if r.name in kept else "  "
        if not r.ranked:
            why = "(no elementary effect: not ranked)" if morris else "(conditional: not ranked)"
            print(f"{mark}{r.name:<32} {why:>37}")
            continue
        span = f"{r.low:.3f}-{r.high:.3f}"
        extra = f" {r.sigma:>7.3f} {r.effects:>7d}" if morris else ""
        print(f"{mark}{r.name:<32} {r.importance:>10.3f} {span:>15} {100 * r.top_k_share:>9.0f}%{extra}")
    print(f"* tuned in {out} (experiment {reduced['name']!r}); the others are pinned at {pinned_at}{left_out}")
    return EXIT_OK


def reduced_keep(reduced: dict[str, Any]) -> set[str]:
    return {t["name"] for t in reduced["tunables"] if not str(t.get("description", "")).startswith("pinned at")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knobflow", description="Tune software environments with Airflow, Ansible and Optuna."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    storage_help = "storage URL (default: the file's, or $KNOBFLOW_HOME/knobflow.db)"

    p = sub.add_parser("validate", help="check experiment files; nothing is created")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run (or resume) an experiment through its Airflow DAG")
    p.add_argument("file")
    p.add_argument("--trials", type=int, help="total trial budget (raise it to add trials to a finished experiment)")
    p.add_argument("--max-failed", type=int, help="stop after this many failed trials")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("round", help="one round of a continuous experiment (mode: continuous)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_round)

    p = sub.add_parser("resume", help="clear the pause of a continuous experiment")
    p.add_argument("name", help="experiment name, or its file")
    p.add_argument("--storage", help=storage_help)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("list", help="experiments in the store: trials, objectives, best, status")
    p.add_argument("--storage", help="storage URL (default: $KNOBFLOW_HOME/knobflow.db)")
    p.add_argument("--all", action="store_true", help="also list archived experiments")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    for name, func, text in (
        ("show", cmd_show, "an experiment in detail: its file, progress, best or Pareto front, and every trial"),
        ("best", cmd_best, "the best configuration (or the Pareto front), its gain, and failed trials"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("name", help="experiment name, or its file")
        p.add_argument("--storage", help=storage_help)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "remeasure",
        help="run the baseline and the best (or a chosen) trial again, interleaved, and compare their spread",
    )
    p.add_argument("file", type=Path, help="the experiment file")
    p.add_argument("--times", type=int, default=10, help="runs of each configuration (10)")
    p.add_argument("--trial", type=int, help="the trial to compare with the baseline (default: the best)")
    p.add_argument(
        "--keep",
        choices=["none", "candidate"],
        default="none",
        help="leave the target reverted (none, the default) or with the candidate applied",
    )
    p.add_argument("--out", type=Path, help="JSON file for the result (default: the experiment's log folder)")
    p.set_defaults(func=cmd_remeasure)

    p = sub.add_parser(
        "promote", help="apply an experiment's best configuration to its target (or --hosts) and leave it there"
    )
    p.add_argument("file", help="the experiment file")
    p.add_argument("--hosts", help="an inventory host or group (default: promote.hosts, else target.hosts)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("export", help="write an experiment's trials as CSV or JSON rows (`import` reads them back)")
    p.add_argument("name", help="experiment name, or its file")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--format", choices=("csv", "json", "jsonl"), help="default: from -o's extension, else csv")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write an experiment's page (best, plots, every trial) as one HTML file")
    p.add_argument("name", help="experiment name, or its file")
    p.add_argument("-o", "--output", help="file to write (default: NAME-report.html in the current folder)")
    p.add_argument("--storage", help=storage_help)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("import", help="add measured configurations from a CSV or JSON file to an experiment")
    p.add_argument("file", help="CSV, JSON (a list of row objects) or JSON lines")
    p.add_argument("--into", required=True, metavar="EXPERIMENT.yaml", help="the experiment file")
    p.add_argument("--format", choices=("csv", "json", "jsonl"), help="default: from the file's extension")
    p.add_argument("--strict", action="store_true", help="import nothing if any row is rejected")
    p.add_argument("--dry-run", action="store_true", help="check the rows; write nothing")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("delete", help="archive an experiment (freeing its name), or destroy it with --purge")
    p.add_argument("name", help="experiment name (or archive name), or its file")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--purge", action="store_true", help="destroy the study and its trials instead of archiving them")
    p.add_argument("--all-archives", action="store_true", help="with --purge: also destroy the experiment's archives")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("kruize", help="convert Kruize HPO search spaces to experiment files and back")
    ksub = p.add_subparsers(dest="kruize_command", required=True)
    k = ksub.add_parser("import", help="a Kruize search-space JSON -> an experiment file")
    k.add_argument("file", help="search_space.json (or a whole EXP_TRIAL_GENERATE_NEW request)")
    k.add_argument("-o", "--output", help="experiment file to write (default: standard output)")
    k.add_argument("--role", action="append", default=[], metavar="LAYER=ROLE", help="the role applying a layer")
    k.add_argument("--layer", action="append", default=[], metavar="NAME=LAYER", help="put a tunable in a layer")
    k.add_argument("--default", action="append", default=[], metavar="NAME=VALUE", help="a tunable's current value")
    k.add_argument("--benchmark-role", default="bench_command", metavar="ROLE", help="default: bench_command")
    k.add_argument("--benchmark-var", action="append", default=[], metavar="KEY=VALUE", help="a benchmark variable")
    k.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="an experiment variable")
    k.add_argument("--force", action="store_true", help="overwrite the output file")
    k.set_defaults(func=cmd_kruize_import)
    k = ksub.add_parser("export", help="an experiment file -> a Kruize search-space JSON")
    k.add_argument("file", help="the experiment file")
    k.add_argument("-o", "--output", help="JSON file to write (default: standard output)")
    k.add_argument("--force", action="store_true", help="overwrite the output file")
    k.set_defaults(func=cmd_kruize_export)

    p = sub.add_parser(
        "serve",
        help="run the tuning service: the Kruize HPO API and the native API (/api/v1) over the store",
        description=(
            "Serve the store's experiments over HTTP: the Kruize HPO contract on /experiment_trials and knobflow's "
            "native API on /api/v1 (OpenAPI at /docs). Beyond loopback it needs a bearer token "
            "(KNOBFLOW_SERVICE_TOKEN or --token-file), checked on every request."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8085, help="port (default 8085, Kruize HPO's)")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--token-file", help="a file whose first line is the bearer token (else KNOBFLOW_SERVICE_TOKEN)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("select", help="rank tunables by importance and write a reduced experiment file")
    p.add_argument("file", help="the experiment file")
    p.add_argument(
        "--top", type=int, help="how many tunables to keep tuning (default 8, or every tunable if there are fewer)"
    )
    p.add_argument("--from", dest="source", metavar="NAME", help="rank from this experiment's trials (a screening run)")
    p.add_argument(
        "--evaluator",
        choices=["gp", "fanova", "ped-anova", "morris"],
        help="importance measure (default: morris for the trials of a morris screening, else gp)",
    )
    p.add_argument("--bootstrap", type=int, default=30, help="resamples that measure the ranking's uncertainty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--screen", action="store_true", help="only plan a screening run (write its experiment file)")
    p.add_argument(
        "--screen-trials", type=int, help="the screening run's budget (default 4 x (tunables + 1), at least 16)"
    )
    p.add_argument(
        "--design",
        choices=["qmc", "morris"],
        default="qmc",
        help="the screening run's tuner: qmc (space-filling, default) or morris (one-at-a-time trajectories)",
    )
    p.add_argument(
        "--pin",
        choices=["best", "default"],
        default="best",
        help="what the tunables not kept are pinned at: their values in the best trial ranked from (default), "
        "or their defaults",
    )
    p.add_argument("-o", "--output", help="the reduced file (default: FILE-top<K>.yaml next to FILE)")
    p.add_argument("--storage", help="storage URL (default: the file's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_select)
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
