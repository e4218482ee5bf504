"""The online tuners' parameters (spec section 2): validation with errors that name the parameter and the field, the
transform to internal units and back, and property 1 of section 11 (round trip, bounds and grid of every prediction,
constants never reach an algorithm)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from knobflow.tuners.online import (
    BlueFin,
    Categorical,
    ExponentialWeights,
    HybridSolver,
    Integer,
    ParameterError,
    Real,
    UniformRandom,
    create,
)
from knobflow.tuners.online.params import as_parameter, as_parameters, to_user, transform


def _random_parameter(rng: random.Random, i: int) -> Any:
    kind = rng.choice(["int", "int-step", "real", "real-step", "cat", "const-int", "const-real", "const-cat"])
    name = f"p{i}"
    if kind in ("int", "int-step"):
        step = 1 if kind == "int" else rng.randint(2, 7)
        lo, n = rng.randint(-50, 50), rng.randint(1, 40)
        return Integer(name, lo + step * rng.randint(0, n), lo, lo + step * n, step=step)
    if kind == "real":
        lo = rng.uniform(-100, 100)
        hi = lo + rng.choice([1e-3, 0.7, 3.0, 250.0])
        return Real(name, rng.choice([lo, hi, rng.uniform(lo, hi)]), lo, hi)
    if kind == "real-step":
        step = rng.choice([0.1, 0.25, 0.05, 3.0, 1e-3])
        lo, n = rng.choice([0.0, 0.1, -2.5, 7.0]), rng.randint(1, 30)
        return Real(name, lo + step * rng.randint(0, n), lo, lo + step * n, step=step)
    if kind == "cat":
        cats = [f"c{j}" for j in range(rng.randint(2, 5))]
        return Categorical(name, rng.choice(cats), cats)
    if kind == "const-int":
        return Integer(name, 7, 7, 7)
    if kind == "const-real":
        return Real(name, 0.5, 0.5, 0.5)
    return Categorical(name, "only", ["only"])


def _on_grid(p: Any, v: Any) -> bool:
    if isinstance(p, Categorical):
        return v in p.categories
    if isinstance(p, Integer):
        return isinstance(v, int) and not isinstance(v, bool) and p.min <= v <= p.max and (v - p.min) % p.step == 0
    if not (isinstance(v, float) and p.min <= v <= p.max):
        return False
    if p.step is None:
        return True
    q = (v - p.min) / p.step
    return abs(q - round(q)) <= 1e-9 * max(1.0, abs(q))


def test_transform_round_trips_and_maps_the_ends_exactly() -> None:
    """Property 1: inverse(transform(val)) == val; index 0 -> min and index N (unit 1.0) -> max, exactly. An interior
    real comes back within one rounding of the affine map (2 * 0.1 + 0.1 is 0.30000000000000004)."""
    rng = random.Random(0)
    for i in range(2000):
        p = _random_parameter(rng, i)
        t = transform(p)
        assert transform(t) == t  # idempotent: the hybrid's sub-tuners work in internal units
        back = to_user(p, t.val)
        if isinstance(p, Real) and not p.is_constant:
            assert isinstance(back, float)
            assert abs(back - p.val) <= 1e-12 * (p.max - p.min)
            if p.val in (p.min, p.max):
                assert back == p.val
        else:
            assert back == p.val and type(back) is type(p.val)
        if isinstance(p, Categorical):
            continue
        if p.is_constant:
            assert (t.min, t.max, t.val) == (0, 0, 0)
            continue
        top = 1.0 if isinstance(t, Real) else t.max
        assert to_user(p, 0) == p.min and to_user(p, top) == p.max
        assert type(to_user(p, 0)) is type(p.min)


def test_transform_shapes() -> None:
    assert transform(Integer("i", 30, 10, 110, step=10)) == Integer("i", 2, 0, 10)
    assert transform(Real("r", 2.0, 1.0, 5.0)) == Real("r", 0.25, 0.0, 1.0)
    assert transform(Real("s", 0.3, 0.1, 0.7, step=0.1)) == Integer("s", 2, 0, 6)
    assert transform(Real("c", 4.0, 4.0, 4.0)) == Integer("c", 0, 0, 0)
    assert to_user(Real("s", 0.3, 0.1, 0.7, step=0.1), 6) == 0.7  # 6 * 0.1 + 0.1 would be 0.7000000000000001
    assert to_user(Integer("i", 30, 10, 110, step=10), 2.5) == 30  # round half to even
    assert to_user(Integer("i", 30, 10, 110, step=10), 3.5) == 50


def test_every_prediction_is_in_bounds_on_the_grid_and_constants_never_reach_the_algorithm() -> None:
    """Property 1: predictions of every algorithm lie in [min, max] on the step grid, integers come back as int, and
    constants come back as their val without being part of the algorithm's parameters."""
    rng = random.Random(1)
    for case in range(30):
        params = [_random_parameter(rng, i) for i in range(rng.randint(2, 7))]
        params.append(Integer("always", 3, 3, 3))
        numeric = [p for p in params if not isinstance(p, Categorical)]
        categorical = [p for p in params if isinstance(p, Categorical)]
        tuners: list[Any] = [
            HybridSolver(params, numerical_algorithm_args={"feedback": 2, "random_seed": case, "eta": 0.2}),
            UniformRandom(params, random_seed=case),
            BlueFin(numeric, feedback=1, delta=0.5, eta=0.3, optimizer="sgd", random_seed=case),
        ]
        if categorical:
            tuners.append(ExponentialWeights(categorical, random_seed=case))
        for tuner in tuners:
            constants = {p.name for p in tuner.raw_params if p.is_constant}
            assert {p.name for p in tuner.params}.isdisjoint(constants)
            for sub in (getattr(tuner, "categorical", None), getattr(tuner, "numerical", None)):
                if sub is not None:
                    assert {p.name for p in sub.params}.isdisjoint(constants)
            for _ in range(60):
                config, _ = tuner.predict()
                assert list(config) == [p.name for p in tuner.raw_params]  # the user's order
                for p in tuner.raw_params:
                    assert _on_grid(p, config[p.name]), (p, config[p.name])
                    if p.is_constant:
                        assert config[p.name] == p.val
                tuner.set_reward(rng.uniform(-1, 1))


