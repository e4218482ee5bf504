"""Measure the baseline and a chosen configuration again, side by side: ``knobflow remeasure``.

A tuner's best trial is the best of many noisy measurements, so its own value is biased upwards
(the winner's curse). Before anyone promotes it, the honest comparison is to run both the
baseline (the tunables' defaults) and the candidate again, several times each, interleaved (A B,
B A, A B, ...) so that a drift of the machine hits both alike, and to report the spread.

The runs are not trials: they go through the trial playbook exactly as trials do, but nothing is
recorded in the experiment's study, and they count toward no budget. The target is reverted at
the end (or left with the candidate applied, with ``keep="candidate"``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knobflow import _paths, engine
from knobflow.spec import Experiment
from knobflow.store import TrialRecord


@dataclass
class Series:
    label: str  # "baseline" or "trial N"
    params: dict[str, Any]
    values: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def stats(self) -> dict[str, float | None]:
        v = sorted(self.values)
        if not v:
            return {"n": 0, "median": None, "mean": None, "stdev": None, "min": None, "max": None, "cv_pct": None}
        q = statistics.quantiles(v, n=4, method="inclusive") if len(v) >= 2 else [v[0], v[0], v[0]]
        mean = statistics.fmean(v)
        stdev = statistics.stdev(v) if len(v) >= 2 else 0.0
        return {
            "n": len(v),
            "median": statistics.median(v),
            "mean": mean,
            "stdev": stdev,
            "min": v[0],
            "max": v[-1],
            "q1": q[0],
            "q3": q[2],
            "cv_pct": 100.0 * stdev / abs(mean) if mean else None,
        }


@dataclass
class Remeasure:
    experiment: str
    objective: str
    direction: str
    times: int
    baseline: Series
    candidate: Series
    candidate_trial: int
    candidate_recorded_value: float | None
    started: float
    duration_s: float = 0.0
    pairs_won: int = 0  # interleaved pairs in which the candidate beat the baseline
    pairs: int = 0

    def gain_pct(self) -> float | None:
        a, b = self.baseline.stats()["median"], self.candidate.stats()["median"]
        if a is None or b is None or not a:
            return None
        delta = (b - a) if self.direction == "maximize" else (a - b)
        return 100.0 * delta / abs(a)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["baseline"]["stats"] = self.baseline.stats()
        out["candidate"]["stats"] = self.candidate.stats()
        out["gain_pct"] = self.gain_pct()
        return out


def _objective(exp: Experiment, metrics: dict[str, Any], base: dict[str, Any] | None) -> tuple[float | None, str]:
    outcome = exp.objectives().evaluate(metrics, base)
    if outcome.reason is not None or not outcome.values:
        return None, outcome.reason or "no objective value"
    return float(outcome.values[0]), ""


def remeasure(
    exp: Experiment,
    *,
    times: int = 10,
    trial: int | None = None,
    keep: str = "none",
    on_run: Callable[[str, int, float | None, str], None] | None = None,
) -> Remeasure:
    """Run the baseline and the candidate (``trial``, else the best trial) ``times`` times each."""
    if exp.multi_objective:
        raise ValueError("remeasure compares one objective; this experiment has several (a Pareto front)")
    if times < 1:
        raise ValueError(f"times must be at least 1, got {times}")
    summary = engine.summarize(exp)
    store, study = engine.open_study(exp)
    records = {r.number: r for r in (TrialRecord.from_frozen(t) for t in store.trials(study))}
    if trial is None:
        if summary.best is None:
            raise ValueError(f"experiment {exp.name} has no feasible completed trial to re-measure")
        chosen = summary.best
    else:
        if trial not in records:
            raise ValueError(f"experiment {exp.name} has no trial {trial}")
        chosen = records[trial]
    label = exp.objectives().labels[0]
    out = Remeasure(
        experiment=exp.name,
        objective=label,
        direction=exp.objectives().directions[0],
        times=times,
        baseline=Series("baseline", dict(exp.defaults())),
        candidate=Series(f"trial {chosen.number}", dict(chosen.params)),
        candidate_trial=chosen.number,
        candidate_recorded_value=chosen.value,
        started=time.time(),
    )
    engine.set_up(exp)
    log_dir = _paths.knobflow_home() / "logs" / exp.name
    t0 = time.monotonic()
    try:
        for i in range(times):
            # A B, B A, A B, ...: neither side always runs first (caches, thermal state, drift).
            order = [out.baseline, out.candidate] if i % 2 == 0 else [out.candidate, out.baseline]
            pair: dict[str, float | None] = {}
            for series in order:
                extravars = engine._extravars(exp, -1, series.params)
                with tempfile.TemporaryDirectory(prefix="knobflow-remeasure-") as tmp:
                    result = engine._run_on_target(
                        exp,
                        engine._playbook_for(exp, Path(tmp)),
                        extravars,
                        log_dir / f"remeasure-{series.label.replace(' ', '-')}-{i:02d}.log",
                    )
                metrics = dict(result.stats.get("knobflow_metrics") or {})
                value: float | None = None
                why = ""
                if not result.ok:
                    why = result.reason or "failed"
                elif not metrics:
                    why = "the benchmark reported no knobflow_metrics"
                else:
                    base = out.baseline.metrics[-1] if out.baseline.metrics else None
                    value, why = _objective(exp, metrics, metrics if series is out.baseline else base)
                if value is None:
                    series.failures.append(f"run {i + 1}: {why}")
                else:
                    series.values.append(value)
                    series.metrics.append(metrics)
                pair[series.label] = value
                if on_run is not None:
                    on_run(series.label, i + 1, value, why)
            a, b = pair.get(out.baseline.label), pair.get(out.candidate.label)
            if a is not None and b is not None:
                out.pairs += 1
                out.pairs_won += int(b > a if out.direction == "maximize" else b < a)
    finally:
        if keep == "candidate":
            engine.apply_configuration(exp, out.candidate.params, label="remeasure-keep")
        else:
            engine._run_on_target(exp, "revert.yml", engine._extravars(exp, -1, {}), log_dir / "remeasure-revert.log")
        out.duration_s = time.monotonic() - t0
    return out


def write(result: Remeasure, path: Path | None = None) -> Path:
    """Save the result as JSON (default: the experiment's log folder) and return the path."""
    if path is None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(result.started))
        path = _paths.knobflow_home() / "logs" / result.experiment / f"remeasure-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
    return path


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def report(result: Remeasure) -> str:
    """The comparison as a few lines of text (also the Markdown table row docs/results.md uses)."""
    lines = [
        f"experiment {result.experiment}: {result.objective} ({result.direction}), "
        f"{result.times} interleaved runs each, {result.duration_s:.0f} s"
    ]
    for s in (result.baseline, result.candidate):
        st = s.stats()
        lines.append(
            f"  {s.label:<10} median {fmt(st['median'])}  mean {fmt(st['mean'])}  stdev {fmt(st['stdev'])} "
            f"(cv {fmt(st['cv_pct'])}%)  min {fmt(st['min'])}  max {fmt(st['max'])}  n={st['n']}"
            + (f"  failed {len(s.failures)}" if s.failures else "")
        )
    recorded = result.candidate_recorded_value
    if recorded is not None:
        lines.append(f"  the candidate's value when it was found: {fmt(recorded)}")
    gain = result.gain_pct()
    if gain is not None:
        lines.append(
            f"  gain of the medians: {gain:+.1f}%; the candidate won {result.pairs_won} of {result.pairs} pairs"
        )
    return "\n".join(lines)
