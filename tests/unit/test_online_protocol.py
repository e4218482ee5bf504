"""The interaction protocol of spec section 1, common to every online tuner: idempotent predict (property 2), the
pending-request list, store_reward / get_tuning_requests / set_reward, and refusal of bad input (a NaN or infinite
reward, an unknown request id, a reward with nothing pending, a context for a tuner without contexts), each with a
clear error and no change to the state."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

import pytest

from knobflow.tuners.online import (
    AutoScope,
    BlueFin,
    Categorical,
    Context,
    ExponentialWeights,
    ExponentialWeightsSlates,
    HybridSolver,
    Identity,
    Integer,
    NoPendingRequestError,
    OnlineTuner,
    Real,
    UniformRandom,
    UnknownRequestError,
    context_id,
    create,
)

NUMERIC = [Real("ratio", 0.5, 0.0, 1.0), Integer("threads", 8, 2, 64, step=2), Real("const", 1.0, 1.0, 1.0)]
CATEGORICAL = [Categorical("gc", "G1", ["G1", "Parallel", "Z"]), Categorical("mode", "a", ["a", "b"])]
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

LEARNERS: dict[str, Any] = {
    "bluefin-f1": lambda: BlueFin(NUMERIC, random_seed=1),
    "bluefin-f2": lambda: BlueFin(NUMERIC, feedback=2, random_seed=1),
    "exponential_weights": lambda: ExponentialWeights(CATEGORICAL, random_seed=1),
    "exponential_weights_slates": lambda: ExponentialWeightsSlates(CATEGORICAL, random_seed=1),
    "hybrid_solver": lambda: HybridSolver(
        NUMERIC + CATEGORICAL,
        categorical_algorithm_args={"random_seed": 1},
        numerical_algorithm_args={"feedback": 2, "random_seed": 1},
    ),
    "autoscope": lambda: AutoScope(NUMERIC, features=[{"name": "job", "values": ["a", "b"]}], height=2, random_seed=1),
}
CTX = {"autoscope": {"job": "b"}}


def _state(tuner: OnlineTuner) -> str:
    return json.dumps(tuner.dump(), sort_keys=True)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_predict_is_idempotent_until_a_reward_arrives(name: str) -> None:
    """Property 2: repeated predict() without a reward returns the same configuration under distinct request ids,
    without asking the algorithm again (its state does not move); set_reward without a pending request raises."""
    tuner, ctx = LEARNERS[name](), CTX.get(name)
    with pytest.raises(NoPendingRequestError, match="no pending request"):
        tuner.set_reward(0.5, ctx or "")
    for _ in range(5):
        first, id1 = tuner.predict(ctx)
        before = tuner.dump()["state"]
        again = [tuner.predict(ctx) for _ in range(3)]
        assert all(config == first for config, _ in again)
        ids = [id1, *(i for _, i in again)]
        assert len(set(ids)) == 4 and all(UUID4.match(i) for i in ids)
        assert tuner.dump()["state"] == before
        assert len(tuner.get_tuning_requests(ctx or "")) == 4
        tuner.set_reward(0.25, ctx or "")
        assert tuner.get_tuning_requests(ctx or "") == []
    with pytest.raises(NoPendingRequestError):
        tuner.set_reward(0.5, ctx or "")


def test_set_reward_uses_the_newest_request_and_clears_the_context() -> None:
    """store_reward annotates; the caller combines the stored rewards and calls set_reward once, which the algorithm
    receives for the newest pending request; every pending request of the context is then deleted."""
    tuner = BlueFin(NUMERIC, feedback=1, optimizer="sgd", random_seed=3, baseline=None)
    twin = BlueFin(NUMERIC, feedback=1, optimizer="sgd", random_seed=3, baseline=None)
    ids = [tuner.predict()[1] for _ in range(3)]
    for rid, r in zip(ids, [0.1, 0.2, 0.6], strict=True):
        tuner.store_reward(rid, r, {"latency_ms": r * 100})
    pending = tuner.get_tuning_requests("")
    assert [p.id for p in pending] == ids
    assert [p.reward for p in pending] == [0.1, 0.2, 0.6]
    assert pending[0].reward_data == {"latency_ms": 10.0}
    pending[0].prediction["ratio"] = -1.0  # copies: the tuner's requests are not touched
    assert tuner.get_tuning_requests()[0].prediction["ratio"] != -1.0
    tuner.set_reward(sum(p.reward for p in pending if p.reward is not None) / 3)
    twin.predict()
    twin.set_reward(0.3)
    assert tuner.get_tuning_requests() == []
    assert tuner.centre.tobytes() == twin.centre.tobytes()


BAD_REWARDS = [math.nan, math.inf, -math.inf, "0.5", None, True]


@pytest.mark.parametrize("name", list(LEARNERS))
def test_bad_rewards_are_refused_and_nothing_changes(name: str) -> None:
    """D3: NaN and infinite rewards are refused (upstream accepts them and poisons the state); so are non-numbers.
    An unknown request id is refused. In every case the state, pending requests included, is unchanged."""
    tuner, ctx = LEARNERS[name](), CTX.get(name)
    for _ in range(3):  # mid-run, and for BlueFin f=2 mid-pair
        tuner.predict(ctx)
        tuner.set_reward(0.4, ctx or "")
    _, rid = tuner.predict(ctx)
    before = _state(tuner)
    for bad in BAD_REWARDS:
        with pytest.raises(ValueError, match="reward"):
            tuner.set_reward(bad, ctx or "")
        if bad is not None:
            with pytest.raises(ValueError, match="reward"):
                tuner.store_reward(rid, bad)
        assert _state(tuner) == before
    with pytest.raises(UnknownRequestError, match="no pending request with id 'nope'"):
        tuner.store_reward("nope", 0.5)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        tuner.store_reward(rid, 0.5, {"when": object()})
    assert _state(tuner) == before
    tuner.set_reward(0.4, ctx or "")  # still usable


@pytest.mark.parametrize("name", [n for n in LEARNERS if n != "autoscope"])
def test_a_tuner_without_contexts_refuses_one(name: str) -> None:
    """Upstream accepts a context here and then mixes several contexts' requests into one learner; we refuse."""
    tuner = LEARNERS[name]()
    with pytest.raises(ValueError, match="not contextual"):
        tuner.predict({"host": "a"})
    assert tuner.get_tuning_requests() == []
    with pytest.raises(ValueError, match="reward=None is only for"):
        tuner.predict()
        tuner.set_reward(None)


