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
import dataclasses
import fcntl
import hashlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from knobflow import engine, spec
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


@dataclass
class Service:
    """The service's view of one store."""

    storage_url: str

    def __post_init__(self) -> None:
        self._store: Store | None = None
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

    # Experiments ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [n for n in self.store.names() if not is_archive(n)]

    def _study(self, name: str) -> optuna.Study:
        if not isinstance(name, str) or is_archive(name) or not self.store.exists(name):
            raise not_found(name)
        return optuna.load_study(study_name=name, storage=self.store.storage)

    def experiment(self, name: str) -> Experiment:
        """The experiment as it was created (its file, from the store), on this store."""
        study = self._study(name)
        raw = study.user_attrs.get("spec")
        if not isinstance(raw, dict):
            raise ServiceError(409, f"experiment {name!r} was created by an older knobflow: its file is not stored")
        model = spec.ExperimentModel.model_validate({**raw, "storage": self.storage_url})
        return spec.Experiment(model=model, path=None, base_dir=Path.cwd())

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
        exp = self.experiment(name)
        s = engine.summarize(exp)
        study = self._study(name)
        p = self.store.progress(study)
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
        self._study(name)
        try:
            return self.store.archive(name)
        except StoreError as exc:
            raise ServiceError(409, str(exc)) from None

    # Trials ----------------------------------------------------------------------------------
    def trials(self, name: str) -> list[dict[str, Any]]:
        return [trial_dict(t) for t in self.store.trials(self._study(name))]

    def trial(self, name: str, number: int) -> dict[str, Any]:
        return trial_dict(self._frozen(self._study(name), number))

    def _frozen(self, study: optuna.Study, number: int) -> FrozenTrial:
        try:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        except KeyError:
            raise ServiceError(404, f"no trial {number} in experiment {study.study_name!r}") from None
        return study._storage.get_trial(trial_id)

    def _client_experiment(self, name: str) -> spec.Experiment:
        exp = self.experiment(name)
        if exp.model.runner != "client":
            raise ServiceError(
                409,
                f"experiment {name!r} is run by knobflow itself (runner: {exp.model.runner}: Airflow or "
                "`knobflow run` apply and benchmark its trials); clients ask and tell only for runner: client",
            )
        return exp

    def ask(
        self, name: str, n: int = 1, *, note: str | None = None, max_running: int | None = None
    ) -> list[dict[str, Any]]:
        """Start up to ``n`` trials and return them (fewer when the budget runs out on the way).

        ``max_running``: when that many trials are running already, start none and return the
        running ones instead, oldest first (decided under the ask lock, so across processes too:
        the Kruize API's "next trial" with ``parallel_trials``).

        Raises 409 with the stop rule's reason when no trial may start (budget spent, max_failed,
        time limit, target, patience, no configuration left).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ServiceError(400, f"n: must be a positive integer, got {n!r}")
        exp = self._client_experiment(name)
        out: list[dict[str, Any]] = []
        with self.ask_lock(name):
            study = self._study(name)
            self._expire(exp, study)
            if max_running is not None:
                in_flight = [t for t in self.store.trials(study) if t.state == TrialState.RUNNING]
                if len(in_flight) >= max_running:
                    return [trial_dict(t) for t in sorted(in_flight, key=lambda t: t.number)[:n]]
            lim = engine.limits(exp)
            for _ in range(n):
                running = self.store.progress(study).running
                reason = engine.stop_reason(exp, self.store, study, lim, running=running)
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
                    trial = tuners_base.ask(
                        tuner,
                        study,
                        exp.space(),
                        seed=exp.model.tuner.seed,
                        repeat_duplicates=exp.model.noise.repeat_duplicates,
                    )
                except tuners_base.SpaceExhausted as exc:
                    if not out:
                        raise ServiceError(409, f"stopped: {exc}") from None
                    break
                trial.set_user_attr("started", time.time())
                if note:
                    trial.set_user_attr("note", note)
                out.append(trial_dict(self._frozen(study, trial.number)))
        return out

    def _expire(self, exp: spec.Experiment, study: optuna.Study) -> None:
        """Fail the trials a client asked for and never told within ``budget.trial_timeout``: the
        client is gone. They count toward neither the budget nor ``max_failed``."""
        limit = exp.model.budget.trial_timeout
        now = time.time()
        for t in self.store.trials(study):
            started = t.user_attrs.get("started")
            if t.state == TrialState.RUNNING and isinstance(started, int | float) and now - started > limit:
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
        exp = self._client_experiment(name)
        study = self._study(name)
        frozen = self._frozen(study, number)
        if frozen.state in FINISHED:
            raise ServiceError(409, f"trial {number} of {name!r} is already finished ({frozen.state.name.lower()})")
        if frozen.state != TrialState.RUNNING:
            raise ServiceError(409, f"trial {number} of {name!r} has not been asked for")
        objectives = exp.objectives()
        n_obj = len(objectives.objectives)
        attrs: dict[str, Any] = {"finished": time.time(), "metrics": dict(metrics or {})}
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
                base = None if frozen.user_attrs.get("baseline") else engine._baseline_metrics(self.store, study)
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
            study, number, state=STATES[state], value=tell_value, attrs=attrs, constraints=constraints
        ):
            raise ServiceError(409, f"trial {number} of {name!r} is already finished")
        return trial_dict(self._frozen(study, number))

    def best(self, name: str) -> dict[str, Any]:
        s = self.summary(name)
        return {k: s[k] for k in ("name", "objectives", "best", "baseline", "gain_pct", "pareto", "stop_reason")}

    def importance(self, name: str, *, bootstrap: int = 10) -> dict[str, Any]:
        """Each tunable's importance (as ``knobflow select`` ranks them), with its spread over
        bootstrap resamples. 409 when too few trials are complete to rank."""
        from knobflow import select

        exp = self.experiment(name)
        trials = self.store.trials(self._study(name))
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

        exp = self.experiment(name)
        buf = io.StringIO()
        write_export(self.store.trials(self._study(name)), [t.name for t in exp.tunables], fmt, buf)
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
