"""The two baselines of spec section 7: ``identity`` and ``uniform_random``.

Neither learns, so neither keeps pending requests: ``predict`` returns the request id "" (as
upstream), ``store_reward`` only validates, ``set_reward`` (a scalar, or ``None`` for "the sequence
of stored rewards", which these algorithms accept) only counts rounds in ``iteration``. They exist
as the peers an online tuner must beat: the expert's configuration running today, and blind search.

``uniform_random`` draws with Python's ``random.Random(seed)``, one draw per non-constant
parameter in user order: ``choice`` of the categories, a uniform index ``randint(0, N)`` on an
integer or stepped real's grid, ``uniform(min, max)`` for a real without step. D7: upstream ignores
``step`` (``randint(min, max)`` for an integer, ``uniform`` for every real); we draw on the grid, so
every value is a valid one. For an integer with step 1 and every parameter without a step the draws
are upstream's exactly (``min + randint(0, N)`` consumes the generator as ``randint(min, max)``
does); upstream also draws for constant parameters, we do not (constants never reach an algorithm).
"""

from __future__ import annotations

import random
from typing import Any

from knobflow.tuners.online import state as st
from knobflow.tuners.online.base import OnlineTuner, TuningRequest, check_reward
from knobflow.tuners.online.params import Categorical, Integer, Real, to_user


class _NonLearning(OnlineTuner):
    """Shared protocol of the baselines: no pending requests, any context, rewards only counted."""

    contextual = True  # upstream accepts (and ignores) a context

    def predict(self, context: Any = None) -> tuple[dict[str, Any], str]:
        self._as_context(context)  # validates only
        return self._config(), ""

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def store_reward(self, request_id: str, reward: float, reward_data: Any = None) -> None:
        check_reward(reward)

    def get_tuning_requests(self, context_id: Any = None) -> list[TuningRequest]:
        return []

    def set_reward(self, reward: float | None, context_id: Any = "") -> None:
        self._as_context_id(context_id)
        if reward is not None:
            check_reward(reward)
        self._iteration += 1


class Identity(_NonLearning):
    """Always the parameters' ``val``: the configuration running today."""

    algorithm = "identity"

    def __init__(self, parameters: Any):
        super().__init__(parameters, {})

    def _config(self) -> dict[str, Any]:
        return {p.name: p.val for p in self.raw_params}

    def _dump_state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass


class UniformRandom(_NonLearning):
    """Uniform random configurations (on each parameter's step grid, D7)."""

    algorithm = "uniform_random"

    def __init__(self, parameters: Any, random_seed: int | None = None):
        super().__init__(parameters, {"random_seed": random_seed})
        if random_seed is not None and (isinstance(random_seed, bool) or not isinstance(random_seed, int)):
            raise ValueError(f"random_seed must be an integer or None, got {random_seed!r}")
        self._rng = random.Random(random_seed)

    def _config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.raw_params:
            if p.is_constant:
                out[p.name] = p.val
            elif isinstance(p, Categorical):
                out[p.name] = self._rng.choice(p.categories)
            elif isinstance(p, Integer):
                out[p.name] = p.min + p.step * self._rng.randint(0, (p.max - p.min) // p.step)
            elif isinstance(p, Real) and p.step is None:
                out[p.name] = self._rng.uniform(p.min, p.max)
            else:
                assert isinstance(p, Real) and p.step is not None
                out[p.name] = to_user(p, self._rng.randint(0, round((p.max - p.min) / p.step)))
        return out

    def _dump_state(self) -> dict[str, Any]:
        return {"rng": st.py_random_state(self._rng)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._rng = st.py_random_from_state(state["rng"])
