"""The experiment loop's steps, shared by every driver (the Airflow DAG, the CLI, later the service).

``prepare`` opens the study and recovers trials a dead process left behind; ``run_trial`` asks the
tuner, applies the configuration and runs the benchmark in one playbook run, and tells the result;
``finish`` summarises and puts the target where the experiment says. No driver holds tuning logic.
"""

from __future__ import annotations

import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from knobflow import _paths, progress, results, spec
from knobflow.ansible import bridge
from knobflow.spec import Experiment
from knobflow.store import Store, TrialRecord, counts_toward_budget
from knobflow.tuners import base as tuners_base
from knobflow.tuners import registry


class SetupFailed(Exception):
    """The experiment's set-up steps, or a layer role's validation of the tunables, failed."""


class ExperimentStopped(Exception):
    """A stop rule fired before this trial could start (budget spent, too many failures)."""


class PromoteFailed(Exception):
    """The best configuration could not be applied (no completed trial, or Ansible failed)."""


class HostsBusy(Exception):
    """No target host became free for this trial in time (other trials or experiments hold them)."""


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
    values: list[float] | None = None
    violations: list[str] = field(default_factory=list)  # SLOs broken: the trial is infeasible
    hosts: list[str] = field(default_factory=list)  # the target hosts it ran on
    replayed: bool = False  # a retried task found its trial already finished: nothing was run again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_frozen(cls, exp: Experiment, t: Any, *, replayed: bool = False) -> TrialResult:
        """The result of a trial already recorded in the store."""
        r = TrialRecord.from_frozen(t)
        return cls(
            number=r.number,
            state="complete" if r.state == "complete" else "fail",
            params=r.params,
            value=r.value,
            values=r.values,
            violations=r.violations,
            metrics=r.metrics,
            reason=r.reason,
            baseline=r.baseline,
            best_value=None,
            best_number=None,
            timings=dict(r.attrs.get("timings") or {}),
            hosts=list(r.attrs.get("targets") or []),
            replayed=replayed,
        )


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
    best_value: float | None = None  # the median over the best configuration's measurements
    best_measurements: int = 0
    pareto: list[TrialRecord] = field(default_factory=list)  # multi-objective: the feasible Pareto front
    objectives: list[dict[str, str]] = field(default_factory=list)
    infeasible: int = 0  # complete trials that broke an SLO

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def limits(exp: Experiment, *, trials: int | None = None, max_failed: int | None = None) -> Limits:
    return Limits(trials=trials or exp.model.budget.trials, max_failed=max_failed or exp.model.budget.max_failed)


# Stop reasons that end an experiment as planned; any other (max_failed reached, no configuration
# left, a failed set-up) is a failure of the experiment.
PLANNED_ENDS = ("budget spent", "time limit reached", "target reached", "patience exhausted")


def failed_stop(reason: str | None) -> bool:
    """Whether a stop reason means the experiment failed (not a planned end such as its budget)."""
    return bool(reason) and not str(reason).startswith(PLANNED_ENDS)


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


def stop_reason(
    exp: Experiment,
    store: Store,
    study: optuna.Study,
    lim: Limits,
    *,
    running: int = 0,
    trials: list[FrozenTrial] | None = None,
) -> str | None:
    """Why no further trial may start: trials, failures, time limit, target reached, patience.
    ``trials``: the study's trials, when the caller has listed them already."""
    trials = store.trials(study) if trials is None else trials
    p = store.progress(study, trials)
    reason = _stop_reason(p.done + running, p.failed, lim)
    if reason:
        return reason
    b = exp.model.budget
    limit_s = b.time_limit_s()
    if limit_s is not None:
        busy = results.busy_seconds(trials)
        if busy >= limit_s:
            return f"time limit reached: trials have run for {busy:.0f} s of budget.time_limit {limit_s} s"
    objectives = exp.objectives()
    if b.target is not None:
        top = results.best(exp.space(), objectives, trials)
        if top is not None and not objectives.better(b.target, top.value):
            return f"target reached: best {top.value:g} (trial {top.record.number}) reaches budget.target {b.target:g}"
    if b.patience is not None and not objectives.multi:
        since = results.trials_since_improvement(objectives, trials)
        if since >= b.patience:
            return f"patience exhausted: no improvement in the last {since} trials (budget.patience {b.patience})"
    return None


def open_study(exp: Experiment) -> tuple[Store, optuna.Study]:
    store = Store(exp.storage_url())
    return store, store.open(exp)


