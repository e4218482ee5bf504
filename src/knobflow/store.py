"""Experiments and trials on an Optuna storage (SQLite under ``$KNOBFLOW_HOME`` by default).

One Optuna study per experiment, named after it. Trial 0 is the baseline (the tunables' defaults).
Each trial keeps, as user attributes: the metrics, the benchmark runs and spread, timings, the host
and process that ran it, and on failure the reason. Running an experiment again resumes its study.

Trials can also come from elsewhere: rows imported from a file (user attribute ``imported``) and,
when the study is created, the trials of the experiment named in ``warm_start`` (user attribute
``warm_start``). Both inform the tuner and count as measured configurations, but not toward the
budget. Deleting an experiment archives its study as ``archive:<name>:<UTC time>`` unless purged.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.spec import Experiment, Tunable
from knobflow.tuners.base import tell

optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
OWNERLESS_GRACE_S = 120.0
ARCHIVE_PREFIX = "archive:"


class StoreError(Exception):
    """The store cannot serve this experiment (for example its search space changed)."""


def is_archive(name: str) -> bool:
    """Whether a study name is an archived experiment (``archive:<name>:<UTC time>``)."""
    return name.startswith(ARCHIVE_PREFIX)


def archive_of(name: str) -> str | None:
    """The experiment an archive was made from, or None when ``name`` is not an archive."""
    if not is_archive(name):
        return None
    return name.removeprefix(ARCHIVE_PREFIX).rpartition(":")[0] or None


def counts_toward_budget(t: FrozenTrial) -> bool:
    """A finished trial this experiment ran itself (not interrupted, not imported, not warm-start)."""
    return (
        t.state in FINISHED
        and not t.user_attrs.get("interrupted")
        and not t.user_attrs.get("imported")
        and not t.user_attrs.get("warm_start")
    )


def distribution(t: Tunable) -> BaseDistribution:
    """The Optuna distribution of a tunable."""
    if t.type == "bool":
        return CategoricalDistribution(choices=(False, True))
    if t.type == "categorical":
        assert t.choices is not None
        return CategoricalDistribution(choices=tuple(t.choices))
    assert t.low is not None and t.high is not None
    if t.type == "int":
        return IntDistribution(low=int(t.low), high=int(t.high), step=int(t.step or 1), log=t.log)
    return FloatDistribution(
        low=float(t.low), high=float(t.high), step=None if t.step is None else float(t.step), log=t.log
    )


def _owner() -> dict[str, Any]:
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "create_time": me.create_time()}


class LeaveToOther(Exception):
    """Raised by ``recover``'s ``on_stale``: another live process is recovering this trial (it holds
    the trial's hosts), leave it to that one."""


def _owner_alive(owner: dict[str, Any]) -> bool | None:
    """True/False when the owner ran on this host; None when we cannot tell (another host)."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner["create_time"])) < 1.0
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False


@dataclass
class TrialRecord:
    """A trial as users see it."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    values: list[float] | None = None
    feasible: bool = True
    violations: list[str] = field(default_factory=list)
    reason: str | None = None
    baseline: bool = False
    interrupted: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_frozen(cls, t: FrozenTrial) -> TrialRecord:
        return cls(
            number=t.number,
            state=t.state.name.lower(),
            params=dict(t.params),
            value=t.values[0] if t.state == TrialState.COMPLETE and t.values else None,
            metrics=dict(t.user_attrs.get("metrics") or {}),
            values=list(t.values) if t.state == TrialState.COMPLETE and t.values else None,
            feasible=not t.user_attrs.get("slo_violations"),
            violations=list(t.user_attrs.get("slo_violations") or []),
            reason=t.user_attrs.get("reason"),
            baseline=bool(t.user_attrs.get("baseline")),
            interrupted=bool(t.user_attrs.get("interrupted")),
            attrs=dict(t.user_attrs),
        )


@dataclass
class Progress:
    """How far an experiment is: what counts toward its budget and its failure limit.

    ``done``, ``completed`` and ``failed`` count the trials the experiment ran itself; imported rows
    and warm-start trials are counted apart (``imported``, ``warm_start``).
    """

    done: int
    completed: int
    failed: int
    running: int
    waiting: int
    imported: int = 0
    warm_start: int = 0


