"""Continuous tuning: one round of an online tuner against a live target (``mode: continuous``).

A round (:func:`run_round`) is what one scheduled run does; docs/online-tuners.md ("Continuous
tuning") is the user's page. In short:

* **State.** Everything a round needs lives in the experiment's study, in one study user attribute,
  ``continuous`` (:class:`State`): the learner's ``dump()`` (its pending request included), the
  configuration on the target now, the last good configuration, the consecutive bad rounds, the
  paused flag, the pending round and a log of finished rounds. It is written with one
  ``set_user_attr`` (one database transaction): before the configuration is applied (with the
  prediction pending) and after the reward is set. Nothing else is kept between processes.
* **Trials.** Each round's measurement is a trial of the study, run by
  :func:`knobflow.engine.run_trial` (the offline trial's path: apply + benchmark with Ansible,
  the objective from ``knobflow_metrics``), so ``knobflow show`` and ``best`` list the rounds. The
  trial carries ``continuous_round`` and, for a prediction, ``predicted`` and ``clamped``.
* **Round 0** measures the baseline: the defaults (the configuration running now). Its value is the
  reference of every reward, ``clip(sign * (value - baseline) / |baseline|, -1, 1)`` (the offline
  adapter's :func:`~knobflow.tuners.online_adapter.reward`); -1 for a failed or SLO-breaking round.
* **Pending.** A round that dies after its prediction was persisted (the process killed, an
  error) leaves it pending: the next round re-applies that configuration and gives its reward to
  that prediction, instead of predicting again.
* **max_step.** Each numeric tunable moves at most ``max_step`` of its range (in the learner's
  own coordinates: log space for a log-scale tunable, grid index for a stepped float; at least one
  step) from the configuration on the target. The learner is not told about the clamp: the reward
  of the clamped configuration goes to its prediction. With BlueFin's default ``delta`` of 0.1 a
  two-point pair moves each tunable by at most 0.2 of its range, so the default ``max_step`` of 0.25
  leaves its probes as they are and only cuts unusual jumps (a large ``eta`` or ``delta``).
* **Guardrails.** A reward below ``reward_floor`` is a bad round: the last good configuration
  (the last one whose reward reached the floor, else the defaults) is applied again with
  apply.yml, and the round records why. After ``pause_after`` consecutive bad rounds the
  experiment is paused: rounds only report it, until :func:`resume` (``knobflow resume``).
* **Constraints.** A prediction whose configuration breaks a constraint is not run: the learner
  gets -1 for it and predicts again (as offline); after ``MAX_REJECTIONS`` the last good
  configuration runs, and the learner does not see that round.
* **Per host.** With ``per_host`` a round is one step per host of ``target.hosts`` (from the
  inventory), one after another, each with its own baseline, configuration, last good
  configuration and bad rounds (:class:`HostState`, in ``State.hosts``), and with ``--limit`` that
  host; an autoscope learner gets each host's context from the inventory (``continuous.context``,
  :mod:`knobflow.ansible.inventory`). A round that dies part-way continues with the hosts it had
  not finished.
* **Failures.** A benchmark that crashes or prints no metrics is a failed trial with its reason:
  reward -1, then the guardrails. A round dying in knobflow itself (an exception) re-raises with
  its prediction still pending; what was persisted before stays.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from knobflow import engine
from knobflow.spec import Experiment
from knobflow.store import Store
from knobflow.tuners.online import Integer, OnlineTuner, Real, from_state
from knobflow.tuners.online_adapter import KINDS, MAX_REJECTIONS, Knob, build, context_of, knob, knobs, reward

ATTR = "continuous"  # the study user attribute holding the state
FORMAT = "knobflow-continuous/1"
LOG_KEEP = 1000  # finished rounds kept in the state's log (the trials keep every measurement)


@dataclass
class Measurement:
    """What applying and measuring one configuration gave."""

    trial: int | None
    value: float | None  # None: failed
    feasible: bool = True
    reason: str | None = None


Measure = Callable[[Experiment, dict[str, Any], dict[str, Any]], Measurement]
Apply = Callable[[Experiment, dict[str, Any], str], str | None]  # returns why it failed, or None


@dataclass
class HostState:
    """One host's part of a per-host experiment (``continuous.per_host``): what :class:`State`
    keeps for the whole target otherwise."""

    baseline: float | None = None
    current: dict[str, Any] | None = None
    last_good: dict[str, Any] | None = None
    bad: int = 0
    pending: dict[str, Any] | None = None
    context: dict[str, Any] | None = None  # the host's autoscope context in its last round
    done_round: int | None = None  # the last round whose step on this host finished


@dataclass
class State:
    """knobflow's bookkeeping of a continuous experiment, persisted as JSON (module docstring).
    ``baseline`` to ``pending`` are the target's; with ``per_host`` each host has its own in ``hosts``."""

    tuner: dict[str, Any] | None = None  # the learner's dump()
    seed: int | None = None
    baseline: float | None = None
    current: dict[str, Any] | None = None  # the configuration on the target
    last_good: dict[str, Any] | None = None
    bad: int = 0  # consecutive bad rounds
    paused: bool = False
    pause_reason: str | None = None
    pending: dict[str, Any] | None = None  # the round whose measurement has not finished
    rounds: int = 0  # finished rounds
    log: list[dict[str, Any]] = field(default_factory=list)
    hosts: dict[str, HostState] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_doc(cls, doc: Any) -> State:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a continuous-tuning state ({FORMAT}): {str(doc)[:80]}")
        fields = {k: v for k, v in doc.items() if k != "format"}
        fields["hosts"] = {h: HostState(**v) for h, v in (fields.get("hosts") or {}).items()}
        return cls(**fields)

    def worst_bad(self) -> int:
        return max([self.bad, *(h.bad for h in self.hosts.values())])