def test_a_step_that_divides_the_range_up_to_rounding_is_accepted() -> None:
    """D4: upstream tests divisibility with exact float arithmetic, so it rejects this obviously valid step."""
    assert not ((0.7 - 0.3) / 0.1).is_integer()  # what upstream's check sees
    p = Real("ratio", 0.3, 0.1, 0.7, step=0.1)
    assert transform(p) == Integer("ratio", 2, 0, 6)
    with pytest.raises(ParameterError, match=r"step 0\.25 must divide"):
        Real("ratio", 0.3, 0.1, 0.7, step=0.25)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Integer("workers", 5, 10, 1), "parameter 'workers': min must be <= max"),
        (lambda: Integer("workers", 11, 1, 10), "parameter 'workers': val must be within"),
        (lambda: Integer("workers", 3, 0, 10, step=2), "parameter 'workers': step 2 must divide"),
        (lambda: Integer("workers", 1.5, 0, 10), "parameter 'workers': val must be an integer"),
        (lambda: Integer("workers", True, 0, 10), "parameter 'workers': val must be an integer"),
        (lambda: Integer("workers", 2, 0, 10, step=0), "parameter 'workers': step must be at least 1"),
        (lambda: Integer("workers", 2, 0, "10"), "parameter 'workers': max must be an integer"),
        (lambda: Real("ratio", math.nan, 0.0, 1.0), "parameter 'ratio': val must not be NaN"),
        (lambda: Real("ratio", 0.5, 0.0, math.inf), "parameter 'ratio': max must be finite"),
        (lambda: Real("ratio", 0.5, 0.0, 1.0, step=0.0), "parameter 'ratio': step must be positive"),
        (lambda: Real("ratio", 0.5, 0.0, 1.0, step=math.inf), "parameter 'ratio': step must be finite"),
        (lambda: Real("ratio", 2.0, 0.0, 1.0), "parameter 'ratio': val must be within"),
        (lambda: Real("ratio", "0.5", 0.0, 1.0), "parameter 'ratio': val must be a number"),
        (
            lambda: Categorical("gc", "ZGC", ["G1", "Parallel"]),
            "parameter 'gc': val 'ZGC' is not one of the categories",
        ),
        (lambda: Categorical("gc", "G1", ["G1", "G1"]), "parameter 'gc': categories must be distinct"),
        (lambda: Categorical("gc", "G1", []), "parameter 'gc': categories must not be empty"),
        (lambda: Categorical("gc", "G", "G1"), "parameter 'gc': categories must be a list of strings"),
        (lambda: Categorical("gc", "1", ["1", 2]), "parameter 'gc': categories must be strings"),
        (lambda: Categorical("", "a", ["a"]), "parameter name must be a non-empty string"),
        (lambda: as_parameter({"type": "float", "name": "x"}), "type must be one of"),
        (lambda: as_parameter({"type": "real", "name": "x", "val": 1, "min": 0}), "parameter 'x': missing field 'max'"),
        (
            lambda: as_parameter({"type": "integer", "name": "x", "val": 1, "min": 0, "max": 2, "lo": 0}),
            "parameter 'x': unknown field 'lo'",
        ),
        (lambda: as_parameter(3.0), "expected Real, Integer, Categorical or a dict"),
        (lambda: as_parameters([Real("x", 0, 0, 1), Integer("x", 0, 0, 1)]), "parameter 'x': duplicate"),
        (lambda: as_parameters([]), "the parameter list is empty"),
        (lambda: BlueFin([Categorical("gc", "a", ["a", "b"])]), "parameter 'gc': bluefin tunes only Integer, Real"),
        (lambda: ExponentialWeights([Real("x", 0, 0, 1)]), "parameter 'x': exponential_weights tunes only Categorical"),
    ],
)
def test_malformed_parameters_are_refused_with_a_clear_error(make: Any, message: str) -> None:
    with pytest.raises(ParameterError) as err:
        make()
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_dictionary_form_round_trips() -> None:
    """OPPerTune's dictionary form (``{"type": "real", ...}``) is accepted wherever a parameter is, and written back."""
    params = [
        Real("r", 0.3, 0.1, 0.7, step=0.1),
        Integer("i", 4, 0, 8, step=2),
        Categorical("c", "b", ["a", "b"]),
        Real("u", 0.5, 0.0, 1.0),
    ]
    dicts = [p.to_dict() for p in params]
    assert [as_parameter(d) for d in dicts] == params
    assert dicts[0] == {"type": "real", "name": "r", "val": 0.3, "min": 0.1, "max": 0.7, "step": 0.1}
    assert Integer("i", 4.0, 0.0, 8.0, step=2.0) == Integer("i", 4, 0, 8, step=2)  # integer-valued floats convert
    tuner = create("hybrid_solver", dicts)
    assert tuner.raw_params == tuple(params)
