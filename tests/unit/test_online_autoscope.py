"""AutoScope (spec section 6): property 13 of section 11 (routing, scoped convergence against one global BlueFin,
dropped rewards, frozen weights, a finite-difference check of the straight-through gradient) and D6."""

from __future__ import annotations

import math
from random import Random
from typing import Any

import numpy as np
import pytest

from knobflow.tuners.online import AutoScope, BlueFin, Real
from knobflow.tuners.online.autoscope import and_matrix, route, router_gradient

OPTIMA = {  # job type -> its best (p1, p2, p3); upstream's test_autoscope.py
    "0": [0.1, 0.3, 0.6],
    "1": [0.4, 0.5, 0.1],
    "2": [0.2, 0.3, 0.7],
    "3": [0.1, 0.7, 0.8],
    "4": [0.6, 0.7, 0.9],
    "5": [0.7, 0.8, 0.3],
    "6": [0.4, 0.6, 0.2],
    "7": [0.3, 0.2, 0.8],
}
JOBS = tuple(OPTIMA)
HAND_WEIGHTS = [  # node n sends job i left (+1) or right (-1) along the path to leaf i
    [1, 1, 1, 1, -1, -1, -1, -1],
    [1, 1, -1, -1, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, 1, -1, -1],
    [1, -1, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, -1, 0, 0, 0, 0],
    [0, 0, 0, 0, 1, -1, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, -1],
]
PARAMS = [Real("p1", 0.5, 0.0, 1.0), Real("p2", 0.3, 0.0, 1.0), Real("p3", 0.1, 0.0, 1.0)]
FEATURES = [{"name": "jobtype", "values": JOBS}]


def _reward(config: dict[str, Any], job: str) -> float:
    return -math.sqrt(sum((a - b) ** 2 for a, b in zip(config.values(), OPTIMA[job], strict=True)) / 3)


def _path_leaf(z: np.ndarray, height: int) -> int:
    node, n_internal = 0, 2**height - 1
    while node < n_internal:
        node = 2 * node + 1 if z[node] >= 0 else 2 * node + 2
    return node - n_internal


@pytest.mark.parametrize("quirks", [True, False])
def test_hand_set_weights_route_job_i_to_leaf_i(quirks: bool) -> None:
    tuner = AutoScope(PARAMS, FEATURES, internal_weights=HAND_WEIGHTS, autoscope_upstream_quirks=quirks)
    assert [tuner.leaf_of({"jobtype": j}) for j in JOBS] == list(range(8))
    for j in JOBS:
        tuner.predict({"jobtype": j})
    assert [r.metadata for r in tuner.get_tuning_requests()] == [{"leaf": i} for i in range(8)]


def test_the_routed_leaf_is_the_left_when_z_is_nonnegative_path() -> None:
    """l* = argmax softmax(A q) is the leaf reached by going left wherever z >= 0 (phi > 0); z = 0 everywhere -> 0."""
    rng = np.random.default_rng(0)
    for height in (1, 2, 3, 4):
        a = and_matrix(height)
        n_internal = 2**height - 1
        for _ in range(300):
            w = rng.normal(size=(n_internal, 5)) * rng.choice([0.01, 1.0, 30.0])
            b = rng.normal(size=n_internal) * 0.1
            x = rng.normal(size=5)
            r = route(w, b, a, x)
            assert r.leaf == _path_leaf(w @ x + b, height)
        assert route(np.zeros((n_internal, 5)), np.zeros(n_internal), a, rng.normal(size=5)).leaf == 0
    assert and_matrix(2).tolist() == [[1, 1, 0], [1, -1, 0], [-1, 0, 1], [-1, 0, -1]]


def _converge(seed: int, quirks: bool) -> tuple[list[float], list[float]]:
    """Upstream's test_convergence_with_non_sequential_predicts: frozen hand-set routing, f = 2, SGD, 1500 rounds of
    random job types; a global BlueFin (same leaf settings) runs on the same job sequence."""
    leaf = {"feedback": 2, "eta": 0.01, "delta": 0.1, "optimizer": "sgd", "random_seed": seed}
    if quirks:
        leaf["baseline"] = None
    tuner = AutoScope(
        PARAMS,
        FEATURES,
        height=3,
        optimizer="sgd",
        leaf_algorithm_args=leaf,
        internal_weights=HAND_WEIGHTS,
        fix_internal_weights=True,
        random_seed=seed,
        autoscope_upstream_quirks=quirks,
    )
    single = BlueFin(PARAMS, **leaf)
    rng = Random(seed)
    for _ in range(1500):
        job = rng.choice(JOBS)
        config, _ = tuner.predict({"jobtype": job})
        tuner.set_reward(_reward(config, job), {"jobtype": job})
        config, _ = single.predict()
        single.set_reward(_reward(config, job))
    assert tuner.w.tolist() == HAND_WEIGHTS and tuner.b.tolist() == [0.0] * 7  # frozen: bit-identical
    scoped = [_reward(tuner.predict({"jobtype": j})[0], j) for j in JOBS]
    config = single.predict()[0]
    return scoped, [_reward(config, j) for j in JOBS]