Slot = State | HostState  # what a step changes: the target's fields of State, or one host's


@dataclass
class RoundReport:
    """What one round did (``knobflow round`` prints it)."""

    experiment: str
    round: int | None
    action: str  # baseline | predicted | re-applied | paused | busy
    config: dict[str, Any] | None = None
    predicted: dict[str, Any] | None = None
    clamped: list[str] = field(default_factory=list)
    trial: int | None = None
    value: float | None = None
    reward: float | None = None
    failed: str | None = None  # why the measurement failed
    guardrails: list[str] = field(default_factory=list)
    paused: bool = False
    host: str | None = None  # per_host: the host of this step
    context: dict[str, Any] | None = None  # its autoscope context
    hosts: list[RoundReport] = field(default_factory=list)  # per_host: one step per host

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.hosts:
            for key in ("host", "context", "hosts"):
                if out[key] in (None, []):
                    del out[key]
        return out


# State in the store ---------------------------------------------------------------------------------
def load_state(study: optuna.Study) -> State:
    doc = study.user_attrs.get(ATTR)
    return State() if doc is None else State.from_doc(doc)


def save_state(study: optuna.Study, state: State) -> None:
    """One user-attribute write: one transaction, so a reader sees the old state or the new one."""
    state.log = state.log[-LOG_KEEP:]
    study.set_user_attr(ATTR, state.to_doc())


# The learner ------------------------------------------------------------------------------------------
def _params(exp: Experiment) -> list[Knob]:
    space = exp.space()
    return knobs(KINDS[exp.model.tuner.name], space.distributions(), {n: p.default for n, p in space.params.items()})


def _learner(exp: Experiment, state: State) -> OnlineTuner:
    if state.tuner is not None:
        return from_state(state.tuner)
    t = exp.model.tuner
    if state.seed is None:
        state.seed = t.seed if t.seed is not None else secrets.randbelow(2**31)
    return build(t.name, exp.tuner_options(), state.seed, _params(exp))


