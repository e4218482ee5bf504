"""Exponential weights for categorical parameters (spec section 4): joint arms and slates.

An adversarial-bandit learner (Exp3 with a decaying, reward-scaled learning rate and exploration
mixing). Every arm has a weight p; a round plays an arm drawn from
``p_hat = (1 - gamma) * p + gamma / K`` with ``rng.multinomial(1, p_hat).argmax()`` (upstream's
exact call, so seeds reproduce), and the reward multiplies the played arm's weight by
``exp(eta * r / p_hat[a])`` (importance-weighted: unbiased for the arm's mean reward) before the
weights are renormalised. The schedules, recomputed after every reward with t rewards received:
``eta_t = sqrt(ln K / (K (t + 1))) / max(1, |r_min|)`` and ``gamma_t = min(1, sqrt(K / (t + 1)))``,
so the first K draws are uniform. ``r_min`` (the smallest reward seen) only shrinks eta when a
reward had magnitude above 1; keep rewards in [-1, 1] (knobflow's default reward, the relative
improvement clipped to [-1, 1], is).

* :class:`ExponentialWeights` (``exponential_weights``): one arm per *combination* of the
  categorical parameters (K = product of their sizes), decoded mixed-radix with the last parameter
  as the least significant digit. Learns interactions; K grows exponentially.
* :class:`ExponentialWeightsSlates` (``exponential_weights_slates``): one learner per parameter
  (slot), each drawing one index per round in parameter order and each updated with the *same*
  scalar reward; t and r_min are shared. Cost is the sum of the sizes, interactions are not modelled.

D8: upstream ignores the parameter's current value. ``prior_weight=w`` (0 <= w < 1, default 0 =
upstream) starts the weights at ``(1 - w) / K`` everywhere plus ``w`` on the current value's arm
(per slot for slates), so a known-good default keeps more of the mass once exploration mixing
decays. (It does not change the first K draws, which are uniform by the gamma schedule.)

A reward so large that ``exp`` would overflow (upstream raises ``OverflowError`` half-way through
the update) is refused with a ValueError before anything changes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from knobflow.tuners.online import state as st
from knobflow.tuners.online.base import Context, OnlineTuner, TuningRequest
from knobflow.tuners.online.params import Categorical

_MAX_EXP = 709.0  # math.exp overflows just above 709.78


def _eta(k: int, t: int, r_min: float) -> float:
    return math.sqrt(math.log(k) / (k * (t + 1))) / max(1.0, abs(r_min))


def _gamma(k: int, t: int) -> float:
    return min(1.0, math.sqrt(k / (t + 1)))


def _initial_p(k: int, prior_arm: int, prior_weight: float) -> np.ndarray:
    if prior_weight == 0:
        return np.full([k], 1.0 / k)
    p = np.full([k], (1 - prior_weight) / k)
    p[prior_arm] += prior_weight
    return p


def _exponent(eta: float, reward: float, p_hat_a: Any) -> float:
    x = float(eta * reward / p_hat_a)
    if x > _MAX_EXP:
        raise ValueError(
            f"reward {reward!r} is too large for exponential weights (exp({x:.4g}) overflows); "
            "scale rewards to about [-1, 1]; nothing was changed"
        )
    return x


def _apply(p: np.ndarray, arm: int, x: float) -> None:
    """Multiply the played arm's weight by exp(x) and renormalise, in upstream's order of operations."""
    p_sum = 1 - p[arm]
    p[arm] *= math.exp(x)
    p_sum += p[arm]
    p /= p_sum


def _check_prior(prior_weight: Any) -> float:
    if isinstance(prior_weight, bool) or not isinstance(prior_weight, int | float) or not 0 <= prior_weight < 1:
        raise ValueError(f"prior_weight must be a number in [0, 1), got {prior_weight!r}")
    return float(prior_weight)


def _check_seed(random_seed: Any) -> None:
    if random_seed is not None and (isinstance(random_seed, bool) or not isinstance(random_seed, int)):
        raise ValueError(f"random_seed must be an integer or None, got {random_seed!r}")


class ExponentialWeights(OnlineTuner):
    """Joint exponential weights. ``iteration`` (= t) counts rewards."""

    algorithm = "exponential_weights"
    supported_types = (Categorical,)

    def __init__(self, parameters: Any, random_seed: int | None = None, prior_weight: float = 0.0):
        super().__init__(parameters, {"random_seed": random_seed, "prior_weight": prior_weight})
        _check_seed(random_seed)
        self.prior_weight = _check_prior(prior_weight)
        self._sizes = [len(p.categories) for p in self.params if isinstance(p, Categorical)]
        self.K = math.prod(self._sizes)
        self.eta = math.sqrt(math.log(self.K) / (self.K * 1))  # t = 0: no r_min division
        self.gamma = _gamma(self.K, 0)
        self.p = _initial_p(self.K, self.encode({p.name: p.val for p in self.params}), self.prior_weight)
        self.p_hat = np.zeros([self.K], dtype=float)
        self.arm = -1
        self.r_min = math.inf
        self._rng = np.random.default_rng(random_seed)

    def encode(self, config: dict[str, Any]) -> int:
        """The arm of a configuration (mixed radix, last parameter least significant)."""
        arm = 0
        for p, k in zip(self.params, self._sizes, strict=True):
            assert isinstance(p, Categorical)
            arm = arm * k + p.categories.index(config[p.name])
        return arm

    def decode(self, arm: int) -> dict[str, str]:
        """The configuration (internal units: category strings) of an arm, in parameter order."""
        out: dict[str, str] = {}
        for p, k in zip(reversed(self.params), reversed(self._sizes), strict=True):
            assert isinstance(p, Categorical)
            arm, idx = divmod(arm, k)
            out[p.name] = p.categories[idx]
        return {p.name: out[p.name] for p in self.params}

    def _predict(self, context: Context) -> tuple[dict[str, Any], dict[str, Any] | None]:
        self.p_hat = (1 - self.gamma) * self.p + self.gamma / self.K
        self.arm = int(self._rng.multinomial(n=1, pvals=self.p_hat).argmax())
        return self.decode(self.arm), None

    def _set_reward(self, request: TuningRequest, reward: float) -> None:
        x = _exponent(self.eta, reward, self.p_hat[self.arm])  # may refuse; nothing changed yet
        if reward < self.r_min:
            self.r_min = reward
        _apply(self.p, self.arm, x)
        self._iteration += 1
        self.eta = _eta(self.K, self._iteration, self.r_min)
        self.gamma = _gamma(self.K, self._iteration)

    def _dump_state(self) -> dict[str, Any]:
        return {
            "K": self.K,
            "p": self.p.tolist(),
            "p_hat": self.p_hat.tolist(),
            "arm": self.arm,
            "r_min": st.inf_to_none(self.r_min),
            "eta": self.eta,
            "gamma": self.gamma,
            "rng": st.rng_state(self._rng),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state["K"] != self.K:
            raise st.StateError(f"K is {state['K']!r}, expected {self.K}")
        self.p = st.array(state["p"], (self.K,))
        self.p_hat = st.array(state["p_hat"], (self.K,))
        self.arm = st.integer(state["arm"], -1)
        self.r_min = st.none_to_inf(state["r_min"])
        self.eta = st.num(state["eta"])
        self.gamma = st.num(state["gamma"])
        self._rng = st.rng_from_state(state["rng"])


class ExponentialWeightsSlates(OnlineTuner):
    """Exponential weights per categorical parameter (slates). ``iteration`` (= t) counts rewards."""

    algorithm = "exponential_weights_slates"
    supported_types = (Categorical,)

    def __init__(self, parameters: Any, random_seed: int | None = None, prior_weight: float = 0.0):
        super().__init__(parameters, {"random_seed": random_seed, "prior_weight": prior_weight})
        _check_seed(random_seed)
        self.prior_weight = _check_prior(prior_weight)
        cats = [p for p in self.params if isinstance(p, Categorical)]
        self._cats = cats
        self.k = [len(p.categories) for p in cats]
        self.eta = [math.sqrt(math.log(k) / (k * 1)) for k in self.k]
        self.gamma = [_gamma(k, 0) for k in self.k]
        self.p = [_initial_p(len(p.categories), p.categories.index(p.val), self.prior_weight) for p in cats]
        self.p_hat = [np.zeros([k]) for k in self.k]
        self.arms = [0 for _ in self.k]
        self.r_min = math.inf
        self._rng = np.random.default_rng(random_seed)

    def _predict(self, context: Context) -> tuple[dict[str, Any], dict[str, Any] | None]:
        for i, k in enumerate(self.k):
            self.p_hat[i] = (1 - self.gamma[i]) * self.p[i] + self.gamma[i] / k
            self.arms[i] = int(self._rng.multinomial(n=1, pvals=self.p_hat[i]).argmax())
        return {p.name: p.categories[a] for p, a in zip(self._cats, self.arms, strict=True)}, None

    def _set_reward(self, request: TuningRequest, reward: float) -> None:
        xs = [_exponent(eta, reward, ph[a]) for eta, ph, a in zip(self.eta, self.p_hat, self.arms, strict=True)]
        if reward < self.r_min:
            self.r_min = reward
        for p, a, x in zip(self.p, self.arms, xs, strict=True):
            _apply(p, a, x)
        self._iteration += 1
        self.eta = [_eta(k, self._iteration, self.r_min) for k in self.k]
        self.gamma = [_gamma(k, self._iteration) for k in self.k]

    def _dump_state(self) -> dict[str, Any]:
        return {
            "k": list(self.k),
            "p": [p.tolist() for p in self.p],
            "p_hat": [p.tolist() for p in self.p_hat],
            "arms": list(self.arms),
            "r_min": st.inf_to_none(self.r_min),
            "eta": list(self.eta),
            "gamma": list(self.gamma),
            "rng": st.rng_state(self._rng),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        if state["k"] != self.k:
            raise st.StateError(f"slot sizes are {state['k']!r}, expected {self.k}")
        n = len(self.k)
        if not all(len(state[f]) == n for f in ("p", "p_hat", "arms", "eta", "gamma")):
            raise st.StateError(f"every per-slot field needs {n} entries")
        self.p = [st.array(p, (k,)) for p, k in zip(state["p"], self.k, strict=True)]
        self.p_hat = [st.array(p, (k,)) for p, k in zip(state["p_hat"], self.k, strict=True)]
        self.arms = [st.integer(a, 0) for a in state["arms"]]
        self.r_min = st.none_to_inf(state["r_min"])
        self.eta = [st.num(x) for x in state["eta"]]
        self.gamma = [st.num(x) for x in state["gamma"]]
        self._rng = st.rng_from_state(state["rng"])
