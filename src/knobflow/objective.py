"""Objectives and SLOs: from the metrics a benchmark reports to the values a tuner optimises.

An objective is a metric (``throughput``) or an expression over metrics (``throughput / p99_ms``),
maximised or minimised. Several objectives make a multi-objective experiment, whose answer is a
Pareto front. SLOs are conditions over metrics, absolute (``p99_ms <= 50``) or relative to the
baseline (``p99_ms <= 1.1 * baseline``, where ``baseline`` is the left side measured on the
baseline trial; ``baseline.<metric>`` names any baseline metric). A trial that breaks an SLO is
recorded as infeasible: its values are kept, it is never reported as best, and tuners that model
constraints (TPE, NSGA-II, GP, auto) learn from how far it missed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from knobflow.expr import Expr, ExprError, comparison_sides, compile_expr


@dataclass(frozen=True)
class ObjectiveDef:
    label: str
    direction: str  # maximize | minimize
    metric: str | None
    expr: Expr | None

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def metrics(self) -> set[str]:
        return {self.metric} if self.metric else set(self.expr.names if self.expr else ())

    def value(self, metrics: Mapping[str, Any]) -> float:
        """The objective's value; raises ValueError naming what is missing or wrong."""
        missing = sorted(m for m in self.metrics if m not in metrics)
        if missing:
            got = ", ".join(sorted(metrics)) or "nothing"
            if self.expr is None:
                raise ValueError(
                    f"the benchmark did not report the objective metric {missing[0]!r} (it reported: {got})"
                )
            raise ValueError(
                f"the benchmark did not report the metric {missing[0]!r} that objective {self.label!r} needs "
                f"(it reported: {got})"
            )
        env = {}
        for m in self.metrics:
            try:
                env[m] = float(metrics[m])
            except (TypeError, ValueError):
                kind = "objective metric" if self.expr is None else "metric"
                raise ValueError(f"the {kind} {m!r} is not a number: {metrics[m]!r}") from None
        if self.expr is None:
            assert self.metric is not None
            v = env[self.metric]
        else:
            try:
                v = float(self.expr.evaluate(env))
            except (ExprError, TypeError, ValueError) as exc:
                raise ValueError(f"objective {self.label!r}: {exc}") from None
        if not math.isfinite(v):
            raise ValueError(f"objective {self.label!r} is not finite: {v}")
        return v


@dataclass(frozen=True)
class SLO:
    text: str
    check: Expr
    left: Expr | None  # for `left OP right`: how far from the limit a trial is
    op: str | None
    right: Expr | None

    @property
    def relative(self) -> bool:
        return "baseline" in self.check.names or bool(self.check.attributes)

    @property
    def metrics(self) -> set[str]:
        return set(self.check.names) - {"baseline"}

    def violation(self, metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> float:
        """<= 0 when the SLO holds, else how far it is missed (relative to the limit's size)."""
        env = _env(metrics)
        if self.relative:
            if baseline is None:
                raise ValueError(f"SLO {self.text!r} is relative to the baseline, which has no measurement")
            base = _env(baseline)
            for base_name, attr in self.check.attributes:
                if attr not in base:
                    raise ValueError(f"SLO {self.text!r}: the baseline did not report {attr!r}")
                env[f"{base_name}.{attr}"] = base[attr]
            if "baseline" in self.check.names:
                if self.left is None:
                    raise ValueError(f"SLO {self.text!r}: bare 'baseline' needs a comparison 'left OP ... baseline'")
                env["baseline"] = float(self.left.evaluate(base))
        missing = sorted(m for m in self.metrics if m not in env)
        if missing:
            raise ValueError(f"SLO {self.text!r} needs the metric {missing[0]!r}, which the benchmark did not report")
        if self.left is not None and self.right is not None and self.op in ("<", "<=", ">", ">="):
            lhs, rhs = float(self.left.evaluate(env)), float(self.right.evaluate(env))
            gap = lhs - rhs if self.op in ("<", "<=") else rhs - lhs
            if self.op in ("<", ">") and gap == 0:
                gap = 1e-12
            scale = max(abs(rhs), 1e-12)
            return gap / scale
        return 0.0 if bool(self.check.evaluate(env)) else 1.0


def _env(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = v
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


@dataclass
class Outcome:
    """What one trial's metrics mean for the experiment."""

    values: list[float] | None
    reason: str | None = None  # why no values (the trial fails)
    violations: list[str] = field(default_factory=list)  # SLOs broken (the trial is infeasible)
    constraint_values: list[float] = field(default_factory=list)  # one per SLO, <= 0 when met

    @property
    def feasible(self) -> bool:
        return self.values is not None and not self.violations


@dataclass(frozen=True)
class Objectives:
    objectives: tuple[ObjectiveDef, ...]
    slos: tuple[SLO, ...] = ()

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objectives]

    def evaluate(self, metrics: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> Outcome:
        try:
            values = [o.value(metrics) for o in self.objectives]
        except ValueError as exc:
            return Outcome(values=None, reason=str(exc))
        violations: list[str] = []
        cvals: list[float] = []
        for s in self.slos:
            try:
                v = s.violation(metrics, baseline)
            except (ValueError, ExprError, TypeError) as exc:
                violations.append(f"{s.text} (cannot be checked: {exc})")
                cvals.append(1.0)
                continue
            cvals.append(v)
            if v > 0:
                violations.append(s.text)
        return Outcome(values=values, violations=violations, constraint_values=cvals)

    # Ranking ---------------------------------------------------------------------------------
    def better(self, a: float, b: float, index: int = 0) -> bool:
        return a > b if self.objectives[index].maximize else a < b

    def dominates(self, a: Sequence[float], b: Sequence[float]) -> bool:
        """Pareto dominance: no worse in every objective, better in one."""
        no_worse = all(not self.better(y, x, i) for i, (x, y) in enumerate(zip(a, b, strict=True)))
        return no_worse and any(self.better(x, y, i) for i, (x, y) in enumerate(zip(a, b, strict=True)))

    def pareto(self, points: Sequence[tuple[Any, Sequence[float]]]) -> list[Any]:
        """The items of ``(item, values)`` that no other point dominates, in input order."""
        return [item for item, v in points if not any(self.dominates(w, v) for other, w in points if other is not item)]


def from_model(model: Any) -> Objectives:
    """The objectives and SLOs of an :class:`knobflow.spec.ExperimentModel` (already checked)."""
    objs = [model.objective] if model.objective is not None else list(model.objectives or [])
    defs = []
    for o in objs:
        e = None if o.expression is None else compile_expr(o.expression, boolean=False, what="metric")
        defs.append(ObjectiveDef(label=o.label, direction=o.direction, metric=o.metric, expr=e))
    return Objectives(objectives=tuple(defs), slos=tuple(compile_slo(s) for s in model.slos))


def compile_slo(text: str) -> SLO:
    check = compile_expr(text, boolean=True, attribute_bases=frozenset({"baseline"}), what="metric")
    sides = comparison_sides(check)
    left = right = None
    op = None
    if sides is not None:
        ltext, op, rtext = sides
        left = compile_expr(ltext, attribute_bases=frozenset({"baseline"}))
        right = compile_expr(rtext, attribute_bases=frozenset({"baseline"}))
        if "baseline" in left.names:
            raise ExprError(f"put 'baseline' on the right-hand side: {text!r} (for example p99_ms <= 1.1 * baseline)")
    elif "baseline" in check.names:
        raise ExprError(f"bare 'baseline' needs one comparison such as 'p99_ms <= 1.1 * baseline': {text!r}")
    return SLO(text=check.text, check=check, left=left, op=op, right=right)