def clamp(
    params: list[Knob], predicted: dict[str, Any], current: dict[str, Any], max_step: float
) -> tuple[dict[str, Any], list[str]]:
    """The configuration of ``predicted`` (the learner's values) with each numeric tunable moved at
    most ``max_step`` of its range from ``current`` (tunable values), in the learner's coordinates;
    an ``Integer`` moves at least one step. Returns (tunable values, names of the clamped tunables)."""
    out: dict[str, Any] = {}
    clamped: list[str] = []
    for k in params:
        x = predicted[k.name]
        p = k.param
        if isinstance(p, Integer | Real) and k.name in current and not p.is_constant:
            cur = knob(k.name, k.dist, current[k.name]).param.val
            assert isinstance(cur, int | float)
            limit: float = max_step * (p.max - p.min)
            if isinstance(p, Integer):  # whole steps, at least one
                limit = max(p.step, math.floor(limit / p.step) * p.step)
            if abs(x - cur) > limit:
                x = min(max(cur + math.copysign(limit, x - cur), p.min), p.max)
                x = round(x) if isinstance(p, Integer) else x
                clamped.append(k.name)
        out[k.name] = k.decode(x)
    return out, clamped


# Applying and measuring with the engine -------------------------------------------------------------
def _limits(exp: Experiment) -> engine.Limits:
    return engine.Limits(trials=exp.model.budget.trials, max_failed=exp.model.budget.max_failed)