def target_hosts(exp: Experiment) -> list[str]:
    """The inventory hosts that ``target.hosts`` selects, in the inventory's order."""
    from knobflow.ansible import inventory

    try:
        return [h.name for h in inventory.hosts(exp.inventory(), exp.model.target.hosts)]
    except ValueError as exc:
        raise SetupFailed(str(exc)) from None


def _leases(store: Store) -> Any:
    from knobflow.leases import Leases

    return Leases(store.engine)


def recover(exp: Experiment, store: Store, study: optuna.Study, *, held: list[str] | None = None) -> list[int]:
    """Fail the trials of ``exp`` that a dead process left RUNNING, put their target hosts back
    (revert.yml, under the hosts' leases), and queue their configurations to run again.

    ``held``: hosts whose leases the caller holds already (a trial that has just been placed on a
    host a dead trial left): their dead trials are reverted under the caller's lease, before the
    caller's trial touches them.

    One process recovers each dead trial. When a trial of this experiment holds the dead trial's
    hosts now (it took them after the dead holder's lease went), or another process is reverting
    them, the dead trial is left to that process: a trial placed on a host recovers the dead trials
    there before it runs. A host held by anything else (another experiment's trial, a set-up or
    finish) is not reverted: the holder has applied its own configuration, or is reverting it.
    """
    from knobflow.leases import host_key

    def revert(t: Any) -> str | None:
        from knobflow.store import LeaveToOther

        notes = []
        hosts = list(t.user_attrs.get("targets") or [])
        leases = _leases(store)
        ours = held is not None and set(hosts) <= set(held)  # the caller holds them: revert under its lease
        token = None
        holders: list[dict[str, Any]] = []
        if hosts and not ours:
            keys = [host_key(h) for h in hosts]
            token = leases.try_acquire(keys, {"experiment": exp.name, "revert_of": t.number})
            if token is None:
                holders = [lease.holder for lease in leases.live() if lease.key in keys]
            if any(h.get("experiment") == exp.name and "why" not in h for h in holders):
                # A trial of this experiment took the host since the dead one's lease went (it recovers
                # the dead trial before it runs anything), or another process is reverting it now.
                raise LeaveToOther
        try:
            tag = t.user_attrs.get("run_tag")
            if tag and (t.user_attrs.get("owner") or {}).get("host") == socket.gethostname():
                # A killed process leaves its playbook run behind (ansible-runner's child ignores SIGHUP):
                # stop it before anything else touches the hosts. Processes on remote hosts are out of reach.
                killed = bridge.kill_tagged(tag)
                if killed:
                    notes.append(f"stopped {killed} process{'es' if killed != 1 else ''} its playbook run left running")
            if not hosts:
                return "; ".join(notes) or None
            if token is None and not ours:
                notes.append(
                    f"target {', '.join(hosts)} not reverted: another process holds it now ("
                    + ", ".join(f"experiment {h.get('experiment')}, {h.get('why', 'a trial')}" for h in holders)
                    + ") and has applied its own configuration or reverts it"
                )
                return "; ".join(notes)
            log = trial_log_path(exp, t.number)
            result = _run_on_target(exp.for_hosts(",".join(hosts)), "revert.yml", _extravars(exp, -1, {}), log)
        finally:
            if token is not None:
                leases.release(token)
        notes.append(
            f"target {', '.join(hosts)} reverted"
            if result.ok
            else f"reverting target {', '.join(hosts)} failed: {result.reason}"
        )
        return "; ".join(notes)

    return store.recover(study, grace_s=exp.model.budget.trial_timeout + 60, on_stale=revert)


def prepare(exp: Experiment, lim: Limits) -> Plan:
    if exp.model.runner == "client":
        raise SetupFailed(
            f"clients of the tuning service run the trials of {exp.name} (runner: client): knobflow does not run them"
        )
    store, study = open_study(exp)
    recovered = recover(exp, store, study)
    p = store.progress(study)
    reason = stop_reason(exp, store, study, lim)
    slots = 0 if reason else lim.trials - p.done
    if slots > 0:
        try:
            set_up(exp)
        except SetupFailed as exc:
            study.set_user_attr("setup_error", str(exc))
            raise
        if study.user_attrs.get("setup_error"):
            study.set_user_attr("setup_error", None)
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
    b = exp.benchmark
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


def _tunables_by_layer(exp: Experiment) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in exp.model.tunables:
        out.setdefault(t.layer, []).append(t.model_dump(exclude={"layer", "description", "when"}))
    return out


