"""Tuners backed by Optuna's samplers."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna._transform import _SearchSpaceTransform
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.space import Space
from knobflow.tuners.base import MAX_ATTEMPTS, Proposal, suggest

MAX_GRID_POINTS = 1_000_000
Factory = Callable[[int | None, dict[str, Any], dict[str, BaseDistribution]], optuna.samplers.BaseSampler]


def _tpe(seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    kwargs: dict[str, Any] = {"multivariate": True, "constant_liar": True, "n_startup_trials": 5}
    kwargs.update(options)
    return optuna.samplers.TPESampler(seed=seed, **kwargs)


def _tpe_univariate(
    seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]
) -> optuna.samplers.BaseSampler:
    # What Kruize HPO's `optuna_tpe` ran: independent (univariate) TPE with Optuna's defaults.
    return optuna.samplers.TPESampler(seed=seed, multivariate=False, **options)


def _random(seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed, **options)


def _qmc(seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    kwargs: dict[str, Any] = {"qmc_type": "sobol", "scramble": True}
    kwargs.update(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, **kwargs)


REPAIR_RAMP = 16  # repairs after which every tunable moves, as far as across its whole range


class RepairingSampler(optuna.samplers.BaseSampler):
    """A model-based sampler whose refused proposals are repaired, not re-modelled.

    knobflow tells a proposal it refuses (a broken constraint, a configuration already measured)
    as failed in the shadow study and asks again (:class:`OptunaTuner`). A cheap sampler just draws
    again. An expensive one would refit its model and re-optimise its acquisition function for
    every redraw: Optuna's GP sampler takes 10 to 60 s for that over 31 mixed tunables, and as its
    model ignores failed trials it proposes about the same point again, up to ``MAX_ATTEMPTS``
    times in one proposal. This wrapper asks the model once per proposal. After the k-th refusal
    it moves ``max(1, round(s * d))`` of the model's d tunables, s = ``min(1, k / REPAIR_RAMP)``:
    a numeric one by a Gaussian step of width ``0.05 + 0.5 s`` of its (log-)range, reflected at the
    bounds; a categorical one to another choice. The first repairs stay next to the model's choice;
    later ones widen towards a random draw. Tunables outside the model's (relative) search space,
    such as conditional ones, go to the model's independent sampler as before.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int | None = None):
        self.base = base
        self._rng = random.Random(seed)
        self._last: tuple[int, dict[str, Any], dict[str, BaseDistribution]] | None = None
        self.model_calls = 0  # asks that reached the base sampler (a model fit once past its start-up trials)
        self.repairs = 0  # repairs since the model's last proposal

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def _refused(self, study: optuna.Study, search_space: dict[str, BaseDistribution]) -> bool:
        if self._last is None or self._last[2] != search_space:
            return False
        number = self._last[0]
        trials = study.get_trials(deepcopy=False)
        return number < len(trials) and trials[number].state == TrialState.FAIL

    def _move(self, name: str, dist: BaseDistribution, value: Any, width: float) -> Any:
        if isinstance(dist, CategoricalDistribution):
            others = [c for c in dist.choices if c != value]
            return self._rng.choice(others) if others else value
        trans = _SearchSpaceTransform({name: dist}, transform_0_1=True)
        x = float(trans.transform({name: value})[0]) + self._rng.gauss(0.0, width)
        while not 0.0 <= x <= 1.0:  # reflect at the bounds
            x = -x if x < 0.0 else 2.0 - x
        return trans.untransform(np.array([x]))[name]

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._refused(study, search_space):
            assert self._last is not None
            self.repairs += 1
            share = min(1.0, self.repairs / REPAIR_RAMP)
            chosen = self._last[1]
            names = sorted(chosen)
            params = dict(chosen)
            for name in self._rng.sample(names, max(1, round(share * len(names)))):
                params[name] = self._move(name, search_space[name], chosen[name], 0.05 + 0.5 * share)
            self._last = (trial.number, chosen, search_space)
            return params
        self.repairs = 0
        self.model_calls += 1
        params = self.base.sample_relative(study, trial, search_space)
        self._last = (trial.number, params, search_space) if params else None
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()


