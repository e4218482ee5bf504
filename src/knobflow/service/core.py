"""The tuning service's operations over a store: experiments whose trials clients run.

An experiment with ``runner: client`` is run by clients of the service (any language, through the
native API, the Kruize-compatible API or :mod:`knobflow.client`): a client *asks* for a
configuration, runs its benchmark, and *tells* the outcome. Everything lives in the store (one
Optuna study per experiment, as for experiments Airflow runs), so the service keeps no state of its
own: it can restart, or run as several processes, in the middle of an experiment.

Experiments that Airflow or ``knobflow run`` runs (``runner: ansible``) are in the same store; the
service shows them (trials, best, importance, export) but refuses to ask or tell for them.

Asks of one experiment are serialised (a lock in the database, so across processes too): Optuna
assigns trial numbers atomically, but knobflow's ask queues the checked proposal and then takes a
queued trial, and two asks at once could take each other's proposal.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow import engine, spec
from knobflow.objective import Objectives
from knobflow.space import Space
from knobflow.store import FINISHED, Store, StoreError, TrialRecord, is_archive
from knobflow.tuners import base as tuners_base
from knobflow.tuners import registry


class ServiceError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(name: str) -> ServiceError:
    return ServiceError(404, f"no experiment named {name!r}")


# A study's sampler is only used when Optuna's ask takes a queued trial, whose parameters are fixed.
_UNUSED_SAMPLER = optuna.samplers.RandomSampler()

STATES = {"complete": TrialState.COMPLETE, "fail": TrialState.FAIL, "pruned": TrialState.PRUNED}


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ServiceError(400, f"{what}: must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ServiceError(400, f"{what}: must be a finite number, got {value!r}")
    return v


def trial_dict(t: FrozenTrial | TrialRecord) -> dict[str, Any]:
    """A trial as the APIs return it."""
    r = t if isinstance(t, TrialRecord) else TrialRecord.from_frozen(t)
    attrs = r.attrs
    return {
        "number": r.number,
        "state": r.state,
        "params": r.params,
        "value": r.value,
        "values": r.values,
        "metrics": r.metrics,
        "feasible": r.feasible,
        "violations": r.violations,
        "reason": r.reason,
        "baseline": r.baseline,
        "started": attrs.get("started"),
        "finished": attrs.get("finished"),
        "note": attrs.get("note"),
        "source": "imported" if attrs.get("imported") else "warm_start" if attrs.get("warm_start") else None,
    }


@dataclass(frozen=True)
class _Known:
    """What the service derives from an experiment's stored file, once per process: parsing and
    validating it, building its space and objectives cost more than the rest of an ask."""

    exp: spec.Experiment
    space: Space
    objectives: Objectives
    limits: engine.Limits


@dataclass
class Service:
    """The service's view of one store.

    Trials are read through one Optuna ``_CachedStorage`` per service (per process): a finished
    trial cannot change, so each listing reads from the database only the trials that are new or
    still unfinished, as a long-lived Optuna client does. Experiments' parsed files are kept by
    study id (a study's file never changes; an archived or deleted experiment's name then resolves
    to another study, or to none); the ``known_limit`` most recently used experiments are kept,
    with their trials, and the others forgotten.

    One case the cache cannot see: SQLite may give a new study the id of the study deleted last,
    so after ``knobflow delete --purge`` of the newest experiment, restart a service that served
    it before creating another (PostgreSQL never reuses an id; archiving never frees one).
    """

    storage_url: str
    known_limit: int = 512  # parsed experiment files kept per process

    def __post_init__(self) -> None:
        self._store: Store | None = None
        self._cached: Any = None
        self._known: OrderedDict[int, _Known] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def store(self) -> Store:
        """The store, opened on first use (an app can be built where the database is not reachable yet)."""
        if self._store is None:
            with self._locks_guard:
                if self._store is None:
                    self._store = Store(self.storage_url)
        return self._store

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        """The store's storage behind Optuna's cache of finished trials (shared by every request)."""
        if self._cached is None:
            store = self.store
            with self._locks_guard:
                if self._cached is None:
                    self._cached = optuna.storages.get_storage(store.storage)
        return self._cached

    # Experiments ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [n for n in self.store.names() if not is_archive(n)]

    def _study(self, name: str) -> optuna.Study:
        if not isinstance(name, str) or is_archive(name):
            raise not_found(name)
        try:
            # The default sampler is never used: knobflow's tuners propose in a copy of the study.
            return optuna.Study(study_name=name, storage=self.storage, sampler=_UNUSED_SAMPLER)
        except KeyError:
            raise not_found(name) from None

    def _history(self, study: optuna.Study) -> list[FrozenTrial]:
        """The study's trials, in number order (shared objects of the cache: not to be changed)."""
        return study._storage.get_all_trials(study._study_id, deepcopy=False)

    def _open(self, name: str) -> tuple[optuna.Study, _Known]:
        """The experiment's study and its parsed file."""
        study = self._study(name)
        with self._locks_guard:
            known = self._known.get(study._study_id)
            if known is not None:
                self._known.move_to_end(study._study_id)
        if known is None:
            raw = study.user_attrs.get("spec")
            if not isinstance(raw, dict):
                raise ServiceError(409, f"experiment {name!r} was created by an older knobflow: its file is not stored")
            model = spec.ExperimentModel.model_validate({**raw, "storage": self.storage_url})
            exp = spec.Experiment(model=model, path=None, base_dir=Path.cwd())
            known = _Known(exp=exp, space=exp.space(), objectives=exp.objectives(), limits=engine.limits(exp))
            with self._locks_guard:
                self._known[study._study_id] = known
                while len(self._known) > self.known_limit:
                    self._forget(self._known.popitem(last=False)[0])
        return study, known

    def _forget(self, study_id: int) -> None:
        """Drop a study's finished trials from the storage cache (which Optuna never shrinks), so
        that the memory a long-running service holds follows the experiments it serves now."""
        studies = getattr(self._cached, "_studies", None)
        lock = getattr(self._cached, "_lock", None)
        if isinstance(studies, dict) and lock is not None:
            with lock:
                studies.pop(study_id, None)

    def experiment(self, name: str) -> Experiment:
        """The experiment as it was created (its file, from the store), on this store."""
        return self._open(name)[1].exp

    def create(self, document: dict[str, Any] | str, *, source: str = "request") -> spec.Experiment:
        """Create an experiment from an experiment file's content (a mapping, or YAML/JSON text).

        Raises :class:`ServiceError` 400 naming each problem (as ``knobflow validate`` does), 409 when
        the name is taken. The experiment's store is the service's: a ``storage`` field is refused.
        """
        if isinstance(document, str):
            text = document
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                data = None  # spec.parse reports it with its line
        else:
            data = document
            # YAML, not JSON text: the file parser reads YAML, and YAML 1.1 reads JSON's 5e-05 as a string.
            text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        if isinstance(data, dict) and data.get("storage") is not None:
            raise ServiceError(400, "storage: the service keeps experiments in its own store; remove the field")
        if isinstance(data, dict) and data.get("runner", "ansible") != "client":
            raise ServiceError(
                400,
                "runner: the service creates experiments whose trials its clients run (runner: client); "
                "an experiment knobflow runs itself is created by running its file (knobflow run, or its Airflow DAG)",
            )
        try:
            exp = spec.parse(text, source=source, base_dir=Path.cwd())
        except spec.SpecError as exc:
            raise ServiceError(400, "; ".join(p.format(source) for p in exc.problems)) from None
        exp = spec.Experiment(
            model=exp.model.model_copy(update={"storage": self.storage_url}), path=None, base_dir=exp.base_dir
        )
        if self.store.exists(exp.name):
            raise ServiceError(409, f"experiment {exp.name!r} already exists")
        try:
            self.store.open(exp)
        except optuna.exceptions.DuplicatedStudyError:
            raise ServiceError(409, f"experiment {exp.name!r} already exists") from None
        except StoreError as exc:
            raise ServiceError(400, str(exc)) from None
        return exp

    def summary(self, name: str) -> dict[str, Any]:
        study, known = self._open(name)
        exp = known.exp
        s = engine.summarize(exp, known.limits, opened=(self.store, study))
        p = self.store.progress(study, self._history(study))
        return {
            "name": exp.name,
            "description": exp.model.description,
            "runner": exp.model.runner,
            "tuner": exp.model.tuner.name,
            "objectives": s.objectives,
            "budget": {"trials": exp.model.budget.trials, "max_failed": exp.model.budget.max_failed},
            "progress": dataclasses.asdict(p),
            "stop_reason": s.stop_reason,
            "best": None if s.best is None else {**trial_dict(s.best), "value": s.best_value},
            "baseline": None if s.baseline is None else trial_dict(s.baseline),
            "gain_pct": s.gain_pct,
            "pareto": [trial_dict(r) for r in s.pareto],
            "created": study.user_attrs.get("created"),
        }

    def archive(self, name: str) -> str:
        study_id = self._study(name)._study_id
        try:
            archived = self.store.archive(name)
        except StoreError as exc:
            raise ServiceError(409, str(exc)) from None
        with self._locks_guard:  # the study is gone (copied under the archive's name): forget it now
            self._known.pop(study_id, None)
            self._forget(study_id)
        return archived

    # Trials ----------------------------------------------------------------------------------
    def trials(self, name: str) -> list[dict[str, Any]]:
        study, _ = self._open(name)  # among the experiments used last, whose trials the cache keeps
        return [trial_dict(t) for t in self._history(study)]

    def trial(self, name: str, number: int) -> dict[str, Any]:
        return trial_dict(self._frozen(self._study(name), number))

    def _frozen(self, study: optuna.Study, number: int) -> FrozenTrial:
        try:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        except KeyError:
            raise ServiceError(404, f"no trial {number} in experiment {study.study_name!r}") from None
        return study._storage.get_trial(trial_id)

    def _client(self, name: str) -> tuple[optuna.Study, _Known]:
        study, known = self._open(name)
        if known.exp.model.runner != "client":
            raise ServiceError(
                409,
                f"experiment {name!r} is run by knobflow itself (runner: {known.exp.model.runner}: Airflow or "
                "`knobflow run` apply and benchmark its trials); clients ask and tell only for runner: client",
            )
        return study, known

    def ask(
        self, name: str, n: int = 1, *, note: str | None = None, max_running: int | None = None
    ) -> list[dict[str, Any]]:
        """Start up to ``n`` trials and return them (fewer when the budget runs out on the way).

        ``max_running``: when that many trials are running already, start none and return the
        running ones instead, oldest first (decided under the ask lock, so across processes too:
        the Kruize API's "next trial" with ``parallel_trials``).

        Raises 409 with the stop rule's reason when no trial may start (budget spent, max_failed,
        time limit, target, patience, no configuration left).

        A queued configuration (the baseline, imported or warm-start rows to measure again) is
        taken first, as ``knobflow run`` takes it; otherwise the tuner proposes from the trials
        listed once for this ask, and the trial is created with its parameters in one transaction.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ServiceError(400, f"n: must be a positive integer, got {n!r}")
        study, known = self._client(name)
        exp = known.exp
        out: list[dict[str, Any]] = []
        with self.ask_lock(name):
            history = self._history(study)
            if self._expire(exp, study, history):
                history = self._history(study)
            if max_running is not None:
                in_flight = [t for t in history if t.state == TrialState.RUNNING]
                if len(in_flight) >= max_running:
                    return [trial_dict(t) for t in in_flight[:n]]
            for _ in range(n):
                running = sum(t.state == TrialState.RUNNING for t in history)
                reason = engine.stop_reason(exp, self.store, study, known.limits, running=running, trials=history)
                if reason:
                    if not out:
                        raise ServiceError(409, reason)
                    break
                tuner = registry.create(
                    exp.model.tuner.name,
                    seed=exp.model.tuner.seed,
                    options=exp.tuner_options(),
                    defaults=exp.defaults(),
                )
                if running:
                    from knobflow.tuners.pending import pending_aware

                    tuner = pending_aware(tuner)
                try:
                    if any(t.state == TrialState.WAITING for t in history):
                        trial_id = self._take_queued(tuner, study, known, note)
                    else:
                        proposal = tuners_base.propose_checked(
                            tuner,
                            study,
                            known.space,
                            history,
                            seed=exp.model.tuner.seed,
                            repeat_duplicates=exp.model.noise.repeat_duplicates,
                        )
                        trial_id = self._start(study, known.space, proposal, tuner.name, note)
                except tuners_base.SpaceExhausted as exc:
                    if not out:
                        raise ServiceError(409, f"stopped: {exc}") from None
                    break
                history = self._history(study)  # reads the new trial (and the others still running)
                out.append(trial_dict(next(t for t in reversed(history) if t._trial_id == trial_id)))
        return out

    def _take_queued(self, tuner: Any, study: optuna.Study, known: _Known, note: str | None) -> int:
        """Start the oldest queued trial (Optuna's ask takes it; its parameters are fixed); its id."""
        exp = known.exp
        trial = tuners_base.ask(
            tuner, study, known.space, seed=exp.model.tuner.seed, repeat_duplicates=exp.model.noise.repeat_duplicates
        )
        trial.set_user_attr("started", time.time())
        if note:
            trial.set_user_attr("note", note)
        return trial._trial_id

    def _start(
        self, study: optuna.Study, space: Space, proposal: tuners_base.Proposal, tuner: str, note: str | None
    ) -> int:
        """Create a running trial with the proposal's parameters and attributes in one transaction
        (what enqueueing it and asking for it leaves in the store, without the round trips); its id."""
        params: dict[str, Any] = {}
        distributions: dict[str, BaseDistribution] = {}

        def take(param: str, dist: BaseDistribution) -> Any:
            params[param] = proposal.params[param]
            distributions[param] = dist
            return proposal.params[param]

        space.suggest(take)  # the active tunables, with their distributions, as a trial records them
        user_attrs: dict[str, Any] = {"proposed_by": proposal.source or tuner, "started": time.time()}
        if note:
            user_attrs["note"] = note
        template = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.datetime.now(),
            datetime_complete=None,
            params=params,
            distributions=distributions,
            user_attrs=user_attrs,
            system_attrs=dict(proposal.system_attrs),
            intermediate_values={},
            trial_id=-1,
        )
        return study._storage.create_new_trial(study._study_id, template_trial=template)

    def _expire(self, exp: spec.Experiment, study: optuna.Study, history: list[FrozenTrial]) -> bool:
        """Fail the trials a client asked for and never told within ``budget.trial_timeout``: the
        client is gone. They count toward neither the budget nor ``max_failed``. Whether any was."""
        limit = exp.model.budget.trial_timeout
        now = time.time()
        expired = False
        for t in history:
            started = t.user_attrs.get("started")
            if t.state == TrialState.RUNNING and isinstance(started, int | float) and now - started > limit:
                expired = True
                self.store.finish(
                    study,
                    t.number,
                    state=TrialState.FAIL,
                    value=None,
                    attrs={
                        "interrupted": True,
                        "reason": (
                            f"no result within budget.trial_timeout ({limit} s) of being asked: the client is gone"
                        ),
                    },
                )
        return expired

    def tell(
        self,
        name: str,
        number: int,
        *,
        state: str = "complete",
        value: Any = None,
        values: Any = None,
        metrics: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Record a trial's outcome.

        ``complete`` needs the objective: ``value`` (one objective), ``values`` (one per objective,
        in order) or ``metrics`` the objectives are computed from (as from a benchmark's metrics;
        an experiment with SLOs needs the metrics). ``fail`` records a failed trial (it counts
        toward ``max_failed``) with ``reason``; ``pruned`` excludes the trial from the model.
        """
        if state not in STATES:
            raise ServiceError(400, f"state: must be one of {', '.join(STATES)}, got {state!r}")
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ServiceError(400, f"trial number: must be a non-negative integer, got {number!r}")
        if metrics is not None and not isinstance(metrics, dict):
            raise ServiceError(400, f"metrics: must be an object of metric names to numbers, got {metrics!r}")
        if reason is not None and not isinstance(reason, str):
            raise ServiceError(400, f"reason: must be a string, got {reason!r}")
        study, known = self._client(name)
        exp = known.exp
        frozen = self._frozen(study, number)
        if frozen.state in FINISHED:
            raise ServiceError(409, f"trial {number} of {name!r} is already finished ({frozen.state.name.lower()})")
        if frozen.state != TrialState.RUNNING:
            raise ServiceError(409, f"trial {number} of {name!r} has not been asked for")
        objectives = known.objectives
        n_obj = len(objectives.objectives)
        attrs: dict[str, Any] = {"finished": time.time()}
        if metrics:  # none: readers take a missing "metrics" as {} (one write fewer)
            attrs["metrics"] = dict(metrics)
        constraints: list[float] | None = None
        tell_value: float | list[float] | None = None
        if state == "complete":
            if value is not None and values is not None:
                raise ServiceError(400, "give value or values, not both")
            given: list[float] | None = None
            if values is not None:
                if not isinstance(values, list) or len(values) != n_obj:
                    raise ServiceError(400, f"values: must be a list of {n_obj} numbers (one per objective)")
                given = [_finite(v, f"values[{i}]") for i, v in enumerate(values)]
            elif value is not None:
                if n_obj != 1:
                    raise ServiceError(400, f"value: the experiment has {n_obj} objectives; send values (a list)")
                given = [_finite(value, "value")]
            if metrics:
                base = (
                    None
                    if frozen.user_attrs.get("baseline")
                    else engine._baseline_metrics(self.store, study, self._history(study))
                )
                outcome = objectives.evaluate(metrics, base)
                if outcome.values is None:
                    if given is None:
                        raise ServiceError(400, f"metrics: {outcome.reason}")
                else:
                    attrs["slo_violations"] = outcome.violations
                    constraints = outcome.constraint_values if exp.model.slos else None
                    given = given if given is not None else outcome.values
            elif exp.model.slos:
                raise ServiceError(400, "metrics: required: the experiment's SLOs are checked on the trial's metrics")
            if given is None:
                raise ServiceError(400, "a complete trial needs value, values or metrics")
            tell_value = given if exp.multi_objective else given[0]
        elif reason:
            attrs["reason"] = reason
        elif state == "fail":
            attrs["reason"] = "the client reported the trial failed (no reason given)"
        if reason and state == "complete":
            attrs["note"] = reason
        if not self.store.finish(
            study, number, state=STATES[state], value=tell_value, attrs=attrs, constraints=constraints, frozen=frozen
        ):
            raise ServiceError(409, f"trial {number} of {name!r} is already finished")
        # The trial as now stored (not read back: nothing else may change a finished trial).
        told = copy.copy(frozen)
        told.state = STATES[state]
        told.values = None if tell_value is None else (tell_value if isinstance(tell_value, list) else [tell_value])
        told.user_attrs = {**frozen.user_attrs, **attrs}
        told.datetime_complete = datetime.datetime.now()
        return trial_dict(told)

    def best(self, name: str) -> dict[str, Any]:
        s = self.summary(name)
        return {k: s[k] for k in ("name", "objectives", "best", "baseline", "gain_pct", "pareto", "stop_reason")}

    def importance(self, name: str, *, bootstrap: int = 10) -> dict[str, Any]:
        """Each tunable's importance (as ``knobflow select`` ranks them), with its spread over
        bootstrap resamples. 409 when too few trials are complete to rank."""
        from knobflow import select

        study, known = self._open(name)
        exp = known.exp
        trials = self._history(study)
        names = [t.name for t in exp.tunables]
        if exp.multi_objective:
            raise ServiceError(409, "importance is ranked for one objective; this experiment has several")
        try:
            ranking = select.rank(trials, maximize=exp.maximize, names=names, k=len(names), bootstrap=bootstrap)
        except select.SelectError as exc:
            raise ServiceError(409, str(exc)) from None

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "experiment": name,
            "evaluator": select.default_evaluator(trials),
            "tunables": [
                {
                    "name": r.name,
                    "importance": num(r.importance),
                    "sd": num(r.sd),
                    "low": num(r.low),
                    "high": num(r.high),
                    "ranked": r.ranked,
                }
                for r in ranking
            ],
        }

    def export(self, name: str, fmt: str = "json") -> str:
        """Every trial as ``knobflow export`` writes it (rows ``knobflow import`` reads back)."""
        import io

        from knobflow.importer import write_export

        study, known = self._open(name)
        buf = io.StringIO()
        write_export(self._history(study), [t.name for t in known.exp.tunables], fmt, buf)
        return buf.getvalue()

    # Locks -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def ask_lock(self, name: str) -> Iterator[None]:
        """Serialise asks of experiment ``name``: in this process, and across processes through the
        database (PostgreSQL advisory lock) or a lock file next to a SQLite database."""
        with self._locks_guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if self.storage_url.startswith("sqlite:///"):
                path = Path(self.storage_url.removeprefix("sqlite:///"))
                digest = hashlib.sha256(name.encode()).hexdigest()[:16]
                with open(f"{path}.ask-{digest}.lock", "a") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(fh, fcntl.LOCK_UN)
            elif self.store.engine.dialect.name == "postgresql":
                import sqlalchemy as sa

                key = int.from_bytes(hashlib.sha256(f"knobflow-ask:{name}".encode()).digest()[:8], "big", signed=True)
                with self.store.engine.connect() as conn:
                    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                    conn.commit()
                    try:
                        yield
                    finally:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
            else:  # other databases: this process only
                yield


Experiment = spec.Experiment
