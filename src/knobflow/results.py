"""What an experiment's trials add up to: the best configuration (or the Pareto front), and the
history the stop rules read.

Only complete, feasible trials (no SLO broken) can be best. A configuration measured several times
(the incumbent re-measured under ``noise.remeasure_best``, or ``noise.repeat_duplicates``) is judged
on the median of its measurements, so one lucky run does not make it the answer.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from knobflow.objective import Objectives
from knobflow.space import Space
from knobflow.store import TrialRecord


@dataclass
class Best:
    record: TrialRecord  # the first trial of the best configuration
    value: float  # the median over its measurements
    measurements: list[float] = field(default_factory=list)


def feasible_complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None and not t.user_attrs.get("slo_violations")
    ]


def best(space: Space, objectives: Objectives, trials: list[FrozenTrial]) -> Best | None:
    """The best feasible configuration of a single-objective experiment (median over re-measurements)."""
    groups: dict[str, list[FrozenTrial]] = {}
    for t in feasible_complete(trials):
        groups.setdefault(space.key(t.params), []).append(t)
    if not groups:
        return None
    scored = []
    for ts in groups.values():
        values = [t.values[0] for t in ts]
        scored.append((statistics.median(values), ts[0], values))
    pick = max if objectives.objectives[0].maximize else min
    value, first, values = pick(scored, key=lambda x: x[0])
    return Best(record=TrialRecord.from_frozen(first), value=value, measurements=values)


def pareto(objectives: Objectives, trials: list[FrozenTrial]) -> list[TrialRecord]:
    """The feasible trials no other feasible trial dominates."""
    pts: list[tuple[Any, list[float]]] = [(t, list(t.values)) for t in feasible_complete(trials)]
    return [TrialRecord.from_frozen(t) for t in objectives.pareto(pts)]


def trials_since_improvement(objectives: Objectives, trials: list[FrozenTrial]) -> int:
    """How many counted trials have finished since the best feasible value last improved."""
    counted = [
        t
        for t in sorted(trials, key=lambda t: t.number)
        if t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get("interrupted")
    ]
    best_v: float | None = None
    since = 0
    for t in counted:
        ok = t.state == TrialState.COMPLETE and t.values is not None and not t.user_attrs.get("slo_violations")
        if ok and (best_v is None or objectives.better(t.values[0], best_v)):
            best_v = t.values[0]
            since = 0
        elif not (t.user_attrs.get("imported") or t.user_attrs.get("warm_start")):
            since += 1  # prior data sets the best to beat but spends no patience
    return since


def busy_seconds(trials: list[FrozenTrial]) -> float:
    """Time spent running trials (start to end of each finished trial)."""
    total = 0.0
    for t in trials:
        if t.datetime_start is not None and t.datetime_complete is not None:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total
