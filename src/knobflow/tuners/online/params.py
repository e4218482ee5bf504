"""Parameters of the online tuners (spec section 2): ``Real``, ``Integer`` and ``Categorical``.

These are the parameter objects OPPerTune users know, with the same fields (``name``, ``val``,
``min``, ``max``, ``step``, ``categories``) and the same dictionary form
(``{"type": "real", "name": ..., ...}``), so a parameter list written for OPPerTune works here.
Every problem is a :class:`ParameterError` (a ``ValueError``) whose message names the parameter
and the field, because these lists are usually built from an experiment file by hand.

Algorithms never see the user's units. :func:`transform` maps a non-constant numeric parameter to
one of two internal shapes: **unit**, a real in [0, 1] (a ``Real`` without a step), or **grid**,
an integer index in {0, ..., N} (an ``Integer``, or a ``Real`` with a step). :func:`to_user` maps
an internal value back. Constants (one category, or ``min == max``) never reach an algorithm.

Two choices where the spec (or float arithmetic) leaves room:

* D4: a ``Real``'s step must divide ``max - val`` and ``val - min``; we accept a quotient within
  1e-9 (relative to the quotient, at least 1e-9 absolute) of an integer, because ``0.3 / 0.1`` is
  not exactly 3 in floating point and upstream's exact test rejects such obviously valid steps.
* :func:`to_user` uses upstream's formulas (``x * step + min`` and ``x * (max - min) + min``) and
  then maps index 0 / N (unit 0.0 / 1.0) to ``min`` / ``max`` exactly and clamps into
  [min, max] (an index into [0, N]). Upstream can return ``max`` plus one ulp (``6 * 0.1 + 0.1 > 0.7``); the clamp only
  changes values that would fall outside the declared range, so it never changes a number that
  upstream returns inside it. An interior real can still differ from the value the user wrote by
  one rounding (``2 * 0.1 + 0.1 == 0.30000000000000004``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

STEP_TOLERANCE = 1e-9  # D4: relative tolerance for "the step divides the range"


class ParameterError(ValueError):
    """A parameter (or the parameter list) is malformed. The message names the parameter and field."""


def _where(name: Any) -> str:
    return f"parameter {name!r}"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ParameterError(f"parameter name must be a non-empty string, got {name!r}")
    return name


def _as_int(name: str, field: str, value: Any) -> int:
    """An int, or an integer-valued float (converted), as upstream accepts; never a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ParameterError(f"{_where(name)}: {field} must be an integer, got {value!r}")
    if isinstance(value, float | np.floating) and not (math.isfinite(value) and float(value).is_integer()):
        raise ParameterError(f"{_where(name)}: {field} must be an integer, got {value!r}")
    return int(value)


