"""Exponential weights, joint and slates (spec section 4): properties 9-11 of section 11 (invariants, concentration on
Bernoulli arms over 20 seeds, slates with an additive reward) and D8 (the optional prior on the current value)."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import numpy as np
import pytest

from knobflow.tuners.online import Categorical, ExponentialWeights, ExponentialWeightsSlates

SEEDS = range(20)


def _arms(n: int) -> list[Categorical]:
    return [Categorical("arm", "0", [str(i) for i in range(n)])]


@pytest.mark.parametrize("cls", [ExponentialWeights, ExponentialWeightsSlates])
def test_invariants_and_schedules(cls: Any) -> None:
    """Property 9: p is a distribution, p_hat >= gamma / K, sampling is exactly uniform while t + 1 <= K, and eta_t and
    gamma_t follow the schedules (with the max(1, |r_min|) guard); t counts rewards."""
    params = [Categorical("x", "a", ["a", "b", "c"]), Categorical("y", "p", ["p", "q"])]
    for seed in SEEDS:
        _check_invariants(cls(params, random_seed=seed), [6] if cls is ExponentialWeights else [3, 2], seed)


def _check_invariants(tuner: Any, slots: list[int], seed: int) -> None:
    cls = type(tuner)
    rng = random.Random(seed)
    r_min = math.inf
    for t in range(200):
        tuner.predict()
        p_list = [tuner.p] if cls is ExponentialWeights else tuner.p
        hat_list = [tuner.p_hat] if cls is ExponentialWeights else tuner.p_hat
        gammas = [tuner.gamma] if cls is ExponentialWeights else tuner.gamma
        for p, p_hat, k, gamma in zip(p_list, hat_list, slots, gammas, strict=True):
            assert abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
            assert abs(p_hat.sum() - 1) < 1e-12 and (p_hat >= gamma / k * (1 - 1e-12)).all()
            if t + 1 <= k:
                assert gamma == 1.0 and (p_hat == 1 / k).all()
            assert gamma == min(1.0, math.sqrt(k / (t + 1)))
        r = rng.uniform(-2.0, 1.0)
        r_min = min(r_min, r)
        tuner.set_reward(r)
        assert tuner.iteration == t + 1
        etas = [tuner.eta] if cls is ExponentialWeights else tuner.eta
        for eta, k in zip(etas, slots, strict=True):
            assert eta == math.sqrt(math.log(k) / (k * (t + 2))) / max(1.0, abs(r_min))


def test_joint_decoding_enumerates_every_combination_once() -> None:
    """Property 9: mixed radix, last parameter least significant; arm -> configuration -> arm is the identity."""
    params = [
        Categorical("x", "a", ["a", "b", "c"]),
        Categorical("y", "p", ["p", "q"]),
        Categorical("z", "0", ["0", "1"]),
    ]
    tuner = ExponentialWeights(params, random_seed=0)
    assert tuner.K == 12
    decoded = [tuple(tuner.decode(a).values()) for a in range(tuner.K)]
    assert decoded == list(itertools.product(["a", "b", "c"], ["p", "q"], ["0", "1"]))
    assert [tuner.encode(tuner.decode(a)) for a in range(tuner.K)] == list(range(12))


def _bernoulli_run(means: tuple[float, ...], seed: int, rounds: int, deterministic: bool = False) -> np.ndarray:
    tuner = ExponentialWeights(_arms(len(means)), random_seed=seed)
    rng = random.Random(3000 + seed)
    for _ in range(rounds):
        config, _ = tuner.predict()
        m = means[int(config["arm"])]
        tuner.set_reward(m if deterministic else float(rng.random() < m))
    return tuner.p


def test_concentrates_on_a_clearly_best_arm() -> None:
    """Property 10: Bernoulli arms (0.2, 0.5, 0.8): p[best] > 0.9 after 2000 rounds for every seed (spec: 1.000)."""
    assert min(_bernoulli_run((0.2, 0.5, 0.8), seed, 2000)[2] for seed in SEEDS) > 0.9


def test_finds_the_best_of_close_arms_in_most_seeds() -> None:
    """Property 10: (0.4, 0.5, 0.6): argmax p is the best arm in >= 80% of seeds after 2000 rounds (spec: 95%)."""
    hits = sum(int(np.argmax(_bernoulli_run((0.4, 0.5, 0.6), seed, 2000)) == 2) for seed in SEEDS)
    assert hits >= 16, hits


def test_finds_one_good_arm_among_five_quickly() -> None:
    """Property 10: (0.1, 0.1, 0.1, 0.1, 0.9): p[best] > 0.9 after only 100 rounds (spec: min 0.908)."""
    assert min(_bernoulli_run((0.1, 0.1, 0.1, 0.1, 0.9), seed, 100)[4] for seed in SEEDS) > 0.9


def test_negative_rewards_concentrate_on_the_least_bad_arm() -> None:
    """Property 10: deterministic rewards (-0.8, -0.5, -0.2): a negative reward shrinks the played arm."""
    assert min(_bernoulli_run((-0.8, -0.5, -0.2), seed, 2000, deterministic=True)[2] for seed in SEEDS) > 0.9


class _CountingRng:
    """Wraps a Generator and counts multinomial draws."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.calls = rng, 0

    def multinomial(self, n: int, pvals: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.rng.multinomial(n=n, pvals=pvals)


def test_slates_learn_each_slot_of_an_additive_reward() -> None:
    """Property 11: r = (q1[a1] + q2[a2]) / 2: after 2000 rounds each slot's argmax is its best value for every seed,
    and exactly one sample per slot is drawn per round (one per round for the joint learner)."""
    q1, q2 = (0.2, 0.8, 0.5), (0.9, 0.1, 0.4, 0.3)
    params = [Categorical("a", "0", ["0", "1", "2"]), Categorical("b", "0", ["0", "1", "2", "3"])]
    for seed in SEEDS:
        tuner = ExponentialWeightsSlates(params, random_seed=seed)
        counter = _CountingRng(tuner._rng)
        tuner._rng = counter  # type: ignore[assignment]
        for _ in range(2000):
            config, _ = tuner.predict()
            tuner.predict()  # idempotent: draws nothing
            tuner.set_reward(0.5 * (q1[int(config["a"])] + q2[int(config["b"])]))
        assert counter.calls == 2 * 2000
        assert int(np.argmax(tuner.p[0])) == 1 and int(np.argmax(tuner.p[1])) == 0, seed
    joint = ExponentialWeights(params, random_seed=0)
    counter = _CountingRng(joint._rng)
    joint._rng = counter  # type: ignore[assignment]
    for _ in range(50):
        joint.predict()
        joint.set_reward(0.1)
    assert counter.calls == 50


@pytest.mark.parametrize("cls", [ExponentialWeights, ExponentialWeightsSlates])
def test_prior_weight_puts_mass_on_the_current_value(cls: Any) -> None:
    """D8: upstream ignores val (prior_weight=0, the default, gives uniform weights); prior_weight=w starts the
    weights at (1 - w) / K plus w on val's arm."""
    params = [Categorical("x", "b", ["a", "b", "c"]), Categorical("y", "q", ["p", "q"])]
    tuner = cls(params, prior_weight=0.4, random_seed=0)
    if cls is ExponentialWeights:
        expected = np.full(6, (1 - 0.4) / 6)
        expected[tuner.encode({"x": "b", "y": "q"})] += 0.4
        assert tuner.p.tolist() == expected.tolist()
        assert cls(params).p.tolist() == [1 / 6] * 6
    else:
        third, half = (1 - 0.4) / 3, (1 - 0.4) / 2
        assert tuner.p[0].tolist() == [third, third + 0.4, third]
        assert tuner.p[1].tolist() == [half, half + 0.4]
        assert [p.tolist() for p in cls(params).p] == [[1 / 3] * 3, [0.5, 0.5]]
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="prior_weight"):
            cls(params, prior_weight=bad)
