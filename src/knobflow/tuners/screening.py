"""``morris``: a factor-screening design (Morris elementary effects) for ``knobflow select``.

In Morris's one-at-a-time (OAT) design (Morris 1991, "Factorial sampling plans for preliminary
computational experiments"; Campolongo, Cariboni and Saltelli 2007 for the mu* statistic) each
trial changes exactly **one** knob of the previous trial, so the difference of the two
measurements is that knob's *elementary effect* at that point of the space. A trajectory moves
every knob once, in a random order: k knobs cost k + 1 trials and give one effect per knob. Over
r trajectories, the mean absolute effect (mu*) ranks the knobs, interactions included, and the
effects' spread (sigma) says how much a knob's effect depends on the others;
``knobflow.select`` computes both (evaluator ``morris``).

``knobflow select --screen`` plans a ``qmc`` screening by default, not this one: on the 31-knob
simulator with 4-8% measurement noise, 128 space-filling trials ranked by a Gaussian process found
all 5 important knobs more often than 128 Morris trials ranked by mu* (numbers in
:mod:`knobflow.select` and docs/performance.md): an elementary effect is the difference of two
noisy measurements and each trial informs one knob. Morris was built for deterministic simulators.
``--design morris`` plans this one, for spaces where most random configurations crash.

The design, for mixed, conditional and constrained spaces of system knobs measured one at a time:

* **Trajectory 0 starts at the baseline** (the defaults, trial 0 of every experiment), so the first
  k effects are those of moving away from the configuration running today; **each later trajectory
  starts where the previous one ended** (its last trial that ran), a point known to run, in a new
  random knob order. Random starting points (Morris's grid) were measured worse: on the simulator
  without declared constraints a random point crashes more often than not, and a crashed start
  costs a trial and gives no effect. A random start is used only when there is nothing to continue
  from (the baseline failed).
* **A step moves one numeric knob by Delta = 2/3 of its range** (Morris's p / (2 (p - 1)) for p = 4
  levels, option ``levels``; log-scaled where the tunable is), up if it can and down otherwise:
  large steps, whose effect stands out of the measurement noise. A categorical knob switches to
  another choice. When the step breaks a constraint (or repeats a measured configuration), the
  other levels are tried, the distance closest to Delta first, then the points halfway between
  levels; a knob that cannot move, or is inactive at that point (its condition does not hold), is
  skipped in this trajectory.
* **A failed trial is reverted**: the trajectory continues from its last successful trial, so a
  crash (an undeclared failure region) costs one effect, not the rest of the trajectory.
* **No state outside the study**: each proposal carries its bookkeeping in the trial's system
  attributes (``morris``: trajectory, position, the knob moved, its new value, the trial it moved
  from), the first trial of a trajectory also its knob order and starting point, so a resumed
  screening continues the trajectory it was in (whatever the seed), and the ranking pairs trials
  without guessing. Interrupted trials queued again (``requeued_from``) stand for the trial they
  re-run.

The design never stops on its own: the screening's budget ends it, and a trajectory cut short
still gives effects.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.space import Space, snap
from knobflow.tuners.base import Proposal

ATTR = "morris"  # the system attribute holding a trial's place in the design
LEVELS = 4  # Morris's p: levels of a numeric knob in the grid of starting points (option levels)
START_ATTEMPTS = 2000


def _rng(seed: int | None, *parts: Any) -> np.random.Generator:
    text = ":".join(str(p) for p in ("morris", 0 if seed is None else seed, *parts))
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def unit(dist: Any, value: Any) -> float:
    """A numeric value as a fraction of its range (log-scaled where the tunable is)."""
    assert isinstance(dist, IntDistribution | FloatDistribution)
    lo, hi, x = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, dist.low))
    return 0.5 if hi == lo else min(1.0, max(0.0, (x - lo) / (hi - lo)))


def from_unit(dist: Any, u: float) -> Any:
    assert isinstance(dist, IntDistribution | FloatDistribution)
    lo, hi = float(dist.low), float(dist.high)
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if dist.log else lo + u * (hi - lo)
    return snap(dist, x)


def design_attrs(trial: FrozenTrial, by_number: dict[int, FrozenTrial]) -> dict[str, Any] | None:
    """A trial's place in a Morris design: its own ``morris`` attribute, or, for a re-run of an
    interrupted trial, the attribute of the trial it re-runs."""
    attrs = trial.system_attrs.get(ATTR)
    seen = 0
    origin = trial
    while attrs is None and "requeued_from" in origin.user_attrs and seen < 100:
        prev = by_number.get(int(origin.user_attrs["requeued_from"]))
        if prev is None:
            return None
        attrs, origin, seen = prev.system_attrs.get(ATTR), prev, seen + 1
    return attrs if isinstance(attrs, dict) else None


def _finished(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get("interrupted")


def succeeded(t: FrozenTrial) -> bool:
    """A trial a trajectory can continue from (and an effect can be measured at)."""
    return (
        t.state == TrialState.COMPLETE
        and t.values is not None
        and len(t.values) == 1
        and not t.user_attrs.get("interrupted")
        and not t.user_attrs.get("slo_violations")
    )


@dataclass
class Trajectory:
    index: int
    order: list[str]
    latent: dict[str, Any]  # every knob's value, inactive ones included
    start: int | None  # the trial number of the starting point (None: not yet proposed)
    last_pos: int = -1
    parent: int | None = None  # the last successful trial of the trajectory
    started_ok: bool = False
    pending: bool = False  # a trial of the trajectory has not finished yet


@dataclass
class MorrisTuner:
    """One-at-a-time trajectories (module docstring). Option: ``levels`` (Morris's p, default 4)."""

    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    name: str = "morris"
    repeats_configurations: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - {"levels"})
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; morris takes levels")
        levels = self.options.get("levels", LEVELS)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 3:
            raise ValueError(f"levels must be an integer of at least 3, got {levels!r}")
        self.levels = levels
        self.delta = levels / (2 * (levels - 1))

    # State, rebuilt from the history -----------------------------------------------------------
    def _trajectories(self, space: Space, history: list[FrozenTrial]) -> list[Trajectory]:
        by_number = {t.number: t for t in history}
        out: dict[int, Trajectory] = {}
        for t in sorted(history, key=lambda t: t.number):
            attrs = design_attrs(t, by_number)
            if attrs is None:
                continue
            idx = int(attrs["traj"])
            tr = out.get(idx)
            if tr is None:
                if "order" not in attrs or "latent" not in attrs:
                    continue  # a trajectory whose first trial is missing (deleted): ignore it
                tr = Trajectory(idx, list(attrs["order"]), dict(attrs["latent"]), attrs.get("from"))
                tr.parent = tr.start
                tr.started_ok = tr.start is not None
                out[idx] = tr
            if t.user_attrs.get("interrupted"):
                continue  # its re-run (requeued_from) stands for it
            if not _finished(t):
                tr.pending = True
                continue
            if attrs.get("factor") is None:  # the starting point itself
                if succeeded(t):
                    tr.start, tr.parent, tr.started_ok = t.number, t.number, True
                continue
            tr.last_pos = max(tr.last_pos, int(attrs["pos"]))
            if succeeded(t):
                tr.latent[attrs["factor"]] = attrs["value"]
                tr.parent = t.number
        return [out[i] for i in sorted(out)]

    def _baseline(self, space: Space, history: list[FrozenTrial]) -> FrozenTrial | None:
        """The measured defaults (the baseline), if they succeeded."""
        key = space.key(space.defaults())
        for t in history:
            if succeeded(t) and (t.user_attrs.get("baseline") or space.key(t.params) == key):
                return t
        return None

    # Proposals ------------------------------------------------------------------------------
    def propose(self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any) -> Proposal | None:
        trajectories = self._trajectories(space, history)
        if not trajectories:
            base = self._baseline(space, history)
            if base is not None:  # trajectory 0 starts at the baseline (it carries no attributes)
                step = self._continue(space, 0, self._full_defaults(space), base.number, reject)
                if step is not None:
                    return step
            elif reject(space.defaults()) is None:  # no baseline yet (the engine always runs one first)
                latent = self._full_defaults(space)
                return self._start(space, Trajectory(0, self._order(space, 0), latent, None))
            index = 1
        else:
            last = trajectories[-1]
            if last.pending:
                return None  # a trial of the design is still running (knobflow runs one at a time)
            index = last.index + 1
            if last.started_ok:
                step = self._step(space, last, reject, first=False)
                if step is not None:
                    return step
                # The next trajectory starts where this one ended: a point known to run.
                step = self._continue(space, index, dict(last.latent), last.parent, reject)
                if step is not None:
                    return step
        # A trajectory from a random point of the grid (the baseline or a start failed).
        start = self._random_start(space, index, reject)
        if start is None:
            return None
        return self._start(space, Trajectory(index, self._order(space, index), start, None))

    def _continue(
        self, space: Space, index: int, latent: dict[str, Any], origin: int | None, reject: Any
    ) -> Proposal | None:
        """The first step of trajectory ``index`` from the measured trial ``origin``."""
        tr = Trajectory(index, self._order(space, index), latent, origin)
        tr.parent, tr.started_ok = origin, True
        return self._step(space, tr, reject, first=True)

    def _full_defaults(self, space: Space) -> dict[str, Any]:
        return {n: p.default for n, p in space.params.items()}

    def _order(self, space: Space, index: int) -> list[str]:
        names = [n for n, p in space.params.items() if _movable(p.distribution)]
        perm = _rng(self.seed, "order", index).permutation(len(names))
        return [names[i] for i in perm]

    def _start(self, space: Space, tr: Trajectory) -> Proposal:
        attrs = {"traj": tr.index, "pos": -1, "factor": None, "from": None, "order": tr.order, "latent": tr.latent}
        return Proposal(space.complete(tr.latent), {ATTR: attrs}, source=self.name)

    def _random_start(self, space: Space, index: int, reject: Any) -> dict[str, Any] | None:
        rng = _rng(self.seed, "start", index)
        for _ in range(START_ATTEMPTS):
            latent: dict[str, Any] = {}
            for n, p in space.params.items():
                d = p.distribution
                if isinstance(d, CategoricalDistribution):
                    latent[n] = d.choices[int(rng.integers(len(d.choices)))]
                else:
                    latent[n] = from_unit(d, int(rng.integers(self.levels)) / (self.levels - 1))
            if reject(space.complete(latent)) is None:
                return latent
        return None

    def _step(self, space: Space, tr: Trajectory, reject: Any, *, first: bool) -> Proposal | None:
        current = space.complete(tr.latent)
        for pos in range(tr.last_pos + 1, len(tr.order)):
            name = tr.order[pos]
            if name not in current:
                continue  # inactive here: skipped in this trajectory
            rng = _rng(self.seed, "step", tr.index, pos)
            for value, du in _candidates(space.params[name].distribution, tr.latent[name], rng, self.levels):
                latent = {**tr.latent, name: value}
                params = space.complete(latent)
                if reject(params) is not None:
                    continue
                attrs: dict[str, Any] = {
                    "traj": tr.index,
                    "pos": pos,
                    "factor": name,
                    "from": tr.parent,
                    "value": value,
                    "du": du,
                }
                if first:
                    attrs.update(order=tr.order, latent=tr.latent)
                return Proposal(params, {ATTR: attrs}, source=self.name)
        return None


