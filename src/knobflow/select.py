"""Which knobs to tune: rank tunables by importance, then write a reduced experiment file.

OPPerTune's first step: out of dozens of knobs, a few carry most of the effect, and tuning only
those reaches a good configuration in far fewer trials. ``knobflow select`` ranks tunables from an
experiment's trials: by default from the relevance of each knob in the Gaussian process that
``auto`` fits (the inverse squared length scale of its dimension: a knob whose changes move the
objective gets a short length scale), or with one of Optuna's importance evaluators: fANOVA (a
random forest's functional ANOVA) or PED-ANOVA (how the best trials' values differ from all).
On the 31-knob simulator the GP relevance finds the important knobs from fewer trials than both
(benchmarks/sample_efficiency; tests/unit/test_select.py) and shows the uncertainty of the ranking by bootstrapping
the trials: each tunable's mean importance, its standard deviation, and how often it lands in the
top k. The reduced file keeps the top k tunables and pins every other one at its default (a
categorical with that single value, so roles, conditions and constraints keep working).

When an experiment has too few trials to rank from, :func:`screening_file` plans a screening run:
the same experiment under another name, with a space-filling tuner (``qmc``, else ``random``)
and a budget that scales with the number of tunables.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

EVALUATORS = ("gp", "fanova", "ped-anova")


class SelectError(ValueError):
    """Ranking is impossible (too few trials, a missing package); the message says what to do."""


@dataclass
class Ranking:
    name: str
    importance: float  # median over bootstrap resamples (each normalised to sum to 1)
    sd: float
    top_k_share: float  # fraction of resamples in which the tunable is in the top k
    ranked: bool = True  # False for conditional tunables (not active in every trial): not ranked
    low: float = math.nan  # 10th percentile over the resamples
    high: float = math.nan  # 90th percentile


def min_trials(n_tunables: int) -> int:
    """Trials a ranking needs: at least one per tunable (a screening plans 1.5 per tunable)."""
    return max(16, n_tunables)


def screening_budget(n_tunables: int) -> int:
    return max(24, math.ceil(1.5 * n_tunables))


def _evaluator(name: str, seed: int) -> Any:
    if name == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.2)
    if name == "fanova":
        if importlib.util.find_spec("sklearn") is None:
            raise SelectError("the fanova evaluator needs scikit-learn: pip install scikit-learn")
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    raise SelectError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")


def _gp_relevance(trials: list[FrozenTrial], names: list[str], maximize: bool) -> dict[str, float]:
    """Each knob's main effect in auto's Gaussian process, normalised to sum 1.

    The GP is fitted to the (rank-transformed) values; a knob's main effect is the variance, over
    a grid of its values, of the model's mean prediction averaged over the measured configurations
    with that knob set to the grid value (a first-order Sobol index of the model, as fANOVA
    computes for a random forest)."""
    from knobflow.space import Param, Space
    from knobflow.tuners.auto import GP, Encoder, _copula, _sq_dists

    dists = {n: trials[0].distributions[n] for n in names}
    space = Space([Param(n, d, None, "stack") for n, d in dists.items()])
    enc = Encoder(space)
    u, c = enc.encode([{n: t.params[n] for n in names} for t in trials])
    y = np.array([t.values[0] if maximize else -t.values[0] for t in trials])
    # One prior for every knob (auto's shorter prior for categorical knobs would rank them up unseen).
    gp = GP(d=len(names))
    gp.fit(_sq_dists(u, c, u, c), _copula(y))
    base_u, base_c = u[:48], c[:48]
    effects: dict[str, float] = {}
    for j, n in enumerate(enc.num):
        grid = np.linspace(0.0, 1.0, 9)
        bu = np.repeat(base_u, grid.size, axis=0)
        bu[:, j] = np.tile(grid, base_u.shape[0])
        bc = np.repeat(base_c, grid.size, axis=0)
        mean, _ = gp.predict(_sq_dists(bu, bc, u, c))
        effects[n] = float(mean.reshape(base_u.shape[0], grid.size).mean(axis=0).var())
    for j, n in enumerate(enc.cat):
        k = len(space.params[n].distribution.choices)  # type: ignore[attr-defined]
        bu = np.repeat(base_u, k, axis=0)
        bc = np.repeat(base_c, k, axis=0)
        bc[:, j] = np.tile(np.arange(k), base_c.shape[0])
        mean, _ = gp.predict(_sq_dists(bu, bc, u, c))
        effects[n] = float(mean.reshape(base_c.shape[0], k).mean(axis=0).var())
    total = sum(effects.values()) or 1.0
    return {n: effects[n] / total for n in names}


def usable_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Complete, feasible, single-valued trials (failures carry no value to rank with)."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.values is not None
        and len(t.values) == 1
        and not t.user_attrs.get("slo_violations")
    ]


def rank(
    trials: list[FrozenTrial],
    *,
    maximize: bool,
    names: list[str],
    k: int,
    evaluator: str = "gp",
    bootstrap: int = 30,
    seed: int = 0,
) -> list[Ranking]:
    """Rank ``names`` by importance over ``trials`` (bootstrapped ``bootstrap`` times)."""
    usable = usable_trials(trials)
    need = min_trials(len(names))
    if len(usable) < need:
        raise SelectError(
            f"{len(usable)} usable trials (complete, feasible); ranking {len(names)} tunables needs at least {need}. "
            "Run a screening first (knobflow select --screen writes its experiment file)."
        )
    common = [n for n in names if all(n in t.params for t in usable)]
    conditional = [n for n in names if n not in common]
    rng = np.random.default_rng(seed)
    direction: Literal["maximize", "minimize"] = "maximize" if maximize else "minimize"
    samples: list[dict[str, float]] = []
    for b in range(max(1, bootstrap)):
        pick = usable if b == 0 else [usable[i] for i in rng.integers(0, len(usable), len(usable))]
        if evaluator == "gp":
            samples.append(_gp_relevance(pick, common, maximize))
            continue
        study = optuna.create_study(direction=direction)
        study.add_trials(pick)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                imp = optuna.importance.get_param_importances(
                    study, evaluator=_evaluator(evaluator, seed + b), params=common, normalize=True
                )
            except (RuntimeError, ValueError, ZeroDivisionError):
                continue  # a degenerate resample (every value equal): skip it
        samples.append({n: float(imp.get(n, 0.0)) for n in common})
    if not samples:
        raise SelectError("every trial has the same value: nothing to rank")
    matrix = np.array([[s[n] for n in common] for s in samples])
    tops = np.zeros(len(common))
    for row in matrix:
        for j in np.argsort(-row)[:k]:
            tops[j] += 1
    out = [
        Ranking(
            n,
            float(np.median(matrix[:, j])),
            float(matrix[:, j].std()),
            float(tops[j] / len(matrix)),
            low=float(np.percentile(matrix[:, j], 10)),
            high=float(np.percentile(matrix[:, j], 90)),
        )
        for j, n in enumerate(common)
    ]
    out.sort(key=lambda r: (-r.importance, r.name))
    out += [Ranking(n, math.nan, math.nan, math.nan, ranked=False) for n in conditional]
    return out


def reduce(spec_data: dict[str, Any], keep: list[str], *, name: str | None = None) -> dict[str, Any]:
    """The experiment document with only ``keep`` tuned; every other tunable pinned at its default.

    A tunable that a kept one's condition depends on is kept too (the condition needs it to vary,
    else the kept tunable could be inactive forever)."""
    data = copy.deepcopy(spec_data)
    tunables = data["tunables"]
    by_name = {t["name"]: t for t in tunables}
    keep_set = set(keep)
    changed = True
    while changed:  # parents of kept conditional tunables
        changed = False
        for n in list(keep_set):
            when = by_name[n].get("when")
            parents = set(when) if isinstance(when, dict) else set()
            if isinstance(when, str):
                from knobflow.expr import compile_expr

                parents = set(compile_expr(when).names)
            for p in parents & set(by_name):
                if p not in keep_set:
                    keep_set.add(p)
                    changed = True
    for t in tunables:
        if t["name"] in keep_set:
            continue
        pinned = {
            "name": t["name"],
            "layer": t["layer"],
            "type": "categorical",
            "choices": [t["default"]],
            "default": t["default"],
            "description": f"pinned at its default by knobflow select (was {t['type']})",
        }
        if "when" in t and t["when"] is not None:
            pinned["when"] = t["when"]
        t.clear()
        t.update(pinned)
    data["name"] = name or f"{data['name']}-top{len(keep)}"
    data.pop("warm_start", None)
    return data


def screening_file(spec_data: dict[str, Any], *, trials: int | None = None) -> dict[str, Any]:
    """An experiment document for a screening run of ``spec_data``'s space."""
    data = copy.deepcopy(spec_data)
    n = len(data["tunables"])
    data["name"] = f"{data['name']}-screening"
    qmc_ok = importlib.util.find_spec("scipy") is not None
    data["tuner"] = {"name": "qmc" if qmc_ok else "random", "seed": 0}
    budget = dict(data.get("budget") or {})
    budget["trials"] = trials or screening_budget(n)
    for rule in ("target", "patience"):
        budget.pop(rule, None)
    data["budget"] = budget
    data.pop("warm_start", None)
    data["description"] = f"Screening run for knobflow select ({budget['trials']} space-filling trials)."
    return data


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def reduce_space(space: Any, keep: list[str]) -> Any:
    """The :class:`knobflow.space.Space` counterpart of :func:`reduce`: tunables not in ``keep``
    (nor parents of kept ones) become single-choice categoricals at their defaults."""
    from optuna.distributions import CategoricalDistribution

    from knobflow.space import Param, Space

    keep_set = set(keep)
    changed = True
    while changed:
        changed = False
        for n in list(keep_set):
            cond = space.params[n].condition
            for parent in (cond.parents if cond else set()) - keep_set:
                keep_set.add(parent)
                changed = True
    params = [
        p
        if p.name in keep_set
        else Param(p.name, CategoricalDistribution((p.default,)), p.default, p.layer, p.condition)
        for p in space.params.values()
    ]
    return Space(params, space.constraints)