def _gp(seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    # Each GP proposal refits the model and optimises the acquisition function: repair refusals.
    return RepairingSampler(optuna.samplers.GPSampler(seed=seed, **options), seed)


def _cmaes(seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    # Categoricals are sampled at random by design (documented); do not warn on every trial.
    kwargs: dict[str, Any] = {"warn_independent_sampling": False}
    kwargs.update(options)
    return optuna.samplers.CmaEsSampler(seed=seed, **kwargs)


def _nsga2(seed: int | None, options: dict[str, Any], _: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **options)


def grid_values(dist: BaseDistribution, points: int) -> list[Any]:
    """The grid of one tunable: every choice; every step of a small integer or stepped range;
    otherwise ``points`` values spread evenly (geometrically on a log scale), bounds included."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution | FloatDistribution) and dist.step is not None and not dist.log:
        count = round((dist.high - dist.low) / dist.step) + 1
        if count <= points:
            return [dist.low + k * dist.step for k in range(count)]
        picks = sorted({round(k * (count - 1) / (points - 1)) for k in range(points)})
        return [dist.low + k * dist.step for k in picks]
    assert isinstance(dist, IntDistribution | FloatDistribution)
    lo, hi = float(dist.low), float(dist.high)
    if dist.log:
        values = [math.exp(math.log(lo) + k * (math.log(hi) - math.log(lo)) / (points - 1)) for k in range(points)]
    else:
        values = [lo + k * (hi - lo) / (points - 1) for k in range(points)]
    if isinstance(dist, IntDistribution):
        return sorted({round(v) for v in values})
    return values


def _grid(
    seed: int | None, options: dict[str, Any], distributions: dict[str, BaseDistribution]
) -> optuna.samplers.BaseSampler:
    opts = dict(options)
    points = int(opts.pop("points", 5))
    if points < 2:
        raise ValueError("grid option points must be at least 2")
    space = {name: grid_values(d, points) for name, d in distributions.items()}
    size = math.prod(len(v) for v in space.values())
    if size > MAX_GRID_POINTS:
        # Optuna's GridSampler materialises every point in memory: refuse rather than exhaust it.
        raise ValueError(
            f"the grid has {size:.3g} points (more than {MAX_GRID_POINTS:,}); lower the points option, "
            "pin tunables (knobflow select), or use another tuner"
        )
    return optuna.samplers.GridSampler(space, seed=seed, **opts)


@dataclass(frozen=True)
class SamplerSpec:
    factory: Factory
    summary: str
    requires: tuple[str, ...] = ()  # importable modules the sampler needs
    extra: str | None = None  # the knobflow extra that installs them
    # Rebuilt per ask with a seed derived from the trial count. Not for grid: its visiting order is
    # a permutation fixed by the seed, and a new seed per ask would visit grid points twice.
    reseed: bool = True


SAMPLERS: dict[str, SamplerSpec] = {
    "tpe": SamplerSpec(_tpe, "Optuna TPE, multivariate, constant liar, 5 start-up trials"),
    "tpe-univariate": SamplerSpec(_tpe_univariate, "Optuna TPE with independent parameters (Kruize's optuna_tpe)"),
    "random": SamplerSpec(_random, "uniform random search"),
    "grid": SamplerSpec(_grid, "grid search (option points: values per numeric tunable, default 5)", reseed=False),
    "qmc": SamplerSpec(_qmc, "scrambled Sobol quasi-random search", ("scipy",), "qmc"),
    "gp": SamplerSpec(_gp, "Optuna's Gaussian-process Bayesian optimisation", ("torch", "scipy"), "gp"),
    "cmaes": SamplerSpec(_cmaes, "CMA-ES (numeric tunables; categoricals are sampled at random)", ("cmaes",), "cmaes"),
    "nsga2": SamplerSpec(_nsga2, "NSGA-II genetic algorithm"),
}


def missing_modules(name: str) -> list[str]:
    return [m for m in SAMPLERS[name].requires if importlib.util.find_spec(m) is None]


def _derive_seed(seed: int, n: int) -> int:
    digest = hashlib.sha256(f"{seed}:{n}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _shadow(study: optuna.Study, sampler: optuna.samplers.BaseSampler, history: list[FrozenTrial]) -> optuna.Study:
    """An in-memory copy of the finished history for the sampler to propose from: proposals it
    makes there that knobflow rejects never reach the experiment's study."""
    shadow = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), directions=study.directions, sampler=sampler
    )
    finished = [t for t in history if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)]
    if finished:
        shadow.add_trials(finished)
    return shadow


@dataclass
class OptunaTuner:
    """An Optuna sampler behind the propose interface.

    The sampler proposes in an in-memory copy of the study (define-by-run, so only active tunables
    are drawn); a proposal that breaks a constraint or repeats a measured configuration is told as
    failed there and the sampler draws again. Samplers are rebuilt for every proposal with a seed
    derived from (experiment seed, number of trials so far), so a resumed experiment suggests what
    an uninterrupted one would have.
    """

    name: str
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    repeats_configurations: bool = False

    def _sampler(self, n_trials: int, distributions: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
        spec = SAMPLERS[self.name]
        if not spec.reseed:
            seed: int | None = self.seed or 0
        elif self.seed is None:
            seed = None
        else:
            seed = _derive_seed(self.seed, n_trials)
        return spec.factory(seed, dict(self.options), distributions)

    def propose(self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any) -> Proposal | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            shadow = _shadow(study, self._sampler(len(history), space.distributions()), history)
            for _ in range(MAX_ATTEMPTS):
                t = shadow.ask()
                params = space.suggest(lambda n, d, t=t: suggest(t, n, d))  # type: ignore[misc]
                if reject(params) is None:
                    attrs = {
                        k: v
                        for k, v in shadow._storage.get_trial_system_attrs(t._trial_id).items()
                        if k != "fixed_params"
                    }
                    return Proposal(params, attrs, source=self.name)
                shadow.tell(t, state=TrialState.FAIL)
        return None


@dataclass
class IdentityTuner:
    """Measures the baseline again and again: every trial runs the tunables' defaults.

    Useful to measure a benchmark's noise, or as the "do nothing" peer in comparisons.
    """

    defaults: dict[str, Any]
    name: str = "identity"
    repeats_configurations: bool = True

    def propose(self, study: optuna.Study, space: Space, history: list[FrozenTrial], reject: Any) -> Proposal | None:
        return Proposal(space.defaults(), source=self.name)
