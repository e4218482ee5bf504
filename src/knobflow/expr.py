"""Small, safe expressions: constraints between tunables, conditions, objective expressions and SLOs.

The language is a subset of Python's expression syntax::

    xmx_mb <= memory_limit_mb * 0.9
    gc == "G1" and max_gc_pause_ms < 200
    throughput / p99_ms
    p99_ms <= 1.1 * baseline

Allowed: numbers, strings, true/false (also True/False), names, ``+ - * / // % **``, comparisons
(chains too, ``1 <= a < b``), ``in`` / ``not in`` over a list, ``and or not``, ``x if c else y``,
and the functions ``min max abs log log2 log10 exp sqrt ceil floor round``. ``baseline.<metric>``
is allowed where the caller says so (SLOs). Nothing else: no attribute access, indexing, lambdas,
comprehensions or calls to anything but those functions. Expressions are checked when the
experiment file is read, so mistakes are reported with the field they are in.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FUNCTIONS: dict[str, Any] = {
    "min": min,
    "max": max,
    "abs": abs,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "ceil": math.ceil,
    "floor": math.floor,
    "round": round,
}
CONSTANTS: dict[str, Any] = {"true": True, "false": False, "True": True, "False": False}

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_UNARY = (ast.Not, ast.USub, ast.UAdd)
_BOOLEAN_NODES = (ast.Compare, ast.BoolOp)


class ExprError(ValueError):
    """An expression is malformed or uses something it may not."""


@dataclass(frozen=True)
class Expr:
    """A checked expression, ready to evaluate against a mapping of names to values."""

    text: str
    names: frozenset[str]
    attributes: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # (base, attr): baseline.p99_ms
    _code: Any = field(default=None, repr=False, compare=False)
    boolean: bool = False

    def __call__(self, env: Mapping[str, Any]) -> Any:
        scope: dict[str, Any] = dict(CONSTANTS)
        scope.update(FUNCTIONS)
        scope.update(env)
        for base, attr in self.attributes:
            scope[f"{base}__{attr}"] = env.get(f"{base}.{attr}")
        return eval(self._code, {"__builtins__": {}}, scope)

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """Evaluate; errors (a division by zero, a string compared with a number) raise ExprError."""
        try:
            return self(env)
        except ExprError:
            raise
        except Exception as exc:
            raise ExprError(f"{self.text!r} cannot be evaluated: {type(exc).__name__}: {exc}") from None


class _Rewrite(ast.NodeTransformer):
    """``baseline.x`` becomes the name ``baseline__x`` (attributes are otherwise refused)."""

    def __init__(self, attribute_bases: frozenset[str]):
        self.bases = attribute_bases
        self.attributes: set[tuple[str, str]] = set()

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id in self.bases and isinstance(node.ctx, ast.Load):
            self.attributes.add((node.value.id, node.attr))
            return ast.copy_location(ast.Name(id=f"{node.value.id}__{node.attr}", ctx=ast.Load()), node)
        raise ExprError(f"attribute access ({ast.unparse(node)}) is not allowed")


def _check(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, ast.Expression):
        _check(node.body, names)
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, int | float | str | bool):
            raise ExprError(f"the constant {node.value!r} is not allowed")
    elif isinstance(node, ast.Name):
        if node.id not in FUNCTIONS and node.id not in CONSTANTS:
            names.add(node.id)
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BINOPS):
            raise ExprError(f"the operator in {ast.unparse(node)!r} is not allowed")
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _UNARY):
            raise ExprError(f"the operator in {ast.unparse(node)!r} is not allowed")
        _check(node.operand, names)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, names)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if not isinstance(op, _CMPOPS):
                raise ExprError(f"the comparison in {ast.unparse(node)!r} is not allowed (use == != < <= > >= in)")
        _check(node.left, names)
        for c in node.comparators:
            _check(c, names)
    elif isinstance(node, ast.IfExp):
        for part in (node.test, node.body, node.orelse):
            _check(part, names)
    elif isinstance(node, ast.List | ast.Tuple | ast.Set):
        for e in node.elts:
            _check(e, names)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = ast.unparse(node.func)
            raise ExprError(f"unknown function {what!r}; allowed: {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise ExprError(f"keyword arguments are not allowed ({ast.unparse(node)})")
        if not node.args:
            raise ExprError(f"{node.func.id}() needs arguments")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise ExprError("*arguments are not allowed")
            _check(a, names)
    else:
        kind = type(node).__name__
        raise ExprError(f"{kind} ({ast.unparse(node)!r}) is not allowed in an expression")


def compile_expr(
    text: Any,
    *,
    known: set[str] | frozenset[str] | None = None,
    attribute_bases: frozenset[str] = frozenset(),
    boolean: bool | None = None,
    what: str = "name",
) -> Expr:
    """Parse and check ``text``. ``known`` limits the names it may use; ``boolean`` requires (True) or
    forbids (False) a condition at the top level (a comparison or and/or/not)."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError(f"must be an expression (a non-empty string), got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise ExprError(f"not a valid expression{col}: {exc.msg} in {text!r}") from None
    tree = _Rewrite(attribute_bases).visit(tree)
    names: set[str] = set()
    _check(tree, names)
    attrs = {(b, a) for b, a in _attributes(tree, attribute_bases)}
    plain = {n for n in names if not any(n == f"{b}__{a}" for b, a in attrs)}
    if known is not None:
        unknown = sorted(plain - set(known))
        if unknown:
            listing = ", ".join(sorted(known)) or "none"
            raise ExprError(f"unknown {what} {unknown[0]!r} in {text!r} (known: {listing})")
    body = tree.body
    is_bool = isinstance(body, _BOOLEAN_NODES) or (isinstance(body, ast.UnaryOp) and isinstance(body.op, ast.Not))
    if boolean is True and not is_bool:
        raise ExprError(f"must be a condition such as 'a <= b', got {text!r}")
    if boolean is False and is_bool:
        raise ExprError(f"must be a value such as 'a / b', not a condition: {text!r}")
    code = compile(ast.fix_missing_locations(tree), "<expression>", "eval")
    return Expr(
        text=text.strip(),
        names=frozenset(plain),
        attributes=frozenset(attrs),
        _code=code,
        boolean=is_bool,
    )


def _attributes(tree: ast.AST, bases: frozenset[str]) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and "__" in node.id:
            base, _, attr = node.id.partition("__")
            if base in bases:
                out.append((base, attr))
    return out


def comparison_sides(e: Expr) -> tuple[str, str, str] | None:
    """For ``left OP right`` (one comparison): the source of each side and the operator."""
    body = ast.parse(e.text, mode="eval").body
    if isinstance(body, ast.Compare) and len(body.ops) == 1:
        ops = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
        op = ops.get(type(body.ops[0]))
        if op is not None:
            return ast.unparse(body.left), op, ast.unparse(body.comparators[0])
    return None