def validating_layers(exp: Experiment) -> list[str]:
    """The layers whose role has a ``validate`` task file (run by validate.yml before any trial)."""
    roles_path = exp.roles_path()
    return [
        name for name, layer in exp.model.layers.items() if spec.role_tasks_file(layer.role, "validate", roles_path)
    ]


def _steps(steps: list[spec.Step]) -> list[dict[str, str]]:
    return [{"role": st.role, "tasks_from": st.tasks_from} for st in steps]


def set_up(exp: Experiment) -> list[str]:
    """Run the experiment's set-up steps (setup.yml), then the layer roles' validation of the
    declared tunables against the real target (validate.yml). Returns what ran; raises
    :class:`SetupFailed` naming the step that failed."""
    done: list[str] = []
    log = _paths.knobflow_home() / "logs" / exp.name / "setup.log"
    base = _extravars(exp, -1, {})
    if exp.model.setup:
        base["knobflow"]["setup"] = _steps(exp.model.setup)
        result = _run_held(exp, "setup.yml", base, log, why="set-up")
        if not result.ok:
            raise SetupFailed(f"set-up failed: {result.reason} (log: {log})")
        done.append("setup: " + ", ".join(f"{st.role}/{st.tasks_from}" for st in exp.model.setup))
    layers = validating_layers(exp)
    if layers:
        base["knobflow"]["validate"] = layers
        base["knobflow"]["tunables"] = _tunables_by_layer(exp)
        result = _run_held(exp, "validate.yml", base, log, why="validation")
        if not result.ok:
            raise SetupFailed(f"the target refused the tunables: {result.reason} (log: {log})")
        done.append("validated layers: " + ", ".join(layers))
    return done


def tear_down(exp: Experiment) -> str | None:
    """Run the experiment's tear-down steps (teardown.yml); the failure reason, or None."""
    if not exp.model.teardown:
        return None
    extravars = _extravars(exp, -1, {})
    extravars["knobflow"]["teardown"] = _steps(exp.model.teardown)
    log = _paths.knobflow_home() / "logs" / exp.name / "teardown.log"
    result = _run_held(exp, "teardown.yml", extravars, log, why="tear-down")
    return None if result.ok else f"tear-down failed: {result.reason} (log: {log})"


def trial_log_path(exp: Experiment, number: int) -> Path:
    return _paths.knobflow_home() / "logs" / exp.name / f"trial-{number:04d}.log"


def _best(exp: Experiment, study: optuna.Study, store: Store) -> tuple[float | None, int | None]:
    if exp.multi_objective:
        return None, None
    top = results.best(exp.space(), exp.objectives(), store.trials(study))
    return (None, None) if top is None else (top.value, top.record.number)


def _baseline_metrics(
    store: Store, study: optuna.Study, trials: list[FrozenTrial] | None = None
) -> dict[str, Any] | None:
    for t in store.trials(study) if trials is None else trials:
        if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE:
            return dict(t.user_attrs.get("metrics") or {})
    return None


def _queue_remeasure(exp: Experiment, store: Store, study: optuna.Study) -> None:
    """noise.remeasure_best: after every N counted trials, queue the incumbent to run again."""
    every = exp.model.noise.remeasure_best
    if not every or exp.multi_objective:
        return
    trials = store.trials(study)
    if any(t.state == TrialState.WAITING for t in trials):
        return
    counted = [t for t in trials if counts_toward_budget(t) and t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    if not counted or len(counted) % every or counted[-1].user_attrs.get("remeasure_of") is not None:
        return
    top = results.best(exp.space(), exp.objectives(), trials)
    if top is not None:
        study.enqueue_trial(
            dict(top.record.params), user_attrs={"remeasure_of": top.record.number}, skip_if_exists=False
        )


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
    run_tag: str | None = None,
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
        run_tag=run_tag,
    )


def _run_held(
    exp: Experiment, playbook: str | Path, extravars: dict[str, Any], log_path: Path, *, why: str
) -> bridge.RunResult:
    """:func:`_run_on_target` while holding the leases of every target host (set-up, validation,
    finish, tear-down: steps outside a trial that change or read the target)."""
    try:
        hosts = target_hosts(exp)
        with holding_hosts(exp, Store(exp.storage_url()), hosts, why=why, wait_s=exp.model.budget.trial_timeout + 60):
            return _run_on_target(exp, playbook, extravars, log_path)
    except (HostsBusy, SetupFailed) as exc:
        return bridge.RunResult(status="failed", rc=-1, reason=str(exc))