@pytest.mark.parametrize("quirks", [True, False], ids=["upstream", "knobflow"])
def test_scoping_beats_one_global_tuner(quirks: bool) -> None:
    """Property 13: with frozen routing every job type's reward is > -0.15 after 1500 rounds (spec: worst -0.088 over
    6 seeds; ours -0.0877 with the upstream flags), while one global BlueFin's mean reward over job types stays below
    -0.2 (spec 6.5: plateaus near -0.27; ours -0.25)."""
    for seed in range(6):
        scoped, single = _converge(seed, quirks)
        assert min(scoped) > -0.15, (seed, scoped)
        assert float(np.mean(single)) < -0.2, (seed, single)


def test_a_reward_for_a_context_that_now_routes_elsewhere_changes_nothing() -> None:
    tuner = AutoScope(PARAMS, FEATURES, internal_weights=HAND_WEIGHTS, leaf_algorithm_args={"random_seed": 1})
    tuner.predict({"jobtype": "2"})
    before = tuner.dump()["state"]
    tuner.w = tuner.w.copy()
    tuner.w[1, 2] = 1.0  # as another context's update might: job 2 now goes left at node 1 (leaf 0 or 1)
    moved = tuner.w.copy()
    assert tuner.leaf_of({"jobtype": "2"}) != 2
    tuner.set_reward(-0.3, {"jobtype": "2"})
    after = tuner.dump()["state"]
    assert after["leaves"] == before["leaves"] and after["router_optimizer"] == before["router_optimizer"]
    assert tuner.w.tobytes() == moved.tobytes()
    assert tuner.get_tuning_requests() == [] and tuner.iteration == 1  # D6: the reward is counted, not used


def _surrogate(z: np.ndarray, z0: np.ndarray, a_mat: np.ndarray, g_sel: np.ndarray) -> float:
    """The straight-through surrogate around z0: q0 + 2 (clip(z) - clip(z0)) through the AND layer and softmax."""
    phi0 = np.abs(z0).mean()
    q = 2 * phi0 * (z0 >= 0) - phi0 + 2 * (np.clip(z, -1, 1) - np.clip(z0, -1, 1))
    y = a_mat @ q
    s = np.exp(y - y.max())
    return float(g_sel @ (s / s.sum()))


def test_router_gradient_matches_finite_differences() -> None:
    """The backward pass of spec 6.4 is the exact gradient of the straight-through surrogate
    <G, softmax(A (q0 + 2 (clip(z, -1, 1) - clip(z0, -1, 1))))>, where the sign quantiser's STE passes 2 dq where
    |z| <= 1 and nothing elsewhere, and argmax passes the gradient through unchanged."""
    rng = np.random.default_rng(3)
    height, n_in = 3, 6
    a_mat = and_matrix(height)
    checked = blocked = 0
    while checked < 20:
        w = rng.normal(size=(7, n_in)) * 0.3
        w[0] *= 8  # some |z| > 1: their gradient must be zero
        b = rng.normal(size=7) * 0.1
        x = rng.normal(size=n_in)
        g_sel = rng.normal(size=8)
        z0 = w @ x + b
        if np.min(np.abs(np.abs(z0) - 1)) < 1e-3:
            continue  # too close to the STE's kink for a finite difference
        dw, db = router_gradient(route(w, b, a_mat, x), a_mat, g_sel)
        h = 1e-6
        num_w = np.zeros_like(w)
        for i, j in np.ndindex(*w.shape):
            e = np.zeros_like(w)
            e[i, j] = h
            up, down = _surrogate((w + e) @ x + b, z0, a_mat, g_sel), _surrogate((w - e) @ x + b, z0, a_mat, g_sel)
            num_w[i, j] = (up - down) / (2 * h)
        num_b = np.array(
            [
                (_surrogate(w @ x + b + h * e, z0, a_mat, g_sel) - _surrogate(w @ x + b - h * e, z0, a_mat, g_sel))
                / (2 * h)
                for e in np.eye(7)
            ]
        )
        assert np.allclose(dw, num_w, rtol=1e-6, atol=1e-9)
        assert np.allclose(db, num_b, rtol=1e-6, atol=1e-9)
        assert (dw[np.abs(z0) > 1] == 0).all() and (db[np.abs(z0) > 1] == 0).all()
        blocked += int((np.abs(z0) > 1).sum())
        checked += 1
    assert blocked >= 10  # the zeroing was exercised