def test_context_ids_follow_upstream() -> None:
    data = {"sku": "D8", "cluster": "eastus-7", "load": 0.63}
    expected = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    assert context_id(data) == expected == Context(data).id
    assert context_id({"load": 0.63, "cluster": "eastus-7", "sku": "D8"}) == expected  # key order does not matter
    assert context_id(None) == "" == Context().id
    with pytest.raises(ValueError, match="JSON-serialisable"):
        context_id({"x": object()})


def test_contexts_have_independent_pending_requests() -> None:
    """Several contexts can have requests in flight at once (AutoScope relies on it); set_reward accepts the context
    as its id, a Context or its data."""
    tuner = AutoScope(NUMERIC, features=[{"name": "job", "values": ["a", "b"]}], height=1, internal_weights=[[1, -1]])
    tuner.predict({"job": "a"})
    b, _ = tuner.predict(Context({"job": "b"}))
    assert len(tuner.get_tuning_requests()) == 2
    assert len(tuner.get_tuning_requests({"job": "a"})) == 1
    tuner.set_reward(0.1, context_id({"job": "a"}))
    assert [r.context.data for r in tuner.get_tuning_requests()] == [{"job": "b"}]
    assert tuner.predict({"job": "b"})[0] == b  # still pending: same configuration
    tuner.set_reward(0.2, Context({"job": "b"}))
    with pytest.raises(NoPendingRequestError, match="context id"):
        tuner.set_reward(0.2, {"job": "b"})
    with pytest.raises(ValueError, match="needs a context"):
        tuner.predict()


def test_identity_returns_the_current_configuration() -> None:
    params = NUMERIC + CATEGORICAL
    tuner = create("identity", params)
    assert isinstance(tuner, Identity)
    for i in range(3):
        config, rid = tuner.predict({"any": "context"})
        assert config == {p.name: p.val for p in params} and rid == ""
        tuner.store_reward(rid, 0.5)
        tuner.set_reward(None if i else 0.5)
    assert tuner.iteration == 3 and tuner.get_tuning_requests() == []
    with pytest.raises(ValueError, match="finite"):
        tuner.set_reward(math.nan)
    assert tuner.iteration == 3


def test_uniform_random_draws_on_the_grid() -> None:
    """D7: every value is on its parameter's step grid (upstream ignores step); with no steps (integers of step 1) the
    draws are upstream's: Python's random.Random(seed), one call per parameter in order."""
    stepped = [Real("r", 0.3, 0.1, 0.7, step=0.1), Integer("i", 4, 0, 40, step=4), Categorical("c", "a", ["a", "b"])]
    tuner = UniformRandom(stepped, random_seed=2)
    seen = set()
    for _ in range(300):
        config, rid = tuner.predict()
        assert rid == ""
        assert config["i"] % 4 == 0 and 0 <= config["i"] <= 40
        q = (config["r"] - 0.1) / 0.1
        assert abs(q - round(q)) < 1e-9 and 0.1 <= config["r"] <= 0.7
        seen.add(config["r"])
        tuner.set_reward(0.0)
    assert len(seen) == 7  # every grid point, ends included
    plain = [Real("r", 0.5, 0.0, 2.0), Integer("i", 3, 1, 9), Categorical("c", "a", ["a", "b", "c"])]
    tuner, rng = UniformRandom(plain, random_seed=9), random.Random(9)
    for _ in range(50):
        expected = {"r": rng.uniform(0.0, 2.0), "i": rng.randint(1, 9), "c": rng.choice(("a", "b", "c"))}
        assert tuner.predict()[0] == expected


def test_exponential_weights_refuse_an_overflowing_reward_without_changing() -> None:
    """Upstream raises OverflowError half-way through the update (after r_min changed); we refuse it up front."""
    tuner = ExponentialWeights(CATEGORICAL, random_seed=0)
    tuner.predict()
    before = _state(tuner)
    with pytest.raises(ValueError, match="too large"):
        tuner.set_reward(1e6)
    assert _state(tuner) == before
    tuner.set_reward(0.5)


def test_unknown_algorithm_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown online algorithm 'ddpg'"):
        create("ddpg", NUMERIC)
    with pytest.raises(ValueError, match="feedback must be 1"):
        BlueFin(NUMERIC, feedback=3)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        BlueFin(NUMERIC, optimizer_args={"eta": object()})
    with pytest.raises(ValueError, match="categorical_algorithm must be one of"):
        HybridSolver(NUMERIC, categorical_algorithm="slates")
    with pytest.raises(TypeError):
        HybridSolver(NUMERIC, random_seed=1)  # type: ignore[call-arg]  # the hybrid has no seed, as upstream


def test_the_documented_example_runs() -> None:
    """docs/online-tuners.md's example is code that works, not a sketch."""
    from tests.conftest import REPO

    text = (REPO / "docs" / "online-tuners.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/online-tuners.md", "exec"), {})
