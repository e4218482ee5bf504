"""The search space: tunables with their domains, conditions (when a tunable is active) and
constraints between tunables.

A tunable with ``when`` is active only when its condition holds, for example the G1 flags only when
``gc == "G1"``; an inactive tunable is absent from a configuration (its role leaves the setting
alone). A condition is either a mapping ``{other_tunable: value-or-list-of-values}`` (all must
hold) or an expression. Constraints are expressions over tunables that every configuration must
satisfy (``xms_mb <= xmx_mb``); a constraint that mentions an inactive tunable does not apply.

Every tuner proposes through :meth:`Space.suggest` (define-by-run: only active tunables are drawn,
parents before children) and knobflow rejects and redraws a proposal that breaks a constraint, so
no trial ever runs an infeasible or inactive combination.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from random import Random
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from knobflow.expr import Expr, ExprError, compile_expr

Suggest = Callable[[str, BaseDistribution], Any]


class SpaceError(ValueError):
    """The space is inconsistent. ``field`` names the offending field of the experiment file."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Condition:
    """When a tunable is active: every ``equals`` entry holds, and ``expr`` (if any) is true."""

    equals: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    expr: Expr | None = None

    @property
    def parents(self) -> set[str]:
        out = {name for name, _ in self.equals}
        if self.expr is not None:
            out |= set(self.expr.names)
        return out

    def holds(self, params: Mapping[str, Any]) -> bool:
        for name, values in self.equals:
            if name not in params or not any(_same(params[name], v) for v in values):
                return False
        if self.expr is not None:
            if any(n not in params for n in self.expr.names):
                return False
            return bool(self.expr.evaluate(params))
        return True

    def describe(self) -> str:
        parts = [f"{n} == {vals[0]!r}" if len(vals) == 1 else f"{n} in {list(vals)!r}" for n, vals in self.equals]
        if self.expr is not None:
            parts.append(self.expr.text)
        return " and ".join(parts)


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 (YAML booleans against numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


@dataclass(frozen=True)
class Param:
    name: str
    distribution: BaseDistribution
    default: Any
    layer: str
    condition: Condition | None = None


class Space:
    """Tunables in dependency order (parents before the tunables whose condition names them)."""

    def __init__(self, params: list[Param], constraints: list[Expr] | None = None):
        self.params: dict[str, Param] = {p.name: p for p in _topological(params)}
        self.constraints = list(constraints or [])

    # Construction ------------------------------------------------------------------------
    @classmethod
    def from_experiment(cls, exp: Any) -> Space:
        """The space of a validated :class:`knobflow.spec.Experiment`."""
        return cls.from_model(exp.model)

    @classmethod
    def from_model(cls, model: Any) -> Space:
        from knobflow.store import distribution

        names = {t.name for t in model.tunables}
        params = [
            Param(t.name, distribution(t), t.default, t.layer, parse_condition(t.when, t.name, names))
            for t in model.tunables
        ]
        constraints = [compile_expr(c, known=names, boolean=True, what="tunable") for c in (model.constraints or [])]
        return cls(params, constraints)

    # Queries -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def conditional(self) -> bool:
        return any(p.condition is not None for p in self.params.values())

    def distributions(self) -> dict[str, BaseDistribution]:
        return {n: p.distribution for n, p in self.params.items()}

    def active(self, name: str, params: Mapping[str, Any]) -> bool:
        cond = self.params[name].condition
        return cond is None or cond.holds(params)

    def defaults(self) -> dict[str, Any]:
        """The baseline: every active tunable at its default."""
        return self.complete({})

    def complete(self, partial: Mapping[str, Any]) -> dict[str, Any]:
        """A configuration from ``partial``: given values for active tunables, defaults for the rest."""
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            if self.active(name, out):
                out[name] = partial.get(name, p.default)
        return out

    def suggest(self, draw: Suggest) -> dict[str, Any]:
        """Draw a configuration define-by-run: ``draw(name, distribution)`` for each active tunable."""
        out: dict[str, Any] = {}
        for name, p in self.params.items():
            if self.active(name, out):
                out[name] = draw(name, p.distribution)
        return out

    def violations(self, params: Mapping[str, Any]) -> list[str]:
        """The constraints ``params`` breaks (those naming an inactive tunable do not apply)."""
        broken = []
        for c in self.constraints:
            if any(n not in params for n in c.names):
                continue
            if not bool(c.evaluate(params)):
                broken.append(c.text)
        return broken

    def problems(self, params: Mapping[str, Any]) -> list[str]:
        """Everything wrong with a configuration: inactive or missing tunables, values outside their
        domain, broken constraints. Empty when the configuration may run."""
        out: list[str] = []
        seen: dict[str, Any] = {}
        for name, p in self.params.items():
            is_active = self.active(name, seen)
            if name in params and not is_active:
                out.append(f"{name} is set but inactive (its condition {p.condition.describe()} does not hold)")  # type: ignore[union-attr]
            elif is_active and name not in params:
                out.append(f"{name} is missing")
            elif is_active:
                if not in_domain(p.distribution, params[name]):
                    out.append(f"{name}={params[name]!r} is outside its domain ({describe(p.distribution)})")
                seen[name] = params[name]
        unknown = sorted(set(params) - set(self.params))
        out.extend(f"{n} is not a tunable of this experiment" for n in unknown)
        if not out:
            out.extend(f"breaks the constraint {c}" for c in self.violations(params))
        return out

    def feasible(self, params: Mapping[str, Any]) -> bool:
        return not self.problems(params)

    def random(self, rng: Random) -> dict[str, Any]:
        """A uniformly drawn configuration (log-uniform on log scales), not checked against constraints."""
        return self.suggest(lambda _n, d: sample(d, rng))

    def random_feasible(self, rng: Random, attempts: int = 10_000) -> dict[str, Any] | None:
        for _ in range(attempts):
            cand = self.random(rng)
            if not self.violations(cand):
                return cand
        return None

    def key(self, params: Mapping[str, Any]) -> str:
        """A canonical text for a configuration: equal configurations have equal keys."""
        parts = []
        for name, p in self.params.items():
            if name in params:
                v = params[name]
                if isinstance(p.distribution, FloatDistribution):
                    v = float(f"{float(v):.10g}")
                parts.append(f"{name}={v!r}")
        return ";".join(parts)


# --------------------------------------------------------------------------------------------
# Conditions


def parse_condition(raw: Any, owner: str, names: set[str]) -> Condition | None:
    """A tunable's ``when``: a mapping of other tunables to a value or a list of values, or an expression."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            e = compile_expr(raw, known=names, what="tunable")
        except ExprError as exc:
            raise SpaceError("when", str(exc)) from None
        if owner in e.names:
            raise SpaceError("when", f"a tunable's condition cannot depend on itself ({owner})")
        return Condition(expr=e)
    if isinstance(raw, dict):
        if not raw:
            raise SpaceError("when", "an empty condition: name at least one tunable and its value(s)")
        equals = []
        for name, values in raw.items():
            if name == owner:
                raise SpaceError(f"when.{name}", f"a tunable's condition cannot depend on itself ({owner})")
            if name not in names:
                raise SpaceError(f"when.{name}", f"unknown tunable {name!r} (known: {', '.join(sorted(names))})")
            vals = tuple(values) if isinstance(values, list) else (values,)
            if not vals:
                raise SpaceError(f"when.{name}", "an empty list of values: the tunable could never be active")
            equals.append((str(name), vals))
        return Condition(equals=tuple(equals))
    raise SpaceError("when", f"must be a mapping such as {{gc: G1}} or an expression, got {raw!r}")


def _topological(params: list[Param]) -> list[Param]:
    """Parents first, keeping the file's order otherwise. Raises SpaceError on a cycle."""
    by_name = {p.name: p for p in params}
    out: list[Param] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(p: Param, chain: list[str]) -> None:
        if state.get(p.name) == 2:
            return
        if state.get(p.name) == 1:
            cycle = [*chain[chain.index(p.name) :], p.name]
            raise SpaceError("when", f"conditions form a cycle: {' -> '.join(cycle)}")
        state[p.name] = 1
        for parent in sorted(p.condition.parents if p.condition else ()):
            if parent in by_name:
                visit(by_name[parent], [*chain, p.name])
        state[p.name] = 2
        out.append(p)

    for p in params:
        visit(p, [])
    return out


# --------------------------------------------------------------------------------------------
# Distributions


def in_domain(d: BaseDistribution, v: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return any(_same(v, c) and type(v) is type(c) for c in d.choices) or any(
            _same(v, c) and isinstance(v, int | float) and isinstance(c, int | float) for c in d.choices
        )
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return False
    assert isinstance(d, IntDistribution | FloatDistribution)
    if isinstance(d, IntDistribution) and v != int(v):
        return False
    if not (d.low - 1e-9 <= v <= d.high + 1e-9):
        return False
    if d.step is not None:
        k = (v - d.low) / d.step
        return abs(k - round(k)) < 1e-6
    return True


def describe(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return f"one of {list(d.choices)}"
    assert isinstance(d, IntDistribution | FloatDistribution)
    out = f"[{d.low}, {d.high}]"
    if d.step not in (None, 1) or (isinstance(d, FloatDistribution) and d.step is not None):
        out += f" step {d.step}"
    if d.log:
        out += " log scale"
    return out


def sample(d: BaseDistribution, rng: Random) -> Any:
    if isinstance(d, CategoricalDistribution):
        return d.choices[rng.randrange(len(d.choices))]
    assert isinstance(d, IntDistribution | FloatDistribution)
    x = math.exp(rng.uniform(math.log(d.low), math.log(d.high))) if d.log else rng.uniform(d.low, d.high)
    return snap(d, x)


def snap(d: BaseDistribution, x: float) -> Any:
    """The nearest value of the domain to ``x`` (on step, within bounds, int for int tunables)."""
    assert isinstance(d, IntDistribution | FloatDistribution)
    x = min(max(x, d.low), d.high)
    if d.step is not None:
        k = round((x - d.low) / d.step)
        x = d.low + k * d.step
        x = min(x, d.high)
    if isinstance(d, IntDistribution):
        return round(x)
    if d.step is not None:
        return float(round(x, 12))
    return float(x)
