"""The experiment loop's steps, shared by every driver (the Airflow DAG, the CLI, later the service).

``prepare`` opens the study and recovers trials a dead process left behind; ``run_trial`` asks the
tuner, applies the configuration and runs the benchmark in one playbook run, and tells the result;
``finish`` summarises and puts the target where the experiment says. No driver holds tuning logic.
"""

from __future__ import annotations

import math
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from knobflow import _paths, progress
from knobflow.ansible import bridge
from knobflow.spec import Experiment
from knobflow.store import Store, TrialRecord, distribution
from knobflow.tuners import registry


class ExperimentStopped(Exception):
    """A stop rule fired before this trial could start (budget spent, too many failures)."""


@dataclass
class Limits:
    trials: int
    max_failed: int


@dataclass
class Plan:
    """What ``prepare`` found: how many trial slots this run has, and why it may have none."""

    experiment: str
    done: int
    failed: int
    slots: int
    recovered: list[int]
    limits: Limits
    stop_reason: str | None = None


@dataclass
class TrialResult:
    number: int
    state: str  # complete | fail
    params: dict[str, Any]
    value: float | None
    metrics: dict[str, Any]
    reason: str | None
    baseline: bool
    best_value: float | None
    best_number: int | None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Summary:
    experiment: str
    trials: int
    completed: int
    failed: int
    best: TrialRecord | None
    baseline: TrialRecord | None
    gain_pct: float | None
    metric: str
    direction: str
    stop_reason: str | None
    finish_action: str
    finish_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def limits(exp: Experiment, *, trials: int | None = None, max_failed: int | None = None) -> Limits:
    return Limits(trials=trials or exp.model.budget.trials, max_failed=max_failed or exp.model.budget.max_failed)


def _stop_reason(done: int, failed: int, lim: Limits) -> str | None:
    if failed >= lim.max_failed:
        return (
            f"stopped: {failed} trials failed, which reaches max_failed={lim.max_failed}. "
            f"Fix the cause (see the failed trials' reasons with `knobflow best` or the trial logs), "
            f"or raise budget.max_failed, then run the experiment again to continue."
        )
    if done >= lim.trials:
        return f"budget spent: {done} of {lim.trials} trials done"
    return None


def open_study(exp: Experiment) -> tuple[Store, optuna.Study]:
    store = Store(exp.storage_url())
    return store, store.open(exp)


def prepare(exp: Experiment, lim: Limits) -> Plan:
    store, study = open_study(exp)
    grace = exp.model.budget.trial_timeout + 60
    recovered = store.recover(study, grace_s=grace)
    p = store.progress(study)
    reason = _stop_reason(p.done, p.failed, lim)
    slots = 0 if reason else lim.trials - p.done
    return Plan(
        experiment=exp.name,
        done=p.done,
        failed=p.failed,
        slots=min(slots, 1024),
        recovered=recovered,
        limits=lim,
        stop_reason=reason,
    )


def _extravars(exp: Experiment, number: int, params: dict[str, Any]) -> dict[str, Any]:
    m = exp.model
    b = m.benchmark
    knobflow = {
        "experiment": exp.name,
        "trial": number,
        "home": str(_paths.knobflow_home()),
        "experiment_dir": str(exp.base_dir),
        "params": exp.params_by_layer(params),
        "layers": {name: {"role": layer.role} for name, layer in m.layers.items()},
        "benchmark": {
            "role": b.role or "",
            "warmup": b.warmup,
            "repeats": b.repeats,
            "aggregate": b.aggregate,
            "timeout": b.timeout,
        },
    }
    return {**exp.extravars(), "knobflow": knobflow}


def trial_log_path(exp: Experiment, number: int) -> Path:
    return _paths.knobflow_home() / "logs" / exp.name / f"trial-{number:04d}.log"


def _objective(exp: Experiment, metrics: dict[str, Any]) -> tuple[float | None, str | None]:
    metric = exp.model.objective.metric
    if metric not in metrics:
        got = ", ".join(sorted(metrics)) or "nothing"
        return None, f"the benchmark did not report the objective metric {metric!r} (it reported: {got})"
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None, f"the objective metric {metric!r} is not a number: {metrics[metric]!r}"
    if not math.isfinite(value):
        return None, f"the objective metric {metric!r} is not finite: {value}"
    return value, None


