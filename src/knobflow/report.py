"""An experiment as people look at it: Plotly figures and one HTML page (``knobflow report``).

:func:`figures` builds the plots as plain Plotly figure specs (``{"data": [...], "layout": {...}}``,
JSON-able, drawn by plotly.js in the page, the service's UI or a notebook):

* ``history``: each trial's objective value by trial number, the best-so-far line (feasible trials
  only), the baseline (a star and a dashed line), SLO-infeasible trials (open crosses) and failed
  trials (red crosses, drawn along the bottom of the plot: they have no value);
* ``importance``: each tunable's importance, as ``knobflow select`` ranks it (:func:`knobflow.select.rank`:
  the GP's main effects, or mu* for a Morris screening), the median and the 10-90% range over
  bootstrap resamples (as many as fit in :data:`IMPORTANCE_BUDGET_S`); one bar per objective when
  there are several;
* ``parallel``: parallel coordinates of every complete trial, numeric (log-scaled ones on a log axis)
  and categorical tunables, coloured by the (first) objective, the better end bright;
* ``pareto`` (several objectives only): every feasible trial, the Pareto front highlighted.

A plot that has nothing to show (too few trials) keeps its key, with no trace, an annotation that
says why and the same sentence under ``"note"``. Every trace carries the trial numbers in
``customdata``.

:func:`render_experiment` writes the page of one experiment: what it is (description, objectives,
SLOs, tuner, budget and progress), the best configuration and its gain over the baseline (or the
Pareto front), the plots, and every trial. With ``plotly_js="inline"`` plotly.js (from the plotly
wheel) is embedded and the page refers to nothing outside itself; else ``plotly_js`` is the URL
of a plotly.min.js to load. :func:`render_index` lists a store's experiments with links to their
pages. Everything that comes from the experiment file or the trials is HTML-escaped, and the JSON in
the page cannot close its ``<script>``.
"""

from __future__ import annotations

import copy
import functools
import html
import importlib.util
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

IMPORTANCE_BOOTSTRAP = 20  # resamples behind the importance's 10-90% range (knobflow select uses 30)
MIN_BOOTSTRAP = 5  # fewer resamples than this give no range worth showing
# The GP ranking costs about 0.1 s for 20 trials and several seconds for 300; a page draws the
# resamples that fit in this time (a ranking of a large experiment shows no range).
IMPORTANCE_BUDGET_S = 6.0

_FEASIBLE = "#1f77b4"
_INFEASIBLE = "#ff7f0e"
_FAILED = "#d62728"
_BASELINE = "#2ca02c"
_BEST = "#9467bd"
_OTHER = "#b0b0b0"


class ReportError(RuntimeError):
    """The report cannot be written (plotly.js is not installed, for an inline page)."""


# --------------------------------------------------------------------------------------------
# Helpers


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _text(v: Any) -> str:
    """A value for a text in a plot: formatted and escaped (plotly.js reads a few HTML tags in texts)."""
    return _esc(_fmt(v))


