"""What the reading commands (`knobflow show`, `best`, `list`), the report and the service's pages
show of an experiment: a :class:`View` of its study (its trials, and its space and objectives
rebuilt from the experiment file recorded when it was created), its outcome (best or Pareto front,
baseline and gain), its status and stop reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class View:
    """One study as the reading commands see it: its trials, and its space and objectives rebuilt
    from the experiment file recorded when it was created (the ``spec`` user attribute)."""

    name: str
    study: Any
    trials: list[Any]
    spec: dict[str, Any]
    exp: Any  # the Experiment, or None for a study whose recorded file cannot be read any more
    space: Any
    objectives: Any
    progress: Any


def objectives_from_attrs(study: Any) -> Any:
    from knobflow.expr import compile_expr
    from knobflow.objective import ObjectiveDef, Objectives

    defs = []
    for i, o in enumerate(study.user_attrs.get("objectives") or []):
        expr = compile_expr(o["expression"], boolean=False, what="metric") if o.get("expression") else None
        label = o.get("name") or o.get("metric") or o.get("expression") or f"value{i}"
        defs.append(ObjectiveDef(label, o.get("direction") or "maximize", o.get("metric"), expr))
    if len(defs) != len(study.directions):
        n = len(study.directions)
        defs = [
            ObjectiveDef(f"value{i}" if n > 1 else "value", d.name.lower(), None, None)
            for i, d in enumerate(study.directions)
        ]
    return Objectives(tuple(defs))


def view(store: Any, name: str) -> View:
    """Raises StoreError when there is no such experiment."""
    from knobflow.space import Param, Space
    from knobflow.spec import Experiment, ExperimentModel

    study = store.load(name)
    trials = store.trials(study)
    spec_attr = study.user_attrs.get("spec") or {}
    exp: Any = None
    try:
        exp = Experiment(model=ExperimentModel.model_validate(spec_attr), path=None, base_dir=Path.cwd())
        space, objectives = exp.space(), exp.objectives()
        if len(objectives.objectives) != len(study.directions):
            raise ValueError("the recorded objectives do not match the study")
    except (ValueError, TypeError, KeyError):  # a study of an older or other version: use what the trials say
        exp = None
        dists: dict[str, Any] = {}
        for t in trials:
            for n, d in t.distributions.items():
                dists.setdefault(n, d)
        space = Space([Param(n, d, None, "stack") for n, d in dists.items()])
        objectives = objectives_from_attrs(study)
    return View(name, study, trials, dict(spec_attr), exp, space, objectives, store.progress(study))


def stop_reason(store: Any, v: View) -> str | None:
    from knobflow import engine
    from knobflow.store import is_archive

    if v.exp is None or is_archive(v.name):
        return None
    return engine.stop_reason(v.exp, store, v.study, engine.limits(v.exp))


def status(v: View, reason: str | None) -> str:
    from knobflow.store import is_archive

    if is_archive(v.name):
        return "archived"
    if v.progress.running:
        return "running"
    if reason:
        if reason.startswith("budget spent"):
            return "done"
        for start, text in (("target reached", "target"), ("time limit", "time limit"), ("patience", "patience")):
            if reason.startswith(start):
                return f"done ({text})"
        return "stopped"
    return "new" if v.progress.done == 0 else "incomplete"


def objectives_text(v: View, short: bool = False) -> str:
    words = {"maximize": "max", "minimize": "min"} if short else {}
    return ", ".join(f"{words.get(o.direction, o.direction)} {o.label}" for o in v.objectives.objectives)


def trial_source(t: Any) -> str:
    a = t.user_attrs
    if a.get("baseline"):
        return "baseline"
    if a.get("imported"):
        return "imported"
    if a.get("warm_start"):
        return "warm-start"
    if a.get("warm_start_best"):
        return "warm-start best"
    if a.get("remeasure_of") is not None:
        return "remeasure"
    if a.get("requeued_from") is not None:
        return "requeued"
    return ""


def outcome(v: View) -> dict[str, Any]:
    """Best (single objective, median over re-measurements) or Pareto front, baseline and gain; feasible trials only."""
    from knobflow import results
    from knobflow.store import TrialRecord

    records = [TrialRecord.from_frozen(t) for t in v.trials]
    baseline = next((r for r in records if r.baseline and r.state == "complete" and r.values), None)
    out: dict[str, Any] = {
        "objectives": [{"name": o.label, "direction": o.direction} for o in v.objectives.objectives],
        "best": None,
        "pareto": None,
        "baseline": None
        if baseline is None
        else {"trial": baseline.number, "values": baseline.values, "feasible": baseline.feasible},
        "gain_pct": None,
        "infeasible": sum(1 for r in records if r.state == "complete" and r.values is not None and not r.feasible),
    }
    if v.objectives.multi:
        front = sorted(results.pareto(v.objectives, v.trials), key=lambda r: r.number)
        out["pareto"] = [
            {
                "trial": r.number,
                "values": r.values,
                "params": r.params,
                "metrics": r.metrics,
                "source": trial_source(t),
            }
            for r in front
            for t in v.trials
            if t.number == r.number
        ]
        return out
    top = results.best(v.space, v.objectives, v.trials)
    if top is not None:
        r = top.record
        out["best"] = {
            "trial": r.number,
            "value": top.value,
            "measurements": top.measurements,
            "params": r.params,
            "metrics": r.metrics,
            "source": trial_source(next(t for t in v.trials if t.number == r.number)),
        }
        if baseline is not None and baseline.values and baseline.values[0]:
            base = baseline.values[0]
            delta = top.value - base
            out["gain_pct"] = 100.0 * (delta if v.objectives.objectives[0].maximize else -delta) / abs(base)
    return out
