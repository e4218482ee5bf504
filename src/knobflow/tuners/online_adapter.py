"""The online tuners (:mod:`knobflow.tuners.online`) behind knobflow's ``propose`` interface:
``tuner: hybrid``, ``bluefin``, ``exp_weights`` and ``autoscope`` in an experiment file.

An online tuner is a bandit: each round it predicts one configuration and learns from one reward.
In an experiment, one round is one trial: ``propose`` asks the algorithm for its next prediction,
knobflow runs it, and the next ``propose`` gives the algorithm that trial's reward before asking
again. docs/online-tuners.md ("In an experiment") is the user's page; the choices, in short:

* **Parameters.** An ``int`` tunable is an ``Integer`` (with its step), a ``float`` one a ``Real``
  (a float with a step is tuned as its grid index, an ``Integer`` 0..N), a ``categorical`` or
  ``bool`` one a ``Categorical`` (choices as strings); ``val`` is the tunable's default. A
  **log-scale** tunable is tuned in log space: a ``Real`` over [ln low, ln high], mapped back with
  ``exp`` and snapped to the domain (rounded for an int). ``bluefin`` and ``autoscope`` tune the
  numeric tunables and ``exp_weights`` the categorical ones; the other tunables stay at their
  defaults, and an experiment with nothing of the right kind is refused at validation. ``hybrid``
  tunes both.
* **Reward** (the spec's mapping): the relative improvement over the baseline (trial 0, the
  defaults), ``r = clip(sign * (value - baseline) / |baseline|, -1, 1)``, sign +1 to maximise and
  -1 to minimise. A failed trial or one that broke an SLO gets -1. A baseline of 0 gives the sign of
  the improvement. If the baseline did not complete, the first of the tuner's rounds that completed
  is the reference. One objective only (several are refused at validation).
* **Options** are the algorithm's constructor arguments (``exp_weights`` also takes ``slates``,
  ``autoscope`` also ``context``), validated by building the algorithm. knobflow's defaults differ
  from the library's in two ways: BlueFin uses two-point feedback (``feedback: 2``, the spec's
  recommendation), and every generator is seeded from ``tuner.seed`` unless the options give a
  ``random_seed``.
* **No state outside the study** (as every knobflow tuner): each proposal stores the algorithm's
  prediction in the trial's system attribute ``online`` (with the number of predictions rejected
  before it, the learner's key and its seed). ``propose`` rebuilds the algorithm from its seed and
  *replays* the rounds it proposed: predict (which must give the stored prediction again, else
  :class:`ReplayError`), then the trial's reward. A resumed experiment therefore continues exactly
  where an uninterrupted one would be, whatever process runs it, with or without ``tuner.seed`` (a
  random seed is drawn once and stored). Rounds are replayed only under the same key: the
  algorithm, its options, the seed and the tuned parameters (their defaults included); a trial
  proposed under other options belongs to another learner and is left out. A full replay costs
  one predict and one reward per earlier round: 0.07-0.15 s for 500 rounds (measured on a busy
  2-core machine). Within one process the tuner object also keeps the learner's state after its
  last replay and, when those rounds are a prefix of the stored ones, replays only the new rounds.
* **Feasibility.** A prediction that breaks a constraint (``reject`` refuses it) is not run: the
  algorithm is told the worst reward, -1, for it and predicts again, up to ``MAX_REJECTIONS``
  times; then the trial runs the incumbent (the best feasible configuration measured so far, else
  the defaults), whose result the algorithm does not see. The count is stored with the proposal, so
  the replay repeats those -1 rewards. (The incumbent also runs if the last round has no result
  yet, which a normal run, one trial at a time, never meets.) Inactive tunables (conditions) are left out of the
  configuration by :meth:`Space.complete`; the algorithm still holds a value for them.
* **Repeats.** The algorithms re-run configurations on purpose (exponential weights replay their
  arms, two probes of a pair can round to the same integers), so ``repeats_configurations`` is
  True: knobflow's "already measured" check would otherwise redraw them, breaking the round.
* **Trials the tuner did not propose** (the baseline, re-measurements, imported or warm-start
  trials, random fallbacks) are not rounds: the algorithm learns only from its own predictions. A
  trial interrupted and queued again (``requeued_from``) gives its round the re-run's result.
* **autoscope** needs a context: an offline experiment has one, ``{"scope": "experiment"}`` over a
  two-valued feature, unless the options give ``features`` and ``context``. Every trial then routes
  to one leaf, so it tunes like ``bluefin``; per-context tuning is for continuous mode.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.space import Space, snap
from knobflow.tuners.base import Proposal
from knobflow.tuners.online import ALGORITHMS, Categorical, Integer, OnlineTuner, Real, from_state

ATTR = "online"  # the trial system attribute holding a proposal's round
MAX_REJECTIONS = 16  # infeasible predictions told -1 in one proposal before the fallback
MAX_JOINT_ARMS = 100_000  # joint exponential weights keep one weight per combination of the categoricals
DEFAULT_FEATURES: list[dict[str, Any]] = [{"name": "scope", "values": ["experiment", "other"]}]
DEFAULT_CONTEXT: dict[str, Any] = {"scope": "experiment"}


@dataclass(frozen=True)
class Kind:
    """A knobflow tuner name backed by an online algorithm."""

    algorithm: str  # the library's registry key
    tunes: str  # "numeric", "categorical" or "both"
    summary: str
    extra_options: tuple[str, ...] = ()  # the adapter's own options, besides the constructor's


KINDS: dict[str, Kind] = {
    "hybrid": Kind(
        "hybrid_solver",
        "both",
        "online: OPPerTune's hybrid solver, exponential weights for the categorical tunables and BlueFin "
        "(two-point gradient ascent in small steps) for the numeric ones; rewarded by the gain over the baseline",
    ),
    "bluefin": Kind(
        "bluefin",
        "numeric",
        "online: BlueFin (SelfTune's two-point gradient ascent in small steps) on the numeric tunables; "
        "categorical ones stay at their defaults",
    ),
    "exp_weights": Kind(
        "exponential_weights",
        "categorical",
        "online: exponential weights (Exp3) over the categorical tunables (option slates: one learner "
        "per tunable); numeric ones stay at their defaults",
        ("slates",),
    ),
    "autoscope": Kind(
        "autoscope",
        "numeric",
        "online: AutoScope, a learned tree of BlueFin tuners over a context; an experiment has one context, "
        "so it tunes like bluefin (per-context tuning is for continuous mode)",
        ("context",),
    ),
}


class ReplayError(RuntimeError):
    """Replaying the rounds stored in the study did not give the predictions that were run."""


def names() -> list[str]:
    return sorted(KINDS)


# Parameters ------------------------------------------------------------------------------------------
def _labels(choices: tuple[Any, ...]) -> tuple[str, ...]:
    """Categories as the strings the library wants: strings as they are, other values as JSON
    (``true``, ``4096``); all as JSON if that would make two of them equal."""
    labels = tuple(c if isinstance(c, str) else json.dumps(c) for c in choices)
    if len(set(labels)) != len(labels):
        labels = tuple(json.dumps(c) for c in choices)
    return labels


@dataclass(frozen=True)
class Knob:
    """One tunable as a parameter of the online library, and the way back."""

    name: str
    dist: BaseDistribution
    param: Categorical | Integer | Real
    labels: tuple[str, ...] | None = None  # categorical: the choices' labels

    @property
    def numeric(self) -> bool:
        return self.labels is None

    def decode(self, x: Any) -> Any:
        """The tunable's value for the algorithm's value ``x``."""
        d = self.dist
        if isinstance(d, CategoricalDistribution):
            assert self.labels is not None
            return d.choices[self.labels.index(x)]
        assert isinstance(d, IntDistribution | FloatDistribution)
        if d.log:
            return snap(d, math.exp(x))
        if isinstance(d, FloatDistribution) and d.step is not None:
            return snap(d, d.low + int(x) * d.step)
        return snap(d, x)


def knob(name: str, dist: BaseDistribution, default: Any) -> Knob:
    """The online parameter of a tunable (module docstring: log scales in log space, a float's step
    as a grid index)."""
    if isinstance(dist, CategoricalDistribution):
        labels = _labels(dist.choices)
        same = [i for i, c in enumerate(dist.choices) if c == default and type(c) is type(default)]
        index = same[0] if same else next((i for i, c in enumerate(dist.choices) if c == default), 0)
        return Knob(name, dist, Categorical(name, labels[index], labels), labels)
    assert isinstance(dist, IntDistribution | FloatDistribution)
    lo, hi = dist.low, dist.high
    if dist.log:
        ln_lo, ln_hi = math.log(lo), math.log(hi)
        val = min(max(math.log(default), ln_lo), ln_hi)
        return Knob(name, dist, Real(name, val, ln_lo, ln_hi))
    if isinstance(dist, IntDistribution):
        return Knob(name, dist, Integer(name, int(default), int(lo), int(hi), int(dist.step)))
    if dist.step is not None:
        n = round((hi - lo) / dist.step)
        return Knob(name, dist, Integer(name, min(max(round((default - lo) / dist.step), 0), n), 0, n))
    return Knob(name, dist, Real(name, float(default), float(lo), float(hi)))


def knobs(kind: Kind, distributions: dict[str, BaseDistribution], defaults: dict[str, Any]) -> list[Knob]:
    """The tunables the algorithm tunes, as online parameters, in the space's order."""
    out = []
    for name, d in distributions.items():
        categorical = isinstance(d, CategoricalDistribution)
        if kind.tunes == "both" or (kind.tunes == "categorical") == categorical:
            out.append(knob(name, d, defaults[name]))
    return out


