"""BlueFin (spec section 3): properties 3-8 of section 11 (geometry, convergence on a convex quadratic, one-point
feedback, scale invariance, ascent direction, decay), with the spec's setups and thresholds over 20 seeds, and the
deviations D1 (delta clamp) and D2 (one-point baseline).

The loops use plain Python arithmetic on the returned configuration (d <= 10): per round that is cheaper than
building numpy arrays, which keeps these statistical properties at a few seconds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from knobflow.tuners.online import BlueFin, Integer, Real

SEEDS = range(20)


def _unit_params(d: int, val: float = 0.5) -> list[Real]:
    """d reals on [0, 1]: the configuration *is* the probe in normalised coordinates."""
    return [Real(f"x{i}", val, 0.0, 1.0) for i in range(d)]


def _optimum(seed: int, d: int) -> list[float]:
    return np.random.default_rng(1000 + seed).uniform(0.2, 0.8, size=d).tolist()


def _err(tuner: BlueFin, xs: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(tuner.centre.tolist(), xs, strict=True)) / len(xs))


def _sq(config: dict[str, Any], xs: list[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(config.values(), xs, strict=True)) / len(xs)


# Property 3: geometry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("feedback", [1, 2])
def test_centre_and_probes_stay_in_the_box_and_a_pair_shares_its_direction(feedback: int) -> None:
    """The centre stays in [delta, 1 - delta]^d, probes in [0, 1]^d; with f = 2 the pair's probes satisfy
    w+ + w- = 2c with the same u; a new u is drawn after each completed update, and only then (one
    ``normal(size=d)`` per update, checked against a shadow generator)."""
    params = [*_unit_params(3), Integer("n", 2, 0, 6)]  # a coarse grid parameter too
    for seed in range(5):
        tuner = BlueFin(params, feedback=feedback, eta=0.2, delta=0.15, optimizer="sgd", random_seed=seed)
        shadow = np.random.default_rng(seed)
        g = shadow.normal(size=4)
        assert tuner.u.tobytes() == (g / np.linalg.norm(g)).tobytes()
        rng = np.random.default_rng(50 + seed)
        for k in range(300):
            w = tuner.probe()
            assert ((w >= 0) & (w <= 1)).all()
            assert ((tuner.centre >= tuner.delta) & (tuner.centre <= 1 - tuner.delta)).all()
            config, _ = tuner.predict()
            assert [config[f"x{i}"] for i in range(3)] == w[:3].tolist()
            assert config["n"] == round(w[3] * 6)
            u, c, rng_state = tuner.u.copy(), tuner.centre.copy(), tuner._rng.bit_generator.state
            tuner.set_reward(float(rng.uniform(-1, 1)))
            if feedback == 2 and k % 2 == 0:  # first half: nothing moves, nothing is drawn
                assert tuner.u.tobytes() == u.tobytes() and tuner.centre.tobytes() == c.tobytes()
                assert tuner._rng.bit_generator.state == rng_state
                w_minus = tuner.probe()
                assert np.allclose(w + w_minus, 2 * c, rtol=0, atol=1e-15)
            else:
                g = shadow.normal(size=4)
                assert tuner.u.tobytes() == (g / np.linalg.norm(g)).tobytes()
        assert tuner.iteration == 300 // feedback


# Property 4: convergence on a convex quadratic ------------------------------------------------------------------


def test_two_point_converges_on_a_convex_quadratic() -> None:
    """x* ~ U[0.2, 0.8]^d, start 0.5, f = 2, RMSprop, eta 0.01, delta 0.1, reward 1 - ||x - x*||^2 / d: the RMS error
    of the centre is < 0.05 within 40 / 100 / 150 reward calls for d = 2 / 5 / 10 for every seed, and < 0.06 after
    1000 calls (spec: medians 9 / 32 / 53; ours 10 / 33 / 54)."""
    for d, bound in ((2, 40), (5, 100), (10, 150)):
        firsts = []
        for seed in SEEDS:
            xs = _optimum(seed, d)
            tuner = BlueFin(_unit_params(d), feedback=2, eta=0.01, delta=0.1, optimizer="rmsprop", random_seed=seed)
            first = None
            for n in range(1, 1001):
                config, _ = tuner.predict()
                tuner.set_reward(1 - _sq(config, xs))
                if first is None and _err(tuner, xs) < 0.05:
                    first = n
            assert first is not None and first <= bound, (d, seed, first)
            assert _err(tuner, xs) < 0.06, (d, seed)
            firsts.append(first)
        assert np.median(firsts) <= bound / 2


# Property 5 and D2: one-point feedback --------------------------------------------------------------------------


def _one_point_error(d: int, seed: int, offset: float, baseline: str | None) -> float:
    """Mean RMS error of the centre over reward calls 2800-3000, f = 1, SGD, eta 0.01, delta 0.1."""
    xs = _optimum(seed, d)
    tuner = BlueFin(
        _unit_params(d), feedback=1, eta=0.01, delta=0.1, optimizer="sgd", random_seed=seed, baseline=baseline
    )
    errs = []
    for n in range(3000):
        config, _ = tuner.predict()
        tuner.set_reward(offset - _sq(config, xs))
        if n >= 2800:
            errs.append(_err(tuner, xs))
    return sum(errs) / len(errs)


@pytest.mark.parametrize("d", [2, 5])
def test_one_point_converges_when_the_reward_is_zero_at_the_optimum(d: int) -> None:
    """Upstream one-point (baseline=None) with reward -||x - x*||^2 / d: mean error over calls 2800-3000 < 0.02 for
    every seed (spec: observed max 0.010; ours 0.010)."""
    errors = [_one_point_error(d, seed, 0.0, None) for seed in SEEDS]
    assert max(errors) < 0.02, errors


@pytest.mark.parametrize("d", [2, 5])
def test_one_point_with_an_offset_reward_needs_the_baseline(d: int) -> None:
    """Spec 3.6: with the offset reward 1 - ||x - x*||^2 / d upstream's one-point estimate is mostly noise and the
    error does not shrink (stays above 0.1 for every seed); D2's running-mean baseline, knobflow's default, removes the
    offset and converges as with -||x - x*||^2 / d (< 0.02 for every seed)."""
    upstream = [_one_point_error(d, seed, 1.0, None) for seed in SEEDS]
    assert min(upstream) > 0.1, upstream
    ours = [_one_point_error(d, seed, 1.0, "mean") for seed in SEEDS]
    assert max(ours) < 0.02, ours


def test_the_baseline_is_the_mean_of_the_earlier_rewards() -> None:
    """D2 exactly: the first reward only seeds the mean (no move, but the update counts and draws the next direction,
    as upstream's), each later one uses r minus the mean of the rewards before it."""
    tuner = BlueFin(_unit_params(2), feedback=1, eta=0.01, delta=0.1, optimizer="sgd", random_seed=4)
    shadow = np.random.default_rng(4)
    g = shadow.normal(size=2)
    c = tuner.centre.copy()
    past: list[float] = []
    for r in [0.9, 0.7, 0.95, 0.8]:
        u = g / math.sqrt(g @ g)
        assert tuner.u.tobytes() == u.tobytes()
        tuner.predict()
        tuner.set_reward(r)
        diff = 0.0 if not past else r - sum(past) / len(past)
        c = (c + 0.01 * ((2 * diff * u) / (1 * 0.1))).clip(0.1, 0.9)
        past.append(r)
        assert tuner.centre.tobytes() == c.tobytes()
        g = shadow.normal(size=2)
    assert tuner.iteration == 4


# Property 6: scale invariance -----------------------------------------------------------------------------------


def _trajectory(
    seed: int, feedback: int, optimizer: str, scale: float, baseline: str | None, rounds: int = 150
) -> np.ndarray:
    xs = _optimum(seed, 3)
    tuner = BlueFin(_unit_params(3), feedback=feedback, optimizer=optimizer, random_seed=seed, baseline=baseline)
    out = []
    for _ in range(rounds):
        config, _ = tuner.predict()
        tuner.set_reward(scale * -_sq(config, xs))
        out.append(tuner.centre.copy())
    return np.array(out)


@pytest.mark.parametrize("baseline", [None, "mean"])
def test_rescaling_the_reward_leaves_the_trajectory_unchanged(baseline: str | None) -> None:
    """Multiplying every reward by c > 0 leaves f = 2 trajectories identical (SGD and RMSprop, to 1e-12) and f = 1
    RMSprop ones equal to 1e-5 (upstream, max 3.8e-6 over 20 seeds; spec: about 2e-6); f = 1 SGD is scale-dependent.
    With D2's baseline the f = 1 RMSprop bound is 1e-4 (max 1.0e-5): RMSprop's eps = 1e-8 does not scale with the
    reward, and the baseline makes the reward differences, hence the gradients, small, so eps weighs more."""
    for seed in SEEDS:
        for optimizer in ("sgd", "rmsprop"):
            plain, scaled = (
                _trajectory(seed, 2, optimizer, 1.0, baseline),
                _trajectory(seed, 2, optimizer, 37.0, baseline),
            )
            assert np.abs(plain - scaled).max() <= 1e-12, (seed, optimizer)
        plain, scaled = _trajectory(seed, 1, "rmsprop", 1.0, baseline), _trajectory(seed, 1, "rmsprop", 37.0, baseline)
        assert np.abs(plain - scaled).max() <= (1e-5 if baseline is None else 1e-4), seed
        plain, scaled = _trajectory(seed, 1, "sgd", 1.0, baseline), _trajectory(seed, 1, "sgd", 37.0, baseline)
        assert np.abs(plain - scaled).max() > 1e-3, seed


# Property 7: ascent direction -----------------------------------------------------------------------------------


def _calls_to_corner(seed: int, optimizer: str, sign: float = 1.0, feedback: int = 2, baseline: Any = None) -> int:
    """Reward calls until the centre reaches 1 - delta (sign > 0) or delta (sign < 0) in every coordinate, for the
    linear reward sign * a.x / sum(a), a ~ U[0.5, 1.5]^4; 0 if not within 1000."""
    a = np.random.default_rng(2000 + seed).uniform(0.5, 1.5, size=4)
    a = (a / a.sum()).tolist()
    tuner = BlueFin(
        _unit_params(4),
        feedback=feedback,
        eta=0.01,
        delta=0.1,
        optimizer=optimizer,
        random_seed=seed,
        baseline=baseline,
    )
    corner = 0.9 if sign > 0 else 0.1
    for n in range(1, 1001):
        config, _ = tuner.predict()
        tuner.set_reward(sign * sum(ai * xi for ai, xi in zip(a, config.values(), strict=True)))
        if all(c == corner for c in tuner.centre.tolist()):
            return n
    return 0


def test_a_linear_reward_drives_the_centre_to_the_corner() -> None:
    """r = a.x / sum(a), a > 0, d = 4, f = 2: the centre reaches 1 - delta everywhere within 1000 reward calls for every
    seed, with RMSprop (spec: median 203, max 590; ours 128, 300) and SGD (spec: median 677, max 980; ours 366, 768);
    the negated reward sends it to delta."""
    for optimizer in ("rmsprop", "sgd"):
        calls = [_calls_to_corner(seed, optimizer) for seed in SEEDS]
        assert all(calls), (optimizer, calls)
    assert all(_calls_to_corner(seed, "rmsprop", sign=-1.0) for seed in SEEDS)


def test_one_point_with_the_offset_linear_reward_never_gets_there_without_the_baseline() -> None:
    """The linear reward lies in [0, 1], offset from 0: upstream one-point never reaches the corner (spec 3.6); with
    D2's baseline most seeds do (17 of 20 here)."""
    assert not any(_calls_to_corner(seed, "rmsprop", feedback=1, baseline=None) for seed in SEEDS)
    assert sum(bool(_calls_to_corner(seed, "rmsprop", feedback=1, baseline="mean")) for seed in SEEDS) >= 15


# Property 8 and D1: decay ---------------------------------------------------------------------------------------


def test_decay_follows_the_schedule() -> None:
    """With rho > 0, after n completed updates eta = eta0 / (1 + rho n), delta = sqrt(eta) and the optimizer's learning
    rate equals eta; first halves of a pair change nothing."""
    for feedback in (1, 2):
        tuner = BlueFin(_unit_params(2), feedback=feedback, eta=0.04, delta=0.2, eta_decay_rate=0.3, random_seed=1)
        for k in range(1, 41):
            tuner.predict()
            tuner.set_reward(math.sin(k))
            n = k // feedback
            assert tuner.iteration == n
            if n == 0:
                assert (tuner.eta, tuner.delta, tuner.optimizer.eta) == (0.04, 0.2, 0.04)
                continue
            eta = 0.04 / (1 + 0.3 * n)
            assert tuner.eta == eta and tuner.optimizer.eta == eta and tuner.delta == math.sqrt(eta)


def test_decayed_delta_is_clamped() -> None:
    """D1: with eta0 > 0.25, sqrt(eta) > 0.5 after the first update; upstream then fails an assertion at the next
    update. We clamp delta to 0.5 (the centre is then pinned to 0.5) and go on."""
    tuner = BlueFin(_unit_params(2), feedback=1, eta=0.8, delta=0.1, eta_decay_rate=0.1, optimizer="sgd", random_seed=0)
    for _ in range(5):
        tuner.predict()
        tuner.set_reward(0.3)
        assert tuner.delta <= 0.5
    assert tuner.delta == 0.5 and tuner.centre.tolist() == [0.5, 0.5]
    assert tuner.eta == 0.8 / (1 + 0.1 * 5)


def test_construction_is_validated() -> None:
    params = _unit_params(2)
    for kwargs, message in [
        ({"eta": 0.0}, "eta must be positive"),
        ({"delta": 0.0}, "delta must be positive"),
        ({"delta": 0.51}, "delta must be at most 0.5"),
        ({"eta_decay_rate": -1.0}, "eta_decay_rate must be non-negative"),
        ({"optimizer": "adam"}, "optimizer must be 'rmsprop' or 'sgd'"),
        ({"optimizer_args": {"lr": 0.1}}, "unknown rmsprop optimizer argument 'lr'"),
        ({"baseline": "median"}, "baseline must be 'mean' or None"),
        ({"random_seed": 1.5}, "random_seed must be an integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            BlueFin(params, **kwargs)
    assert BlueFin(params, delta=0.5).centre.tolist() == [0.5, 0.5]


def test_optimizer_args_replace_eta_and_momentum_is_used() -> None:
    """As upstream, optimizer_args are passed as they are: eta is not injected into them. RMSprop with momentum mu
    keeps a buffer b = mu b + g / (sqrt(v) + eps) and steps eta b (spec 3.5)."""
    tuner = BlueFin(
        _unit_params(2), eta=0.01, optimizer_args={"eta": 0.05, "momentum": 0.9}, random_seed=2, baseline=None
    )
    assert (tuner.eta, tuner.optimizer.eta) == (0.01, 0.05)
    shadow = np.random.default_rng(2)
    g0 = shadow.normal(size=2)
    u = g0 / math.sqrt(g0 @ g0)
    c, v, b = np.array([0.5, 0.5]), np.zeros(2), np.zeros(2)
    for r in [0.2, -0.4, 0.1]:
        tuner.predict()
        tuner.set_reward(r)
        grad = (2 * r * u) / (1 * 0.1)
        v = 0.99 * v + (1 - 0.99) * grad**2
        b = 0.9 * b + grad / (np.sqrt(v) + 1e-8)
        c = (c + 0.05 * b).clip(0.1, 0.9)
        assert tuner.centre.tobytes() == c.tobytes()
        g0 = shadow.normal(size=2)
        u = g0 / math.sqrt(g0 @ g0)
