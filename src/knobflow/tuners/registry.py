"""Tuners by name."""

from __future__ import annotations

from typing import Any

from knobflow.tuners.base import Tuner


def names() -> list[str]:
    from knobflow.tuners.online_adapter import KINDS
    from knobflow.tuners.optuna import SAMPLERS

    return sorted([*SAMPLERS, "identity", "auto", "morris", *KINDS])


def sequential() -> list[str]:
    """Tuners that must see each trial's result before proposing the next: they cannot run
    ``parallel`` trials (the online tuners, whose rounds are a sequence, and the morris design,
    whose trajectories are built one step at a time)."""
    from knobflow.tuners.online_adapter import KINDS

    return sorted(["morris", *KINDS])


def describe() -> dict[str, str]:
    """Each tuner's one-line description, with what it needs when that is not installed."""
    from knobflow.tuners.online_adapter import KINDS
    from knobflow.tuners.optuna import SAMPLERS, missing_modules

    out = {
        "identity": "the baseline only: every trial runs the defaults (noise measurement, a do-nothing peer)",
        "auto": "the default: baseline, a random start, then a Gaussian process over the mixed space with "
        "expected improvement and local refinement of the best configurations (TPE for several objectives)",
        "morris": "a screening design for knobflow select: one-at-a-time trajectories (Morris elementary "
        "effects), the first from the baseline",
    }
    out.update({name: kind.summary for name, kind in KINDS.items()})
    for name, spec in SAMPLERS.items():
        missing = missing_modules(name)
        out[name] = spec.summary + (
            f" [needs {', '.join(missing)}: pip install 'knobflow[{spec.extra}]']" if missing else ""
        )
    return dict(sorted(out.items()))


def create(
    name: str,
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Tuner:
    """The tuner called ``name``. ``defaults`` (the baseline configuration) is used by ``identity``."""
    from knobflow.tuners.online_adapter import KINDS, OnlineAdapter
    from knobflow.tuners.optuna import SAMPLERS, IdentityTuner, OptunaTuner

    if name == "identity":
        return IdentityTuner(defaults=dict(defaults or {}))
    if name == "auto":
        from knobflow.tuners.auto import AutoTuner

        return AutoTuner(seed=seed, options=dict(options or {}))
    if name == "morris":
        from knobflow.tuners.screening import MorrisTuner

        return MorrisTuner(seed=seed, options=dict(options or {}))
    if name in KINDS:
        return OnlineAdapter(name=name, seed=seed, options=dict(options or {}))
    if name not in SAMPLERS:
        raise ValueError(f"unknown tuner {name!r}; known: {', '.join(names())}")
    return OptunaTuner(name=name, seed=seed, options=dict(options or {}))


def check(name: str, options: dict[str, Any], distributions: dict[str, Any], *, objectives: int = 1) -> str | None:
    """Why tuner ``name`` cannot run here with ``options`` on this space (and this many objectives),
    or None when it can. A message about the options starts with "options"."""
    from knobflow.tuners import online_adapter
    from knobflow.tuners.optuna import SAMPLERS, missing_modules

    if name in online_adapter.KINDS:
        return online_adapter.problem(name, options, distributions, objectives)
    if name == "identity":
        return "the identity tuner takes no options" if options else None
    if name == "auto":
        from knobflow.tuners.auto import AutoTuner

        try:
            AutoTuner(options=dict(options))
        except ValueError as exc:
            return f"options not accepted by the auto tuner: {exc}"
        return None
    if name == "morris":
        from knobflow.tuners.screening import MorrisTuner

        try:
            MorrisTuner(options=dict(options))
        except ValueError as exc:
            return f"options not accepted by the morris tuner: {exc}"
        return None
    spec = SAMPLERS[name]
    missing = missing_modules(name)
    if missing:
        return (
            f"the {name} tuner needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: pip install 'knobflow[{spec.extra}]'"
        )
    try:
        spec.factory(0, dict(options), distributions)
    except (TypeError, ValueError) as exc:
        return f"options not accepted by the {name} tuner: {exc}"
    return None