def _best(study: optuna.Study, store: Store) -> tuple[float | None, int | None]:
    done = [t for t in store.trials(study) if t.state == TrialState.COMPLETE]
    if not done:
        return None, None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = pick(done, key=lambda t: t.value if t.value is not None else float("nan"))
    return best.value, best.number


def _playbook_for(exp: Experiment, workdir: Path) -> Path:
    """The playbook of one trial: trial.yml, or apply.yml followed by the user's benchmark playbook."""
    user_pb = exp.benchmark_playbook()
    if user_pb is None:
        return _paths.playbooks_dir() / "trial.yml"
    wrapper = workdir / "trial-with-playbook.yml"
    wrapper.write_text(
        f"---\n- import_playbook: {_paths.playbooks_dir() / 'apply.yml'}\n- import_playbook: {user_pb}\n"
    )
    return wrapper


def _run_on_target(
    exp: Experiment,
    playbook: str | Path,
    extravars: dict[str, Any],
    log_path: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> bridge.RunResult:
    """Run one playbook against the experiment's inventory, hosts and roles."""
    return bridge.run_playbook(
        playbook,
        inventory=exp.inventory(),
        extravars=extravars,
        roles_path=exp.roles_path(),
        limit=exp.model.target.hosts,
        timeout=exp.model.budget.trial_timeout,
        log_path=log_path,
        on_line=on_line,
        cancel=cancel,
    )


def _run_playbooks(
    exp: Experiment,
    number: int,
    params: dict[str, Any],
    *,
    on_line: Callable[[str], None] | None,
    cancel: Callable[[], bool] | None,
) -> bridge.RunResult:
    """One trial's Ansible: trial.yml (or apply.yml + the user's benchmark playbook, then revert on failure)."""
    log = trial_log_path(exp, number)
    extravars = _extravars(exp, number, params)
    with tempfile.TemporaryDirectory(prefix="knobflow-trial-") as tmp:
        result = _run_on_target(exp, _playbook_for(exp, Path(tmp)), extravars, log, on_line=on_line, cancel=cancel)
    # trial.yml reverts in its rescue, but a user's playbook cannot, and a run killed for its time
    # limit (or cancelled) never reaches the rescue: revert here then.
    if not result.ok and (exp.benchmark_playbook() is not None or result.status in ("timeout", "canceled")):
        reverted = _run_on_target(exp, "revert.yml", extravars, log)
        if not reverted.ok:
            result.reason = f"{result.reason}; reverting the target failed too: {reverted.reason}"
    return result


def run_trial(
    exp: Experiment,
    lim: Limits,
    *,
    run_id: str | None = None,
    on_label: Callable[[str], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrialResult:
    """Run one trial from ask to tell. Raises :class:`ExperimentStopped` when a stop rule fires."""
    t_start = time.monotonic()
    store, study = open_study(exp)
    p = store.progress(study)
    reason = _stop_reason(p.done + p.running, p.failed, lim)
    if reason:
        raise ExperimentStopped(reason)
    tuner = registry.create(
        exp.model.tuner.name, seed=exp.model.tuner.seed, options=exp.model.tuner.options, defaults=exp.defaults()
    )
    dists = {t.name: distribution(t) for t in exp.tunables}
    trial = tuner.ask(study, dists)
    store.mark_started(study, trial, run_id)
    params = dict(trial.params)
    number = trial.number
    baseline = bool(trial.user_attrs.get("baseline"))
    if on_label is not None:
        on_label(f"trial {number}" + (" (baseline)" if baseline else ""))
    t_asked = time.monotonic()

    try:
        result = _run_playbooks(exp, number, params, on_line=on_line, cancel=cancel)
    except BaseException as exc:
        # Never leave a trial RUNNING behind a live process: record why it stopped, then re-raise.
        # Exceptions are errors; other BaseExceptions stop the process (Ctrl-C, SystemExit, Airflow's
        # AirflowTaskTerminated on SIGTERM): the trial was interrupted and its configuration runs again.
        why = "knobflow error" if isinstance(exc, Exception) else "interrupted"
        store.finish(
            study,
            number,
            state=TrialState.FAIL,
            value=None,
            attrs={"reason": f"{why} while running the trial: {exc!r}", "interrupted": why == "interrupted"},
            tuner=tuner,
        )
        if why == "interrupted":  # run this configuration again next time, as recovery would
            store.requeue(study, number, params, baseline=baseline)
        raise

    metrics: dict[str, Any] = dict(result.stats.get("knobflow_metrics") or {})
    bench = result.stats.get("knobflow_benchmark") or {}
    value: float | None = None
    fail_reason: str | None = None
    if not result.ok:
        fail_reason = result.reason
    elif not metrics:
        fail_reason = "the benchmark reported no knobflow_metrics (its role or playbook must set_stats them)"
    else:
        value, fail_reason = _objective(exp, metrics)
    state = TrialState.COMPLETE if fail_reason is None else TrialState.FAIL
    bench_s = sum(v for k, v in result.task_times.items() if "benchmark" in k.lower())
    timings = {
        "ask_s": t_asked - t_start,
        "playbook_s": result.duration_s,
        "benchmark_task_s": bench_s,
    }
    attrs: dict[str, Any] = {
        "metrics": metrics,
        "benchmark": bench,
        "host": socket.gethostname(),
        "log": str(trial_log_path(exp, number)),
        "finished": time.time(),
        "timings": timings,
    }
    if fail_reason is not None:
        attrs["reason"] = fail_reason
    t_tell = time.monotonic()
    store.finish(study, number, state=state, value=value, attrs=attrs, tuner=tuner)
    timings["tell_s"] = time.monotonic() - t_tell
    best_value, best_number = _best(study, store)
    out = TrialResult(
        number=number,
        state="complete" if state == TrialState.COMPLETE else "fail",
        params=params,
        value=value,
        metrics=metrics,
        reason=fail_reason,
        baseline=baseline,
        best_value=best_value,
        best_number=best_number,
        timings=timings,
    )
    progress.emit("trial", out)
    return out


def summarize(exp: Experiment, lim: Limits | None = None) -> Summary:
    store, study = open_study(exp)
    lim = lim or limits(exp)
    records = [TrialRecord.from_frozen(t) for t in store.trials(study)]
    p = store.progress(study)
    completed = [r for r in records if r.state == "complete" and r.value is not None]
    best: TrialRecord | None = None
    if completed:
        pick = max if exp.maximize else min
        best = pick(completed, key=lambda r: r.value or 0.0)
    baseline = next((r for r in completed if r.baseline), None)
    gain: float | None = None
    if best is not None and baseline is not None and baseline.value:
        delta = (best.value or 0.0) - baseline.value
        gain = 100.0 * (delta if exp.maximize else -delta) / abs(baseline.value)
    return Summary(
        experiment=exp.name,
        trials=p.done,
        completed=p.completed,
        failed=p.failed,
        best=best,
        baseline=baseline,
        gain_pct=gain,
        metric=exp.model.objective.metric,
        direction=exp.model.objective.direction,
        stop_reason=_stop_reason(p.done, p.failed, lim),
        finish_action=exp.model.finish,
    )


def finish(exp: Experiment, lim: Limits) -> Summary:
    """Summarise the experiment and leave the target as ``finish`` says (revert, best or keep)."""
    summary = summarize(exp, lim)
    action = exp.model.finish
    if action == "keep":
        progress.emit("finish", summary)
        return summary
    if action == "best" and summary.best is not None:
        playbook, extravars = "apply.yml", _extravars(exp, summary.best.number, summary.best.params)
    else:
        summary.finish_action = "revert"  # also for `best` when no trial completed
        playbook, extravars = "revert.yml", _extravars(exp, -1, {})
    result = _run_on_target(exp, playbook, extravars, _paths.knobflow_home() / "logs" / exp.name / "finish.log")
    if not result.ok:
        summary.finish_error = f"{action} failed: {result.reason}"
    progress.emit("finish", summary)
    return summary
