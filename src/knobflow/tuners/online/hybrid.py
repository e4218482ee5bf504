"""The hybrid solver (spec section 5): exponential weights for the categoricals, BlueFin for the numbers.

The transformed non-constant parameters are split, order kept, into categorical and numeric
groups, and a sub-tuner is built for each non-empty group from the *transformed* parameters (the
transform is idempotent, so the sub-tuners work in internal units and the hybrid converts to user
units once). Both sub-tuners are driven through their public protocol, with their own pending
requests, as upstream does. A prediction asks the categorical sub-tuner first, then the numeric one;
a reward goes to the categorical sub-tuner first, then to the numeric one, and ``iteration`` counts
the hybrid's ``set_reward`` calls. Seeds go into ``categorical_algorithm_args`` and
``numerical_algorithm_args``; the hybrid itself has none.

D5 (``hold_categorical_for_pair``, default True; False is upstream): with two-point BlueFin the
upstream hybrid draws a new categorical configuration for each half of a pair, so the pair's
difference also measures the categorical change, and the categorical learner is updated on both
halves. We hold the categorical choice for both halves (the second prediction is the categorical
sub-tuner's still-pending request, returned again by its idempotent predict) and update the
categorical learner once per pair, with the mean of the pair's two rewards, when the pair
completes. With one-point BlueFin, or without categoricals, the flag changes nothing.
"""

from __future__ import annotations

from typing import Any

from knobflow.tuners.online import state as st
from knobflow.tuners.online.base import Context, OnlineTuner, TuningRequest
from knobflow.tuners.online.bluefin import BlueFin
from knobflow.tuners.online.exp_weights import ExponentialWeights, ExponentialWeightsSlates
from knobflow.tuners.online.params import Categorical

CATEGORICAL_ALGORITHMS: dict[str, type[OnlineTuner]] = {
    "exponential_weights": ExponentialWeights,
    "exponential_weights_slates": ExponentialWeightsSlates,
}
NUMERICAL_ALGORITHMS: dict[str, type[OnlineTuner]] = {"bluefin": BlueFin}


class HybridSolver(OnlineTuner):
    """Categorical and numeric parameters together. ``categorical`` and ``numerical`` are the sub-tuners."""

    algorithm = "hybrid_solver"

    def __init__(
        self,
        parameters: Any,
        categorical_algorithm: str = "exponential_weights",
        numerical_algorithm: str = "bluefin",
        categorical_algorithm_args: dict[str, Any] | None = None,
        numerical_algorithm_args: dict[str, Any] | None = None,
        hold_categorical_for_pair: bool = True,
    ):
        super().__init__(
            parameters,
            {
                "categorical_algorithm": categorical_algorithm,
                "numerical_algorithm": numerical_algorithm,
                "categorical_algorithm_args": categorical_algorithm_args,
                "numerical_algorithm_args": numerical_algorithm_args,
                "hold_categorical_for_pair": hold_categorical_for_pair,
            },
        )
        if categorical_algorithm not in CATEGORICAL_ALGORITHMS:
            raise ValueError(
                f"categorical_algorithm must be one of {sorted(CATEGORICAL_ALGORITHMS)}, got {categorical_algorithm!r}"
            )
        if numerical_algorithm not in NUMERICAL_ALGORITHMS:
            raise ValueError(
                f"numerical_algorithm must be one of {sorted(NUMERICAL_ALGORITHMS)}, got {numerical_algorithm!r}"
            )
        for what, args in (("categorical", categorical_algorithm_args), ("numerical", numerical_algorithm_args)):
            if args is not None and not isinstance(args, dict):
                raise ValueError(f"{what}_algorithm_args must be a dict or None, got {type(args).__name__}")
        if not isinstance(hold_categorical_for_pair, bool):
            raise ValueError(f"hold_categorical_for_pair must be a bool, got {hold_categorical_for_pair!r}")
        self.hold_categorical_for_pair = hold_categorical_for_pair
        cat_params = [p for p in self.params if isinstance(p, Categorical)]
        num_params = [p for p in self.params if not isinstance(p, Categorical)]
        self.categorical: OnlineTuner | None = (
            CATEGORICAL_ALGORITHMS[categorical_algorithm](cat_params, **(categorical_algorithm_args or {}))
            if cat_params
            else None
        )
        self.numerical: OnlineTuner | None = (
            NUMERICAL_ALGORITHMS[numerical_algorithm](num_params, **(numerical_algorithm_args or {}))
            if num_params
            else None
        )
        self._first_reward: float | None = None  # D5: the first reward of the current pair

    def _holding(self) -> bool:
        """D5 applies: a categorical sub-tuner and a two-point BlueFin."""
        return (
            self.hold_categorical_for_pair
            and self.categorical is not None
            and isinstance(self.numerical, BlueFin)
            and self.numerical.feedback == 2
        )

    def _predict(self, context: Context) -> tuple[dict[str, Any], dict[str, Any] | None]:
        merged: dict[str, Any] = {}
        if self.categorical is not None:
            merged.update(self.categorical.predict()[0])  # held for a pair's 2nd half: its request is pending
        if self.numerical is not None:
            merged.update(self.numerical.predict()[0])
        return {p.name: merged[p.name] for p in self.params}, None

    def _set_reward(self, request: TuningRequest, reward: float) -> None:
        if self._holding():
            assert isinstance(self.numerical, BlueFin) and self.categorical is not None
            if self.numerical.first_half:
                self.numerical.set_reward(reward)  # the categorical request stays pending
                self._first_reward = reward
            else:
                first = reward if self._first_reward is None else self._first_reward
                self.categorical.set_reward((first + reward) / 2)
                self.numerical.set_reward(reward)
                self._first_reward = None
        else:
            if self.categorical is not None:
                self.categorical.set_reward(reward)
            if self.numerical is not None:
                self.numerical.set_reward(reward)
        self._iteration += 1

    def _dump_state(self) -> dict[str, Any]:
        return {
            "categorical": None if self.categorical is None else self.categorical.dump(),
            "numerical": None if self.numerical is None else self.numerical.dump(),
            "first_reward": self._first_reward,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for attr in ("categorical", "numerical"):
            sub: OnlineTuner | None = getattr(self, attr)
            doc = state[attr]
            if (sub is None) != (doc is None):
                raise st.StateError(f"the {attr} sub-tuner is {'missing' if doc is None else 'unexpected'}")
            if sub is not None:
                sub.load(doc)
        first = state["first_reward"]
        self._first_reward = None if first is None else st.num(first)
