"""Proposing while other trials run (``parallel`` > 1): constant liar for history-based tuners, and
no configuration proposed twice while it runs.

Optuna's samplers see running trials themselves (TPE's ``constant_liar``, the GP sampler, grid, QMC).
knobflow's ``auto`` proposes from the finished trials it is given, so without help it would propose
the same expected-improvement maximum to every worker that asks while the first one runs.
:class:`PendingAware` wraps a tuner and, when trials are running:

* gives a history-based tuner (``auto``) each running trial as if it had finished with the worst
  value observed so far (a pessimistic constant liar, as Optuna's TPE does), so the model steers
  the next proposal away from what is being measured;
* refuses a proposal equal to a running trial's configuration (for every tuner), unless the tuner
  repeats configurations on purpose.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from knobflow.space import Space
from knobflow.tuners.base import Proposal, Tuner


def _lies(study: optuna.Study, history: list[FrozenTrial]) -> list[FrozenTrial]:
    """``history`` with each running trial (that has its params) replaced by a finished one whose
    value is the worst observed; unchanged when nothing finished yet."""
    done = [
        t for t in history if t.state == TrialState.COMPLETE and t.values and not t.user_attrs.get("slo_violations")
    ]
    if not done or len(study.directions) != 1:
        return history
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    values = [t.values[0] for t in done]
    worst = min(values) if maximize else max(values)
    out = []
    for t in history:
        if t.state == TrialState.RUNNING and t.params:
            out.append(
                optuna.trial.create_trial(
                    params=dict(t.params),
                    distributions=dict(t.distributions),
                    value=worst,
                    user_attrs={"constant_liar": True},
                )
            )
        else:
            out.append(t)
    return out


@dataclass
class PendingAware:
    """A tuner that takes the running trials into account (see the module docstring)."""

    inner: Tuner
    lie: bool  # give the inner tuner the running trials as finished with the worst value
    name: str = ""
    repeats_configurations: bool = False

    def __post_init__(self) -> None:
        self.name = self.inner.name
        self.repeats_configurations = bool(getattr(self.inner, "repeats_configurations", False))

    def __getattr__(self, attr: str) -> Any:  # the inner tuner's own attributes (rejections, ...)
        if attr == "inner":  # not set yet (copying): do not recurse
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def propose(self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any) -> Proposal | None:
        running = [t for t in history if t.state == TrialState.RUNNING and t.params]
        if not running:
            return self.inner.propose(study, space, history, reject)
        keys = {space.key(dict(t.params)) for t in running}

        def reject_running(params: dict[str, Any]) -> str | None:
            why = reject(params)
            if why is None and not self.repeats_configurations and space.key(params) in keys:
                return "running now"
            return why

        seen = _lies(study, history) if self.lie else history
        proposal = self.inner.propose(study, space, seen, reject_running)
        if proposal is not None and reject_running(proposal.params) is not None:
            return None  # knobflow then falls back to a random feasible configuration
        return proposal


def pending_aware(tuner: Tuner) -> Tuner:
    """``tuner`` wrapped for proposing while trials run."""
    # Not imported here: auto's module imports SciPy, about a second in each trial task's process.
    # A tuner can only be an AutoTuner once that module is loaded.
    auto = sys.modules.get("knobflow.tuners.auto")
    return PendingAware(inner=tuner, lie=auto is not None and isinstance(tuner, auto.AutoTuner))
