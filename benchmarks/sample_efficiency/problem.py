"""What every benchmark problem provides, and the statistics of a problem cached under data/.

A problem has a knobflow :class:`~knobflow.space.Space`, a direction, and ``evaluate(params, rng)``
returning ``(noisy, true)``: the measured value a tuner is told, and the noise-free value the
metrics score it on; both are None when the configuration fails (crashes, is refused).

Its statistics (the optimum, the default's true value, the median of 1000 random configurations)
are computed once, which can take seconds (exhaustive or large random search), and cached as JSON
in ``data/<problem>.json``, keyed by the problem's ``version``.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random
from typing import Any, Literal

import numpy as np

from knobflow.space import Space

DATA = Path(__file__).resolve().parent / "data"
RANDOM_REFERENCE_SAMPLES = 1000

ReferenceKind = Literal["default", "random-median"]


def noise_rng(problem: str, seed: int, trial_number: int) -> np.random.Generator:
    """The noise stream of one evaluation, a function of (problem, seed, trial number) only.

    Every tuner run with the same seed on the same problem sees the same noise at the same trial
    number (paired seeds), so differences between tuners are not differences in luck."""
    digest = hashlib.sha256(f"{problem}:{seed}:{trial_number}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class ProblemStats:
    """Cached facts about a problem, in its own units (not log-scaled)."""

    version: str
    optimum: float
    optimum_method: str  # how it was found: "exhaustive", "known", "random search + local search", ...
    default_value: float
    random_median: float  # median true value of RANDOM_REFERENCE_SAMPLES random feasible configurations
    random_failures: int  # how many of those failed (they are left out of the median)


class Problem(ABC):
    """A benchmark problem. Subclasses set the attributes and implement ``true_value`` and
    ``compute_optimum``; ``noisy`` adds the measurement noise (none by default)."""

    name: str
    family: str  # "hpolib", "bbob-mixint", "jvm-sim": used to break results down
    space: Space
    maximize: bool
    # What normalized regret measures against: the default's value, or (where the default is
    # near-optimal or arbitrary) the median of random configurations. See README.md.
    reference_kind: ReferenceKind = "default"
    # Metrics on log10 of the value (losses spanning decades: 3e-5 to 4e7 on HPOLib).
    log_scale: bool = False
    version: str = "1"

    # The problem ---------------------------------------------------------------------------
    @abstractmethod
    def true_value(self, params: Mapping[str, Any]) -> float | None:
        """The noise-free value of a configuration; None when it fails."""

    def noisy(self, true: float, params: Mapping[str, Any], rng: np.random.Generator) -> float:
        """A measurement of a configuration whose true value is ``true`` (noise-free by default)."""
        return true

    def evaluate(self, params: Mapping[str, Any], rng: np.random.Generator) -> tuple[float | None, float | None]:
        """``(noisy, true)``, both None when the configuration fails."""
        true = self.true_value(params)
        if true is None:
            return None, None
        return self.noisy(true, params, rng), true

    @property
    def default(self) -> dict[str, Any]:
        """The baseline configuration: every tunable at its default (knobflow's trial 0)."""
        return self.space.defaults()

    @abstractmethod
    def compute_optimum(self) -> tuple[float, str]:
        """The best true value and how it was found (slow: called once, then cached)."""

    # Cached statistics -------------------------------------------------------------------------
    def stats(self, *, refresh: bool = False) -> ProblemStats:
        """The problem's statistics, from data/<name>.json when its version matches."""
        cached = getattr(self, "_stats", None)
        if cached is not None and not refresh:
            return cached
        path = DATA / f"{self.name}.json"
        if path.exists() and not refresh:
            raw = json.loads(path.read_text())
            if raw.get("version") == self.version:
                self._stats = ProblemStats(**raw)
                return self._stats
        self._stats = self._compute_stats()
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self._stats), indent=2) + "\n")
        tmp.replace(path)
        return self._stats

    def _compute_stats(self) -> ProblemStats:
        default_value = self.true_value(self.default)
        if default_value is None:
            raise RuntimeError(f"{self.name}: the default configuration fails")
        rng = Random(20240601)
        values: list[float] = []
        failures = 0
        for _ in range(RANDOM_REFERENCE_SAMPLES):
            cand = self.space.random_feasible(rng)
            value = None if cand is None else self.true_value(cand)
            if value is None:
                failures += 1
            else:
                values.append(value)
        optimum, method = self.compute_optimum()
        seen = [*values, default_value]
        best_seen = max(seen) if self.maximize else min(seen)
        if self.better(best_seen, optimum):  # the search missed something a random draw found
            optimum, method = best_seen, method + " (improved by the random reference sample)"
        return ProblemStats(
            version=self.version,
            optimum=float(optimum),
            optimum_method=method,
            default_value=float(default_value),
            random_median=float(statistics.median(values)),
            random_failures=failures,
        )

    # Helpers -------------------------------------------------------------------------------
    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` in the problem's direction."""
        return a > b if self.maximize else a < b

    def reference_value(self) -> float:
        """The value that normalized regret 1 stands for (see README.md)."""
        s = self.stats()
        return s.default_value if self.reference_kind == "default" else s.random_median

    def scale(self, value: float) -> float:
        """A value on the scale the metrics use (log10 for problems with ``log_scale``)."""
        return math.log10(value) if self.log_scale else value