def _run_playbooks(
    exp: Experiment,
    number: int,
    params: dict[str, Any],
    *,
    on_line: Callable[[str], None] | None,
    cancel: Callable[[], bool] | None,
    run_tag: str | None = None,
) -> bridge.RunResult:
    """One trial's Ansible: trial.yml (or apply.yml + the user's benchmark playbook, then revert on failure)."""
    log = trial_log_path(exp, number)
    extravars = _extravars(exp, number, params)
    with tempfile.TemporaryDirectory(prefix="knobflow-trial-") as tmp:
        result = _run_on_target(
            exp, _playbook_for(exp, Path(tmp)), extravars, log, on_line=on_line, cancel=cancel, run_tag=run_tag
        )
    # trial.yml reverts in its rescue, but a user's playbook cannot, and a run killed for its time
    # limit (or cancelled) never reaches the rescue: revert here then.
    if not result.ok and (exp.benchmark_playbook() is not None or result.status in ("timeout", "canceled")):
        reverted = _run_on_target(exp, "revert.yml", extravars, log)
        if not reverted.ok:
            result.reason = f"{result.reason}; reverting the target failed too: {reverted.reason}"
    return result


def apply_configuration(exp: Experiment, params: dict[str, Any], *, label: str) -> bridge.RunResult:
    """Apply ``params`` to the target with apply.yml, without a benchmark (continuous tuning's restore).

    ``label`` names the log file, ``$KNOBFLOW_HOME/logs/<experiment>/<label>.log``.
    """
    log = _paths.knobflow_home() / "logs" / exp.name / f"{label}.log"
    return _run_on_target(exp, "apply.yml", _extravars(exp, -1, params), log)


@dataclass
class Placement:
    """Where a trial runs: its target hosts, and the lease that keeps them its own."""

    hosts: list[str]
    token: str | None
    pattern: str  # the Ansible host pattern the trial's playbooks are limited to
    waited_s: float = 0.0


def _host_order(hosts: list[str], trials: list[Any]) -> list[str]:
    """Hosts whose last trials failed go last, so a broken host does not take every trial."""
    streak: dict[str, int] = dict.fromkeys(hosts, 0)
    done: dict[str, bool] = dict.fromkeys(hosts, False)
    for t in sorted(trials, key=lambda t: t.number, reverse=True):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or t.user_attrs.get("interrupted"):
            continue
        for h in t.user_attrs.get("targets") or []:
            if h in streak and not done[h]:
                if t.state == TrialState.FAIL:
                    streak[h] += 1
                else:
                    done[h] = True
    return sorted(hosts, key=lambda h: (streak[h], hosts.index(h)))


# How often a trial waiting for a host looks again. A trial task started ahead (the DAG's standby
# task) waits here while the running trial finishes: this is most of the gap between two trials.
PLACE_POLL_S = 0.5


