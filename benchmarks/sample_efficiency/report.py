"""The summary of a set of runs: per-tuner metrics (JSON), a Markdown table and an optional plot."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.sample_efficiency import metrics, problems

CHECKPOINTS = (10, 20, 50, 100)
RANK_AT = (20, 50)


def _median(xs: Sequence[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def analyse(record: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one run."""
    problem = problems.get(record["problem"])
    scale = metrics.Scale.of(problem)
    stats = problem.stats()
    inc = metrics.incumbents(record["noisy"], record["true"], problem.maximize)
    curve = metrics.regret_curve(inc, scale, problem.scale)
    seen = [f for f in record["true"] if f is not None]
    return {
        "problem": record["problem"],
        "family": problem.family,
        "tuner": record["tuner"],
        "seed": record["seed"],
        "trials": len(record["true"]),
        "regret_curve": curve,
        "gain": metrics.gain(inc[-1], stats.default_value, problem.maximize)
        if problem.family != "bbob-mixint"
        else None,
        "trials_to_90": metrics.trials_to_fraction(inc, stats.default_value, problem.maximize),
        "cumulative_regret": metrics.cumulative_regret(record["true"], scale, problem.scale),
        "failures": sum(f is None for f in record["true"]),
        "fallbacks": sum(s == "random-fallback" for s in record["sources"]),
        "broken": len(record["broken"]),
        "ask_s": record["ask_s"][1:],  # trial 0 is the queued baseline, not a proposal
        "best_true": (max(seen) if problem.maximize else min(seen)) if seen else None,
        "optimum": stats.optimum,
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-tuner metrics over all runs; ranks only over (problem, seed) cells every tuner ran."""
    runs = [analyse(r) for r in records]
    tuners = sorted({r["tuner"] for r in runs})
    by_cell: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in runs:
        by_cell[(r["problem"], r["seed"])][r["tuner"]] = r
    complete = {k: v for k, v in by_cell.items() if set(v) == set(tuners)}
    max_trials = max((r["trials"] for r in runs), default=0)
    checkpoints = [n for n in CHECKPOINTS if n <= max_trials]

    def rank_at(n: int, cells: dict[tuple[str, int], dict[str, dict[str, Any]]]) -> dict[str, float]:
        table = {
            (p, s, n): {t: r["regret_curve"][n - 1] for t, r in v.items()}
            for (p, s), v in cells.items()
            if all(r["trials"] >= n for r in v.values())
        }
        return metrics.average_ranks(table)

    out: dict[str, Any] = {"tuners": {}, "problems": sorted({r["problem"] for r in runs}), "cells": len(complete)}
    out["checkpoints"] = checkpoints
    ranks = {n: rank_at(n, complete) for n in (*RANK_AT, *checkpoints)}
    for t in tuners:
        mine = [r for r in runs if r["tuner"] == t]
        asks = [a for r in mine for a in r["ask_s"]]
        row: dict[str, Any] = {
            "runs": len(mine),
            "avg_rank": {str(n): ranks[n].get(t) for n in ranks},
            "median_regret": {
                str(n): _median([r["regret_curve"][n - 1] for r in mine if r["trials"] >= n]) for n in checkpoints
            },
            "median_gain": _median([r["gain"] for r in mine if r["gain"] is not None]),
            "median_trials_to_90": _median([r["trials_to_90"] for r in mine if r["trials_to_90"] is not None]),
            "mean_instantaneous_regret": _median([r["cumulative_regret"] / r["trials"] for r in mine]),
            "failed_fraction": sum(r["failures"] for r in mine) / max(1, sum(r["trials"] for r in mine)),
            "fallback_fraction": sum(r["fallbacks"] for r in mine) / max(1, sum(r["trials"] - 1 for r in mine)),
            "broken": sum(r["broken"] for r in mine),
            "median_ask_ms": 1000 * statistics.median(asks) if asks else None,
            "max_ask_s": max(asks) if asks else None,
        }
        out["tuners"][t] = row
    # Per family and per problem, for the breakdown tables and the plot.
    families = sorted({r["family"] for r in runs})
    last = checkpoints[-1] if checkpoints else max_trials
    mid = 50 if 50 in checkpoints else last
    out["by_family"] = {
        f: {
            "avg_rank": rank_at(mid, {k: v for k, v in complete.items() if problems.get(k[0]).family == f}),
            "median_regret": {
                t: _median([r["regret_curve"][last - 1] for r in runs if r["family"] == f and r["tuner"] == t])
                for t in tuners
            },
        }
        for f in families
    }
    out["by_family_at"] = {"rank": mid, "regret": last}
    curves: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for p in out["problems"]:
        for t in tuners:
            mine = [r["regret_curve"] for r in runs if r["problem"] == p and r["tuner"] == t]
            if mine:
                n = min(len(c) for c in mine)
                curves[p][t] = [float(statistics.median(c[i] for c in mine)) for i in range(n)]
    out["curves"] = curves
    out["optimum_check"] = [
        {
            "problem": r["problem"],
            "tuner": r["tuner"],
            "seed": r["seed"],
            "best": r["best_true"],
            "optimum": r["optimum"],
        }
        for r in runs
        if r["best_true"] is not None and problems.get(r["problem"]).better(r["best_true"], r["optimum"])
    ]
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """The summary tables in Markdown, tuners sorted by average rank."""
    cps = summary["checkpoints"]
    rank_cols = [n for n in RANK_AT if n in cps] or cps[-1:]
    rows = sorted(
        summary["tuners"].items(),
        key=lambda kv: (kv[1]["avg_rank"].get(str(rank_cols[-1])) or math.inf) if rank_cols else 0,
    )
    head = (
        ["tuner"]
        + [f"avg rank @{n}" for n in rank_cols]
        + [f"median NR @{n}" for n in cps]
        + ["median gain", "trials to 90%", "mean inst. regret", "failed", "random fallback", "ask ms (median / max s)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for t, row in rows:
        cells = [t]
        cells += [_fmt(row["avg_rank"].get(str(n))) for n in rank_cols]
        cells += [_fmt(row["median_regret"].get(str(n)), 3) for n in cps]
        gain = row["median_gain"]
        cells.append("—" if gain is None else f"{100 * gain:+.0f}%")
        cells.append(_fmt(row["median_trials_to_90"], 0))
        cells.append(_fmt(row["mean_instantaneous_regret"], 3))
        cells.append(f"{100 * row['failed_fraction']:.1f}%")
        cells.append(f"{100 * row['fallback_fraction']:.1f}%")
        cells.append(f"{_fmt(row['median_ask_ms'], 0)} / {_fmt(row['max_ask_s'], 1)}")
        lines.append("| " + " | ".join(cells) + " |")
    out = [
        f"Problems: {len(summary['problems'])} ({', '.join(summary['problems'])}); "
        f"{summary['cells']} (problem, seed) cells run by every tuner.",
        "",
        *lines,
        "",
        "NR = normalized regret (0 = optimum, 1 = the reference; median over problems and seeds). Gain: "
        "median over HPOLib and jvm-sim runs of the incumbent's true value against the default's, at the "
        "end of the run. Failed: trials whose configuration crashed. Random fallback: proposals knobflow drew "
        "at random because the tuner found no acceptable configuration in its attempts.",
    ]
    fam = summary["by_family"]
    if fam:
        tuners = [t for t, _ in rows]
        at = summary["by_family_at"]
        out += ["", f"By problem family: average rank @{at['rank']} / median NR @{at['regret']}", ""]
        out.append("| family | " + " | ".join(tuners) + " |")
        out.append("|---|" + "|".join("---" for _ in tuners) + "|")
        for f, v in fam.items():
            cells = [f"{_fmt(v['avg_rank'].get(t))} / {_fmt(v['median_regret'].get(t), 3)}" for t in tuners]
            out.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(summary: dict[str, Any], path: Path) -> bool:
    """Median normalized regret against trials, one panel per problem. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    curves = summary["curves"]
    names = list(curves)
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharex=True)
    tuners = sorted({t for c in curves.values() for t in c})
    colors = {t: f"C{i}" for i, t in enumerate(tuners)}
    for ax, name in zip(axes.flat, names, strict=False):
        top = 0.0
        for t, ys in curves[name].items():
            xs = range(1, len(ys) + 1)
            ax.plot(xs, ys, label=t, color=colors[t], linewidth=1.4)
            top = max(top, *(y for y in ys if math.isfinite(y)))
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, min(1.5, max(0.05, top * 1.05)))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("trials", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("median normalized regret", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(tuners), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