def _movable(d: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return len(d.choices) > 1
    return bool(d.high > d.low)


def _candidates(d: Any, value: Any, rng: np.random.Generator, p: int) -> list[tuple[Any, float | None]]:
    """The values a step may move a knob to, best first, with the distance moved (a fraction of
    the range; None for categorical knobs). Numeric knobs: Morris's step of Delta = p / (2 (p - 1))
    up, else down; then the other levels, the distance closest to Delta first (ties: the level
    nearer the middle of the range, where system knobs are rarely pathological); then the points
    halfway between levels. Categorical knobs: the other choices in a random order."""
    if isinstance(d, CategoricalDistribution):
        others = [c for c in d.choices if not (c == value and type(c) is type(value))]
        return [(others[i], None) for i in rng.permutation(len(others))]
    delta = p / (2 * (p - 1))
    u = unit(d, value)
    targets = [u + delta if u + delta <= 1.0 + 1e-9 else u - delta]
    if targets[0] < -1e-9:  # off the grid (a default in the middle): the farther end
        targets = [1.0 if u < 0.5 else 0.0]
    levels = [i / (p - 1) for i in range(p)]
    targets += sorted(levels, key=lambda lv: (round(abs(abs(lv - u) - delta), 9), abs(lv - 0.5), lv))
    # Last resort (constraints rule out every level): the points halfway between levels.
    halves = [(i + 0.5) / (p - 1) for i in range(p - 1)]
    targets += sorted(halves, key=lambda lv: (round(abs(abs(lv - u) - delta), 9), abs(lv - 0.5), lv))
    out: list[tuple[Any, float | None]] = []
    seen = {value}
    for target in targets:
        v = from_unit(d, min(1.0, max(0.0, target)))
        if v in seen:
            continue
        seen.add(v)
        out.append((v, abs(unit(d, v) - u)))
    return out
