"""Persistence of the online tuners (D9; spec 8.3): property 14 of section 11 for every algorithm, and the refusal of
state documents that are not ours, of an unknown version, of another algorithm or malformed.

Property 14: a scripted run (predicts, repeated predicts, stored rewards, rewards; several contexts in flight for
AutoScope) is snapshotted between *every* two operations, so at a pair's midpoint, with a predict pending, mid-decay,
before the first operation. The snapshot goes through ``dump`` -> ``json.dumps`` -> ``json.loads`` -> restore
(alternately ``from_state`` and ``load`` into a freshly built tuner), and the continuation must give the same
predictions and, after every operation, the same state, bit for bit, as an uninterrupted run. Request ids are random
UUIDs, so states are compared with each pending request's id replaced by its position.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from knobflow.tuners.online import (
    AutoScope,
    BlueFin,
    Categorical,
    ExponentialWeights,
    ExponentialWeightsSlates,
    HybridSolver,
    Identity,
    Integer,
    OnlineTuner,
    Real,
    StateError,
    UniformRandom,
    from_state,
)
from knobflow.tuners.online.state import FORMAT, VERSION

NUMERIC = [
    Real("ratio", 0.5, 0.0, 1.0),
    Real("stepped", 0.3, 0.1, 0.7, step=0.1),
    Integer("threads", 8, 2, 64, step=2),
    Integer("fixed", 3, 3, 3),
]
CATEGORICAL = [Categorical("gc", "G1", ["G1", "Parallel", "Z"]), Categorical("mode", "a", ["a", "b"])]
FEATURES = [{"name": "job", "values": ["a", "b", "c"]}, {"name": "load", "values": None, "min": 0.0, "max": 10.0}]

FACTORIES: dict[str, Any] = {
    "bluefin-f2-decay": lambda: BlueFin(NUMERIC, feedback=2, eta=0.04, delta=0.2, eta_decay_rate=0.1, random_seed=1),
    "bluefin-f1-baseline-momentum": lambda: BlueFin(
        NUMERIC, feedback=1, optimizer_args={"eta": 0.02, "momentum": 0.5}, random_seed=2
    ),
    "bluefin-sgd-upstream": lambda: BlueFin(NUMERIC, feedback=2, optimizer="sgd", random_seed=3, baseline=None),
    "exponential_weights": lambda: ExponentialWeights(CATEGORICAL, random_seed=4, prior_weight=0.2),
    "exponential_weights_slates": lambda: ExponentialWeightsSlates(CATEGORICAL, random_seed=5),
    "hybrid-held": lambda: HybridSolver(
        NUMERIC + CATEGORICAL,
        categorical_algorithm_args={"random_seed": 6},
        numerical_algorithm_args={"feedback": 2, "eta_decay_rate": 0.05, "random_seed": 7},
    ),
    "hybrid-upstream-slates": lambda: HybridSolver(
        NUMERIC + CATEGORICAL,
        categorical_algorithm="exponential_weights_slates",
        categorical_algorithm_args={"random_seed": 6},
        numerical_algorithm_args={"feedback": 2, "random_seed": 7, "baseline": None},
        hold_categorical_for_pair=False,
    ),
    "autoscope": lambda: AutoScope(
        NUMERIC, FEATURES, height=2, eta=0.05, leaf_algorithm_args={"feedback": 2, "random_seed": 8}, random_seed=8
    ),
    "autoscope-upstream-sgd": lambda: AutoScope(
        NUMERIC,
        FEATURES,
        height=2,
        eta=0.05,
        optimizer="sgd",
        leaf_algorithm_args={"feedback": 1, "random_seed": 9, "baseline": None},
        internal_weights=[[0.5] * 4, [0.2, -0.3, 0.1, 0.05], [-0.1, 0.4, -0.2, 0.01]],
        autoscope_upstream_quirks=True,
    ),
    "identity": lambda: Identity(NUMERIC + CATEGORICAL),
    "uniform_random": lambda: UniformRandom(NUMERIC + CATEGORICAL, random_seed=10),
}


def _reward(config: dict[str, Any]) -> float:
    x = sum(float(v) for v in config.values() if not isinstance(v, str)) / 80
    return -abs(x - 0.4) - (0.2 if config.get("gc") == "Parallel" else 0.0)


def _script(name: str, rounds: int = 14) -> list[tuple[str, Any]]:
    """Operations: ("predict", ctx), ("store", ctx) (a reward on the newest request), ("reward", ctx)."""
    rng = random.Random(name)
    contextual = name.startswith("autoscope")
    ops: list[tuple[str, Any]] = []
    for _ in range(rounds):
        contexts = [None]
        if contextual:  # one or two contexts in flight at once
            contexts = [
                {"job": rng.choice("abc"), "load": rng.choice([0.5, 2.5, 9.0])} for _ in range(rng.randint(1, 2))
            ]
            if contexts[-1] == contexts[0]:
                contexts = contexts[:1]
        for ctx in contexts:
            ops.append(("predict", ctx))
            if rng.random() < 0.3:
                ops.append(("predict", ctx))
            if rng.random() < 0.3:
                ops.append(("store", ctx))
        for ctx in contexts:
            ops.append(("reward", ctx))
    return ops


def _apply(tuner: OnlineTuner, op: str, ctx: Any) -> Any:
    if op == "predict":
        return tuner.predict(ctx)[0]
    newest = tuner.get_tuning_requests(ctx if ctx is not None else "")
    if isinstance(tuner, Identity | UniformRandom):
        reward = _reward(tuner.predict()[0]) if op == "store" else 0.1
    else:
        reward = _reward(newest[-1].prediction)
    if op == "store":
        tuner.store_reward(newest[-1].id if newest else "", reward, {"note": "stored"})
    else:
        tuner.set_reward(reward, ctx if ctx is not None else "")
    return None


def _normalised(tuner: OnlineTuner) -> str:
    """The state as JSON, with random request ids replaced by their position (recursively, for the hybrid)."""

    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        for i, request in enumerate(doc["pending"]):
            request["id"] = i
        for key in ("categorical", "numerical"):
            sub = doc["state"].get(key)
            if isinstance(sub, dict):
                doc["state"][key] = strip(sub)
        return doc

    return json.dumps(strip(tuner.dump()), sort_keys=True, allow_nan=False)


def _through_json(doc: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(doc, allow_nan=False))
    assert out == doc  # the document is plain JSON: nothing changes on the way
    return out


@pytest.mark.parametrize("name", list(FACTORIES))
def test_restoring_at_any_point_continues_bit_identically(name: str) -> None:
    make, ops = FACTORIES[name], _script(name)
    reference = make()
    expected_outputs, expected_states = [], []
    for op, ctx in ops:
        expected_outputs.append(_apply(reference, op, ctx))
        expected_states.append(_normalised(reference))
    for k in range(len(ops) + 1):
        first = make()
        for op, ctx in ops[:k]:
            _apply(first, op, ctx)
        doc = _through_json(first.dump())
        if k % 2:
            second = from_state(doc)
        else:
            second = make()
            second.load(doc)
        assert type(second) is type(first)
        assert json.dumps(second.dump(), sort_keys=True) == json.dumps(doc, sort_keys=True)  # ids included
        for i in range(k, len(ops)):
            assert _apply(second, *ops[i]) == expected_outputs[i], (name, k, i)
            assert _normalised(second) == expected_states[i], (name, k, i)


@pytest.mark.parametrize("name", ["bluefin-f2-decay", "hybrid-held", "autoscope"])
def test_a_run_that_dies_after_predict_reapplies_the_same_configuration(name: str) -> None:
    """Continuous tuning: the state is persisted right after predict, the run dies; the next run restores it and its
    predict returns the pending configuration again (not a new draw), and the reward then lands normally."""
    ctx = {"job": "b", "load": 2.5} if name.startswith("autoscope") else None
    tuner = FACTORIES[name]()
    for _ in range(3):
        tuner.predict(ctx)
        tuner.set_reward(-0.2, ctx if ctx is not None else "")
    config, _ = tuner.predict(ctx)
    saved = json.dumps(tuner.dump())
    restored = from_state(json.loads(saved))
    again, request_id = restored.predict(ctx)
    assert again == config and request_id not in saved
    restored.set_reward(-0.1, ctx if ctx is not None else "")
    tuner.set_reward(-0.1, ctx if ctx is not None else "")
    assert restored.predict(ctx)[0] == tuner.predict(ctx)[0]


def test_the_document_is_explicit_json() -> None:
    tuner = ExponentialWeights(CATEGORICAL, random_seed=1)
    doc = tuner.dump()
    assert doc["format"] == FORMAT and doc["version"] == VERSION == 1 and doc["algorithm"] == "exponential_weights"
    assert doc["state"]["r_min"] is None  # +inf before the first reward
    rng = doc["state"]["rng"]
    assert rng["bit_generator"] == "PCG64" and isinstance(rng["state"], str) and int(rng["state"]) > 2**64
    assert doc["parameters"][0] == {
        "type": "categorical",
        "name": "gc",
        "val": "G1",
        "categories": ["G1", "Parallel", "Z"],
    }
    bluefin = BlueFin(NUMERIC, random_seed=1)
    for r in (0.1, -0.3, 1 / 3):
        bluefin.predict()
        bluefin.set_reward(r)
    state = json.loads(json.dumps(bluefin.dump(), allow_nan=False))["state"]
    assert state["centre"] == bluefin.centre.tolist() and state["optimizer"]["v"] == bluefin.optimizer.v.tolist()
    assert state["baseline"] == {"kind": "mean", "sum": 0.1 - 0.3 + 1 / 3, "n": 3}


def _doc(tuner: OnlineTuner) -> dict[str, Any]:
    tuner.predict()
    tuner.set_reward(0.2)
    tuner.predict()  # a pending request too
    return _through_json(tuner.dump())


def _mutations() -> list[tuple[str, Any, str]]:
    def edit(path: list[Any], value: Any) -> Any:
        def f(doc: dict[str, Any]) -> dict[str, Any]:
            doc = copy.deepcopy(doc)
            target = doc
            for key in path[:-1]:
                target = target[key]
            if value is KeyError:
                del target[path[-1]]
            else:
                target[path[-1]] = value
            return doc

        return f

    return [
        ("unknown version", edit(["version"], 2), "unsupported state version 2"),
        ("another format", edit(["format"], "oppertune-pickle"), "not a knobflow online-tuner state"),
        ("another algorithm", edit(["algorithm"], "exponential_weights"), "of algorithm 'exponential_weights'"),
        ("changed parameters", edit(["parameters", 0, "max"], 2.0), "parameters differ"),
        ("changed arguments", edit(["args", "eta"], 0.5), "arguments differ"),
        ("short centre", edit(["state", "centre"], [0.5]), "shape"),
        ("NaN in the centre", edit(["state", "centre", 0], float("nan")), "finite"),
        ("missing field", edit(["state", "u"], KeyError), "malformed bluefin state"),
        ("broken generator", edit(["state", "rng", "state"], "x"), "malformed generator state"),
        ("pending not a list", edit(["pending"], {}), "pending must be a list"),
        ("bad request", edit(["pending", 0], 3), "pending request must be an object"),
        ("not a document", lambda doc: [doc], "must be a JSON object"),
    ]


@pytest.mark.parametrize(("what", "mutate", "message"), _mutations(), ids=[m[0] for m in _mutations()])
def test_a_bad_document_is_refused_and_nothing_changes(what: str, mutate: Any, message: str) -> None:
    def make() -> BlueFin:
        return BlueFin(NUMERIC, feedback=2, eta=0.01, random_seed=1)

    good = _doc(make())
    tuner = make()
    for r in (0.3, 0.1, 0.5):
        tuner.predict()
        tuner.set_reward(r)
    before = tuner.dump()
    bad = mutate(good)
    with pytest.raises(StateError, match=message):
        tuner.load(bad)
    assert tuner.dump() == before
    if what not in ("changed parameters", "changed arguments"):  # from_state restores those as they are
        with pytest.raises(StateError):
            from_state(bad)
    tuner.load(good)  # a good document still loads
    assert json.dumps(tuner.dump()) == json.dumps(good)


def test_from_state_refuses_an_unknown_algorithm() -> None:
    doc = _doc(BlueFin(NUMERIC, random_seed=1))
    doc["algorithm"] = "ddpg"
    with pytest.raises(StateError, match="unknown algorithm 'ddpg'"):
        from_state(doc)
    with pytest.raises(StateError, match="unknown algorithm"):
        from_state("not a document")


def test_a_hybrid_refuses_a_sub_state_of_the_wrong_shape() -> None:
    good = _doc(HybridSolver(NUMERIC + CATEGORICAL, numerical_algorithm_args={"random_seed": 1}))
    tuner = HybridSolver(NUMERIC + CATEGORICAL, numerical_algorithm_args={"random_seed": 1})
    before = tuner.dump()
    bad = copy.deepcopy(good)
    bad["state"]["numerical"]["state"]["centre"] = [0.5]
    with pytest.raises(StateError, match="shape"):
        tuner.load(bad)
    bad = copy.deepcopy(good)
    bad["state"]["categorical"] = None
    with pytest.raises(StateError, match="categorical sub-tuner is missing"):
        tuner.load(bad)
    assert tuner.dump() == before
