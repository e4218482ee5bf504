"""The tuner interface: propose a configuration from the history; knobflow records and runs it.

A tuner implements ``propose(study, space, history)``: given the experiment's finished trials it
returns one configuration of the space. :func:`ask` turns that into a trial of the study: it takes a
queued configuration first (the baseline, imported or warm-start rows, a re-queued interrupted
trial, a re-measurement), otherwise asks the tuner and rejects proposals that break a constraint
or repeat a measured configuration, redrawing up to ``MAX_ATTEMPTS`` times before it falls back to
a random feasible configuration. Tuners keep no state outside the study, so a killed process loses
nothing and any process can continue an experiment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.space import Space

MAX_ATTEMPTS = 64


class SpaceExhausted(Exception):
    """No configuration is left that satisfies the constraints and has not been measured."""


@dataclass
class Proposal:
    params: dict[str, Any]
    system_attrs: dict[str, Any] = field(default_factory=dict)  # the sampler's bookkeeping (grid id, ...)
    source: str = ""


class Tuner(Protocol):
    name: str
    repeats_configurations: bool  # True for tuners that re-run configurations on purpose (identity)

    def propose(
        self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any
    ) -> Proposal | None: ...


def tell(study: optuna.Study, trial_number: int, state: TrialState, value: float | list[float] | None) -> None:
    """Tell the study a trial's outcome; a trial already finished is left as it is."""
    if state == TrialState.COMPLETE:
        study.tell(trial_number, value, skip_if_finished=True)
    else:
        study.tell(trial_number, state=state, skip_if_finished=True)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for a distribution (a queued trial returns its fixed value)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def measured(space: Space, history: list[FrozenTrial]) -> set[str]:
    """Keys of configurations already run to an end (not interrupted)."""
    return {
        space.key(t.params)
        for t in history
        if t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get("interrupted")
    }


class Rejecter:
    """Why a proposal may not run: a broken constraint, or a configuration already measured."""

    def __init__(self, space: Space, history: list[FrozenTrial], allow_duplicates: bool):
        self.space = space
        self.seen = set() if allow_duplicates else measured(space, history)

    def __call__(self, params: dict[str, Any]) -> str | None:
        problems = self.space.problems(params)
        if problems:
            return problems[0]
        if self.space.key(params) in self.seen:
            return "already measured"
        return None


def ask(
    tuner: Any,
    study: optuna.Study,
    space: Space,
    *,
    seed: int | None = None,
    repeat_duplicates: bool = False,
    user_attrs: dict[str, Any] | None = None,
) -> optuna.Trial:
    """The next trial of ``study``: a queued configuration, else the tuner's (checked) proposal."""
    history = study._storage.get_all_trials(study._study_id, deepcopy=False)
    if not any(t.state == TrialState.WAITING for t in history):
        proposal = propose_checked(tuner, study, space, history, seed=seed, repeat_duplicates=repeat_duplicates)
        attrs = {"proposed_by": proposal.source or tuner.name, **(user_attrs or {})}
        study.enqueue_trial(proposal.params, user_attrs=attrs, skip_if_exists=False)
        trial = study.ask()
        for k, v in proposal.system_attrs.items():
            study._storage.set_trial_system_attr(trial._trial_id, k, v)
    else:
        trial = study.ask()
    space.suggest(lambda n, d: suggest(trial, n, d))
    return trial


def propose_checked(
    tuner: Any,
    study: optuna.Study,
    space: Space,
    history: list[FrozenTrial],
    *,
    seed: int | None = None,
    repeat_duplicates: bool = False,
) -> Proposal:
    reject = Rejecter(space, history, repeat_duplicates or getattr(tuner, "repeats_configurations", False))
    proposal = tuner.propose(study, space, history, reject)
    if proposal is not None and reject(proposal.params) is None:
        return proposal
    # The tuner could not find an acceptable configuration: fall back to a random feasible one.
    rng = random.Random(None if seed is None else seed * 1_000_003 + len(history))
    for _ in range(20_000):
        cand = space.random(rng)
        if reject(cand) is None:
            return Proposal(cand, source="random-fallback")
    raise SpaceExhausted(
        "no configuration is left to try: every configuration the tuner or 20000 random draws found either "
        "breaks a constraint or was already measured (the search space is exhausted, or the constraints "
        "leave almost nothing feasible)"
    )