def _finite(v: Any) -> Any:
    """``v`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` escaped
    (so no ``</script>`` or ``<!--`` can appear), NaN and infinities as null."""
    text = json.dumps(_finite(data), allow_nan=False, default=str, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _empty(title: str, note: str) -> dict[str, Any]:
    return {
        "data": [],
        "layout": {
            "title": {"text": title},
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [
                {"text": _esc(note), "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False}
            ],
            "height": 240,
        },
        "note": note,
    }


def _view(store: Any, name: str) -> Any:
    """The experiment as ``knobflow show`` reads it (raises :class:`knobflow.store.StoreError`)."""
    from knobflow import views

    return views.view(store, name)


def _tunable_names(v: Any) -> list[str]:
    """The tunables in the file's order (the trials' order for a study without a readable file)."""
    names = [str(t.get("name")) for t in v.spec.get("tunables") or [] if isinstance(t, dict) and t.get("name")]
    names = [n for n in names if n in v.space.params]
    return names + [n for n in v.space.params if n not in names]


def _distributions(v: Any) -> dict[str, BaseDistribution]:
    dists: dict[str, BaseDistribution] = {n: p.distribution for n, p in v.space.params.items()}
    for t in v.trials:  # a study without its file: what the trials say
        for n, d in t.distributions.items():
            dists.setdefault(n, d)
    return dists


def _complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]


def _source(t: FrozenTrial) -> str:
    from knobflow import views

    return str(views.trial_source(t))


def _hover(t: FrozenTrial, labels: list[str]) -> str:
    lines = [f"trial {t.number}" + (f" ({_esc(_source(t))})" if _source(t) else "")]
    if t.state == TrialState.COMPLETE and t.values is not None:
        lines += [f"{_esc(k)} = {_text(x)}" for k, x in zip(labels, t.values, strict=False)]
        broken = t.user_attrs.get("slo_violations") or []
        if broken:
            lines.append("infeasible: " + _esc("; ".join(map(str, broken))))
    else:
        reason = str(t.user_attrs.get("reason") or "")
        if len(reason) > 200:
            reason = reason[:199] + "…"
        lines.append(_esc(t.state.name.lower()) + (f": {_esc(reason)}" if reason else ""))
    lines += [f"{_esc(k)} = {_text(x)}" for k, x in t.params.items()]
    return "<br>".join(lines)


# --------------------------------------------------------------------------------------------
# Figures


def figures(store: Any, name: str) -> dict[str, dict[str, Any]]:
    """The plots of experiment ``name`` in ``store`` as Plotly figure specs, by key: ``history``,
    ``importance``, ``parallel``, and ``pareto`` for several objectives (see the module's text).
    Raises :class:`knobflow.store.StoreError` when there is no such experiment."""
    return _figures(_view(store, name))


def _figures(v: Any) -> dict[str, dict[str, Any]]:
    out = {
        "history": history_figure(v.trials, v.objectives),
        "importance": importance_figure(v.trials, v.objectives, _tunable_names(v)),
        "parallel": parallel_figure(v.trials, v.objectives, _tunable_names(v), _distributions(v)),
    }
    if v.objectives.multi:
        out["pareto"] = pareto_figure(v.trials, v.objectives)
    return out


def _markers(
    ts: list[FrozenTrial],
    name: str,
    marker: dict[str, Any],
    ys: list[float],
    *,
    labels: list[str],
    axis: str,
    legend: bool,
) -> list[dict[str, Any]]:
    if not ts:
        return []
    return [
        {
            "type": "scatter",
            "mode": "markers",
            "name": name,
            "legendgroup": name,
            "showlegend": legend,
            "x": [t.number for t in ts],
            "y": ys,
            "customdata": [t.number for t in ts],
            "hovertext": [_hover(t, labels) for t in ts],
            "hoverinfo": "text",
            "marker": marker,
            "xaxis": "x",
            "yaxis": axis,
        }
    ]


def history_figure(trials: list[FrozenTrial], objectives: Any) -> dict[str, Any]:
    """Each trial's value by trial number, with the best so far, the baseline, infeasible and failed
    trials; one panel per objective."""
    labels = list(objectives.labels)
    title = "Optimization history"
    ordered = sorted(trials, key=lambda t: t.number)
    complete = _complete(ordered)
    failed = [t for t in ordered if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    if not complete and not failed:
        return _empty(title, "no trial has finished yet: nothing to plot")
    k = len(labels)
    data: list[dict[str, Any]] = []
    shapes: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "title": {"text": title},
        # Under the bottom panel: the panels share it.
        "xaxis": {"title": {"text": "trial"}, "rangemode": "tozero", "anchor": "y" if k == 1 else f"y{k}"},
        "legend": {"orientation": "h", "y": -0.15},
        "hovermode": "closest",
        "height": 420 if k == 1 else 300 * k,
        "shapes": shapes,
    }
    baseline = [t for t in complete if t.user_attrs.get("baseline")][:1]
    rest = [t for t in complete if t not in baseline]
    feasible = [t for t in rest if not t.user_attrs.get("slo_violations")]
    infeasible = [t for t in rest if t.user_attrs.get("slo_violations")]
    for i, o in enumerate(objectives.objectives):
        axis = "y" if i == 0 else f"y{i + 1}"
        # Panels from the top down, a small gap between them.
        top = 1.0 if i == 0 else (k - i) / k - 0.03
        bottom = 0.0 if i == k - 1 else (k - 1 - i) / k + 0.03
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = {
            "title": {"text": f"{_esc(o.label)} ({o.direction})"},
            "domain": [bottom, top],
            "anchor": "x",
        }
        common: dict[str, Any] = {"labels": labels, "axis": axis, "legend": i == 0}
        data += _markers(feasible, "trial", {"color": _FEASIBLE, "size": 8}, [t.values[i] for t in feasible], **common)
        data += _markers(
            infeasible,
            "infeasible (broke an SLO)",
            {"color": _INFEASIBLE, "size": 9, "symbol": "x-open"},
            [t.values[i] for t in infeasible],
            **common,
        )
        data += _markers(
            baseline,
            "baseline",
            {"color": _BASELINE, "size": 14, "symbol": "star"},
            [t.values[i] for t in baseline],
            **common,
        )
        if baseline:
            y = baseline[0].values[i]
            shapes.append(
                {
                    "type": "line",
                    "xref": "x domain",
                    "yref": axis,
                    "x0": 0,
                    "x1": 1,
                    "y0": y,
                    "y1": y,
                    "line": {"color": _BASELINE, "dash": "dash", "width": 1},
                }
            )
        # The best so far: feasible trials only (an infeasible one is never the best).
        best: float | None = None
        xs: list[int] = []
        ys: list[float] = []
        for t in complete:
            if t.user_attrs.get("slo_violations"):
                continue
            if best is None or objectives.better(t.values[i], best, i):
                best = t.values[i]
            xs.append(t.number)
            ys.append(best)
        if xs:
            if ordered[-1].number > xs[-1]:
                xs.append(ordered[-1].number)
                ys.append(ys[-1])
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": "best so far" + (" (this objective alone)" if k > 1 else ""),
                    "legendgroup": "best",
                    "showlegend": i == 0,
                    "x": xs,
                    "y": ys,
                    "line": {"shape": "hv", "color": _BEST},
                    "hoverinfo": "skip",
                    "xaxis": "x",
                    "yaxis": axis,
                }
            )
        # Failed trials have no value: drawn along the bottom of the panel.
        values = [t.values[i] for t in complete]
        floor = 0.0
        if values:
            lo, hi = min(values), max(values)
            floor = lo - 0.08 * ((hi - lo) or abs(hi) or 1.0)
        data += _markers(
            failed,
            "failed (no value: drawn at the bottom)",
            {"color": _FAILED, "size": 9, "symbol": "x"},
            [floor] * len(failed),
            **common,
        )
    fig: dict[str, Any] = {"data": data, "layout": layout}
    if not complete:
        fig["note"] = "no trial has completed yet: only failed trials to show"
        layout["annotations"] = [
            {"text": fig["note"], "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.95, "showarrow": False}
        ]
    return fig


def _single(t: FrozenTrial, i: int) -> FrozenTrial:
    """A copy of ``t`` valued by its ``i``-th objective alone (importance ranks one objective)."""
    c = copy.copy(t)
    c.values = [t.values[i]]
    return c


_rank_cache: OrderedDict[tuple[Any, ...], tuple[list[Any], int]] = OrderedDict()
_rank_lock = threading.Lock()


def _rank(
    ts: list[FrozenTrial], *, maximize: bool, names: list[str], k: int, evaluator: str, budget_s: float
) -> tuple[list[Any], int]:
    """``select.rank`` of ``ts`` and the number of bootstrap resamples behind its ranges: as many as
    fit in ``budget_s`` (at most :data:`IMPORTANCE_BOOTSTRAP`), 1 (no range) when one ranking
    already takes most of it. Remembered for the same trials (a page drawn again)."""
    from knobflow import select

    key = (
        evaluator,
        maximize,
        tuple(names),
        k,
        tuple((t.number, t.state.name, tuple(t.values or ()), bool(t.user_attrs.get("slo_violations"))) for t in ts),
    )
    with _rank_lock:
        if key in _rank_cache:
            _rank_cache.move_to_end(key)
            return _rank_cache[key]
    start = time.monotonic()
    ranking = select.rank(ts, maximize=maximize, names=names, k=k, evaluator=evaluator, bootstrap=1)
    once = time.monotonic() - start
    resamples = min(IMPORTANCE_BOOTSTRAP, int(max(0.0, budget_s - once) / max(once, 1e-3)))
    if resamples >= MIN_BOOTSTRAP:
        ranking = select.rank(ts, maximize=maximize, names=names, k=k, evaluator=evaluator, bootstrap=resamples)
    else:
        resamples = 1
    with _rank_lock:
        _rank_cache[key] = (ranking, resamples)
        while len(_rank_cache) > 32:
            _rank_cache.popitem(last=False)
    return ranking, resamples


def importance_figure(trials: list[FrozenTrial], objectives: Any, names: list[str]) -> dict[str, Any]:
    """Each tunable's importance as ``knobflow select`` ranks it, with its 10-90% bootstrap range
    (the bootstrap is cut short on large experiments: see :data:`IMPORTANCE_BUDGET_S`)."""
    from knobflow import select

    title = "Parameter importance"
    dists = {n: d for t in trials for n, d in t.distributions.items()}
    pinned = [n for n in names if isinstance(dists.get(n), CategoricalDistribution) and len(dists[n].choices) == 1]  # type: ignore[attr-defined]
    ranked_names = [n for n in names if n not in pinned]
    if not ranked_names:
        return _empty(title, "no tunable varies: nothing to rank")
    data: list[dict[str, Any]] = []
    notes: list[str] = []
    evaluators: set[str] = set()
    counts: set[int] = set()
    k = min(select.DEFAULT_TOP, len(ranked_names))
    n_obj = len(objectives.objectives)
    for i, o in enumerate(objectives.objectives):
        ts = [_single(t, i) for t in _complete(trials)] if objectives.multi else list(trials)
        usable = select.usable_trials(ts)
        n_usable = len(usable)
        need = select.min_trials(len(ranked_names))
        if len(usable) < need:
            return _empty(
                title,
                f"too few trials to rank the tunables: {len(usable)} complete feasible "
                f"trial{'' if len(usable) == 1 else 's'}, ranking {len(ranked_names)} tunables needs at least {need}",
            )
        evaluator = select.default_evaluator(ts)
        try:
            ranking, resamples = _rank(
                ts,
                maximize=o.maximize,
                names=ranked_names,
                k=k,
                evaluator=evaluator,
                budget_s=IMPORTANCE_BUDGET_S / n_obj,
            )
        except select.SelectError as exc:
            return _empty(title, f"the tunables cannot be ranked: {exc}")
        evaluators.add(evaluator)
        counts.add(resamples)
        shown = [r for r in ranking if r.ranked][::-1]  # plotly draws the first bar at the bottom
        unranked = [r.name for r in ranking if not r.ranked]
        if unranked and i == 0:
            why = "no elementary effect measured" if evaluator == "morris" else "conditional: not active in every trial"
            notes.append(f"not ranked ({why}): {', '.join(unranked)}")
        bar: dict[str, Any] = {
            "type": "bar",
            "orientation": "h",
            "name": _esc(o.label),
            "x": [r.importance for r in shown],
            "y": [r.name for r in shown],
            "customdata": [r.top_k_share for r in shown],
            "hoverinfo": "text",
        }
        if resamples > 1:
            bar["error_x"] = {
                "type": "data",
                "symmetric": False,
                "array": [max(0.0, r.high - r.importance) for r in shown],
                "arrayminus": [max(0.0, r.importance - r.low) for r in shown],
            }
            bar["hovertext"] = [
                f"{_esc(r.name)}: {r.importance:.3f} (10-90%: {r.low:.3f}-{r.high:.3f}); "
                f"in the top {k} in {100 * r.top_k_share:.0f}% of {resamples} resamples"
                for r in shown
            ]
        else:
            bar["hovertext"] = [f"{_esc(r.name)}: {r.importance:.3f}" for r in shown]
        data.append(bar)
    if counts == {1}:
        notes.append(
            f"no 10-90% range: ranking {n_usable} trials takes too long to "
            "resample here (knobflow select resamples them)"
        )
    if pinned:
        notes.append(f"pinned (a single value): {', '.join(pinned)}")
    how = ", ".join(sorted(evaluators))
    spread = (
        f"median and 10-90% range over {min(counts)}-{max(counts)} resamples"
        if len(counts) > 1
        else (f"median and 10-90% range over {max(counts)} resamples" if max(counts) > 1 else "no resampling")
    )
    layout: dict[str, Any] = {
        "title": {"text": title},
        "xaxis": {"title": {"text": f"importance ({how}; {spread})"}, "rangemode": "tozero"},
        "yaxis": {"automargin": True},
        "barmode": "group",
        "showlegend": objectives.multi,
        "height": max(300, 60 + 28 * len(ranked_names) * len(data)),
    }
    fig: dict[str, Any] = {"data": data, "layout": layout}
    if notes:
        fig["note"] = "; ".join(notes)
        layout["annotations"] = [
            {
                "text": _esc(fig["note"]),
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": -0.2,
                "xanchor": "left",
                "showarrow": False,
            }
        ]
    return fig


def _ticks(lo: float, hi: float, log: bool) -> tuple[list[float], list[str]]:
    """Tick positions (log10 of the value for a log axis) and their labels."""
    if log:
        a, b = math.log10(lo), math.log10(hi)
        vals = [a, *[float(e) for e in range(math.ceil(a), math.floor(b) + 1)], b]
    else:
        vals = [lo + (hi - lo) * j / 4 for j in range(5)]
    out: list[float] = []
    for x in vals:
        if not any(abs(x - y) < 1e-9 * max(1.0, abs(y)) for y in out):
            out.append(x)
    return out, [_fmt(10**x if log else x) for x in out]


def parallel_figure(
    trials: list[FrozenTrial], objectives: Any, names: list[str], dists: dict[str, BaseDistribution]
) -> dict[str, Any]:
    """Parallel coordinates: one line per complete trial through its tunables and objective(s)."""
    title = "Parallel coordinates"
    complete = sorted(_complete(trials), key=lambda t: t.number)
    if not complete:
        return _empty(title, "no trial has completed yet: nothing to plot")
    dims: list[dict[str, Any]] = []
    for n in names:
        d = dists.get(n)
        if d is None:
            continue
        present = [n in t.params for t in complete]
        inactive = not all(present)
        if isinstance(d, CategoricalDistribution):
            choices = list(d.choices)
            if len(choices) == 1:
                continue  # pinned: a flat axis

            def index(v: Any, choices: list[Any] = choices) -> int:
                for j, c in enumerate(choices):
                    if type(c) is type(v) and c == v:
                        return j
                return next((j for j, c in enumerate(choices) if c == v), len(choices))

            values = [index(t.params[n]) if n in t.params else len(choices) for t in complete]
            ticktext = [_text(c) for c in choices] + (["(inactive)"] if inactive else [])
            dims.append(
                {
                    "label": _esc(n),
                    "values": values,
                    "tickvals": list(range(len(ticktext))),
                    "ticktext": ticktext,
                    "range": [0, max(1, len(ticktext) - 1)],
                }
            )
            continue
        low, high = float(getattr(d, "low", 0.0)), float(getattr(d, "high", 1.0))
        log = bool(getattr(d, "log", False)) and low > 0

        def pos(v: Any, log: bool = log) -> float:
            return math.log10(float(v)) if log else float(v)

        a, b = pos(low), pos(high)
        tickvals, ticktext = _ticks(low, high, log)
        span = (b - a) or 1.0
        lo_range = a
        if inactive:
            lo_range = a - 0.1 * span
            tickvals, ticktext = [lo_range, *tickvals], ["(inactive)", *ticktext]
        dims.append(
            {
                "label": _esc(n) + (" (log)" if log else ""),
                "values": [pos(t.params[n]) if n in t.params else lo_range for t in complete],
                "range": [lo_range, b],
                "tickvals": tickvals,
                "ticktext": ticktext,
            }
        )
    for i, o in enumerate(objectives.objectives):
        dims.append({"label": f"{_esc(o.label)} ({o.direction})", "values": [t.values[i] for t in complete]})
    if any(t.user_attrs.get("slo_violations") for t in complete):
        dims.append(
            {
                "label": "feasible",
                "values": [0 if t.user_attrs.get("slo_violations") else 1 for t in complete],
                "tickvals": [0, 1],
                "ticktext": ["no", "yes"],
                "range": [0, 1],
            }
        )
    first = objectives.objectives[0]
    trace = {
        "type": "parcoords",
        "customdata": [t.number for t in complete],
        "dimensions": dims,
        "line": {
            "color": [t.values[0] for t in complete],
            "colorscale": "Viridis",
            "reversescale": not first.maximize,  # the better end bright either way
            "showscale": True,
            "colorbar": {"title": {"text": _esc(first.label)}},
        },
    }
    fig: dict[str, Any] = {
        "data": [trace],
        "layout": {"title": {"text": title}, "height": 460, "margin": {"l": 80, "r": 80, "t": 100, "b": 40}},
    }
    if len(complete) == 1:
        fig["note"] = "one complete trial: nothing to compare yet"
    return fig


def pareto_figure(trials: list[FrozenTrial], objectives: Any) -> dict[str, Any]:
    """Every feasible trial of a multi-objective experiment, the Pareto front highlighted."""
    from knobflow import results

    title = "Pareto front"
    labels = list(objectives.labels)
    feasible = sorted(results.feasible_complete(trials), key=lambda t: t.number)
    if not feasible:
        return _empty(title, "no feasible complete trial yet: no Pareto front")
    on_front = {r.number for r in results.pareto(objectives, trials)}
    front = [t for t in feasible if t.number in on_front]
    other = [t for t in feasible if t.number not in on_front]
    axis_titles = [f"{_esc(o.label)} ({o.direction})" for o in objectives.objectives]
    data: list[dict[str, Any]] = []
    if len(labels) == 2:
        front = sorted(front, key=lambda t: (t.values[0], t.values[1]))
        for ts, name, mode, marker in (
            (other, "other feasible trials", "markers", {"color": _OTHER, "size": 8}),
            (front, "Pareto front", "lines+markers", {"color": _FAILED, "size": 11}),
        ):
            if not ts:
                continue
            data.append(
                {
                    "type": "scatter",
                    "mode": mode,
                    "name": name,
                    "x": [t.values[0] for t in ts],
                    "y": [t.values[1] for t in ts],
                    "customdata": [t.number for t in ts],
                    "hovertext": [_hover(t, labels) for t in ts],
                    "hoverinfo": "text",
                    "marker": marker,
                    "line": {"color": _FAILED, "dash": "dot"},
                }
            )
        layout: dict[str, Any] = {
            "title": {"text": title},
            "xaxis": {"title": {"text": axis_titles[0]}},
            "yaxis": {"title": {"text": axis_titles[1]}},
            "hovermode": "closest",
            "height": 460,
        }
    else:
        for ts, name, marker in (
            (other, "other feasible trials", {"color": _OTHER, "size": 6}),
            (front, "Pareto front", {"color": _FAILED, "size": 9}),
        ):
            if not ts:
                continue
            data.append(
                {
                    "type": "splom",
                    "name": name,
                    "dimensions": [
                        {"label": axis_titles[i], "values": [t.values[i] for t in ts]} for i in range(len(labels))
                    ],
                    "customdata": [t.number for t in ts],
                    "hovertext": [_hover(t, labels) for t in ts],
                    "hoverinfo": "text",
                    "marker": marker,
                    "diagonal": {"visible": False},
                    "showupperhalf": False,
                }
            )
        layout = {"title": {"text": title}, "hovermode": "closest", "height": 200 + 160 * len(labels)}
    return {"data": data, "layout": layout}


# --------------------------------------------------------------------------------------------
# The pages

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1.5em;
  color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; }
