"""Which knobs to tune: rank tunables by importance, then write a reduced experiment file.

OPPerTune's first step: out of dozens of knobs, a few carry most of the effect, and tuning only
those reaches a good configuration in fewer trials. ``knobflow select`` ranks tunables from an
experiment's trials and writes the experiment with only the top k tuned. Every choice below was
measured on the 31-knob simulator (benchmarks/sample_efficiency/simulator.py, which knows its 5
important knobs), 10 seeds on each of its two variants, with benchmarks/select/run.py; the tables
are in docs/performance.md ("Which knobs to tune").

**The screening run.** When an experiment has too few trials to rank from (or with ``--screen``),
:func:`screening_file` plans one: the same experiment under another name, tuner ``qmc``
(space-filling) and 4 x (k + 1) trials for k tunables (128 for 31). From 128 qmc trials the ``gp``
evaluator put all 5 important knobs in the top 8 in 8 of 10 screenings on each variant (the
undeclared-failure variant loses about 60% of random configurations to crashes); from 96 trials
in 4 and 9 of 10, from 192 in 10 and 10. A Morris design (``--design morris``, the ``morris``
tuner: one-at-a-time trajectories from the baseline, :mod:`knobflow.tuners.screening`) ranked by
its elementary effects did worse from 128 and 192 trials (5 and 2 of 10 at 128, 4 and 4 at 192;
ranked by the GP, 7 and 4 at 128): an elementary effect is the difference of two noisy
measurements and each trial informs one knob, while a model fitted to space-filling points uses
every trial for every knob. Morris was made for deterministic simulators; with 4-8% measurement
noise and 5 important knobs out of 31, the space-filling design wins. It stays available for
spaces where random configurations mostly crash (its trajectories only move from configurations
that ran): from 64 trials of the undeclared-failure variant it found all 5 in the top 8 in 3 or 4
of 10 screenings, where qmc left too few trials that ran to rank at all.

**Evaluators.** ``gp`` (the default, except for Morris trials): each knob's main effect in
``auto``'s Gaussian process, fitted to the logarithm of the values when they are all positive
(throughput, latency: effects and noise are relative; the rank transform used before got 6 of 10
instead of 7 at 128 trials on the undeclared-failure variant in an earlier run, and the same on
the constrained one), else to their ranks; a first-order Sobol index of the model. ``morris``
(the default for trials of a Morris screening): each knob's mu*, the mean absolute elementary
effect on the log values (raw values when some are not positive), normalised to sum 1, with
sigma, the effects' standard deviation (interactions, non-linearity); a step that crashed counts
as the worst value measured. Counting crashes that way put all 5 important knobs in the top 10 in
9 to 10 of 20 screenings of 128 trials, dropping those steps in 6 to 8 (the heap size loses the
effects of its large steps, which crash); logs, raw values and ranks did not differ measurably.
``fanova`` and ``ped-anova`` are Optuna's.

**The reduced file** keeps the top k tunables (default 8) and pins every other one, as a
categorical with a single value so roles, conditions and constraints keep working, at its value in
the best trial ranked from (``--pin best``, the default; a value that would make the new baseline
break a constraint stays at the default) or at its default (``--pin default``). Pinning at the
defaults was measured to make the reduced space worse than the full one: the knobs left out still
bound what the kept ones can reach (the simulator's default memory limit caps the heap), and
TPE on the top 5 never reached a normalized regret of 0.5 in 60 trials (median) where the full
space needed 34. Pinned at the best screening trial, the top 8 reached it in 8 trials (median;
10.5 against 18.5 on the constrained variant); the top 5 in 17 and 12.5.

**Uncertainty.** Every ranking is bootstrapped: the trials are resampled (for ``morris``, whole
trajectories), and each tunable shows its median importance, the 10-90% range and how often it
lands in the top k.
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

from knobflow.expr import compile_expr
from knobflow.space import parse_condition

MODEL_EVALUATORS = ("gp", "fanova", "ped-anova")  # rank any trials
EVALUATORS = (*MODEL_EVALUATORS, "morris")  # morris: trials of a Morris screening only
DEFAULT_TOP = 8  # knobflow select --top: measured on the simulator (module docstring)
SCREENING_PER_TUNABLE = 4  # the screening budget: 4 x (k + 1) trials for k tunables
SCREENING_DESIGN: Literal["qmc", "morris"] = "qmc"  # the screening's tuner (knobflow select --design)


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
    sigma: float = math.nan  # morris: standard deviation of the elementary effects (normalised like mu*)
    effects: int = 0  # morris: how many elementary effects were measured


def min_trials(n_tunables: int) -> int:
    """Trials a ranking needs: at least one per tunable (a screening plans 1.5 per tunable)."""
    return max(16, n_tunables)


def screening_budget(n_tunables: int) -> int:
    """The trials of a screening run: 4 x (k + 1) for k tunables (four Morris trajectories), at least 16."""
    return max(16, SCREENING_PER_TUNABLE * (n_tunables + 1))


def _evaluator(name: str, seed: int) -> Any:
    if name == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.2)
    if name == "fanova":
        if importlib.util.find_spec("sklearn") is None:
            raise SelectError("the fanova evaluator needs scikit-learn: pip install scikit-learn")
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    raise SelectError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")


def _scores(values: np.ndarray, maximize: bool) -> np.ndarray:
    """Objective values on the scale rankings use, larger is better: the logarithm when every value
    is positive (throughputs, latencies: effects and measurement noise are relative, and a log
    scale makes them additive and even), else normal scores of the ranks."""
    from scipy import stats

    if values.size and np.all(values > 0):
        out = np.log(values)
        return out if maximize else -out
    r = stats.rankdata(values if maximize else -values)
    return np.asarray(stats.norm.ppf((r - 0.5) / values.size))


def _gp_relevance(trials: list[FrozenTrial], names: list[str], maximize: bool) -> dict[str, float]:
    """Each knob's main effect in auto's Gaussian process, normalised to sum 1.

    The GP is fitted to the standardised :func:`_scores` of the values; a knob's main effect is
    the variance, over a grid of its values, of the model's mean prediction averaged over (up to 48,
    evenly picked) measured configurations with that knob set to the grid value (a first-order
    Sobol index of the model, as fANOVA computes for a random forest)."""
    from knobflow.space import Param, Space
    from knobflow.tuners.auto import GP, Encoder, _sq_dists

    dists = {n: trials[0].distributions[n] for n in names}
    space = Space([Param(n, d, None, "stack") for n, d in dists.items()])
    enc = Encoder(space)
    u, c = enc.encode([{n: t.params[n] for n in names} for t in trials])
    y = _scores(np.array([t.values[0] for t in trials]), maximize)
    y = (y - y.mean()) / (y.std() or 1.0)
    # One prior for every knob (auto's shorter prior for categorical knobs would rank them up unseen).
    gp = GP(d=len(names))
    gp.fit(_sq_dists(u, c, u, c), y)
    pick = np.unique(np.linspace(0, len(u) - 1, min(48, len(u))).round().astype(int))
    base_u, base_c = u[pick], c[pick]
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


def is_screening(trials: list[FrozenTrial]) -> bool:
    """Whether ``trials`` come from a Morris screening (trials carry the design's bookkeeping)."""
    from knobflow.tuners.screening import ATTR

    return any(ATTR in t.system_attrs for t in trials)


def default_evaluator(trials: list[FrozenTrial]) -> str:
    """``morris`` for the trials of a Morris screening, else ``gp``."""
    return "morris" if is_screening(trials) else "gp"


def elementary_effects(
    trials: list[FrozenTrial],
    *,
    maximize: bool,
    transform: Literal["auto", "log", "raw", "rank"] = "auto",
    failures: Literal["worst", "drop"] = "worst",
) -> dict[int, list[tuple[str, float, float | None]]]:
    """The elementary effects of a Morris screening, by trajectory: ``(knob, effect, step)``, the
    effect being the change of the (transformed, larger-is-better) objective from the trial the
    step moved from, ``step`` the distance moved (a fraction of the range; None for categorical
    knobs). ``transform``: ``auto`` is the logarithm when every value is positive, else the raw
    value. A step whose trial failed (or broke an SLO) counts as the worst value measured with
    ``failures="worst"``, and gives no effect with ``"drop"``; a step from a failed trial never
    happens (trajectories continue from their last successful trial)."""
    from scipy import stats

    from knobflow.tuners.screening import design_attrs, succeeded

    by_number = {t.number: t for t in trials}
    rerun: dict[int, int] = {}  # interrupted trial -> the trial that ran it again
    for t in sorted(trials, key=lambda t: t.number):
        if "requeued_from" in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.FAIL):
            rerun[int(t.user_attrs["requeued_from"])] = t.number

    def resolve(n: int) -> FrozenTrial | None:
        for _ in range(100):
            t = by_number.get(n)
            if t is None or not t.user_attrs.get("interrupted") or n not in rerun:
                return t
            n = rerun[n]
        return None

    ok = [t for t in trials if succeeded(t)]
    if not ok:
        return {}
    raw = np.array([t.values[0] for t in ok])
    if transform == "auto":
        transform = "log" if np.all(raw > 0) else "raw"
    if transform == "log":
        scores = np.log(raw) if maximize else -np.log(raw)
    elif transform == "rank":
        r = stats.rankdata(raw if maximize else -raw)
        scores = np.asarray(stats.norm.ppf((r - 0.5) / raw.size))
    else:
        scores = raw if maximize else -raw
    value = {t.number: float(scores[i]) for i, t in enumerate(ok)}
    worst = float(scores.min())
    out: dict[int, list[tuple[str, float, float | None]]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        attrs = design_attrs(t, by_number)
        if attrs is None or attrs.get("factor") is None or t.user_attrs.get("interrupted"):
            continue
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or attrs.get("from") is None:
            continue
        origin = resolve(int(attrs["from"]))
        if origin is None or origin.number not in value:
            continue
        if t.number in value:
            y = value[t.number]
        elif failures == "worst":
            y = worst
        else:
            continue
        out.setdefault(int(attrs["traj"]), []).append((str(attrs["factor"]), y - value[origin.number], attrs.get("du")))
    return out


def _rank_morris(
    trials: list[FrozenTrial], *, maximize: bool, names: list[str], k: int, bootstrap: int, seed: int
) -> list[Ranking]:
    """mu* (mean absolute elementary effect) per knob, bootstrapped over trajectories."""
    effects = elementary_effects(trials, maximize=maximize)
    if not effects:
        raise SelectError(
            "no elementary effects: the morris evaluator needs the trials of a Morris screening "
            "(tuner morris; knobflow select --screen plans one); rank other trials with --evaluator gp"
        )
    trajectories = sorted(effects)
    measured = [n for n in names if any(f == n for tr in trajectories for f, _, _ in effects[tr])]
    if not measured:
        raise SelectError("the screening measured no elementary effect of these tunables")
    index = {n: j for j, n in enumerate(measured)}
    # Per trajectory: the sum of |effect| and the count of effects of each knob.
    sums = np.zeros((len(trajectories), len(measured)))
    counts = np.zeros_like(sums)
    for i, tr in enumerate(trajectories):
        for f, ee, _ in effects[tr]:
            if f in index:
                sums[i, index[f]] += abs(ee)
                counts[i, index[f]] += 1
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(max(1, bootstrap)):
        pick = np.arange(len(trajectories)) if b == 0 else rng.integers(0, len(trajectories), len(trajectories))
        s, c = sums[pick].sum(axis=0), counts[pick].sum(axis=0)
        mu = np.divide(s, c, out=np.zeros_like(s), where=c > 0)
        rows.append(mu / (mu.sum() or 1.0))
    matrix = np.array(rows)
    full = sums.sum(axis=0) / np.maximum(counts.sum(axis=0), 1)
    total = full.sum() or 1.0
    signed: dict[str, list[float]] = {n: [] for n in measured}
    for tr in trajectories:
        for f, ee, _ in effects[tr]:
            if f in signed:
                signed[f].append(ee)
    tops = np.zeros(len(measured))
    for row in matrix:
        for j in np.argsort(-row, kind="stable")[:k]:
            tops[j] += 1
    out = [
        Ranking(
            n,
            float(np.median(matrix[:, j])),
            float(matrix[:, j].std()),
            float(tops[j] / len(matrix)),
            low=float(np.percentile(matrix[:, j], 10)),
            high=float(np.percentile(matrix[:, j], 90)),
            sigma=float(np.std(signed[n]) / total),
            effects=len(signed[n]),
        )
        for j, n in enumerate(measured)
    ]
    out.sort(key=lambda r: (-r.importance, r.name))
    out += [Ranking(n, math.nan, math.nan, math.nan, ranked=False) for n in names if n not in index]
    return out


def rank(
    trials: list[FrozenTrial],
    *,
    maximize: bool,
    names: list[str],
    k: int,
    evaluator: str | None = None,
    bootstrap: int = 30,
    seed: int = 0,
) -> list[Ranking]:
    """Rank ``names`` by importance over ``trials`` (bootstrapped ``bootstrap`` times). The
    evaluator defaults to :func:`default_evaluator` (``morris`` for a Morris screening's trials)."""
    evaluator = evaluator or default_evaluator(trials)
    if evaluator not in EVALUATORS:
        raise SelectError(f"unknown evaluator {evaluator!r}; known: {', '.join(EVALUATORS)}")
    usable = usable_trials(trials)
    need = min_trials(len(names))
    if len(usable) < need:
        raise SelectError(
            f"{len(usable)} usable trials (complete, feasible); ranking {len(names)} tunables needs at least {need}. "
            "Run a screening first (knobflow select --screen writes its experiment file)."
        )
    if evaluator == "morris":
        return _rank_morris(trials, maximize=maximize, names=names, k=k, bootstrap=bootstrap, seed=seed)
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


def _kept_with_parents(keep: list[str], parents_of: Any) -> set[str]:
    keep_set = set(keep)
    changed = True
    while changed:  # parents of kept conditional tunables
        changed = False
        for n in list(keep_set):
            for parent in parents_of(n) - keep_set:
                keep_set.add(parent)
                changed = True
    return keep_set


def best_params(trials: list[FrozenTrial], *, maximize: bool) -> dict[str, Any] | None:
    """The configuration of the best usable trial (complete, feasible), or None."""
    usable = usable_trials(trials)
    if not usable:
        return None
    pick = max if maximize else min
    return dict(pick(usable, key=lambda t: t.values[0]).params)


def pin_values(space: Any, keep: list[str], best: dict[str, Any] | None) -> dict[str, Any]:
    """The values the tunables not in ``keep`` (nor parents of kept ones) are pinned at: the best
    screening configuration's (``best``), or the default where it has none (an inactive tunable)
    or where that value would make the reduced experiment's baseline break a constraint."""
    keep_set = _kept_with_parents(
        keep, lambda n: space.params[n].condition.parents if space.params[n].condition else set()
    )
    pinned = [n for n in space.params if n not in keep_set]
    values = {n: (best[n] if best is not None and n in best else space.params[n].default) for n in pinned}
    for _ in range(len(pinned) + 1):
        base = space.complete({**values, **{n: space.params[n].default for n in keep_set}})
        broken = space.violations(base)
        if not broken:
            break
        names = {n for c in space.constraints if c.text in broken for n in c.names}
        moved = [n for n in pinned if n in names and values[n] != space.params[n].default]
        if not moved:
            break
        values[moved[0]] = space.params[moved[0]].default
    return values


def never_active(conditions: dict[str, Any], keep: set[str], values: dict[str, Any]) -> set[str]:
    """The pinned tunables (not in ``keep``) that can never be active in the reduced space: their
    condition names only pinned tunables, and does not hold at the pinned values (``gc`` pinned at
    ``Parallel`` makes the G1 flags inactive for good), or names one that is never active itself.
    ``conditions`` maps every tunable to its :class:`knobflow.space.Condition` (or None)."""
    gone: set[str] = set()
    changed = True
    while changed:
        changed = False
        fixed = {n: v for n, v in values.items() if n not in gone and n not in keep}
        for n, cond in conditions.items():
            if n in keep or n in gone or cond is None or not cond.parents <= set(fixed) | gone:
                continue
            if not cond.holds(fixed):
                gone.add(n)
                changed = True
    return gone


def reduce(
    spec_data: dict[str, Any], keep: list[str], *, name: str | None = None, pin: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The experiment document with only ``keep`` tuned; every other tunable pinned at its value
    in ``pin`` (see :func:`pin_values`), else at its default.

    A tunable that a kept one's condition depends on is kept too (the condition needs it to vary,
    else the kept tunable could be inactive forever)."""
    data = copy.deepcopy(spec_data)
    tunables = data["tunables"]
    by_name = {t["name"]: t for t in tunables}

    def parents(n: str) -> set[str]:
        when = by_name[n].get("when")
        if isinstance(when, str):
            return set(compile_expr(when).names) & set(by_name)
        return set(when) & set(by_name) if isinstance(when, dict) else set()

    keep_set = _kept_with_parents(keep, parents)
    names = set(by_name)
    values = {t["name"]: (pin or {}).get(t["name"], t["default"]) for t in tunables}
    conditions = {t["name"]: parse_condition(t.get("when"), t["name"], names) for t in tunables}
    gone = never_active(conditions, keep_set, values)
    if gone:  # inactive for good under the pins: dropped, with the constraints naming them (never applied)
        data["tunables"] = tunables = [t for t in tunables if t["name"] not in gone]
        data["constraints"] = [c for c in data.get("constraints") or [] if not set(compile_expr(c).names) & gone]
        if not data["constraints"]:
            data.pop("constraints")
    for t in tunables:
        if t["name"] in keep_set:
            continue
        value = (pin or {}).get(t["name"], t["default"])
        if isinstance(value, float) and t["type"] == "int" and value == int(value):
            value = int(value)
        why = (
            "at its default"
            if value == t["default"] and type(value) is type(t["default"])
            else f"at its value in the best screening trial (default {t['default']!r})"
        )
        pinned = {
            "name": t["name"],
            "layer": t["layer"],
            "type": "categorical",
            "choices": [value],
            "default": value,
            "description": f"pinned {why} by knobflow select (was {t['type']})",
        }
        if "when" in t and t["when"] is not None:
            pinned["when"] = t["when"]
        t.clear()
        t.update(pinned)
    data["name"] = name or f"{data['name']}-top{len(keep)}"
    data.pop("warm_start", None)
    return data


def screening_file(
    spec_data: dict[str, Any], *, trials: int | None = None, design: Literal["qmc", "morris"] = SCREENING_DESIGN
) -> dict[str, Any]:
    """An experiment document for a screening run of ``spec_data``'s space: tuner ``qmc``
    (space-filling; ``random`` if scipy is missing) or ``morris`` (one-at-a-time trajectories),
    ``trials`` trials (default :func:`screening_budget`)."""
    data = copy.deepcopy(spec_data)
    n = len(data["tunables"])
    data["name"] = f"{data['name']}-screening"
    if design == "morris":
        tuner = "morris"
        what = f"one-at-a-time trajectories of {n + 1} trials (Morris elementary effects)"
    else:
        tuner = "qmc" if importlib.util.find_spec("scipy") is not None else "random"
        what = "space-filling points"
    data["tuner"] = {"name": tuner, "seed": 0}
    budget = dict(data.get("budget") or {})
    budget["trials"] = trials or screening_budget(n)
    for rule in ("target", "patience"):
        budget.pop(rule, None)
    data["budget"] = budget
    data.pop("warm_start", None)
    data["description"] = f"Screening run for knobflow select: {budget['trials']} trials, {what}."
    return data


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def reduce_space(space: Any, keep: list[str], pin: dict[str, Any] | None = None) -> Any:
    """The :class:`knobflow.space.Space` counterpart of :func:`reduce`: tunables not in ``keep``
    (nor parents of kept ones) become single-choice categoricals at their ``pin`` value, else at
    their defaults."""
    from optuna.distributions import CategoricalDistribution

    from knobflow.space import Param, Space

    keep_set = _kept_with_parents(
        keep, lambda n: space.params[n].condition.parents if space.params[n].condition else set()
    )
    values = {n: (pin or {}).get(n, p.default) for n, p in space.params.items()}
    gone = never_active({n: p.condition for n, p in space.params.items()}, keep_set, values)
    params = []
    for p in space.params.values():
        if p.name in gone:
            continue
        if p.name in keep_set:
            params.append(p)
            continue
        value = (pin or {}).get(p.name, p.default)
        params.append(Param(p.name, CategoricalDistribution((value,)), value, p.layer, p.condition))
    return Space(params, [c for c in space.constraints if not set(c.names) & gone])
