"""Must-show 2 of issue 4: with every deviation flag at its upstream value, predictions are deterministic for a seed
and follow the spec's RNG call order (shared/specs/online-tuner.md).

For one tiny case per algorithm (BlueFin f=1 and f=2, EW joint, EW slates, hybrid, AutoScope) the expected sequence
is derived in this file *independently* of the implementation: straight-line numpy that re-does each step of the
spec (draw u with a fresh ``default_rng(seed).normal(size=d)`` and normalise it, probe ``c + delta u``, the gradient
``(d diff u) / (f delta)``, the optimizer step, the clip to [delta, 1 - delta], the next draw; ``p_hat``,
``multinomial(1, p_hat).argmax()``, the multiplicative update, the schedules; the router's forward and
straight-through backward). The implementation must match the derivation to 1e-12 relative (integers and
categories exactly), and both must match the literal numbers written below (12 digits), so that a change to either
shows in review. Not bit for bit: numpy's sums, norms and matrix products take different SIMD paths on different CPUs
(CI once differed from the developer's machine in the last bit of an AutoScope router weight), while a wrong RNG call
order or a wrong formula moves the values by far more than 1e-12.

Then property 15 (determinism), and a replay of microsoft/OPPerTune's own published test expectations
(oppertune-algorithms/tests, v0.2): the implementation with upstream flags reproduces them to the last bit where
they were printed in full (to 1e-12 relative, for the same reason).
"""

from __future__ import annotations

import math
from random import Random
from statistics import mean, median
from typing import Any

import numpy as np
import pytest

from knobflow.tuners.online import (
    AutoScope,
    BlueFin,
    Categorical,
    ExponentialWeights,
    ExponentialWeightsSlates,
    HybridSolver,
    Integer,
    OnlineTuner,
    Real,
    UniformRandom,
)

UPSTREAM_BLUEFIN = {"baseline": None}  # D2 off; D1/D3/D4 cannot change these runs


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    g = rng.normal(size=d)
    return g / math.sqrt(g @ g)


def _run(tuner: OnlineTuner, rewards: list[float], contexts: list[str] | None = None) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rewards):
        ctx = None if contexts is None else {"job": contexts[i]}
        config, _ = tuner.predict(ctx)
        out.append(config)
        tuner.set_reward(r, "" if ctx is None else ctx)
    return out


def _same(got: Any, derived: Any) -> bool:
    """Equal to the derivation: floats to 1e-12 relative (1e-15 absolute near 0), everything else exactly."""
    if isinstance(derived, np.ndarray):
        return isinstance(got, np.ndarray) and got.shape == derived.shape and _same(got.tolist(), derived.tolist())
    if isinstance(derived, dict):
        return isinstance(got, dict) and got.keys() == derived.keys() and all(_same(got[k], derived[k]) for k in got)
    if isinstance(derived, (list, tuple)):
        return len(got) == len(derived) and all(_same(g, v) for g, v in zip(got, derived, strict=True))
    if isinstance(derived, float):
        return isinstance(got, float) and math.isclose(got, derived, rel_tol=1e-12, abs_tol=1e-15)
    return bool(got == derived) and type(got) is type(derived)


def _close(got: Any, literal: Any) -> bool:
    """Equal to a literal written with 12 decimals (floats), exactly otherwise."""
    if isinstance(literal, dict):
        return isinstance(got, dict) and got.keys() == literal.keys() and all(_close(got[k], literal[k]) for k in got)
    if isinstance(literal, list):
        return len(got) == len(literal) and all(_close(g, v) for g, v in zip(got, literal, strict=True))
    if isinstance(literal, float):
        return abs(float(got) - literal) < 6e-13
    return bool(got == literal) and type(got) is type(literal)


# Parameters of the two BlueFin cases: a unit real and a grid integer, with non-trivial ranges.
BLUEFIN_PARAMS = [Real("a", 2.0, 1.0, 5.0), Integer("b", 30, 10, 110, step=10)]