def test_a_learned_router_moves_and_a_frozen_one_does_not() -> None:
    def run(frozen: bool) -> AutoScope:
        tuner = AutoScope(
            PARAMS,
            FEATURES,
            height=2,
            fix_internal_weights=frozen,
            random_seed=4,
            leaf_algorithm_args={"random_seed": 4},
        )
        rng = Random(4)
        for _ in range(200):
            job = rng.choice(JOBS)
            config, _ = tuner.predict({"jobtype": job})
            tuner.set_reward(_reward(config, job), {"jobtype": job})
        return tuner

    initial = AutoScope(PARAMS, FEATURES, height=2, random_seed=4).w
    frozen, learned = run(True), run(False)
    assert frozen.w.tobytes() == initial.tobytes() and (frozen.b == 0).all()
    assert not np.array_equal(learned.w, initial)


def test_d6_knobflow_defaults_and_upstream_quirks() -> None:
    """D6: iteration counts rewards (upstream: stays 0); the router's initial weights are seeded (upstream: unseeded);
    numeric features are scaled to [-1, 1] by their declared bounds (upstream: raw); leaf i is seeded seed + i
    (upstream: every leaf the same seed)."""
    features = [{"name": "jobtype", "values": JOBS}, {"name": "load", "values": None, "min": 0, "max": 100}]
    ours = AutoScope(PARAMS, features, height=2, random_seed=3, leaf_algorithm_args={"random_seed": 10})
    theirs = AutoScope(
        PARAMS,
        features,
        height=2,
        random_seed=3,
        leaf_algorithm_args={"random_seed": 10},
        autoscope_upstream_quirks=True,
    )
    bound = 1 / math.sqrt(9)
    assert ours.w.tobytes() == np.random.default_rng(3).uniform(-bound, bound, size=(3, 9)).tobytes()
    assert ours.w.tobytes() == AutoScope(PARAMS, features, height=2, random_seed=3).w.tobytes()
    assert (
        theirs.w.tobytes()
        != AutoScope(PARAMS, features, height=2, random_seed=3, autoscope_upstream_quirks=True).w.tobytes()
    )
    assert ours.encode({"jobtype": "1", "load": 75})[-1] == 0.5
    assert ours.encode({"jobtype": "1", "load": 250})[-1] == 1.0
    assert ours.encode({"jobtype": "1", "load": -5})[-1] == -1.0
    assert theirs.encode({"jobtype": "1", "load": 75})[-1] == 75.0
    assert [leaf.u.tobytes() for leaf in ours.leaves] == [
        BlueFin(PARAMS, random_seed=10 + i).u.tobytes() for i in range(4)
    ]
    assert len({leaf.u.tobytes() for leaf in theirs.leaves}) == 1
    for tuner in (ours, theirs):
        for i in range(5):
            ctx = {"jobtype": JOBS[i], "load": 10 * i}
            tuner.predict(ctx)
            tuner.set_reward(-0.5, ctx)
    assert (ours.iteration, theirs.iteration) == (5, 0)
    with pytest.raises(ValueError, match="needs min and max"):
        AutoScope(PARAMS, [{"name": "load", "values": None}])
    AutoScope(PARAMS, [{"name": "load", "values": None}], autoscope_upstream_quirks=True)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"jobtype": "9"}, "must be one of"),
        ({"jobtype": 3}, "must be one of"),
        ({}, "missing feature 'jobtype'"),
        ({"jobtype": "1", "region": "eu"}, "unknown feature 'region'"),
    ],
)
def test_bad_contexts_are_refused(context: dict[str, Any], message: str) -> None:
    tuner = AutoScope(PARAMS, FEATURES, internal_weights=HAND_WEIGHTS)
    with pytest.raises(ValueError, match=message):
        tuner.predict(context)
    assert tuner.get_tuning_requests() == []


def test_bad_construction_is_refused() -> None:
    for kwargs, message in [
        ({"features": []}, "at least one context feature"),
        ({"features": [{"name": "j", "values": ["a"]}]}, "at least 2 distinct strings"),
        ({"features": FEATURES, "height": 0}, "height must be"),
        ({"features": FEATURES, "internal_weights": [[1.0] * 8]}, "internal_weights must be a finite 7 x 8"),
        ({"features": FEATURES, "leaf_algorithm": "exponential_weights"}, "leaf_algorithm must be 'bluefin'"),
        ({"features": FEATURES, "optimizer": "adam"}, "optimizer must be"),
        ({"features": FEATURES, "eta": 0}, "eta"),
    ]:
        with pytest.raises(ValueError, match=message):
            AutoScope(PARAMS, **kwargs)