def _queue(study: optuna.Study, config: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Make ``config`` the next trial: a queued trial with these values (a requeued round, the
    baseline) is used, with the round's attributes added; any other queued trial is set aside
    (failed, marked superseded)."""
    storage = study._storage
    reuse = False
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if not reuse and (t.system_attrs.get("fixed_params") or dict(t.params)) == config:
            reuse = True
            for key, value in attrs.items():
                storage.set_trial_user_attr(t._trial_id, key, value)
            continue
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "reason", "superseded: a continuous round ran another configuration")
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    if not reuse:
        study.enqueue_trial(config, user_attrs=attrs, skip_if_exists=False)


def measure_with_engine(exp: Experiment, config: dict[str, Any], attrs: dict[str, Any]) -> Measurement:
    """Apply ``config`` and run the benchmark as one trial of the study, by the offline trial's path."""
    _, study = engine.open_study(exp)
    _queue(study, config, attrs)
    result = engine.run_trial(exp, _limits(exp), stop_rules=False)
    return Measurement(result.number, result.value, not result.violations, result.reason)


def apply_with_engine(exp: Experiment, config: dict[str, Any], label: str) -> str | None:
    result = engine.apply_configuration(exp, config, label=label)
    return None if result.ok else (result.reason or f"apply.yml ended {result.status}")


# One round --------------------------------------------------------------------------------------------
def run_round(exp: Experiment, *, measure: Measure | None = None, apply: Apply | None = None) -> RoundReport:
    """One round of continuous tuning (module docstring). ``measure`` and ``apply`` default to the
    engine's (Ansible); tests inject their own."""
    if exp.model.mode != "continuous":
        raise ValueError(f"experiment {exp.name!r} is not continuous (give it mode: continuous)")
    measure = measure or measure_with_engine
    apply = apply or apply_with_engine
    store, study = engine.open_study(exp)
    store.recover(study, grace_s=exp.model.budget.trial_timeout + 60)
    state = load_state(study)
    if state.paused:
        return RoundReport(exp.name, None, "paused", config=state.current, paused=True, guardrails=[_paused(state)])
    if any(t.state == TrialState.RUNNING for t in store.trials(study)):
        return RoundReport(exp.name, None, "busy", failed="another round is running (a trial is RUNNING)")
    if exp.continuous.per_host:
        return _per_host_round(exp, study, state, measure, apply)
    if state.baseline is None:
        report = _baseline_step(exp, study, state, state, measure)
    else:
        context = context_of(exp.model.tuner.name, exp.tuner_options())
        report = _tuned_step(exp, study, state, state, _learner(exp, state), context, measure, apply)
    _finish(exp, study, state, report)
    return report


def _per_host_round(exp: Experiment, study: optuna.Study, state: State, measure: Measure, apply: Apply) -> RoundReport:
    """One round of a ``per_host`` experiment: a step on each host of ``target.hosts``, one after
    another, each with its own baseline, configuration, guardrails and (autoscope) context. Every
    host's context is resolved before anything runs, so a broken inventory changes nothing."""
    from knobflow.ansible import inventory

    c = exp.continuous
    targets = inventory.hosts(exp.inventory(), exp.model.target.hosts)
    features = exp.model.tuner.options.get("features") or []
    default = context_of(exp.model.tuner.name, exp.tuner_options())
    contexts = {h.name: inventory.context_of(h, c.context, features) if c.context else default for h in targets}
    tuner = _learner(exp, state)
    report = RoundReport(exp.name, state.rounds, "per-host")
    for h in targets:
        slot = state.hosts.setdefault(h.name, HostState())
        if slot.done_round == state.rounds:  # this round died after this host's step: not again
            report.hosts.append(RoundReport(exp.name, state.rounds, "done", host=h.name, context=slot.context))
            continue
        slot.context = contexts[h.name]
        exp_h = exp.for_hosts(h.name)
        if slot.baseline is None:
            step = _baseline_step(exp_h, study, state, slot, measure, host=h.name)
        else:
            step = _tuned_step(exp_h, study, state, slot, tuner, contexts[h.name], measure, apply, host=h.name)
        step.host, step.context = h.name, contexts[h.name]
        slot.done_round = state.rounds
        report.hosts.append(step)
        save_state(study, state)  # this host's step is kept even if a later one dies
    _finish(exp, study, state, report)
    return report


def _tuned_step(
    exp: Experiment,
    study: optuna.Study,
    state: State,
    slot: Slot,
    tuner: OnlineTuner,
    context: dict[str, Any] | None,
    measure: Measure,
    apply: Apply,
    host: str | None = None,
) -> RoundReport:
    """Predict (or re-apply the pending configuration), apply and measure, reward, guardrails."""
    c = exp.continuous
    n = state.rounds
    current = slot.current or exp.defaults()
    if slot.pending is not None:
        action, pending = "re-applied", slot.pending
    else:
        pending = _predict(exp, tuner, context, _params(exp), current, slot)
        pending["round"] = n
        state.tuner, slot.pending, action = tuner.dump(), pending, "predicted"
        save_state(study, state)  # before anything reaches the target: a dying round is re-applied
    config = dict(pending["config"])
    predicted = pending["predicted"]
    report = RoundReport(exp.name, n, action, config=config, predicted=predicted, clamped=list(pending["clamped"]))
    if pending["rejected"]:
        report.guardrails.append(f"{pending['rejected']} predictions broke a constraint (reward -1, not run)")
    if predicted is None:
        report.guardrails.append(
            "no feasible prediction: the last good configuration runs (the learner does not see it)"
        )
    source = exp.model.tuner.name if predicted is not None else f"{exp.model.tuner.name}-fallback"
    attrs: dict[str, Any] = {"continuous_round": n, "proposed_by": source, "predicted": predicted}
    if pending["clamped"]:
        attrs["clamped"] = pending["clamped"]
    if host is not None:
        attrs.update(target_host=host, context=context)
    m = measure(exp, config, attrs)
    r = reward(m.value, slot.baseline, exp.maximize, feasible=m.feasible)
    if predicted is not None:
        tuner.set_reward(r, context)
    report.trial, report.value, report.reward, report.failed = m.trial, m.value, r, m.reason
    state.tuner, slot.pending = tuner.dump(), None
    if r < c.reward_floor:
        slot.bad += 1
        good = slot.last_good or exp.defaults()
        why = f"reward {r:.3g} is below reward_floor {c.reward_floor:g}"
        label = f"round-{n:04d}-restore" + (f"-{host}" if host is not None else "")
        failed = apply(exp, good, label)
        if failed is None:
            slot.current = good
            report.guardrails.append(f"{why}: restored the last good configuration")
        else:
            slot.current = None  # unknown: the next round moves from the defaults
            report.guardrails.append(f"{why}: restoring the last good configuration failed: {failed}")
    else:
        slot.bad, slot.last_good, slot.current = 0, config, config
    return report


def _predict(
    exp: Experiment,
    tuner: OnlineTuner,
    context: dict[str, Any] | None,
    params: list[Knob],
    current: dict[str, Any],
    state: Slot,
) -> dict[str, Any]:
    """The round's configuration: the learner's prediction, clamped to max_step. A configuration that
    breaks a constraint is not run: the learner gets -1 for it and predicts again (at most
    MAX_REJECTIONS times, then the last good configuration runs, as a fallback the learner does not see)."""
    space = exp.space()
    for rejected in range(MAX_REJECTIONS):
        predicted, _ = tuner.predict(context)
        values, clamped = clamp(params, predicted, current, exp.continuous.max_step)
        config = space.complete({**current, **values})
        if not space.problems(config):
            return {"predicted": predicted, "config": config, "clamped": clamped, "rejected": rejected}
        tuner.set_reward(-1.0, context)
    fallback = state.last_good or exp.defaults()
    return {"predicted": None, "config": fallback, "clamped": [], "rejected": MAX_REJECTIONS}


def _baseline_step(
    exp: Experiment, study: optuna.Study, state: State, slot: Slot, measure: Measure, host: str | None = None
) -> RoundReport:
    """Round 0 (or its retry): measure the defaults, the reference of every reward."""
    n = state.rounds
    config = exp.defaults()
    action = "re-applied" if slot.pending is not None else "baseline"
    slot.pending = {"round": n, "baseline": True, "config": config}
    save_state(study, state)
    report = RoundReport(exp.name, n, action, config=config)
    attrs: dict[str, Any] = {"continuous_round": n, "baseline": True}
    if host is not None:
        attrs["target_host"] = host
    m = measure(exp, config, attrs)
    report.trial, report.value, report.failed = m.trial, m.value, m.reason
    slot.pending, slot.current = None, config
    if m.value is not None and m.feasible:
        slot.baseline, slot.last_good, slot.bad = m.value, config, 0
    else:
        slot.bad += 1
        report.guardrails.append("the baseline did not measure: the next round measures it again")
    return report


def _paused(state: State) -> str:
    return f"paused: {state.pause_reason}; `knobflow resume` clears it"


def _finish(exp: Experiment, study: optuna.Study, state: State, report: RoundReport) -> None:
    pause_after = exp.continuous.pause_after
    if state.worst_bad() >= pause_after:
        state.paused = True
        worst = [h for h, hs in state.hosts.items() if hs.bad >= pause_after]
        on = f" on {', '.join(worst)}" if worst else ""
        state.pause_reason = f"{state.worst_bad()} consecutive bad rounds{on} (pause_after {pause_after})"
        report.paused = True
        report.guardrails.append(_paused(state))
    state.rounds += 1
    entry = {k: v for k, v in report.as_dict().items() if k not in ("experiment", "predicted")}
    if "hosts" in entry:
        entry["hosts"] = [
            {k: v for k, v in h.items() if k not in ("experiment", "predicted", "hosts")} for h in entry["hosts"]
        ]
    state.log.append({**entry, "finished": time.time()})
    save_state(study, state)


def resume(store: Store, name: str) -> bool:
    """Clear a pause (and the count of bad rounds). Returns whether the experiment was paused."""
    study = store.load(name)
    if ATTR not in study.user_attrs:
        raise ValueError(f"experiment {name!r} has no continuous-tuning state (no round has run)")
    state = load_state(study)
    was = state.paused
    state.paused, state.pause_reason, state.bad = False, None, 0
    for hs in state.hosts.values():
        hs.bad = 0
    save_state(study, state)
    return was