.note { color: #666; font-style: italic; }
.bad { color: #b00; }
.gain { font-size: 1.2em; font-weight: 600; }
.plot { min-height: 240px; }
tr.fail td, tr.infeasible td { background: #fff6f6; }
ul.kv { list-style: none; margin: 0; padding: 0; }
ul.kv li { white-space: nowrap; }
code { font-size: 0.95em; }
"""


@functools.cache
def plotly_js_path() -> Path:
    """The plotly.min.js that the plotly wheel ships (raises :class:`ReportError` without plotly)."""
    spec = importlib.util.find_spec("plotly")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / "package_data" / "plotly.min.js"
        if p.is_file():
            return p
    raise ReportError("an inline report needs plotly.js, which ships in the plotly package: pip install plotly")


@functools.cache
def _inline_plotly() -> str:
    text = plotly_js_path().read_text(encoding="utf-8")
    # Nothing in the script may end the <script> element or open an HTML comment in it.
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE).replace("<!--", "<\\!--")


def _page(title: str, body: str, head: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n{head}</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _kv(d: dict[str, Any]) -> str:
    if not d:
        return ""
    return '<ul class="kv">' + "".join(f"<li>{_esc(k)} = {_esc(_fmt(x))}</li>" for k, x in d.items()) + "</ul>"


def _facts(rows: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _objectives_html(v: Any) -> str:
    return ", ".join(f"{_esc(o.direction)} <code>{_esc(o.label)}</code>" for o in v.objectives.objectives)


def _best_html(v: Any, out: dict[str, Any]) -> str:
    labels = [o["name"] for o in out["objectives"]]
    parts: list[str] = []
    if out["pareto"] is not None:
        parts.append("<h2>Pareto front</h2>")
        if not out["pareto"]:
            parts.append('<p class="note">no feasible completed trial yet: no Pareto front</p>')
        else:
            parts.append(
                f"<p>{len(out['pareto'])} trial{'' if len(out['pareto']) == 1 else 's'} that no other feasible "
                "trial beats in every objective:</p>"
            )
            head = "".join(f"<th>{_esc(x)}</th>" for x in labels)
            rows = "".join(
                f'<tr><td class="num">{r["trial"]}</td>'
                + "".join(f'<td class="num">{_esc(_fmt(x))}</td>' for x in r["values"] or [])
                + f"<td>{_kv(r['params'])}</td></tr>"
                for r in out["pareto"]
            )
            parts.append(f'<table class="pareto"><tr><th>trial</th>{head}<th>parameters</th></tr>{rows}</table>')
    else:
        parts.append("<h2>Best configuration</h2>")
        b = out["best"]
        if b is None:
            parts.append('<p class="note">no feasible completed trial yet</p>')
        else:
            runs = f" (median of {len(b['measurements'])} measurements)" if len(b["measurements"]) > 1 else ""
            source = f", {_esc(b['source'])}" if b["source"] and b["source"] != "baseline" else ""
            parts.append(
                f'<p class="best">trial {b["trial"]}{source}: <code>{_esc(labels[0])}</code> = '
                f"<strong>{_esc(_fmt(b['value']))}</strong>{runs}</p>"
            )
            parts.append(_kv(b["params"]) or '<p class="note">no parameters</p>')
    base = out["baseline"]
    if base is not None:
        vals = ", ".join(_esc(_fmt(x)) for x in base["values"] or [])
        broke = " (it broke an SLO)" if not base["feasible"] else ""
        parts.append(f'<p class="baseline">baseline (trial {base["trial"]}): {vals}{broke}</p>')
    else:
        parts.append('<p class="note">the baseline has not completed: no gain to tell</p>')
    if out["gain_pct"] is not None:
        parts.append(f'<p class="gain">gain over the baseline: {out["gain_pct"]:+.1f}%</p>')
    if out["infeasible"]:
        n = out["infeasible"]
        parts.append(f"<p>{n} trial{'' if n == 1 else 's'} broke an SLO (infeasible: never reported as best)</p>")
    return "\n".join(parts)


def _trials_html(v: Any) -> str:
    labels = list(v.objectives.labels)
    head = (
        "<tr><th>#</th><th>state</th><th>source</th>"
        + "".join(f"<th>{_esc(x)}</th>" for x in labels)
        + "<th>feasible</th><th>parameters</th><th>metrics</th><th>reason</th></tr>"
    )
    rows = []
    for t in sorted(v.trials, key=lambda t: t.number):
        a = t.user_attrs
        complete = t.state == TrialState.COMPLETE and t.values is not None
        state = t.state.name.lower() + (" (interrupted)" if a.get("interrupted") else "")
        values = (
            "".join(f'<td class="num">{_esc(_fmt(x))}</td>' for x in t.values)
            if complete
            else "".join("<td>-</td>" for _ in labels)
        )
        broken = list(a.get("slo_violations") or [])
        if not complete:
            feasible = "-"
        elif broken:
            feasible = '<span class="bad">no: ' + "; ".join(_esc(s) for s in broken) + "</span>"
        else:
            feasible = "yes"
        metrics = a.get("metrics") if isinstance(a.get("metrics"), dict) else {}
        reason = a.get("reason")
        css = "fail" if t.state == TrialState.FAIL else ("infeasible" if broken else t.state.name.lower())
        rows.append(
            f'<tr class="{css}" id="trial-{t.number}"><td class="num">{t.number}</td><td>{_esc(state)}</td>'
            f"<td>{_esc(_source(t))}</td>{values}<td>{feasible}</td><td>{_kv(dict(t.params))}</td>"
            f"<td>{_kv(metrics or {})}</td><td>{_esc(reason) if reason else ''}</td></tr>"
        )
    return f'<h2>Trials</h2>\n<table class="trials">\n{head}\n' + "\n".join(rows) + "\n</table>"


_PLOT_TITLES = {
    "history": "Optimization history",
    "importance": "Parameter importance",
    "parallel": "Parallel coordinates",
    "pareto": "Pareto front",
}

_DRAW = """
(function () {
  var figures = JSON.parse(document.getElementById("knobflow-figures").textContent);
  Object.keys(figures).forEach(function (key) {
    var el = document.getElementById("plot-" + key);
    if (!el) return;
    if (typeof Plotly === "undefined") {
      el.textContent = "plotly.js could not be loaded: the plots cannot be drawn.";
      return;
    }
    var fig = figures[key];
    Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false});
  });
})();
"""


def render_experiment(store: Any, name: str, *, plotly_js: str = "inline") -> str:
    """The HTML page of experiment ``name`` in ``store``: what it is, its best configuration and gain
    (or Pareto front), its plots and every trial. ``plotly_js``: ``"inline"`` embeds plotly.js (the
    page opens offline and refers to nothing outside itself), else the URL of a plotly.min.js.
    Raises :class:`knobflow.store.StoreError` for an unknown experiment, :class:`ReportError` when
    ``"inline"`` and plotly is not installed."""
    from knobflow import views

    v = _view(store, name)
    if plotly_js == "inline":
        script = f"<script>{_inline_plotly()}</script>\n"
    else:
        script = f'<script src="{_esc(plotly_js)}"></script>\n'
    reason = views.stop_reason(store, v)
    status = views.status(v, reason)
    out = views.outcome(v)
    figs = _figures(v)
    spec = v.spec
    p = v.progress
    tuner = spec.get("tuner") or {}
    budget = spec.get("budget") or {}
    parts = [f"<h1>Experiment {_esc(name)}</h1>"]
    description = " ".join(str(spec.get("description") or "").split())
    if description:
        parts.append(f'<p class="description">{_esc(description)}</p>')
    facts: list[tuple[str, str]] = [
        ("state", _esc(status) + (f" ({_esc(reason)})" if reason else "")),
        (f"objective{'s' if v.objectives.multi else ''}", _objectives_html(v)),
    ]
    for s in spec.get("slos") or []:
        facts.append(("SLO", f"<code>{_esc(s)}</code>"))
    for c in spec.get("constraints") or []:
        facts.append(("constraint", f"<code>{_esc(c)}</code>"))
    if tuner:
        seed = f" (seed {_esc(tuner['seed'])})" if tuner.get("seed") is not None else ""
        facts.append(("tuner", f"{_esc(tuner.get('name', 'auto'))}{seed}"))
    trials_budget = budget.get("trials")
    progress = (
        f"{p.done} of {_esc(trials_budget) if trials_budget is not None else '?'} trials done "
        f"({p.completed} complete, {p.failed} failed), {p.running} running, {p.waiting} waiting"
    )
    if budget.get("max_failed") is not None:
        progress += f"; stops at {_esc(budget['max_failed'])} failures"
    facts.append(("budget", progress))
    if p.imported or p.warm_start:
        facts.append(("also", f"{p.imported} imported, {p.warm_start} warm-start trials (not counted in the budget)"))
    tunables = _tunable_names(v)
    if tunables:
        facts.append(("tunables", ", ".join(f"<code>{_esc(n)}</code>" for n in tunables)))
    created = v.study.user_attrs.get("created")
    if created:
        facts.append(("created", _esc(created)))
    archived = v.study.user_attrs.get("archived")
    if isinstance(archived, dict):
        facts.append(("archived", f"from {_esc(archived.get('from'))} at {_esc(archived.get('at'))}"))
    parts.append(_facts(facts))
    parts.append(_best_html(v, out))
    parts.append("<h2>Plots</h2>")
    for key, fig in figs.items():
        parts.append(f"<h3>{_esc(_PLOT_TITLES.get(key, key))}</h3>")
        if fig.get("note"):
            parts.append(f'<p class="note" id="note-{key}">{_esc(fig["note"])}</p>')
        parts.append(f'<div class="plot" id="plot-{key}"></div>')
    parts.append(_trials_html(v))
    parts.append(f'<script type="application/json" id="knobflow-figures">{script_json(figs)}</script>')
    parts.append(f"<script>{_DRAW}</script>")
    parts.append('<p class="note">Written by knobflow.</p>')
    return _page(f"knobflow: {name}", "\n".join(parts), head=script)


def render_index(store: Any, *, link: Callable[[str], str] = lambda name: f"{name}.html") -> str:
    """A page listing the experiments of ``store`` (not archives): name (linked to ``link(name)``),
    trials done of the budget, best value (or the Pareto front's size) and state."""
    from knobflow import views
    from knobflow.store import is_archive

    rows = []
    for name in store.names():
        if is_archive(name):
            continue
        v = views.view(store, name)
        reason = views.stop_reason(store, v)
        out = views.outcome(v)
        budget = (v.spec.get("budget") or {}).get("trials")
        if out["pareto"] is not None:
            n = len(out["pareto"])
            best = f"Pareto front: {n} trial{'' if n == 1 else 's'}"
        elif out["best"] is not None:
            best = f"{_fmt(out['best']['value'])} (trial {out['best']['trial']})"
        else:
            best = "-"
        gain = f"{out['gain_pct']:+.1f}%" if out["gain_pct"] is not None else ""
        rows.append(
            f'<tr><td><a href="{_esc(link(name))}">{_esc(name)}</a></td>'
            f'<td class="num">{v.progress.done} / {_esc(budget if budget is not None else "?")}</td>'
            f"<td>{_esc(views.objectives_text(v, short=True))}</td>"
            f'<td>{_esc(best)}</td><td class="num">{_esc(gain)}</td>'
            f"<td>{_esc(views.status(v, reason))}</td></tr>"
        )
    if rows:
        body = (
            '<table class="experiments"><tr><th>experiment</th><th>trials done / budget</th><th>objective</th>'
            "<th>best</th><th>gain</th><th>state</th></tr>\n" + "\n".join(rows) + "\n</table>"
        )
    else:
        body = '<p class="note">no experiments in this store yet</p>'
    return _page("knobflow experiments", f"<h1>Experiments</h1>\n{body}")
