"""Sample-efficiency metrics of one run (a sequence of trials) and across runs.

Definitions (README.md explains the choices):

* **Incumbent after n trials**: of the first n trials (trial 0, the baseline, included), the one with
  the best *measured* (noisy) value, ties to the earliest; it is scored on its *true* value. This
  is what a user would deploy: they cannot see true values.
* **Normalized regret** of a true value f, with f* the optimum and f_ref the reference (the
  default's true value, or for problems where the default is near-optimal or arbitrary the median
  true value of 1000 random configurations)::

      maximise: (f* - f) / (f* - f_ref)        minimise: (f - f*) / (f_ref - f*)

  clipped below at 0: 0 is the optimum, 1 is no better than the reference, above 1 is worse. It is
  computed on the problem's metric scale (log10 of the loss for HPOLib). Before any trial succeeded
  it is infinite.
* **Gain over the default**: (f(incumbent) - f(default)) / |f(default)|, signed so that positive is
  better (for minimisation, the relative reduction), on true values, original scale.
* **Trials to 90%**: the first n at which the incumbent's true improvement over the default reaches
  90% of its improvement at the end of the run; undefined when the run ends no better than the default.
* **Instantaneous regret** of trial t: the normalized regret of that trial's own true value, clipped
  to [0, ``REGRET_CAP``], a failed trial counting ``REGRET_CAP``. **Cumulative regret** is their sum;
  the summary reports it divided by the number of trials (mean instantaneous regret): the price of
  the configurations tried, as a tuner that tries terrible configurations on a live system pays it.
* **Average rank**: per (problem, seed, n), tuners ranked by normalized regret (1 = best, ties
  share the average rank), averaged over problems and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REGRET_CAP = 2.0


@dataclass(frozen=True)
class Scale:
    """What a problem's regret is measured against, on its metric scale."""

    optimum: float
    reference: float
    maximize: bool

    @classmethod
    def of(cls, problem: Any) -> Scale:
        """The scale of a :class:`~benchmarks.sample_efficiency.problem.Problem`."""
        s = problem.stats()
        return cls(problem.scale(s.optimum), problem.scale(problem.reference_value()), problem.maximize)

    def regret(self, value: float | None) -> float:
        """Normalized regret of ``value`` (on the metric scale), clipped at 0; infinite for None."""
        if value is None:
            return math.inf
        span = abs(self.optimum - self.reference)
        if span == 0:
            raise ValueError("the reference equals the optimum: normalized regret is undefined")
        gap = self.optimum - value if self.maximize else value - self.optimum
        return max(0.0, gap / span)


def better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def incumbents(noisy: Sequence[float | None], true: Sequence[float | None], maximize: bool) -> list[float | None]:
    """The incumbent's true value after each number of trials n = 1..len: chosen on noisy values."""
    out: list[float | None] = []
    best_noisy: float | None = None
    best_true: float | None = None
    for y, f in zip(noisy, true, strict=True):
        if y is not None and (best_noisy is None or better(y, best_noisy, maximize)):
            best_noisy, best_true = y, f
        out.append(best_true)
    return out


def regret_curve(inc: Sequence[float | None], scale: Scale, transform: Any = None) -> list[float]:
    """Normalized regret of each incumbent; ``transform`` maps a value to the metric scale."""
    return [scale.regret(None if v is None else (transform(v) if transform else v)) for v in inc]


def gain(incumbent: float | None, default: float, maximize: bool) -> float | None:
    """Relative gain of the incumbent over the default (positive is better), None without an incumbent."""
    if incumbent is None:
        return None
    if default == 0:
        raise ValueError("the default's value is 0: relative gain is undefined")
    diff = incumbent - default if maximize else default - incumbent
    return diff / abs(default)


def trials_to_fraction(
    inc: Sequence[float | None], default: float, maximize: bool, fraction: float = 0.9
) -> int | None:
    """The first n (1-based) whose incumbent reached ``fraction`` of the final improvement over the default."""
    if not inc or inc[-1] is None:
        return None
    final = inc[-1] - default if maximize else default - inc[-1]
    if final <= 0:
        return None
    for n, v in enumerate(inc, start=1):
        if v is not None and (v - default if maximize else default - v) >= fraction * final:
            return n
    raise AssertionError("unreachable: the last incumbent reaches its own improvement")


def instantaneous_regrets(true: Sequence[float | None], scale: Scale, transform: Any = None) -> list[float]:
    """Each trial's own normalized regret, clipped to [0, REGRET_CAP]; failures count REGRET_CAP."""
    out = []
    for f in true:
        if f is None:
            out.append(REGRET_CAP)
        else:
            out.append(min(REGRET_CAP, scale.regret(transform(f) if transform else f)))
    return out


def cumulative_regret(true: Sequence[float | None], scale: Scale, transform: Any = None) -> float:
    return float(sum(instantaneous_regrets(true, scale, transform)))


def ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Rank of each key by value, ascending (1 = lowest), tied values sharing their average rank."""
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    out: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and _tied(ordered[j + 1][1], ordered[i][1]):
            j += 1
        for k in range(i, j + 1):
            out[ordered[k][0]] = (i + j) / 2 + 1
        i = j + 1
    return out


def _tied(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def average_ranks(cells: Mapping[Any, Mapping[str, float]]) -> dict[str, float]:
    """Average over cells (e.g. (problem, seed, n)) of each tuner's rank within the cell. Every cell
    must rank the same tuners, or averages would not be comparable."""
    totals: dict[str, float] = {}
    tuners: set[str] | None = None
    for key, values in cells.items():
        if tuners is None:
            tuners = set(values)
        elif set(values) != tuners:
            raise ValueError(f"cell {key!r} ranks {sorted(values)}, others rank {sorted(tuners)}")
        for t, r in ranks(values).items():
            totals[t] = totals.get(t, 0.0) + r
    return {t: v / len(cells) for t, v in totals.items()} if cells else {}
