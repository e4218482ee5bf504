"""The hybrid solver (spec section 5): property 12 of section 11 (the same reward to both sub-learners, categorical
first; concentration and convergence on a separable mixed objective over 20 seeds) and D5 (the categorical choice held
for both halves of a two-point pair)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from knobflow.tuners.online import BlueFin, Categorical, ExponentialWeights, HybridSolver, Integer, Real

PARAMS = [Categorical("mode", "a", ["a", "b", "c"]), Real("x0", 0.5, 0.0, 1.0), Real("x1", 0.5, 0.0, 1.0)]
PENALTY = {"a": 0.2, "b": 0.0, "c": 0.4}


def _spy(tuner: HybridSolver) -> list[tuple[str, float]]:
    calls: list[tuple[str, float]] = []
    for which in ("categorical", "numerical"):
        sub = getattr(tuner, which)
        original = sub.set_reward

        def spy(reward: float, context_id: Any = "", _original: Any = original, _which: str = which) -> None:
            calls.append((_which, reward))
            _original(reward, context_id)

        sub.set_reward = spy
    return calls


@pytest.mark.parametrize("feedback", [1, 2])
def test_upstream_hybrid_sends_every_reward_to_both_categorical_first(feedback: int) -> None:
    """Property 12 with D5 off (upstream), and with one-point BlueFin, where D5 changes nothing."""
    for hold in (False, True) if feedback == 1 else (False,):
        tuner = HybridSolver(
            PARAMS, numerical_algorithm_args={"feedback": feedback, "random_seed": 0}, hold_categorical_for_pair=hold
        )
        calls = _spy(tuner)
        rewards = [0.1 * i - 0.4 for i in range(8)]
        for r in rewards:
            tuner.predict()
            tuner.set_reward(r)
        assert calls == [(which, r) for r in rewards for which in ("categorical", "numerical")]
        assert tuner.iteration == 8 and tuner.categorical is not None and tuner.categorical.iteration == 8


def test_two_point_pairs_hold_the_categorical_choice() -> None:
    """D5 (default): both halves of a pair run under the same categorical configuration, BlueFin gets every reward, the
    categorical learner gets one reward per pair (the mean of the two) when the pair completes, categorical first."""
    tuner = HybridSolver(PARAMS, numerical_algorithm_args={"feedback": 2, "random_seed": 0})
    calls = _spy(tuner)
    rewards = [-0.3, -0.1, -0.5, -0.2, -0.05, -0.4, -0.25, -0.15]
    modes = []
    for r in rewards:
        config, _ = tuner.predict()
        modes.append(config["mode"])
        tuner.set_reward(r)
    assert all(modes[i] == modes[i + 1] for i in range(0, 8, 2))
    expected: list[tuple[str, float]] = []
    for i in range(0, 8, 2):
        expected += [("numerical", rewards[i]), ("categorical", (rewards[i] + rewards[i + 1]) / 2)]
        expected += [("numerical", rewards[i + 1])]
    assert calls == expected
    assert isinstance(tuner.categorical, ExponentialWeights) and isinstance(tuner.numerical, BlueFin)
    assert (tuner.iteration, tuner.categorical.iteration, tuner.numerical.iteration) == (8, 4, 4)


def test_upstream_resamples_the_categorical_choice_within_a_pair() -> None:
    tuner = HybridSolver(
        PARAMS, numerical_algorithm_args={"feedback": 2, "random_seed": 0}, hold_categorical_for_pair=False
    )
    modes = []
    for _ in range(40):
        config, _ = tuner.predict()
        modes.append(config["mode"])
        tuner.set_reward(-0.2)
    assert any(modes[i] != modes[i + 1] for i in range(0, 40, 2))


def _mixed_run(seed: int, hold: bool, calls: int = 1000) -> tuple[int, float, float]:
    """Reward -||x - x*||^2 / 2 - penalty[mode] (best mode "b"), f = 2, RMSprop, EW joint: the first call at which the
    centre's RMS error is < 0.05, the final error, and the final weight of the best mode."""
    xs = np.random.default_rng(1000 + seed).uniform(0.2, 0.8, size=2).tolist()
    tuner = HybridSolver(
        PARAMS,
        categorical_algorithm_args={"random_seed": seed},
        numerical_algorithm_args={"feedback": 2, "random_seed": seed},
        hold_categorical_for_pair=hold,
    )
    assert isinstance(tuner.numerical, BlueFin) and isinstance(tuner.categorical, ExponentialWeights)
    first, err = 0, 1.0
    for n in range(1, calls + 1):
        config, _ = tuner.predict()
        tuner.set_reward(-((config["x0"] - xs[0]) ** 2 + (config["x1"] - xs[1]) ** 2) / 2 - PENALTY[config["mode"]])
        err = math.sqrt(sum((a - b) ** 2 for a, b in zip(tuner.numerical.centre.tolist(), xs, strict=True)) / 2)
        if not first and err < 0.05:
            first = n
    return first, err, float(tuner.categorical.p[1])


def test_mixed_objective_concentrates_and_converges() -> None:
    """Property 12: on a separable mixed objective the categorical choice concentrates on the best value (p > 0.9 after
    1000 rewards) and the numeric centre converges as in property 4 (error < 0.05 within 40 calls for d = 2, < 0.06 at
    the end), for every seed. Upstream's re-sampling (D5 off) also gets there, but its pair differences measure
    categorical changes too, so the centre needs several times longer (median first hit 64 calls against 9 here)."""
    ours = [_mixed_run(seed, hold=True) for seed in range(20)]
    for seed, (first, err, p_best) in enumerate(ours):
        assert 0 < first <= 40 and err < 0.06 and p_best > 0.9, (seed, first, err, p_best)
    upstream = [_mixed_run(seed, hold=False) for seed in range(20)]
    assert all(err < 0.06 and p_best > 0.9 for _, err, p_best in upstream)
    assert np.median([f for f, _, _ in upstream]) > 2 * np.median([f for f, _, _ in ours])


def test_a_group_without_parameters_has_no_sub_tuner() -> None:
    numeric_only = HybridSolver([Real("x", 0.5, 0.0, 1.0), Integer("n", 2, 0, 4), Categorical("k", "z", ["z"])])
    assert numeric_only.categorical is None and isinstance(numeric_only.numerical, BlueFin)
    categorical_only = HybridSolver(
        [Categorical("a", "x", ["x", "y"]), Real("k", 1.0, 1.0, 1.0)], numerical_algorithm_args={"feedback": 2}
    )
    assert categorical_only.numerical is None and categorical_only.categorical is not None
    for tuner in (numeric_only, categorical_only):
        for _ in range(6):
            config, _ = tuner.predict()
            assert config["k"] in ("z", 1.0)
            tuner.set_reward(0.5)
        assert tuner.iteration == 6