def place(
    exp: Experiment,
    store: Store,
    study: optuna.Study,
    *,
    parallel: int,
    wait_s: float,
    on_line: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Placement:
    """Lease the target hosts of one trial, waiting up to ``wait_s`` for them to be free.

    ``target.per_trial: all``: every host of ``target.hosts`` together. ``one``: one free host, and
    one of the experiment's ``parallel`` slots (so at most ``parallel`` of its trials run at once).
    Raises :class:`HostsBusy` when the wait runs out.
    """
    from knobflow.leases import host_key, slot_key

    hosts = target_hosts(exp)
    leases = _leases(store)
    one = exp.model.target.per_trial == "one"
    started = time.monotonic()
    said = False
    while True:
        current = leases.live()
        if one:
            held = {lease.key for lease in current}
            slots = [slot_key(exp.name, i) for i in range(parallel) if slot_key(exp.name, i) not in held]
            free = [h for h in hosts if host_key(h) not in held]
            if slots and free:
                free = [h for h in _host_order(hosts, store.trials(study)) if h in free]
                token = leases.try_acquire([slots[0], host_key(free[0])], {"experiment": exp.name})
                if token is not None:
                    return Placement([free[0]], token, free[0], time.monotonic() - started)
                continue  # another trial took it between our look and our try: look again at once
        else:
            token = leases.try_acquire([host_key(h) for h in hosts], {"experiment": exp.name})
            if token is not None:
                return Placement(hosts, token, exp.model.target.hosts, time.monotonic() - started)
        waited = time.monotonic() - started
        if not said and on_line is not None:
            now = time.time()
            holders = sorted(
                f"{lease.key.removeprefix('host:')} (experiment {lease.holder.get('experiment')}, "
                f"{lease.holder.get('why', 'a trial')} for {now - lease.acquired:.0f} s)"
                for lease in current
                if lease.key.startswith("host:") and lease.key.removeprefix("host:") in hosts
            )
            if one and not slots:
                mine = {slot_key(exp.name, i) for i in range(parallel)}
                ages = sorted(f"{now - lease.acquired:.0f} s" for lease in current if lease.key in mine)
                on_line(
                    f"waiting for a trial slot: all {parallel} of the experiment's (parallel {parallel}) are "
                    f"running trials (for {', '.join(ages) or '?'})"
                )
            else:
                on_line(f"waiting for a free target host; busy: {', '.join(holders) or 'none (looking again)'}")
            said = True
        if waited >= wait_s:
            raise HostsBusy(
                f"no target host of {exp.model.target.hosts!r} became free in {wait_s:.0f} s "
                f"(hosts {', '.join(hosts)}; parallel {parallel}); other trials or experiments hold them"
            )
        if cancel is not None and cancel():
            raise HostsBusy("cancelled while waiting for a free target host")
        time.sleep(min(PLACE_POLL_S, max(0.1, wait_s - waited)))


@contextmanager
def holding_hosts(
    exp: Experiment,
    store: Store,
    hosts: list[str],
    *,
    why: str,
    wait_s: float,
    on_line: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the leases of ``hosts`` (all of them) for the block: no trial of any experiment in this
    store benchmarks on them meanwhile. Waits up to ``wait_s`` for them; :class:`HostsBusy` then."""
    from knobflow.leases import host_key

    leases = _leases(store)
    started = time.monotonic()
    said = False
    while True:
        leases.free_dead()
        token = leases.try_acquire([host_key(h) for h in hosts], {"experiment": exp.name, "why": why})
        if token is not None:
            break
        if time.monotonic() - started > wait_s:
            raise HostsBusy(f"hosts {', '.join(hosts)} stayed busy for {wait_s:.0f} s (other trials hold them)")
        if not said and on_line is not None:
            on_line(f"{why}: waiting for hosts {', '.join(hosts)} to be free")
            said = True
        time.sleep(1.0)
    try:
        with leases.keep_alive(token):
            yield
    finally:
        leases.release(token)


def slot_trial(store: Store, study: optuna.Study, slot: str) -> Any | None:
    """The latest trial a DAG run's trial slot started (``slot`` = ``<run_id>#<index>``), or None."""
    mine = [t for t in store.trials(study) if t.user_attrs.get("slot") == slot]
    return max(mine, key=lambda t: t.number) if mine else None


def run_trial(
    exp: Experiment,
    lim: Limits,
    *,
    run_id: str | None = None,
    slot: str | None = None,
    parallel: int | None = None,
    note: str | None = None,
    on_label: Callable[[str], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    stop_rules: bool = True,
) -> TrialResult:
    """Run one trial from ask to tell. Raises :class:`ExperimentStopped` when a stop rule fires.

    ``slot`` names the trial's place in a DAG run (``<run_id>#<map index>``): a retried task with a
    slot whose trial already finished returns that trial (``replayed``) and runs nothing; one whose
    trial was interrupted runs a new trial. ``parallel`` bounds how many trials of the experiment
    run at once (the file's ``parallel`` when None). ``stop_rules=False`` (continuous tuning, whose
    rounds have guardrails instead of a budget) skips the budget's stop rules.
    """
    t_start = time.monotonic()
    store, study = open_study(exp)
    if slot is not None:
        earlier = slot_trial(store, study, slot)
        if (
            earlier is not None
            and earlier.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not earlier.user_attrs.get("interrupted")
        ):
            return TrialResult.from_frozen(exp, earlier, replayed=True)
    recover(exp, store, study)  # a retry of a killed task finds its own trial here
    reason = stop_reason(exp, store, study, lim, running=store.progress(study).running) if stop_rules else None
    if reason:
        raise ExperimentStopped(reason)
    placement = place(
        exp,
        store,
        study,
        parallel=parallel or exp.model.parallel,
        wait_s=exp.model.budget.trial_timeout + 60,
        on_line=on_line,
        cancel=cancel,
    )
    t_placed = time.monotonic()
    leases = _leases(store)
    assert placement.token is not None
    try:
        with leases.keep_alive(placement.token):
            # A trial killed while this one waited for its host left the host to us: stop what it left
            # running and revert the host before this trial touches it.
            recover(exp, store, study, held=placement.hosts)
            return _run_placed(
                exp,
                lim,
                store,
                study,
                placement,
                parallel=parallel or exp.model.parallel,
                t_start=t_start,
                t_placed=t_placed,
                run_id=run_id,
                slot=slot,
                note=note,
                on_label=on_label,
                on_line=on_line,
                cancel=cancel,
                stop_rules=stop_rules,
            )
    finally:
        leases.release(placement.token)


def _run_placed(
    exp: Experiment,
    lim: Limits,
    store: Store,
    study: optuna.Study,
    placement: Placement,
    *,
    parallel: int,
    t_start: float,
    t_placed: float,
    run_id: str | None,
    slot: str | None,
    note: str | None,
    on_label: Callable[[str], None] | None,
    on_line: Callable[[str], None] | None,
    cancel: Callable[[], bool] | None,
    stop_rules: bool,
) -> TrialResult:
    # The budget may have been spent by other trials while this one waited for a host.
    if stop_rules and placement.waited_s > 0:
        reason = stop_reason(exp, store, study, lim, running=store.progress(study).running)
        if reason:
            raise ExperimentStopped(reason)
    tuner = registry.create(
        exp.model.tuner.name, seed=exp.model.tuner.seed, options=exp.tuner_options(), defaults=exp.defaults()
    )
    if parallel > 1:  # other trials may be running: no duplicate of theirs, constant liar for auto
        from knobflow.tuners.pending import pending_aware

        tuner = pending_aware(tuner)
    _queue_remeasure(exp, store, study)
    try:
        trial = tuners_base.ask(
            tuner, study, exp.space(), seed=exp.model.tuner.seed, repeat_duplicates=exp.model.noise.repeat_duplicates
        )
    except tuners_base.SpaceExhausted as exc:
        raise ExperimentStopped(f"stopped: {exc}") from None
    # Every process of the trial's playbook run carries this tag: if this process is killed, the
    # next run of the experiment stops what it left running (recover) before reverting the hosts.
    extra: dict[str, Any] = {"targets": placement.hosts, "run_tag": uuid.uuid4().hex}
    if slot is not None:
        extra["slot"] = slot
    if note:
        extra["note"] = note
    store.mark_started(study, trial, run_id, **extra)
    params = dict(trial.params)
    number = trial.number
    baseline = bool(trial.user_attrs.get("baseline"))
    if on_label is not None:
        on_label(f"trial {number}" + (" (baseline)" if baseline else ""))
    exp = exp.for_hosts(placement.pattern)
    t_asked = time.monotonic()

    try:
        result = _run_playbooks(exp, number, params, on_line=on_line, cancel=cancel, run_tag=extra["run_tag"])
    except BaseException as exc:
        # Never leave a trial RUNNING behind a live process: record why it stopped, then re-raise.
        # Exceptions are errors; other BaseExceptions stop the process (Ctrl-C, SystemExit, Airflow's
        # AirflowTaskTerminated on SIGTERM): the trial was interrupted and its configuration runs again.
        # Airflow's AirflowTaskTimeout (the task's execution_timeout) is a BaseException too, but the
        # configuration did take too long: a failed trial that counts, not one to run again forever.
        if isinstance(exc, Exception):
            why = "knobflow error"
        elif type(exc).__name__ == "AirflowTaskTimeout":
            why = "timed out (the task's execution_timeout)"
        else:
            why = "interrupted"
        store.finish(
            study,
            number,
            state=TrialState.FAIL,
            value=None,
            attrs={"reason": f"{why} while running the trial: {exc!r}", "interrupted": why == "interrupted"},
        )
        if why == "interrupted":  # run this configuration again next time, as recovery would
            store.requeue(study, number, params, baseline=baseline)
        raise

    metrics: dict[str, Any] = dict(result.stats.get("knobflow_metrics") or {})
    bench = result.stats.get("knobflow_benchmark") or {}
    values: list[float] | None = None
    fail_reason: str | None = None
    outcome = None
    if not result.ok:
        fail_reason = result.reason
    elif not metrics:
        fail_reason = "the benchmark reported no knobflow_metrics (its role or playbook must set_stats them)"
    else:
        base_metrics = metrics if baseline else _baseline_metrics(store, study)
        outcome = exp.objectives().evaluate(metrics, base_metrics)
        values, fail_reason = outcome.values, outcome.reason
    state = TrialState.COMPLETE if fail_reason is None else TrialState.FAIL
    bench_s = sum(v for k, v in result.task_times.items() if "benchmark" in k.lower())
    timings = {
        # from the start of run_trial to holding a slot and a host (opening the study, recovery,
        # stop rules, waiting for the host); ask_s runs on to the trial marked started
        "place_s": t_placed - t_start,
        "ask_s": t_asked - t_start,
        "playbook_s": result.duration_s,
        "benchmark_task_s": bench_s,
    }
    attrs: dict[str, Any] = {
        "metrics": metrics,
        "benchmark": bench,
        "host": socket.gethostname(),
        "log": str(trial_log_path(exp, number)),
        "waited_for_host_s": round(placement.waited_s, 3),
        "finished": time.time(),
        "timings": timings,
    }
    if fail_reason is not None:
        attrs["reason"] = fail_reason
    constraints: list[float] | None = None
    if outcome is not None and outcome.values is not None and exp.model.slos:
        attrs["slo_violations"] = outcome.violations
        constraints = outcome.constraint_values
    t_tell = time.monotonic()
    tell_value: float | list[float] | None = values if values is None or exp.multi_objective else values[0]
    store.finish(study, number, state=state, value=tell_value, attrs=attrs, constraints=constraints)
    timings["tell_s"] = time.monotonic() - t_tell
    best_value, best_number = _best(exp, study, store)
    out = TrialResult(
        number=number,
        state="complete" if state == TrialState.COMPLETE else "fail",
        params=params,
        value=None if values is None else values[0],
        values=values,
        violations=list(outcome.violations) if outcome is not None and outcome.values is not None else [],
        metrics=metrics,
        reason=fail_reason,
        baseline=baseline,
        best_value=best_value,
        best_number=best_number,
        timings=timings,
        hosts=placement.hosts,
    )
    progress.emit("trial", out)
    return out


def summarize(
    exp: Experiment, lim: Limits | None = None, *, opened: tuple[Store, optuna.Study] | None = None
) -> Summary:
    """The experiment's outcome so far. ``opened``: its store and study, when the caller has them
    (the tuning service), instead of opening the store again."""
    store, study = opened or open_study(exp)
    lim = lim or limits(exp)
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    records = [TrialRecord.from_frozen(t) for t in trials]
    p = store.progress(study, trials)
    objectives = exp.objectives()
    baseline = next((r for r in records if r.baseline and r.state == "complete" and r.values), None)
    best: TrialRecord | None = None
    best_value: float | None = None
    measurements = 0
    front: list[TrialRecord] = []
    gain: float | None = None
    if exp.multi_objective:
        front = results.pareto(objectives, trials)
    else:
        top = results.best(exp.space(), objectives, trials)
        if top is not None:
            best, best_value, measurements = top.record, top.value, len(top.measurements)
    if best_value is not None and baseline is not None and baseline.value:
        delta = best_value - baseline.value
        gain = 100.0 * (delta if exp.maximize else -delta) / abs(baseline.value)
    infeasible = sum(1 for r in records if r.state == "complete" and r.values is not None and not r.feasible)
    return Summary(
        experiment=exp.name,
        trials=p.done,
        completed=p.completed,
        failed=p.failed,
        best=best,
        baseline=baseline,
        gain_pct=gain,
        metric=objectives.labels[0],
        direction=objectives.directions[0],
        # A set-up that failed in this run stopped it before any trial: say so first.
        stop_reason=study.user_attrs.get("setup_error") or stop_reason(exp, store, study, lim, trials=trials),
        finish_action=exp.model.finish,
        best_value=best_value,
        best_measurements=measurements,
        pareto=front,
        objectives=[{"name": o.label, "direction": o.direction} for o in objectives.objectives],
        infeasible=infeasible,
    )


def finish(exp: Experiment, lim: Limits) -> Summary:
    """Summarise the experiment and leave the target as ``finish`` says (revert, best or keep)."""
    summary = summarize(exp, lim)
    action = exp.model.finish
    if action != "keep":
        if action == "best" and summary.best is not None:
            playbook, extravars = "apply.yml", _extravars(exp, summary.best.number, summary.best.params)
        else:
            summary.finish_action = "revert"  # also for `best` when no trial completed
            playbook, extravars = "revert.yml", _extravars(exp, -1, {})
        log = _paths.knobflow_home() / "logs" / exp.name / "finish.log"
        result = _run_held(exp, playbook, extravars, log, why="finish")
        if not result.ok:
            summary.finish_error = f"{action} failed: {result.reason}"
    if (why := tear_down(exp)) is not None:
        summary.finish_error = f"{summary.finish_error}; {why}" if summary.finish_error else why
    progress.emit("finish", summary)
    return summary


@dataclass
class DryRun:
    """What a dry run found: a line per check, and the first problem (None when all passed)."""

    lines: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def dry_run(exp: Experiment) -> DryRun:
    """Check an experiment without tuning: the file (already validated), the target hosts, the store,
    the layer roles' validation of the tunables, and what applying the baseline would change
    (apply.yml in Ansible's check mode, with diffs in the log). Creates no study and runs no trial."""
    out = DryRun()
    m = exp.model
    out.lines.append(
        f"experiment {exp.name}: {len(m.tunables)} tunables, {exp.objective_text()}, tuner {m.tuner.name}, "
        f"{m.budget.trials} trials, parallel {m.parallel}"
    )
    try:
        hosts = target_hosts(exp)
    except SetupFailed as exc:
        out.problem = str(exc)
        out.lines.append(f"target: {exc}")
        return out
    out.lines.append(f"target hosts ({m.target.hosts}, per trial: {m.target.per_trial}): {', '.join(hosts)}")
    from knobflow.airflow.hooks import missing_store

    url = exp.storage_url()
    try:
        missing = missing_store(url)  # creates nothing, unlike opening the store
    except Exception as exc:
        out.problem = f"the store {url} cannot be reached: {exc}"
        out.lines.append(out.problem)
        return out
    store = None if missing else Store(url)
    if store is not None and store.exists(exp.name):
        p = store.progress(store.load(exp.name))
        out.lines.append(f"store {store.url}: {p.done} trials done ({p.failed} failed), {p.running} running")
    else:
        out.lines.append(f"store {url}: no study yet (the first real run creates it, baseline first)")
    out.lines.append(f"baseline: {exp.defaults()}")
    log = _paths.knobflow_home() / "logs" / exp.name / "dry-run.log"
    base = _extravars(exp, -1, {})
    if m.setup:
        out.lines.append(
            "set-up steps are not run in a dry run: "
            + ", ".join(f"{st.role}/{st.tasks_from}" for st in m.setup)
            + "; the validation and check below may fail when they depend on them"
        )
    layers = validating_layers(exp)
    if layers:
        base["knobflow"]["validate"] = layers
        base["knobflow"]["tunables"] = _tunables_by_layer(exp)
        result = _run_on_target(exp, "validate.yml", base, log)
        if not result.ok:
            out.problem = f"the target refused the tunables: {result.reason} (log: {log})"
            out.lines.append(out.problem)
            return out
        out.lines.append(f"the target accepts the tunables (validated by {', '.join(layers)})")
    result = bridge.run_playbook(
        "apply.yml",
        inventory=exp.inventory(),
        extravars=_extravars(exp, -1, exp.defaults()),
        roles_path=exp.roles_path(),
        limit=m.target.hosts,
        timeout=m.budget.trial_timeout,
        log_path=log,
        check=True,
        diff=True,
    )
    if not result.ok:
        out.problem = f"applying the baseline in check mode failed: {result.reason} (log: {log})"
        out.lines.append(out.problem)
        return out
    changed = ", ".join(result.changed) or "nothing"
    out.lines.append(f"applying the baseline would change: {changed} (diffs in {log})")
    out.lines.append("dry run passed: nothing was changed and nothing was recorded")
    return out


def promote(
    exp: Experiment, *, hosts: str | None = None, on_line: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Apply the experiment's best configuration to ``hosts`` (default: ``promote.hosts``, else
    ``target.hosts``), holding the hosts' leases while they change. Raises :class:`PromoteFailed`."""

    summary = summarize(exp)
    if summary.best is None:
        raise PromoteFailed(f"experiment {exp.name} has no completed feasible trial to promote")
    pattern = hosts or (exp.model.promote.hosts if exp.model.promote else None) or exp.model.target.hosts
    target = exp.for_hosts(pattern)
    names = target_hosts(target)
    store = Store(exp.storage_url())
    best = summary.best
    log = _paths.knobflow_home() / "logs" / exp.name / "promote.log"
    try:
        with holding_hosts(exp, store, names, why="promote", wait_s=exp.model.budget.trial_timeout, on_line=on_line):
            result = _run_on_target(target, "apply.yml", _extravars(exp, best.number, best.params), log)
    except HostsBusy as exc:
        raise PromoteFailed(f"{exc}; nothing applied") from None
    if not result.ok:
        raise PromoteFailed(f"applying trial {best.number}'s configuration failed: {result.reason} (log: {log})")
    study = store.load(exp.name)
    history = list(study.user_attrs.get("promoted") or [])
    history.append({"trial": best.number, "params": best.params, "hosts": names, "at": time.time()})
    study.set_user_attr("promoted", history)
    return {"trial": best.number, "params": best.params, "value": summary.best_value, "hosts": names}