def _as_float(name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ParameterError(f"{_where(name)}: {field} must be a number, got {value!r}")
    out = float(value)
    if math.isnan(out):
        raise ParameterError(f"{_where(name)}: {field} must not be NaN")
    if math.isinf(out):
        raise ParameterError(f"{_where(name)}: {field} must be finite, got {out!r}")
    return out


def _near_integer(q: float) -> bool:
    return abs(q - round(q)) <= STEP_TOLERANCE * max(1.0, abs(q))


@dataclass(frozen=True, init=False)
class Categorical:
    """A string-valued parameter. ``val`` is the current (default) category."""

    type: ClassVar[str] = "categorical"
    name: str
    val: str
    categories: tuple[str, ...]

    def __init__(self, name: str, val: str, categories: Sequence[str]):
        name = _check_name(name)
        if isinstance(categories, str) or not isinstance(categories, Sequence):
            raise ParameterError(f"{_where(name)}: categories must be a list of strings, got {categories!r}")
        cats = tuple(categories)
        if not cats:
            raise ParameterError(f"{_where(name)}: categories must not be empty")
        for c in cats:
            if not isinstance(c, str):
                raise ParameterError(f"{_where(name)}: categories must be strings, got {c!r}")
        if len(set(cats)) != len(cats):
            dup = next(c for i, c in enumerate(cats) if c in cats[:i])
            raise ParameterError(f"{_where(name)}: categories must be distinct, {dup!r} appears twice")
        if not isinstance(val, str):
            raise ParameterError(f"{_where(name)}: val must be a string, got {val!r}")
        if val not in cats:
            raise ParameterError(f"{_where(name)}: val {val!r} is not one of the categories {list(cats)!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "val", val)
        object.__setattr__(self, "categories", cats)

    @property
    def is_constant(self) -> bool:
        return len(self.categories) == 1

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "val": self.val, "categories": list(self.categories)}


@dataclass(frozen=True, init=False)
class Integer:
    """An integer parameter on the grid ``min, min + step, ..., max``."""

    type: ClassVar[str] = "integer"
    name: str
    val: int
    min: int
    max: int
    step: int

    def __init__(self, name: str, val: int, min: int, max: int, step: int = 1):
        name = _check_name(name)
        v, lo, hi, s = (_as_int(name, f, x) for f, x in (("val", val), ("min", min), ("max", max), ("step", step)))
        if lo > hi:
            raise ParameterError(f"{_where(name)}: min must be <= max (got min={lo}, max={hi})")
        if not lo <= v <= hi:
            raise ParameterError(f"{_where(name)}: val must be within [min, max] (got val={v}, min={lo}, max={hi})")
        if s < 1:
            raise ParameterError(f"{_where(name)}: step must be at least 1, got {s}")
        if (v - lo) % s or (hi - v) % s:
            raise ParameterError(
                f"{_where(name)}: step {s} must divide val - min and max - val (val={v}, min={lo}, max={hi})"
            )
        for f, x in (("name", name), ("val", v), ("min", lo), ("max", hi), ("step", s)):
            object.__setattr__(self, f, x)

    @property
    def is_constant(self) -> bool:
        return self.min == self.max

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "val": self.val,
            "min": self.min,
            "max": self.max,
            "step": self.step,
        }


@dataclass(frozen=True, init=False)
class Real:
    """A real parameter on [min, max], continuous, or on the grid ``min + k * step`` when ``step`` is set."""

    type: ClassVar[str] = "real"
    name: str
    val: float
    min: float
    max: float
    step: float | None

    def __init__(self, name: str, val: float, min: float, max: float, step: float | None = None):
        name = _check_name(name)
        v, lo, hi = (_as_float(name, f, x) for f, x in (("val", val), ("min", min), ("max", max)))
        if lo > hi:
            raise ParameterError(f"{_where(name)}: min must be <= max (got min={lo!r}, max={hi!r})")
        if not lo <= v <= hi:
            raise ParameterError(
                f"{_where(name)}: val must be within [min, max] (got val={v!r}, min={lo!r}, max={hi!r})"
            )
        s: float | None = None
        if step is not None:
            s = _as_float(name, "step", step)
            if s <= 0:
                raise ParameterError(f"{_where(name)}: step must be positive, got {s!r}")
            if not (_near_integer((hi - v) / s) and _near_integer((v - lo) / s)):
                raise ParameterError(
                    f"{_where(name)}: step {s!r} must divide val - min and max - val "
                    f"(val={v!r}, min={lo!r}, max={hi!r}; tolerance {STEP_TOLERANCE:g} relative)"
                )
        for f, x in (("name", name), ("val", v), ("min", lo), ("max", hi), ("step", s)):
            object.__setattr__(self, f, x)

    @property
    def is_constant(self) -> bool:
        return self.min == self.max

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "val": self.val,
            "min": self.min,
            "max": self.max,
            "step": self.step,
        }


Parameter = Categorical | Integer | Real
_TYPES: dict[str, type[Parameter]] = {"categorical": Categorical, "integer": Integer, "real": Real}
_FIELDS = {
    "categorical": ("name", "val", "categories"),
    "integer": ("name", "val", "min", "max", "step"),
    "real": ("name", "val", "min", "max", "step"),
}
_REQUIRED = {"categorical": 3, "integer": 4, "real": 4}