class Store:
    """The knobflow store for one storage URL."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
        self.storage = self._open(url, engine_kwargs)

    @staticmethod
    def _open(url: str, engine_kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
        """Open the storage; Optuna creates its tables the first time.

        Processes opening a new database at once race to create the tables and stamp the schema
        version. For SQLite a file lock next to the database serialises the first open; for other
        databases the loser of the race sees "already exists" or a unique violation, and opens again.
        """
        import fcntl

        from sqlalchemy.exc import IntegrityError, OperationalError

        lock = None
        if url.startswith("sqlite:///"):
            lock = open(url.removeprefix("sqlite:///") + ".open-lock", "a")  # noqa: SIM115
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for attempt in range(5):
                try:
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
                except (OperationalError, IntegrityError) as exc:
                    text = str(exc)
                    if ("already exists" not in text and "UNIQUE" not in text.upper()) or attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")
        finally:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()

    # Studies -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(self.storage))

    def exists(self, name: str) -> bool:
        # One indexed lookup: every trial opens the study, so do not summarise all studies here.
        try:
            self.storage.get_study_id_from_name(name)
        except KeyError:
            return False
        return True

    def open(self, exp: Experiment) -> optuna.Study:
        """Open the experiment's study, creating it (with the baseline queued) the first time.

        With ``warm_start``, creating the study also copies the source experiment's trials that fit
        this space and queues the best of them to be measured again right after the baseline. The
        source is read before anything is created, so a missing source creates nothing.
        """
        directions = exp.directions
        fingerprint = exp.space_fingerprint()
        if self.exists(exp.name):
            study = optuna.load_study(study_name=exp.name, storage=self.storage)
            old = study.user_attrs.get("space_fingerprint")
            if old is not None and old != fingerprint:
                raise StoreError(
                    f"experiment {exp.name!r} already has a study whose search space differs from this "
                    f"file's (tunables, bounds, steps, choices, conditions or the objectives changed). "
                    f"Give the experiment a new name, "
                    f"or delete the old study with `knobflow delete {exp.name}`."
                )
            have = [d.name.lower() for d in study.directions]
            if have != directions:
                raise StoreError(
                    f"experiment {exp.name!r} already has a study that {' and '.join(have)}s; "
                    f"this file says {' and '.join(directions)}. Give the experiment a new name."
                )
            return study
        plan = None
        if exp.model.warm_start is not None:
            from knobflow.importer import plan_warm_start

            plan = plan_warm_start(self, exp)
        study = optuna.create_study(
            study_name=exp.name,
            storage=self.storage,
            directions=directions,  # type: ignore[arg-type]
        )
        study.set_user_attr("space_fingerprint", fingerprint)
        study.set_user_attr("objectives", [o.model_dump() for o in exp.objective_list])
        study.set_user_attr("spec", exp.model.model_dump(mode="json", by_alias=True))
        study.set_user_attr("created", dt.datetime.now(dt.UTC).isoformat())
        study.enqueue_trial(exp.defaults(), user_attrs={"baseline": True})
        if plan is not None:
            plan.apply(study)
        return study

    def load(self, name: str) -> optuna.Study:
        if not self.exists(name):
            known = ", ".join(n for n in self.names() if not is_archive(n)) or "none"
            raise StoreError(f"no experiment named {name!r} in {self.url} (known: {known})")
        return optuna.load_study(study_name=name, storage=self.storage)

    def delete(self, name: str) -> None:
        """Destroy an experiment's study and all its trials (no archive is kept)."""
        self.load(name)
        optuna.delete_study(study_name=name, storage=self.storage)

    def archive(self, name: str, *, now: dt.datetime | None = None) -> str:
        """Move an experiment's study to ``archive:<name>:<UTC time>``, freeing the name; returns the archive's name."""
        self.load(name)
        if is_archive(name):
            raise StoreError(f"{name!r} is already an archive; purge it to remove it")
        when = now or dt.datetime.now(dt.UTC)
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        target = f"{ARCHIVE_PREFIX}{name}:{stamp}"
        n = 1
        while self.exists(target):  # archived twice within a second
            n += 1
            target = f"{ARCHIVE_PREFIX}{name}:{stamp}-{n}"
        optuna.copy_study(
            from_study_name=name, from_storage=self.storage, to_storage=self.storage, to_study_name=target
        )
        archived = optuna.load_study(study_name=target, storage=self.storage)
        archived.set_user_attr("archived", {"from": name, "at": when.isoformat()})
        optuna.delete_study(study_name=name, storage=self.storage)
        return target

    def archives(self, name: str) -> list[str]:
        """The archives made from experiment ``name``, oldest first."""
        return sorted(n for n in self.names() if archive_of(n) == name)

    # Trials ------------------------------------------------------------------------------
    def trials(self, study: optuna.Study) -> list[FrozenTrial]:
        return self.storage.get_all_trials(study._study_id, deepcopy=False)

    def progress(self, study: optuna.Study, trials: list[FrozenTrial] | None = None) -> Progress:
        """The experiment's :class:`Progress`, from ``trials`` when the caller has listed them already."""
        ts = self.trials(study) if trials is None else trials
        counted = [t for t in ts if counts_toward_budget(t)]
        return Progress(
            done=len(counted),
            completed=sum(t.state == TrialState.COMPLETE for t in counted),
            failed=sum(t.state == TrialState.FAIL for t in counted),
            running=sum(t.state == TrialState.RUNNING for t in ts),
            waiting=sum(t.state == TrialState.WAITING for t in ts),
            imported=sum(bool(t.user_attrs.get("imported")) for t in ts),
            warm_start=sum(bool(t.user_attrs.get("warm_start")) for t in ts),
        )

    def mark_started(self, study: optuna.Study, trial: optuna.Trial, run_id: str | None, **extra: Any) -> None:
        """Stamp a trial with who runs it (process, host, DAG run) and ``extra`` user attributes
        (the target hosts, the DAG run's trial slot, a note)."""
        attrs = {"owner": _owner(), "started": time.time(), "run_id": run_id, **extra}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine of the store's database (the lease table lives there too)."""
        return self.storage.engine

    def recover(
        self,
        study: optuna.Study,
        *,
        grace_s: float,
        on_stale: Callable[[FrozenTrial], str | None] | None = None,
    ) -> list[int]:
        """Fail trials left RUNNING by a process that is gone; queue their configurations again.

        A trial owned by this host is stale when its process is dead. A trial owned by another host
        is stale when it started more than ``grace_s`` seconds ago (longer than a trial may take).
        Interrupted trials count neither toward the budget nor toward ``max_failed``. ``on_stale`` runs
        first for each stale trial (the engine reverts its target there); what it returns is added
        to the trial's reason; when it raises :class:`LeaveToOther` the trial is left as it is.
        """
        recovered = []
        now = time.time()
        for t in self.trials(study):
            if t.state != TrialState.RUNNING:
                continue
            owner = t.user_attrs.get("owner") or {}
            alive = _owner_alive(owner) if owner else None
            started = float(t.user_attrs.get("started") or (t.datetime_start.timestamp() if t.datetime_start else 0))
            # A trial with no owner was killed between ask and stamping (milliseconds apart).
            grace = grace_s if owner else min(grace_s, OWNERLESS_GRACE_S)
            if alive is True or (alive is None and now - started < grace):
                continue
            who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "an unknown process"
            reason = f"interrupted: the process running it ({who}) is gone"
            try:
                extra = on_stale(t) if on_stale is not None else None
            except LeaveToOther:
                continue
            if extra:
                reason = f"{reason}; {extra}"
            if not self.finish(
                study, t.number, state=TrialState.FAIL, value=None, attrs={"interrupted": True, "reason": reason}
            ):
                continue  # another process recovered it first
            self.requeue(study, t.number, dict(t.params), baseline=bool(t.user_attrs.get("baseline")))
            recovered.append(t.number)
        return recovered

    @staticmethod
    def requeue(study: optuna.Study, number: int, params: dict[str, Any], *, baseline: bool) -> None:
        """Queue an interrupted trial's configuration to run again (still the baseline if it was)."""
        user_attrs: dict[str, Any] = {"requeued_from": number}
        if baseline:
            user_attrs["baseline"] = True
        study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=False)

    def finish(
        self,
        study: optuna.Study,
        number: int,
        *,
        state: TrialState,
        value: float | list[float] | None,
        attrs: dict[str, Any],
        constraints: list[float] | None = None,
        frozen: FrozenTrial | None = None,
    ) -> bool:
        """Record a trial's outcome. Returns False (and changes nothing) if it was already finished.

        ``frozen``: the trial as the caller has just read it (the tuning service, which has checked
        it and validated ``value``): the outcome is then written straight to the storage, without
        reading the trial again through ``study.tell`` (which only adds the study sampler's
        ``after_trial``: knobflow's tuners propose in a copy of the study, never through its sampler).
        """
        if frozen is None:
            frozen = study._storage.get_trial(
                study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            )
            direct = False
        else:
            direct = True
        if frozen.state in FINISHED:
            return False
        try:
            for k, v in attrs.items():
                study._storage.set_trial_user_attr(frozen._trial_id, k, v)
            if constraints:
                # Optuna's samplers that model constraints (TPE, NSGA-II, GP) read them from here.
                study._storage.set_trial_system_attr(frozen._trial_id, "constraints", list(constraints))
            if not direct:
                tell(study, number, state, value)
                return True
            values = None if state != TrialState.COMPLETE or value is None else value
            if isinstance(values, int | float):
                values = [float(values)]
            study._storage.set_trial_state_values(frozen._trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # another process finished it since it was read
        return True

    def records(self, name: str) -> list[TrialRecord]:
        return [TrialRecord.from_frozen(t) for t in self.trials(self.load(name))]
