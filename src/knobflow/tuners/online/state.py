"""The persisted state of an online tuner: explicit, versioned JSON (D9; spec section 8.3).

Upstream pickles the whole object. We write a plain dictionary instead, one that ``json.dumps``
accepts with ``allow_nan=False`` and that ``json.loads`` gives back unchanged, because the state of
a continuous-tuning run lives in a store (a database row, an Airflow variable) for months, across
upgrades of knobflow and numpy, and must be readable by whatever reads that store:

* floats are written as JSON numbers: Python writes the shortest ``repr`` that reads back to the
  same double, so they round-trip exactly; +inf (EW's initial smallest reward) is written as null;
* numpy arrays are lists of floats (of lists, for a matrix);
* a numpy RNG is its ``bit_generator.state`` with the two 128-bit integers of PCG64 as decimal
  strings (JSON readers outside Python lose precision on integers above 2**53);
* a Python ``random.Random`` (uniform random) is its ``getstate()`` as lists.

The document's envelope (written by :meth:`knobflow.tuners.online.base.OnlineTuner.dump`)::

    {"format": "knobflow.online-tuner", "version": 1, "algorithm": "bluefin",
     "parameters": [{"type": "real", "name": ..., ...}], "args": {...constructor arguments...},
     "iteration": 0, "pending": [...requests...], "state": {...the algorithm's own fields...}}

A reader refuses another ``format``, a ``version`` it does not know, or another algorithm, with a
:class:`StateError` that says which; it never guesses.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

FORMAT = "knobflow.online-tuner"
VERSION = 1


class StateError(ValueError):
    """A state document cannot be loaded: wrong format, version or algorithm, or malformed."""


def num(x: Any) -> float:
    """A finite float read back from a document (ints are accepted: JSON writes 0.0 as 0.0, but be lenient)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise StateError(f"expected a number, got {x!r}")
    out = float(x)
    if not math.isfinite(out):
        raise StateError(f"expected a finite number, got {x!r}")
    return out


def inf_to_none(x: float) -> float | None:
    return None if x == math.inf else float(x)


def none_to_inf(x: Any) -> float:
    return math.inf if x is None else num(x)


def integer(x: Any, lo: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise StateError(f"expected an integer, got {x!r}")
    if lo is not None and x < lo:
        raise StateError(f"expected an integer >= {lo}, got {x!r}")
    return x


def array(x: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A float64 array of the given shape, every entry finite."""
    try:
        out = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise StateError(f"expected an array of numbers: {e}") from None
    if out.shape != shape:
        raise StateError(f"expected an array of shape {shape}, got {out.shape}")
    if not np.isfinite(out).all():
        raise StateError("array entries must be finite")
    return out


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64":  # default_rng is always PCG64; guard against a swapped generator
        raise StateError(f"cannot persist bit generator {st.get('bit_generator')!r}")
    return {
        "bit_generator": "PCG64",
        "state": str(st["state"]["state"]),
        "inc": str(st["state"]["inc"]),
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def rng_from_state(d: Any) -> np.random.Generator:
    if not isinstance(d, dict) or d.get("bit_generator") != "PCG64":
        raise StateError(f"expected a PCG64 generator state, got {d!r}")
    try:
        st = {
            "bit_generator": "PCG64",
            "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": integer(d["has_uint32"]),
            "uinteger": integer(d["uinteger"]),
        }
        bg = np.random.PCG64()
        bg.state = st  # type: ignore[assignment]
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"malformed generator state: {e}") from None
    return np.random.Generator(bg)


def py_random_state(r: random.Random) -> list[Any]:
    version, internal, gauss_next = r.getstate()
    return [version, list(internal), gauss_next]


def py_random_from_state(d: Any) -> random.Random:
    try:
        version, internal, gauss_next = d
        r = random.Random()
        r.setstate((version, tuple(internal), gauss_next))
    except (TypeError, ValueError) as e:
        raise StateError(f"malformed random.Random state: {e}") from None
    return r