def _representative(d: BaseDistribution) -> Any:
    """A value of the domain, standing in for a default when only the distributions are known."""
    if isinstance(d, CategoricalDistribution):
        return d.choices[0]
    assert isinstance(d, IntDistribution | FloatDistribution)
    return d.low


# Options -------------------------------------------------------------------------------------------
def accepted_options(name: str) -> list[str]:
    """The options of tuner ``name``: its algorithm's constructor arguments and the adapter's own."""
    kind = KINDS[name]
    params = list(inspect.signature(ALGORITHMS[kind.algorithm].__init__).parameters)[2:]  # self, parameters
    return [*params, *kind.extra_options]


def _nested(options: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    given = options.get(key)
    if given is None:
        return dict(defaults)
    if not isinstance(given, dict):
        raise ValueError(f"{key} must be a mapping, got {given!r}")
    return {**defaults, **given}


def constructor_args(name: str, options: dict[str, Any], seed: int) -> tuple[str, dict[str, Any]]:
    """(library algorithm, keyword arguments) for tuner ``name``: the options over knobflow's defaults.

    knobflow's defaults differ from the library's in two ways: BlueFin uses two-point feedback
    (``feedback: 2``, the spec's recommendation: scale-invariant, no baseline needed), and every
    generator is seeded with the experiment's seed unless the options give ``random_seed``.
    """
    kind = KINDS[name]
    unknown = sorted(set(options) - set(accepted_options(name)))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; {name} takes {', '.join(accepted_options(name))}")
    args = {k: v for k, v in options.items() if k not in kind.extra_options}
    algorithm = kind.algorithm
    if name == "bluefin":
        args = {"feedback": 2, "random_seed": seed, **args}
    elif name == "exp_weights":
        slates = options.get("slates", False)
        if not isinstance(slates, bool):
            raise ValueError(f"slates must be true or false, got {slates!r}")
        algorithm = "exponential_weights_slates" if slates else "exponential_weights"
        args = {"random_seed": seed, **args}
    elif name == "hybrid":
        args["categorical_algorithm_args"] = _nested(options, "categorical_algorithm_args", {"random_seed": seed})
        args["numerical_algorithm_args"] = _nested(
            options, "numerical_algorithm_args", {"feedback": 2, "random_seed": seed}
        )
    elif name == "autoscope":
        if "features" in options and "context" not in options:
            raise ValueError("with features, give context: the features' values for this experiment's trials")
        args = {"features": DEFAULT_FEATURES, "random_seed": seed, **args}
        args["leaf_algorithm_args"] = _nested(options, "leaf_algorithm_args", {"feedback": 2, "random_seed": seed})
    return algorithm, args


def per_host_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options of an autoscope experiment whose contexts come from the inventory
    (``continuous.context``): a placeholder ``context`` that fits its features (each categorical
    feature's first value, each numeric one's ``min`` or 0), so that it builds and checks like an
    experiment with one context (every round passes each host's own), and, unless the options give
    ``internal_weights``, a router that starts with each value of the first categorical feature in
    a leaf of its own (:func:`separating_weights`)."""
    placeholder: dict[str, Any] = {}
    features = options.get("features") or []
    for f in features:
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            values = f.get("values")
            placeholder[f["name"]] = values[0] if isinstance(values, list) and values else (f.get("min") or 0.0)
    out = {**options, "context": placeholder}
    if "internal_weights" not in options:
        height = options.get("height", 3)
        weights = separating_weights(features, height) if isinstance(height, int) and 1 <= height <= 10 else None
        if weights is not None:
            out["internal_weights"] = weights
    return out


def separating_weights(features: list[Any], height: int) -> list[list[float]] | None:
    """Router weights that send value i of the first categorical feature to leaf i (left where
    bit d of i, from the top, is 0: the hand-set weights of the spec's property 13), with zero
    weight on every other feature; None when there is no categorical feature, a malformed one,
    or more values than the 2**height leaves. Learned routing from random weights rarely keeps two
    contexts with different optima apart (in 60 simulated rounds of two host groups whose best
    configurations are opposite, 5 seeds out of 5 ended with both groups in one leaf), so a
    per-host experiment starts with each group tuned apart; the router may still learn to merge them."""
    widths: list[int] = []
    first: tuple[int, int] | None = None  # (column of its first value, number of values)
    for f in features:
        if not isinstance(f, dict):
            return None
        values = f.get("values")
        if isinstance(values, list):
            if first is None:
                first = (sum(widths), len(values))
            widths.append(len(values))
        else:
            widths.append(1)
    if first is None or first[1] > 2**height:
        return None
    w = [[0.0] * sum(widths) for _ in range(2**height - 1)]
    column, k = first
    for i in range(k):
        node = 0
        for depth in range(height):
            bit = (i >> (height - 1 - depth)) & 1
            w[node][column + i] = -1.0 if bit else 1.0
            node = 2 * node + 1 + bit
    return w


def context_of(name: str, options: dict[str, Any]) -> dict[str, Any] | None:
    if name != "autoscope":
        return None
    context = options.get("context", DEFAULT_CONTEXT)
    if not isinstance(context, dict):
        raise ValueError(f"context must be a mapping of the features' values, got {context!r}")
    return context


def build(name: str, options: dict[str, Any], seed: int, params: list[Knob]) -> OnlineTuner:
    """The algorithm of tuner ``name`` over ``params``. Raises ValueError for bad options."""
    algorithm, args = constructor_args(name, options, seed)
    if algorithm == "exponential_weights" or (
        algorithm == "hybrid_solver"
        and args.get("categorical_algorithm", "exponential_weights") == "exponential_weights"
    ):
        arms = math.prod(len(k.labels) for k in params if k.labels is not None)
        if arms > MAX_JOINT_ARMS:
            fix = "slates: true" if name == "exp_weights" else "categorical_algorithm: exponential_weights_slates"
            raise ValueError(
                f"joint exponential weights would need {arms:,} arms (one per combination of the categorical "
                f"tunables, at most {MAX_JOINT_ARMS:,}): use {fix}, one learner per tunable"
            )
    return ALGORITHMS[algorithm]([k.param for k in params], **args)


def problem(
    name: str, options: dict[str, Any], distributions: dict[str, BaseDistribution], objectives: int = 1
) -> str | None:
    """Why tuner ``name`` cannot run with ``options`` on this space, or None (for registry.check)."""
    kind = KINDS[name]
    if objectives > 1:
        return (
            f"the {name} tuner maximises one reward and this experiment has {objectives} objectives; "
            "use auto, tpe or nsga2, or keep one objective"
        )
    params = knobs(kind, distributions, {n: _representative(d) for n, d in distributions.items()})
    tunable = [k for k in params if not k.param.is_constant]
    if not tunable:
        what = {"numeric": "numeric (int or float)", "categorical": "categorical (or bool)"}[kind.tunes]
        others = [n for n in distributions if n not in {k.name for k in tunable}]
        other_kind = "numeric" if kind.tunes == "categorical" else "categorical"
        listed = ", ".join(others[:-1]) + (" and " if len(others) > 1 else "") + others[-1] if others else ""
        why = f" ({listed} {'is' if len(others) == 1 else 'are'} {other_kind} or constant)" if others else ""
        return f"the {name} tuner tunes {what} tunables only, and this experiment has none to tune{why}: use hybrid"
    try:
        tuner = build(name, dict(options), 0, params)
        context = context_of(name, options)
        tuner.predict(context)  # autoscope: the context must fit the features
    except (TypeError, ValueError) as exc:
        return f"options not accepted by the {name} tuner: {exc}"
    return None


# Rewards -------------------------------------------------------------------------------------------
def _finished(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) and not t.user_attrs.get("interrupted")


def _value(t: FrozenTrial) -> float | None:
    """The single objective value of a completed trial, else None."""
    if t.state != TrialState.COMPLETE or t.values is None or len(t.values) != 1:
        return None
    v = float(t.values[0])
    return v if math.isfinite(v) else None


def reward(value: float | None, reference: float | None, maximize: bool, *, feasible: bool = True) -> float:
    """The reward of a trial: ``clip(sign * (value - reference) / |reference|, -1, 1)``; -1 for a failed
    (``value`` None) or SLO-infeasible trial; the sign of the improvement when the reference is 0."""
    if value is None or not feasible:
        return -1.0
    if reference is None:
        return 0.0
    gain = (value - reference) if maximize else (reference - value)
    if reference == 0:
        return float((gain > 0) - (gain < 0))
    return min(1.0, max(-1.0, gain / abs(reference)))


def baseline_value(history: list[FrozenTrial]) -> float | None:
    """The measured baseline: the first completed trial marked ``baseline`` (trial 0 or its re-run)."""
    for t in sorted(history, key=lambda t: t.number):
        if t.user_attrs.get("baseline") and not t.user_attrs.get("interrupted"):
            v = _value(t)
            if v is not None:
                return v
    return None


def outcome(t: FrozenTrial, reruns: dict[int, FrozenTrial]) -> FrozenTrial | None:
    """The trial whose result is the round's: ``t``, or the re-run of ``t`` interrupted; None while
    it has not finished."""
    for _ in range(1000):
        if _finished(t):
            return t
        if not t.user_attrs.get("interrupted"):
            return None  # still running or waiting
        nxt = reruns.get(t.number)
        if nxt is None:
            return None
        t = nxt
    return None


# The tuner -----------------------------------------------------------------------------------------
@dataclass
class Round:
    """One replayed proposal: its trial, the prediction run, the reward the algorithm got (None: pending)."""

    trial: int
    config: dict[str, Any] | None  # None: a fallback (the incumbent ran, not a prediction)
    rejected: int
    reward: float | None


@dataclass(frozen=True)
class _Cache:
    """The learner's state after replaying ``rounds`` (an in-process shortcut: see replay)."""

    key: str
    seed: int
    rounds: list[Round]
    state: dict[str, Any]


@dataclass
class OnlineAdapter:
    """An online algorithm behind knobflow's ``propose`` (module docstring)."""

    name: str
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    repeats_configurations: bool = True

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise ValueError(f"not an online tuner: {self.name!r}; known: {', '.join(names())}")
        self.kind = KINDS[self.name]
        constructor_args(self.name, self.options, 0)  # unknown options fail here
        self.context = context_of(self.name, self.options)
        self.rounds: list[Round] = []  # the last replay, for inspection (tests, debugging)
        self._cache: _Cache | None = None

    def _key(self, params: list[Knob]) -> str:
        doc = {
            "tuner": self.name,
            "options": self.options,
            "seed": self.seed,
            "parameters": [k.param.to_dict() for k in params],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def replay(
        self, space: Space, history: list[FrozenTrial], maximize: bool = True
    ) -> tuple[OnlineTuner, dict[str, Any]]:
        """The algorithm after every round stored in ``history`` under this tuner's key, and the
        attributes the next proposal carries (without its prediction). ``maximize`` is the
        objective's direction."""
        params = knobs(self.kind, space.distributions(), {n: p.default for n, p in space.params.items()})
        if not any(not k.param.is_constant for k in params):
            raise ValueError(problem(self.name, self.options, space.distributions()) or "nothing to tune")
        key = self._key(params)
        ordered = sorted(history, key=lambda t: t.number)
        mine = [t for t in ordered if isinstance(a := t.system_attrs.get(ATTR), dict) and a.get("key") == key]
        if mine:
            seed = int(mine[0].system_attrs[ATTR]["seed"])
        else:
            seed = self.seed if self.seed is not None else secrets.randbelow(2**31)
        reruns = {int(t.user_attrs["requeued_from"]): t for t in ordered if "requeued_from" in t.user_attrs}
        reference = baseline_value(history)
        rounds: list[Round] = []
        for t in mine:
            attrs = t.system_attrs[ATTR]
            config = attrs.get("config")
            r: float | None = None
            done = outcome(t, reruns) if config is not None else None
            if done is not None:
                value = _value(done)
                if reference is None and value is not None:
                    reference = value  # the baseline failed: the first completed round is the reference
                r = reward(value, reference, maximize, feasible=not done.user_attrs.get("slo_violations"))
            rounds.append(Round(t.number, None if config is None else dict(config), int(attrs.get("rejected", 0)), r))
        self.rounds = rounds
        # The learner after the rounds this object replayed last time, if they are a prefix of these
        # (a function of the key, the seed and the rounds, so the result is the same as a full replay).
        cached = self._cache
        if (
            cached is not None
            and (cached.key, cached.seed) == (key, seed)
            and rounds[: len(cached.rounds)] == cached.rounds
        ):
            tuner, done_rounds = from_state(cached.state), len(cached.rounds)
        else:
            tuner, done_rounds = build(self.name, self.options, seed, params), 0
        for rd in rounds[done_rounds:]:
            for _ in range(rd.rejected):
                tuner.predict(self.context)
                tuner.set_reward(-1.0, self.context)
            if rd.config is None:
                continue
            predicted, _ = tuner.predict(self.context)
            if predicted != rd.config:
                raise ReplayError(
                    f"the {self.name} tuner cannot continue this experiment: replaying trial {rd.trial} predicted "
                    f"{predicted} but the trial ran {rd.config}. The online tuners' code changed since that trial "
                    "was proposed; give the experiment a new name, or another tuner.seed to start a new learner"
                )
            if rd.reward is not None:
                tuner.set_reward(rd.reward, self.context)
        self._cache = _Cache(key, seed, list(rounds), tuner.dump())
        return tuner, {"key": key, "seed": seed}

    def propose(self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any) -> Proposal | None:
        if len(study.directions) > 1:
            raise ValueError(problem(self.name, self.options, space.distributions(), len(study.directions)))
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        tuner, attrs = self.replay(space, history, maximize)
        params = knobs(self.kind, space.distributions(), {n: p.default for n, p in space.params.items()})
        if tuner.get_tuning_requests():
            # The last round has no result yet (knobflow runs one trial at a time, so this does not
            # happen in a normal run): run the incumbent rather than guess its reward.
            return self._fallback(space, history, maximize, {**attrs, "config": None, "rejected": 0}, reject)
        for rejected in range(MAX_REJECTIONS):
            predicted, _ = tuner.predict(self.context)
            config = space.complete({k.name: k.decode(predicted[k.name]) for k in params})
            if reject(config) is None:
                return Proposal(config, {ATTR: {**attrs, "config": predicted, "rejected": rejected}}, source=self.name)
            tuner.set_reward(-1.0, self.context)  # infeasible: the worst reward, without running it
        return self._fallback(space, history, maximize, {**attrs, "config": None, "rejected": MAX_REJECTIONS}, reject)

    def _fallback(
        self, space: Space, history: list[FrozenTrial], maximize: bool, attrs: dict[str, Any], reject: Any
    ) -> Proposal:
        """The incumbent (the best feasible configuration measured), else the defaults; not a round."""
        best: tuple[float, dict[str, Any]] | None = None
        for t in history:
            v = _value(t)
            skip = ("slo_violations", "interrupted", "imported", "warm_start")  # measured here, feasible
            if v is None or any(t.user_attrs.get(k) for k in skip):
                continue
            score = v if maximize else -v
            if best is None or score > best[0]:
                best = (score, dict(t.params))
        config = best[1] if best is not None and reject(best[1]) is None else space.defaults()
        return Proposal(config, {ATTR: attrs}, source=f"{self.name}-fallback")
