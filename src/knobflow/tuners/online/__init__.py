"""Online (post-deployment) tuners after OPPerTune and SelfTune: shared/specs/online-tuner.md.

A library with OPPerTune's API, for tuning a live system in small steps, one round at a time::

    from knobflow.tuners.online import Categorical, Integer, Real, create

    params = [Integer("workers", val=8, min=1, max=64), Real("ratio", val=0.5, min=0.0, max=1.0),
              Categorical("gc", val="G1", categories=["G1", "Parallel", "ZGC"])]
    tuner = create("hybrid_solver", params, numerical_algorithm_args={"feedback": 2, "random_seed": 1},
                   categorical_algorithm_args={"random_seed": 1})
    config, request_id = tuner.predict()   # apply config, measure, compute a reward (higher is better)
    tuner.set_reward(reward)
    doc = tuner.dump()                     # plain JSON; later: tuner = from_state(doc)

Algorithms (registry keys as upstream): ``bluefin``, ``exponential_weights``,
``exponential_weights_slates``, ``hybrid_solver``, ``autoscope``, ``identity``, ``uniform_random``.
Upstream's ``bayesian_optimization``, ``hopt``, ``slates`` (Vowpal Wabbit) and ``ddpg`` are not
implemented. docs/online-tuners.md is the reference page.

Deviations from upstream; the default is knobflow's behaviour, the flag gives upstream's:

==  ==========================================================  ==============================
D1  decayed BlueFin delta clamped to 0.5                        (none: upstream would crash)
D2  one-point BlueFin subtracts a running-mean baseline         ``baseline=None``
D3  NaN / infinite rewards refused, nothing changes             (none)
D4  a Real's step divides its range within 1e-9 relative        (none)
D5  hybrid holds the categorical choice for a two-point pair    ``hold_categorical_for_pair=False``
D6  AutoScope: counts rewards, seeded router init, numeric      ``autoscope_upstream_quirks=True``
    features scaled to [-1, 1], leaf i seeded with seed + i
D7  uniform random respects ``step``                            (none)
D8  exponential weights: optional prior mass on ``val``         ``prior_weight=0`` (the default)
D9  state is versioned JSON, floats exact                       (none)
==  ==========================================================  ==============================
"""

from __future__ import annotations

from typing import Any

from knobflow.tuners.online.autoscope import AutoScope, Feature
from knobflow.tuners.online.base import (
    Context,
    NoPendingRequestError,
    OnlineTuner,
    TuningRequest,
    UnknownRequestError,
    context_id,
)
from knobflow.tuners.online.bluefin import BlueFin
from knobflow.tuners.online.exp_weights import ExponentialWeights, ExponentialWeightsSlates
from knobflow.tuners.online.hybrid import HybridSolver
from knobflow.tuners.online.params import Categorical, Integer, ParameterError, Real
from knobflow.tuners.online.simple import Identity, UniformRandom
from knobflow.tuners.online.state import FORMAT, VERSION, StateError

ALGORITHMS: dict[str, type[OnlineTuner]] = {
    cls.algorithm: cls
    for cls in (
        AutoScope,
        BlueFin,
        ExponentialWeights,
        ExponentialWeightsSlates,
        HybridSolver,
        Identity,
        UniformRandom,
    )
}


def create(algorithm: str, parameters: Any, **kwargs: Any) -> OnlineTuner:
    """A tuner by registry key (``hybrid_solver``, ``bluefin``, ...) with its constructor arguments."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown online algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[algorithm](parameters, **kwargs)


def from_state(doc: Any) -> OnlineTuner:
    """The tuner a state document (from ``dump()``) describes, restored exactly."""
    algorithm = doc.get("algorithm") if isinstance(doc, dict) else None
    if algorithm not in ALGORITHMS:
        raise StateError(f"unknown algorithm {algorithm!r} in state document; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[algorithm].from_doc(doc)


__all__ = [
    "ALGORITHMS",
    "FORMAT",
    "VERSION",
    "AutoScope",
    "BlueFin",
    "Categorical",
    "Context",
    "ExponentialWeights",
    "ExponentialWeightsSlates",
    "Feature",
    "HybridSolver",
    "Identity",
    "Integer",
    "NoPendingRequestError",
    "OnlineTuner",
    "ParameterError",
    "Real",
    "StateError",
    "TuningRequest",
    "UniformRandom",
    "UnknownRequestError",
    "context_id",
    "create",
    "from_state",
]
