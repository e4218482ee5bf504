"""Tuners by name."""

from __future__ import annotations

from typing import Any

from knobflow.tuners.base import Tuner


def names() -> list[str]:
    from knobflow.tuners.optuna import SAMPLERS

    return sorted(SAMPLERS)


def create(name: str, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Tuner:
    from knobflow.tuners.optuna import SAMPLERS, OptunaTuner

    if name not in SAMPLERS:
        raise ValueError(f"unknown tuner {name!r}; known: {', '.join(names())}")
    return OptunaTuner(name=name, seed=seed, options=dict(options or {}))


def check(name: str, options: dict[str, Any]) -> str | None:
    """Return why ``options`` are not valid for tuner ``name``, or None when they are."""
    from knobflow.tuners.optuna import SAMPLERS

    try:
        SAMPLERS[name](0, dict(options))
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None