def test_bluefin_one_point_rmsprop_is_pinned() -> None:
    # --- derivation (spec 3.2-3.5, f = 1, RMSprop, eta 0.01, delta 0.1, seed 7) ---
    rng = np.random.default_rng(7)
    s = np.array([1.0, 10.0])  # s_i: 1 for the unit parameter, N = 10 for the grid one
    c = np.array([(2.0 - 1.0) / (5.0 - 1.0), (30 - 10) // 10 / 10]).clip(0.1, 0.9)
    u = _unit(rng, 2)  # the construction's draw
    v = np.zeros(2)
    expected = []
    for r in [0.3, -0.2, 0.5, 0.1]:
        x = (c + 0.1 * u) * s
        expected.append({"a": float(x[0] * (5.0 - 1.0) + 1.0), "b": round(float(x[1])) * 10 + 10})
        grad = (2 * r * u) / (1 * 0.1)  # raw reward: upstream has no baseline
        v = 0.99 * v + (1 - 0.99) * grad**2
        c = (c + (0.01 * grad) / (np.sqrt(v) + 1e-8)).clip(0.1, 0.9)
        u = _unit(rng, 2)  # one draw per completed update
    # --- implementation ---
    tuner = BlueFin(BLUEFIN_PARAMS, feedback=1, random_seed=7, **UPSTREAM_BLUEFIN)
    got = _run(tuner, [0.3, -0.2, 0.5, 0.1])
    assert _same(got, expected)
    assert _same(tuner.centre, c)
    assert _close(
        got,
        [
            {"a": 2.001647077896, "b": 40},
            {"a": 2.282321064947, "b": 30},
            {"a": 2.633198883224, "b": 40},
            {"a": 2.432757472871, "b": 50},
        ],
    )
    assert _close(tuner.centre.tolist(), [0.35578734232, 0.292115976645])


def test_bluefin_two_point_sgd_with_decay_is_pinned() -> None:
    # --- derivation (f = 2, SGD, eta0 0.04, delta 0.2, decay rho 0.5, seed 7) ---
    rng = np.random.default_rng(7)
    s = np.array([1.0, 10.0])
    eta0, delta, rho = 0.04, 0.2, 0.5
    eta = eta0
    c = np.array([0.25, 0.2]).clip(delta, 1 - delta)
    u = _unit(rng, 2)
    rewards = [0.4, 0.1, -0.3, 0.2, 0.6, 0.5]
    expected = []
    r_plus, n = 0.0, 0
    for k, r in enumerate(rewards):
        w = c + delta * u if k % 2 == 0 else c - delta * u  # the pair shares u
        x = w * s
        expected.append({"a": float(x[0] * 4.0 + 1.0), "b": round(float(x[1])) * 10 + 10})
        if k % 2 == 0:
            r_plus = r  # first half: stored, no update, no draw
            continue
        diff = (r_plus - r) / max(abs(r_plus), abs(r))
        grad = (2 * diff * u) / (2 * delta)
        c = (c + eta * grad).clip(delta, 1 - delta)
        u = _unit(rng, 2)
        n += 1
        eta = eta0 / (1 + rho * n)
        delta = math.sqrt(eta)
    # --- implementation ---
    tuner = BlueFin(
        BLUEFIN_PARAMS,
        feedback=2,
        eta=0.04,
        delta=0.2,
        eta_decay_rate=0.5,
        optimizer="sgd",
        random_seed=7,
        baseline=None,
    )
    got = _run(tuner, rewards)
    assert _same(got, expected)
    assert _same(tuner.centre, c)
    assert (tuner.eta, tuner.delta, tuner.optimizer.eta) == (eta, delta, eta)
    assert _close(
        got,
        [
            {"a": 2.003294155792, "b": 50},
            {"a": 1.996705844208, "b": 10},
            {"a": 1.810304364461, "b": 30},
            {"a": 2.194636869227, "b": 60},
            {"a": 2.086981025564, "b": 60},
            {"a": 2.558514382735, "b": 80},
        ],
    )
    assert _close(
        [*tuner.centre.tolist(), tuner.eta, tuner.delta], [0.32086331443, 0.588694322903, 0.016, 0.126491106407]
    )


def test_exponential_weights_joint_is_pinned() -> None:
    # --- derivation (spec 4.1; K = 2 x 2 arms, last parameter least significant; seed 3) ---
    rng = np.random.default_rng(3)
    big_k = 4
    p = np.full(big_k, 1 / big_k)
    eta, gamma, r_min = math.sqrt(math.log(big_k) / big_k), 1.0, math.inf
    rewards = [0.5, -1.5, 0.9, 0.1, 0.7, -0.2]  # -1.5 exercises the max(1, |r_min|) guard
    expected = []
    for t, r in enumerate(rewards):
        p_hat = (1 - gamma) * p + gamma / big_k
        a = int(rng.multinomial(1, p_hat).argmax())
        expected.append({"x": ["a", "b"][a // 2], "y": ["p", "q"][a % 2]})
        r_min = min(r_min, r)
        p_old = p[a]
        p[a] = p_old * math.exp(eta * r / p_hat[a])
        p = p / (1 - p_old + p[a])
        eta = math.sqrt(math.log(big_k) / (big_k * (t + 2))) / max(1.0, abs(r_min))
        gamma = min(1.0, math.sqrt(big_k / (t + 2)))  # < 1 from the 5th draw on
    # --- implementation ---
    tuner = ExponentialWeights([Categorical("x", "a", ["a", "b"]), Categorical("y", "p", ["p", "q"])], random_seed=3)
    got = _run(tuner, rewards)
    assert _same(got, expected)
    assert _same(tuner.p, p)
    assert (tuner.eta, tuner.gamma) == (eta, gamma)
    assert got == [
        {"x": "b", "y": "p"},
        {"x": "b", "y": "q"},
        {"x": "b", "y": "p"},
        {"x": "b", "y": "p"},
        {"x": "b", "y": "q"},
        {"x": "a", "y": "p"},
    ]
    assert _close(tuner.p.tolist(), [0.08704891781, 0.100544841304, 0.798106004435, 0.014300236451])


def test_exponential_weights_slates_is_pinned() -> None:
    # --- derivation (spec 4.2: one multinomial per slot, in parameter order; shared t and r_min; seed 5) ---
    rng = np.random.default_rng(5)
    ks, cats = [3, 2], [["a", "b", "c"], ["p", "q"]]
    p = [np.full(k, 1 / k) for k in ks]
    eta = [math.sqrt(math.log(k) / k) for k in ks]
    gamma, r_min = [1.0, 1.0], math.inf
    rewards = [0.2, 0.7, -0.4, 1.0, 0.3]
    expected = []
    for t, r in enumerate(rewards):
        p_hat = [(1 - gamma[j]) * p[j] + gamma[j] / k for j, k in enumerate(ks)]
        arms = [int(rng.multinomial(1, ph).argmax()) for ph in p_hat]
        expected.append({"x": cats[0][arms[0]], "y": cats[1][arms[1]]})
        r_min = min(r_min, r)
        for j, a in enumerate(arms):
            p_old = p[j][a]
            p[j][a] = p_old * math.exp(eta[j] * r / p_hat[j][a])
            p[j] = p[j] / (1 - p_old + p[j][a])
        eta = [math.sqrt(math.log(k) / (k * (t + 2))) / max(1.0, abs(r_min)) for k in ks]
        gamma = [min(1.0, math.sqrt(k / (t + 2))) for k in ks]
    # --- implementation ---
    tuner = ExponentialWeightsSlates(
        [Categorical("x", "a", ["a", "b", "c"]), Categorical("y", "p", ["p", "q"])], random_seed=5
    )
    got = _run(tuner, rewards)
    assert _same(got, expected)
    assert _same(list(tuner.p), list(p))
    assert got == [
        {"x": "a", "y": "p"},
        {"x": "c", "y": "q"},
        {"x": "c", "y": "q"},
        {"x": "b", "y": "p"},
        {"x": "b", "y": "q"},
    ]
    assert _close(
        [q.tolist() for q in tuner.p],
        [[0.229683393205, 0.512318277353, 0.257998329442], [0.583776983616, 0.416223016384]],
    )


def test_hybrid_is_pinned() -> None:
    """Upstream hybrid (D5 off): the categorical learner predicts first and is re-sampled for each half of a BlueFin
    pair, and every reward goes to the categorical learner first, then to BlueFin."""
    # --- derivation (EW joint seed 11 over mode; BlueFin f=2 SGD seed 12 over r (unit) and n (grid N = 4)) ---
    crng, nrng = np.random.default_rng(11), np.random.default_rng(12)
    big_k, p = 2, np.full(2, 0.5)
    eta_c, gamma, r_min = math.sqrt(math.log(2) / 2), 1.0, math.inf
    s = np.array([1.0, 4.0])
    c = np.array([0.25, 2 / 4]).clip(0.1, 0.9)
    u = _unit(nrng, 2)
    r_plus = 0.0
    rewards = [0.3, 0.6, 0.2, 0.5]
    expected = []
    for t, r in enumerate(rewards):
        p_hat = (1 - gamma) * p + gamma / big_k
        a = int(crng.multinomial(1, p_hat).argmax())
        x = (c + 0.1 * u if t % 2 == 0 else c - 0.1 * u) * s
        expected.append({"mode": ["x", "y"][a], "r": float(x[0] * 2.0 + 0.0), "n": round(float(x[1])) * 2, "k": 4})
        r_min = min(r_min, r)  # categorical update first
        p_old = p[a]
        p[a] = p_old * math.exp(eta_c * r / p_hat[a])
        p = p / (1 - p_old + p[a])
        eta_c = math.sqrt(math.log(2) / (2 * (t + 2))) / max(1.0, abs(r_min))
        gamma = min(1.0, math.sqrt(2 / (t + 2)))
        if t % 2 == 0:  # then BlueFin
            r_plus = r
            continue
        grad = (2 * ((r_plus - r) / max(abs(r_plus), abs(r))) * u) / (2 * 0.1)
        c = (c + 0.01 * grad).clip(0.1, 0.9)
        u = _unit(nrng, 2)
    # --- implementation ---
    params = [
        Categorical("mode", "x", ["x", "y"]),
        Real("r", 0.5, 0.0, 2.0),
        Integer("n", 4, 0, 8, step=2),
        Integer("k", 4, 4, 4),  # constant: never reaches an algorithm
    ]
    tuner = HybridSolver(
        params,
        categorical_algorithm_args={"random_seed": 11},
        numerical_algorithm_args={"feedback": 2, "optimizer": "sgd", "random_seed": 12, **UPSTREAM_BLUEFIN},
        hold_categorical_for_pair=False,
    )
    got = _run(tuner, rewards)
    assert _same(got, expected)
    assert isinstance(tuner.categorical, ExponentialWeights) and isinstance(tuner.numerical, BlueFin)
    assert _same(tuner.categorical.p, p)
    assert _same(tuner.numerical.centre, c)
    assert _close(
        got,
        [
            {"mode": "y", "r": 0.498694894942, "n": 4, "k": 4},
            {"mode": "y", "r": 0.501305105058, "n": 4, "k": 4},
            {"mode": "x", "r": 0.643764983325, "n": 4, "k": 4},  # the pair's halves ran under different modes
            {"mode": "y", "r": 0.357540121734, "n": 4, "k": 4},
        ],
    )
    assert _close(
        [*tuner.categorical.p.tolist(), *tuner.numerical.centre.tolist()],
        [0.274137988435, 0.725862011565, 0.207392547026, 0.408088120348],
    )


def test_autoscope_is_pinned() -> None:
    """Upstream AutoScope (D6 quirks): a height-1 tree over a one-hot job feature, learned router (SGD, eta 0.5),
    two one-point BlueFin leaves that share seed 9 (so they start with the same direction).

    The router starts at W = [0.8, -0.8], inside the straight-through region |z| <= 1: started at
    [1, -1], z sat exactly on that boundary, and the last bit of a gradient that is zero in exact
    arithmetic (the two leaves' centres are equal in round 1) decided whether round 2 learned."""
    # --- derivation (spec 6.2-6.4) ---
    w_r, b_r = np.array([[0.8, -0.8]]), np.zeros(1)
    and_a = np.array([[1.0], [-1.0]])  # leaf 0 is the root's left subtree, leaf 1 its right
    leaf_rng = [np.random.default_rng(9), np.random.default_rng(9)]
    centres = [np.array([0.3, 0.6]), np.array([0.3, 0.6])]
    dirs = [_unit(leaf_rng[0], 2), _unit(leaf_rng[1], 2)]
    rounds = [("a", 0.5), ("b", -0.3), ("a", 0.2), ("b", 0.4), ("a", -0.1)]
    expected, leaves = [], []
    for job, r in rounds:
        x = np.array([1.0, 0.0]) if job == "a" else np.array([0.0, 1.0])
        z = w_r @ x + b_r
        phi = np.mean(np.abs(z))
        y = and_a @ (2 * phi * (z >= 0) - phi)
        a = np.exp(y - y.max()) / np.exp(y - y.max()).sum()
        leaf = int(np.argmax(a))
        w = centres[leaf] + 0.1 * dirs[leaf]
        expected.append({"r": float(w[0]), "s": float(w[1])})
        leaves.append(leaf)
        snapshot = np.stack(centres)  # every centre, before the leaf's update
        grad = (2 * r * dirs[leaf]) / (1 * 0.1)
        centres[leaf] = (centres[leaf] + 0.05 * grad).clip(0.1, 0.9)
        dirs[leaf] = _unit(leaf_rng[leaf], 2)
        g_sel = -(snapshot @ grad)  # loss gradient w.r.t. the one-hot leaf selector
        dy = a * (g_sel - a @ g_sel)  # through softmax (argmax: straight through)
        dz = 2 * (and_a.T @ dy) * (np.abs(z) <= 1)  # AND layer, then the sign quantiser's STE
        w_r, b_r = w_r - 0.5 * np.outer(dz, x), b_r - 0.5 * dz
    # --- implementation ---
    tuner = AutoScope(
        [Real("r", 0.3, 0.0, 1.0), Real("s", 0.6, 0.0, 1.0)],
        features=[{"name": "job", "values": ["a", "b"]}],
        height=1,
        eta=0.5,
        optimizer="sgd",
        leaf_algorithm_args={"feedback": 1, "eta": 0.05, "optimizer": "sgd", "random_seed": 9, **UPSTREAM_BLUEFIN},
        internal_weights=[[0.8, -0.8]],
        autoscope_upstream_quirks=True,
    )
    got = _run(tuner, [r for _, r in rounds], [j for j, _ in rounds])
    assert _same(got, expected)
    assert leaves == [0, 1, 0, 1, 0]
    assert _same(tuner.w, w_r) and _same(tuner.b, b_r)
    assert _same([leaf.centre for leaf in tuner.leaves], centres)
    assert tuner.iteration == 0  # upstream quirk: never advances
    assert _close(
        got,
        [
            {"r": 0.204283209933, "s": 0.62895334349},
            {"r": 0.204283209933, "s": 0.62895334349},  # same seed in both leaves: same first probe
            {"r": 0.007028333931, "s": 0.781594279252},
            {"r": 0.494178704133, "s": 0.549967531334},
            {"r": 0.192980823219, "s": 0.781617404998},
        ],
    )
    assert _close([*tuner.w.ravel().tolist(), *tuner.b.tolist()], [1.714951223974, 0.300024432138, 2.014975656112])


# Property 15: determinism -------------------------------------------------------------------------------------------

MIXED = [
    Categorical("gc", "G1", ["G1", "Parallel", "Z"]),
    Categorical("mode", "a", ["a", "b"]),
    Real("ratio", 0.5, 0.0, 1.0),
    Real("stepped", 0.3, 0.1, 0.7, step=0.1),
    Integer("threads", 8, 2, 64, step=2),
]
NUMERIC = [p for p in MIXED if not isinstance(p, Categorical)]
CATEGORICAL = [p for p in MIXED if isinstance(p, Categorical)]


def _factories(seed: int, upstream: bool) -> dict[str, Any]:
    up: dict[str, Any] = {"baseline": None} if upstream else {}
    return {
        "bluefin-f1": lambda: BlueFin(NUMERIC, feedback=1, random_seed=seed, **up),
        "bluefin-f2": lambda: BlueFin(NUMERIC, feedback=2, eta_decay_rate=0.01, random_seed=seed, **up),
        "ew": lambda: ExponentialWeights(CATEGORICAL, random_seed=seed),
        "slates": lambda: ExponentialWeightsSlates(CATEGORICAL, random_seed=seed),
        "hybrid": lambda: HybridSolver(
            MIXED,
            categorical_algorithm_args={"random_seed": seed},
            numerical_algorithm_args={"feedback": 2, "random_seed": seed, **up},
            hold_categorical_for_pair=not upstream,
        ),
        "uniform": lambda: UniformRandom(MIXED, random_seed=seed),
    }


def _reward(config: dict[str, Any]) -> float:
    x = sum(float(v) for v in config.values() if not isinstance(v, str)) / 100
    return -abs(x - 0.3) + (0.1 if config.get("gc") == "Z" else 0.0)


def _sequence(make: Any, n: int = 40) -> list[dict[str, Any]]:
    tuner = make()
    out = []
    for _ in range(n):
        config, _ = tuner.predict()
        out.append(config)
        tuner.set_reward(_reward(config))
    return out


@pytest.mark.parametrize("upstream", [True, False], ids=["upstream-flags", "knobflow-defaults"])
def test_same_seed_and_rewards_give_the_same_predictions(upstream: bool) -> None:
    """Property 15: the same seed and the same rewards always give the same predictions; another seed does not."""
    for name, make in _factories(5, upstream).items():
        assert _sequence(make) == _sequence(make), name
        assert _sequence(make) != _sequence(_factories(6, upstream)[name]), name


def test_autoscope_is_deterministic_with_a_seeded_router() -> None:
    """D6: with knobflow's defaults the router's random initial weights are seeded too (upstream: unseeded torch)."""

    def make(seed: int) -> AutoScope:
        return AutoScope(
            NUMERIC,
            features=[
                {"name": "job", "values": ["a", "b", "c"]},
                {"name": "load", "values": None, "min": 0, "max": 10},
            ],
            height=2,
            leaf_algorithm_args={"feedback": 2, "random_seed": seed},
            random_seed=seed,
        )

    def seq(seed: int) -> list[Any]:
        tuner, rng, out = make(seed), Random(0), []
        for _ in range(60):
            ctx = {"job": rng.choice("abc"), "load": rng.uniform(0, 10)}
            config, _ = tuner.predict(ctx)
            out.append(config)
            tuner.set_reward(_reward(config), ctx)
        return [*out, tuner.w.tolist()]

    assert seq(1) == seq(1)
    assert seq(1) != seq(2)


# Replay of upstream's published expectations ------------------------------------------------------------------------


def _stats(rewards: list[float]) -> dict[str, float]:
    return {
        "mean": mean(rewards),
        "min": min(rewards),
        "median": median(rewards),
        "p95": float(np.percentile(rewards, 95)),
        "p99": float(np.percentile(rewards, 99)),
        "max": max(rewards),
    }


def _assert_stats(rewards: list[float], expected: dict[str, float]) -> None:
    got = _stats(rewards)
    for key in ("mean", "min", "median", "p95", "p99", "max"):  # 1e-12: see the module docstring
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), (key, got[key], expected[key])


def test_reproduces_upstream_bluefin_two_point_rmsprop_predictions() -> None:
    """oppertune-algorithms/tests/test_bluefin.py::test_rmsprop: ten predictions, printed in full upstream."""
    params = [Real("p1", 0.87362385, 0.0, 1.0), Real("p2", 0.30238590, 0.0, 1.0), Real("p3", 0.10718888, 0.0, 1.0)]
    upstream = [
        (0.8373197466431326, 0.29265432476549247, 0.19985661183211623),
        (0.9099279533568674, 0.3121174752345075, 0.01452114816788376),
        (0.8108889066001379, 0.10958923002700288, 0.2068947079772521),
        (0.7363588162667183, 0.2951826552788627, 0.20748304306428142),
        (0.6821116380133826, 0.3096946119254001, 0.11450100546949132),
        (0.7541382555969532, 0.29252372421801603, 0.3002893984729577),
        (0.7586115959488672, 0.31123366067966113, 0.3356665647943705),
        (0.7286030218256602, 0.2820183282830014, 0.14010084736914108),
        (0.7816596725272298, 0.34166137271505076, 0.19431456668459235),
        (0.7423113706828501, 0.27821763254836546, 0.3798586395503827),
    ]
    tuner = BlueFin(params, feedback=2, eta=0.01, delta=0.1, optimizer="rmsprop", random_seed=4, baseline=None)
    for expected in upstream:
        config, _ = tuner.predict()
        assert _same(tuple(config.values()), expected)
        tuner.set_reward(-math.sqrt(float(np.mean((np.array(list(config.values())) - [0.1, 0.3, 0.6]) ** 2))))


def test_reproduces_upstream_bluefin_reward_statistics() -> None:
    """test_bluefin.py::test_onepoint (5 parameters, integers included) and ::test_twopoint (with decay)."""
    params: list[Any] = [
        Real("p1", 50.0, 1.0, 100.0),
        Real("p2", 20.0, 1.0, 100.0),
        Real("p3", 30.0, 1.0, 100.0),
        Integer("p4", 70, 1, 100),
        Integer("p5", 10, 1, 100),
    ]
    target = np.array([10.0, 50.0, 70.0, 20, 80])
    tuner = BlueFin(params, feedback=1, optimizer="sgd", eta=0.01, delta=0.1, random_seed=2, baseline=None)
    rewards = []
    for _ in range(1000):
        config, _ = tuner.predict()
        rewards.append(-float(np.sum(np.square(np.array(list(config.values())) - target))) / 100**2)
        tuner.set_reward(rewards[-1])
    _assert_stats(
        rewards,
        {
            "mean": -0.03699159848296742,
            "min": -1.3842386961672057,
            "median": -0.011287915220024269,
            "p95": -0.006658190445350101,
            "p99": -0.005095832210173069,
            "max": -0.001104576566414092,
        },
    )
    params = [Real("p1", 400.0, 1.0, 1000.0), Real("p2", 400.0, 1.0, 1000.0)]
    tuner = BlueFin(
        params, feedback=2, eta=0.0025, delta=0.05, optimizer="sgd", eta_decay_rate=0.03, random_seed=2, baseline=None
    )
    rewards = []
    for _ in range(1000):
        config, _ = tuner.predict()
        rewards.append(-float(np.sum(np.abs(np.array(list(config.values())) - [200.0, 800.0]))) / 1000)
        tuner.set_reward(rewards[-1])
    _assert_stats(
        rewards,
        {
            "mean": -0.07657255867260056,
            "min": -0.6639602790056434,
            "median": -0.022036472387340637,
            "p95": -0.014625555310080925,
            "p99": -0.012693946801577387,
            "max": -0.01088593460415541,
        },
    )


def test_reproduces_upstream_exponential_weights_and_slates() -> None:
    """test_exponential_weights.py and test_exponential_weights_slates.py::test_exp_weights_multiple_params."""
    rng = Random(12345)
    joint = ExponentialWeights(
        [Categorical("p1", "0", ("0", "1", "2")), Categorical("p2", "3", ("3", "4"))], random_seed=12345
    )
    for _ in range(4):
        joint.predict()
        joint.set_reward(rng.uniform(0, 1))
    assert joint.p.tolist() == [
        0.06359363105308963,
        0.4948404030671519,
        0.24926792000870807,
        0.06359363105308963,
        0.06359363105308963,
        0.06511078376487119,
    ]
    assert joint.eta == 0.2443876339771208
    rng = Random(12345)
    slates = ExponentialWeightsSlates(
        [Categorical("p1", "0", ("0", "1", "2")), Categorical("p2", "3", ("3", "4", "5"))], random_seed=12345
    )
    for _ in range(4):
        slates.predict()
        slates.set_reward(rng.uniform(0, 1))
    assert [p.tolist() for p in slates.p] == [
        [0.18315990416833275, 0.134800947605418, 0.6820391482262491],
        [0.6824221772475965, 0.180928909856866, 0.13664891289553727],
    ]
    assert [p.tolist() for p in slates.p_hat] == [
        [0.30786641954574895, 0.3076175190427817, 0.3845160614114693],
        [0.3845160614114693, 0.3076175190427817, 0.30786641954574895],
    ]


def test_reproduces_upstream_hybrid_rewards() -> None:
    """test_hybrid_solver.py::test_hybrid_solver (slates + one-point BlueFin)."""
    params: list[Any] = [Real(f"p{i + 1}", v, 0.0, 10.0) for i, v in enumerate([1, 3, 5, 7, 9, 2])]
    params.append(Categorical("category", "f1", ("f1", "f2")))
    optima = {"f1": [3, 5, 7, 9, 1, 3], "f2": [9, 1, 3, 5, 7, 1]}
    tuner = HybridSolver(
        params,
        categorical_algorithm="exponential_weights_slates",
        categorical_algorithm_args={"random_seed": 4},
        numerical_algorithm_args={"feedback": 1, "optimizer": "sgd", "random_seed": 4, "baseline": None},
        hold_categorical_for_pair=False,
    )
    rewards = []
    for _ in range(3):
        config, _ = tuner.predict()
        x = np.array([config[f"p{i + 1}"] for i in range(6)])
        rewards.append(-math.sqrt(float(np.mean((x - np.array(optima[config["category"]], dtype=float)) ** 2))))
        tuner.set_reward(rewards[-1])
    assert rewards == [-3.396297354084446, -5.351881890813031, -4.4886629741537885]


AUTOSCOPE_OPTIMA = {
    "0": [0.1, 0.3, 0.6],
    "1": [0.4, 0.5, 0.1],
    "2": [0.2, 0.3, 0.7],
    "3": [0.1, 0.7, 0.8],
    "4": [0.6, 0.7, 0.9],
    "5": [0.7, 0.8, 0.3],
    "6": [0.4, 0.6, 0.2],
    "7": [0.3, 0.2, 0.8],
}


@pytest.mark.parametrize("case", ["fixed-router-one-point", "learned-router-two-point"])
def test_reproduces_upstream_autoscope_reward_statistics(case: str) -> None:
    """test_autoscope.py::test_onepoint (hand-set, frozen router) and ::test_twopoint (router learned with RMSprop from
    given weights): upstream's router is torch; ours is numpy and still reproduces the statistics to the last bit."""
    jobs = tuple(AUTOSCOPE_OPTIMA)
    if case == "fixed-router-one-point":
        seed, leaf, frozen = 4, {"feedback": 1, "optimizer": "sgd"}, True
        weights: list[list[float]] = [
            [1, 1, 1, 1, -1, -1, -1, -1],
            [1, 1, -1, -1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, -1, -1],
            [1, -1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, -1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, -1, 0, 0],
            [0, 0, 0, 0, 0, 0, 1, -1],
        ]
        expected = {
            "mean": -0.16468226743961345,
            "min": -0.565298492044158,
            "median": -0.14369665298740353,
            "p95": -0.04246640136190738,
            "p99": -0.025091036887005817,
            "max": -0.008458415453602675,
        }
    else:
        seed, leaf, frozen = 5, {"feedback": 2, "optimizer": "rmsprop"}, False
        weights = [
            [0.0422, 0.0418, -0.2889, -0.2051, -0.3485, -0.326, 0.3485, 0.2921],
            [0.0838, 0.3354, -0.128, -0.2016, 0.3014, -0.0187, 0.0671, 0.209],
            [0.1863, -0.2024, -0.1367, -0.3263, 0.0156, -0.1268, 0.0759, 0.0164],
            [0.3014, 0.0305, 0.1772, 0.1116, 0.3137, -0.147, 0.2952, 0.2536],
            [-0.1411, 0.2167, 0.3269, -0.1999, -0.1379, 0.2419, 0.2851, 0.0933],
            [0.1086, 0.2619, 0.3098, -0.2236, -0.1454, 0.2977, 0.191, -0.1659],
            [-0.12, 0.3431, -0.2214, 0.2274, 0.2052, -0.3391, -0.3529, 0.1174],
        ]
        expected = {
            "mean": -0.2093698331219671,
            "min": -0.5547189657797458,
            "median": -0.19551992923666855,
            "p95": -0.0481508071320809,
            "p99": -0.03180158406715326,
            "max": -0.010721991711288844,
        }
    tuner = AutoScope(
        [Real("p1", 0.5, 0.0, 1.0), Real("p2", 0.3, 0.0, 1.0), Real("p3", 0.1, 0.0, 1.0)],
        features=[{"name": "jobtype", "values": jobs}],
        height=3,
        eta=0.01,
        optimizer="sgd" if frozen else "rmsprop",
        leaf_algorithm_args={**leaf, "eta": 0.01, "delta": 0.1, "random_seed": seed, "baseline": None},
        internal_weights=weights,
        fix_internal_weights=frozen,
        random_seed=seed,
        autoscope_upstream_quirks=True,
    )
    rng, rewards = Random(seed), []
    for _ in range(1000):
        job = rng.choice(jobs)
        config, _ = tuner.predict({"jobtype": job})
        rewards.append(-math.sqrt(float(np.mean((np.array(list(config.values())) - AUTOSCOPE_OPTIMA[job]) ** 2))))
        tuner.set_reward(rewards[-1], {"jobtype": job})
    _assert_stats(rewards, expected)