def as_parameter(obj: Any, index: int | None = None) -> Parameter:
    """A parameter from a parameter object or its dictionary form (``{"type": "real", ...}``)."""
    if isinstance(obj, Categorical | Integer | Real):
        return obj
    where = f"parameters[{index}]" if index is not None else "parameter"
    if not isinstance(obj, Mapping):
        raise ParameterError(f"{where}: expected Real, Integer, Categorical or a dict, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind not in _TYPES:
        raise ParameterError(f"{where} ({obj.get('name')!r}): type must be one of {sorted(_TYPES)}, got {kind!r}")
    fields = _FIELDS[kind]
    unknown = sorted(set(obj) - set(fields) - {"type"})
    if unknown:
        raise ParameterError(f"{_where(obj.get('name'))}: unknown field {unknown[0]!r} for a {kind} parameter")
    missing = [f for f in fields[: _REQUIRED[kind]] if f not in obj]
    if missing:
        raise ParameterError(f"{_where(obj.get('name'))}: missing field {missing[0]!r}")
    return _TYPES[kind](**{f: obj[f] for f in fields if f in obj})


def as_parameters(parameters: Any) -> tuple[Parameter, ...]:
    """A validated, non-empty parameter list with distinct names (user order kept)."""
    if isinstance(parameters, Mapping | str) or not isinstance(parameters, Sequence | tuple | list):
        try:
            parameters = list(parameters)
        except TypeError:
            raise ParameterError(f"parameters must be a list, got {type(parameters).__name__}") from None
    params = tuple(as_parameter(p, i) for i, p in enumerate(parameters))
    if not params:
        raise ParameterError("the parameter list is empty")
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise ParameterError(f"{_where(p.name)}: duplicate parameter name")
        seen.add(p.name)
    return params


# Internal representation (spec 2.2) ----------------------------------------------------------


def transform(p: Parameter) -> Parameter:
    """The internal ("transformed") parameter: grid -> Integer(0..N), unit -> Real(0..1), categorical as is.

    Idempotent, so a sub-tuner (the hybrid's) built from transformed parameters works in internal
    units and its own :func:`to_user` is the identity.
    """
    if isinstance(p, Categorical):
        return p
    if p.is_constant:
        return Integer(p.name, 0, 0, 0)
    if isinstance(p, Integer):
        return Integer(p.name, (p.val - p.min) // p.step, 0, (p.max - p.min) // p.step)
    if p.step is None:
        return Real(p.name, (p.val - p.min) / (p.max - p.min), 0.0, 1.0)
    # round, not int: (max - min) / step may be 4.999999 for an exact 5
    return Integer(p.name, round((p.val - p.min) / p.step), 0, round((p.max - p.min) / p.step))


def converter(p: Parameter) -> Callable[[Any], Any]:
    """The function internal value -> user value of ``p`` (:func:`to_user`, specialised once per parameter)."""
    if p.is_constant:
        val = p.val
        return lambda x: val
    if isinstance(p, Categorical):
        return lambda x: x
    lo, hi = p.min, p.max
    if isinstance(p, Integer):
        n, step = (p.max - p.min) // p.step, p.step

        def integer(x: Any) -> int:
            # clamped to [0, N]: a probe leaves [0, 1] only in BlueFin's decay corner case (bluefin.py)
            return min(max(round(x), 0), n) * step + lo

        return integer
    if p.step is None:
        span = p.max - p.min

        def unit(x: Any) -> float:
            x = float(x)
            if x <= 0.0:
                return lo
            if x >= 1.0:
                return hi
            return min(hi, max(lo, float(x * span + lo)))

        return unit
    s, n = p.step, round((p.max - p.min) / p.step)

    def grid(x: Any) -> float:
        i = round(x)
        if i <= 0:
            return lo
        if i >= n:
            return hi
        return min(hi, max(lo, float(i * s + lo)))

    return grid


def to_user(p: Parameter, x: Any) -> Any:
    """The user's value for internal value ``x`` of parameter ``p`` (inverse of :func:`transform`)."""
    return converter(p)(x)
