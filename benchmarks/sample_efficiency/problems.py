"""The benchmark problems by name, and which of them can run here."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from benchmarks.sample_efficiency import bbob, hpolib
from benchmarks.sample_efficiency.problem import Problem
from benchmarks.sample_efficiency.simulator import JvmSimulator

# Noise levels (log-normal sigma) of the simulator's two instances.
JVM_NOISE = {"jvm-sim": 0.04, "jvm-sim-constrained": 0.08}


def _factories() -> dict[str, tuple[Callable[[], Problem], Callable[[], str | None]]]:
    out: dict[str, tuple[Callable[[], Problem], Callable[[], str | None]]] = {}
    for short in hpolib.DATASETS:
        out[f"hpolib-{short}"] = (lambda s=short: hpolib.HPOLib(s)), hpolib.available  # type: ignore[misc]
    for f in bbob.FUNCTIONS:
        name = f"bbob-mixint-f{f:02d}-d{bbob.DIMENSION}"
        out[name] = (lambda f=f: bbob.BbobMixint(f)), bbob.available  # type: ignore[misc]
    out["jvm-sim"] = (lambda: JvmSimulator(constrained=False, noise=JVM_NOISE["jvm-sim"])), lambda: None
    out["jvm-sim-constrained"] = (
        (lambda: JvmSimulator(constrained=True, noise=JVM_NOISE["jvm-sim-constrained"])),
        lambda: None,
    )
    return out


def names() -> list[str]:
    """Every problem, runnable here or not."""
    return list(_factories())


def unavailable(name: str) -> str | None:
    """Why problem ``name`` cannot run here (a package is missing), or None."""
    factories = _factories()
    if name not in factories:
        return f"unknown problem {name!r}; known: {', '.join(factories)}"
    return factories[name][1]()


@cache
def get(name: str) -> Problem:
    """Problem ``name`` (one instance per process: the HPOLib tables and COCO suites are loaded once)."""
    reason = unavailable(name)
    if reason:
        raise ValueError(f"{name}: {reason}")
    return _factories()[name][0]()
