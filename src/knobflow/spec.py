"""The experiment file: a YAML document parsed into a typed, validated model.

Every problem found is reported with the path of the field and, where the YAML says, its line::

    experiments/x.yaml:14: tunables[3].high: must be greater than low (4 <= 8)

Validation has no side effects: nothing is created on disk or in any store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knobflow import _paths

LAYERS = ("container", "runtime", "stack", "os")
NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
EXPERIMENT_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Model):
    metric: str = Field(min_length=1, description="Name of the metric the benchmark reports.")
    direction: Literal["maximize", "minimize"]


class Tunable(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    layer: Literal["container", "runtime", "stack", "os"]
    type: Literal["int", "float", "categorical", "bool"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: list[Scalar] | None = None
    default: Scalar
    description: str = ""


class Layer(_Model):
    role: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    vars: dict[str, Any] = Field(default_factory=dict)


class TunerSpec(_Model):
    name: str = "tpe"
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Budget(_Model):
    trials: Annotated[int, Field(ge=1, le=1024)]
    max_failed: Annotated[int, Field(ge=1)] = 5
    trial_timeout: Annotated[int, Field(ge=1)] = 1800


class Benchmark(_Model):
    role: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    playbook: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    warmup: Annotated[int, Field(ge=0)] = 1
    repeats: Annotated[int, Field(ge=1)] = 3
    aggregate: Literal["median", "mean", "min", "max"] = "median"
    timeout: Annotated[int, Field(ge=1)] = 600


class Target(_Model):
    inventory: str | None = None
    hosts: str = "all"


class ExperimentModel(_Model):
    name: Annotated[str, Field(pattern=EXPERIMENT_NAME_RE, max_length=100)]
    description: str = ""
    objective: Objective
    tunables: Annotated[list[Tunable], Field(min_length=1)]
    layers: dict[Literal["container", "runtime", "stack", "os"], Layer] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    tuner: TunerSpec = Field(default_factory=TunerSpec)
    budget: Budget
    benchmark: Benchmark
    target: Target = Field(default_factory=Target)
    storage: str | None = None
    parallel: Annotated[int, Field(ge=1)] = 1
    finish: Literal["revert", "best", "keep"] = "revert"


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(Exception):
    """An experiment file is invalid. ``problems`` holds one entry per mistake."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.format(source) for p in problems))


@dataclass(frozen=True)
class Experiment:
    """A validated experiment, with where it came from resolved."""

    model: ExperimentModel
    path: Path | None
    base_dir: Path

    # Convenience accessors -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.model.name

    @property
    def tunables(self) -> list[Tunable]:
        return self.model.tunables

    @property
    def maximize(self) -> bool:
        return self.model.objective.direction == "maximize"

    def defaults(self) -> dict[str, Scalar]:
        return {t.name: t.default for t in self.model.tunables}

    def inventory(self) -> Path:
        inv = self.model.target.inventory
        if inv is None:
            return _paths.default_inventory()
        return _resolve_content_path(inv, self.base_dir, "inventories") or (self.base_dir / inv)

    def roles_path(self) -> list[Path]:
        """Roles next to the experiment file come first, then knobflow's own."""
        own = self.base_dir / "roles"
        paths = [own] if own.is_dir() else []
        return [*paths, _paths.roles_dir()]

    def benchmark_playbook(self) -> Path | None:
        pb = self.model.benchmark.playbook
        return None if pb is None else (self.base_dir / pb).resolve()

    def storage_url(self) -> str:
        if self.model.storage:
            return self.model.storage
        return f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}"

    def space_fingerprint(self) -> str:
        """A hash of what makes trials comparable: the search space (in any order) and the objective metric.

        A study refuses a file whose fingerprint differs from the one it was created with.
        """
        space = sorted([t.name, t.type, t.low, t.high, t.step, t.log, t.choices] for t in self.model.tunables)
        space.append(["objective", self.model.objective.metric])
        return hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:16]

    def params_by_layer(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for t in self.model.tunables:
            if t.name in params:
                out.setdefault(t.layer, {})[t.name] = params[t.name]
        return out

    def extravars(self) -> dict[str, Any]:
        """Experiment-level variables for every playbook run (checked for conflicts)."""
        merged: dict[str, Any] = dict(self.model.vars)
        for layer in self.model.layers.values():
            merged.update(layer.vars)
        merged.update(self.model.benchmark.vars)
        return merged


# --------------------------------------------------------------------------------------------
# Loading


def _resolve_content_path(value: str, base_dir: Path, kind: str) -> Path | None:
    for candidate in (base_dir / value, _paths.content_dir() / value, _paths.content_dir() / kind / value):
        if candidate.exists():
            return candidate.resolve()
    return None


def _marks(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            _marks(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1  # the key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _marks(item, (*path, i), out)


def _fmt_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_for(loc: tuple[Any, ...], marks: dict[tuple[Any, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return None


def _pydantic_problems(err: ValidationError, marks: dict[tuple[Any, ...], int]) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        # Pydantic reports union members as extra path parts ("int", "float", ...): drop them.
        loc = tuple(p for p in loc if p not in ("int", "float", "str", "bool"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling and indentation)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg}; got {e.get('input')!r}"
        problems.append(Problem(_fmt_path(loc), msg, _line_for(loc, marks)))
    # One problem per field: union types produce one entry per member.
    seen: set[str] = set()
    unique = []
    for p in problems:
        if p.path not in seen:
            seen.add(p.path)
            unique.append(p)
    return unique


def parse(text: str, *, source: str = "<string>", base_dir: Path | None = None) -> Experiment:
    """Parse and validate an experiment document. Raises :class:`SpecError`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [Problem("", f"not valid YAML: {problem}", line)]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise SpecError(source, [Problem("", f"an experiment file must be a YAML mapping, got {kind}", 1)])
    marks: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _marks(node, (), marks)
    try:
        model = ExperimentModel.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, _pydantic_problems(err, marks)) from None
    exp = Experiment(model=model, path=None, base_dir=(base_dir or Path.cwd()).resolve())
    problems = _semantic_problems(exp, data)
    if problems:
        for i, p in enumerate(problems):
            loc = _parse_path(p.path)
            problems[i] = Problem(p.path, p.message, _line_for(loc, marks))
        raise SpecError(source, problems)
    return exp


def load(path: str | Path) -> Experiment:
    """Read and validate an experiment file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), [Problem("", "file not found")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [Problem("", f"cannot read: {exc}")]) from None
    exp = parse(text, source=str(path), base_dir=p.resolve().parent)
    return Experiment(model=exp.model, path=p.resolve(), base_dir=p.resolve().parent)


def _parse_path(path: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        out.append(int(index) if index else name)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Checks that need more than one field


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _tunable_problems(i: int, t: Tunable) -> list[Problem]:
    p = f"tunables[{i}]"
    out: list[Problem] = []

    def bad(field: str, msg: str) -> None:
        out.append(Problem(f"{p}.{field}" if field else p, msg))

    if t.type == "bool":
        for field in ("low", "high", "step", "choices"):
            if getattr(t, field) is not None:
                bad(field, "not allowed for a bool tunable (its values are true and false)")
        if t.log:
            bad("log", "not allowed for a bool tunable")
        if not isinstance(t.default, bool):
            bad("default", f"must be true or false, got {t.default!r}")
        return out

    if t.type == "categorical":
        for field in ("low", "high", "step"):
            if getattr(t, field) is not None:
                bad(field, "not allowed for a categorical tunable (use choices)")
        if t.log:
            bad("log", "not allowed for a categorical tunable")
        if not t.choices:
            bad("choices", "a categorical tunable needs a non-empty list of choices")
            return out
        if len({json.dumps(c) for c in t.choices}) != len(t.choices):
            bad("choices", "choices must be unique")
        kinds = {type(c) for c in t.choices}
        if bool in kinds and str in kinds:
            bad(
                "choices",
                'mixes booleans and strings: YAML reads unquoted off/on/yes/no as booleans; quote them ("off")',
            )
        if not any(c == t.default and type(c) is type(t.default) for c in t.choices):
            bad("default", f"{t.default!r} is not one of the choices {t.choices}")
        return out

    if t.choices is not None:
        bad("choices", f"only categorical tunables have choices (this one is {t.type})")
    check = _is_int if t.type == "int" else _is_num
    kind = "an integer" if t.type == "int" else "a number"
    for field in ("low", "high"):
        value = getattr(t, field)
        if value is None:
            bad(field, f"required for a {t.type} tunable")
        elif not check(value):
            bad(field, f"must be {kind}, got {value!r}")
    if out:
        return out
    assert t.low is not None and t.high is not None
    if t.high <= t.low:
        bad("high", f"must be greater than low ({t.high} <= {t.low})")
        return out
    if t.step is not None:
        if not check(t.step) or t.step <= 0:
            bad("step", f"must be a positive {'integer' if t.type == 'int' else 'number'}, got {t.step!r}")
            return out
        if t.log and (t.type == "float" or t.step != 1):
            bad("step", "a log-scale tunable cannot have a step (remove step or log)")
            return out
        span = (t.high - t.low) / t.step
        if abs(span - round(span)) > 1e-9:
            bad("high", f"high - low ({t.high} - {t.low}) must be a multiple of step {t.step}")
    if t.log and t.low <= 0:
        bad("low", f"must be > 0 on a log scale, got {t.low}")
    d = t.default
    if not check(d):
        bad("default", f"must be {kind}, got {d!r}")
    elif not (t.low <= d <= t.high):  # type: ignore[operator]
        bad("default", f"{d} is outside [{t.low}, {t.high}]")
    elif t.step is not None and not t.log:
        k = (d - t.low) / t.step  # type: ignore[operator]
        if abs(k - round(k)) > 1e-9:
            bad("default", f"{d} is not on the grid low + k*step ({t.low} + k*{t.step})")
    return out


def _distributions(tunables: list[Tunable]) -> dict[str, Any]:
    from knobflow.store import distribution

    return {t.name: distribution(t) for t in tunables}


def _role_exists(name: str, roles_path: list[Path]) -> bool:
    if name.count(".") >= 2:  # a collection's role (namespace.collection.role): Ansible resolves it
        return True
    return any((d / name / "tasks").is_dir() for d in roles_path)


def _semantic_problems(exp: Experiment, data: dict[str, Any]) -> list[Problem]:
    from knobflow.tuners import registry

    m = exp.model
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(m.tunables):
        if t.name in seen:
            out.append(Problem(f"tunables[{i}].name", f"duplicate tunable {t.name!r} (also tunables[{seen[t.name]}])"))
        seen.setdefault(t.name, i)
        out.extend(_tunable_problems(i, t))
    space_ok = not out  # the tuner check below needs a valid space

    roles_path = exp.roles_path()
    used_layers = sorted({t.layer for t in m.tunables}, key=LAYERS.index)
    for layer in used_layers:
        if layer not in m.layers:
            first = next(i for i, t in enumerate(m.tunables) if t.layer == layer)
            out.append(
                Problem(
                    f"tunables[{first}].layer",
                    f"layer {layer!r} has no role: add layers.{layer}.role (the role that applies it)",
                )
            )
    for layer, spec in m.layers.items():
        if not _role_exists(spec.role, roles_path):
            out.append(Problem(f"layers.{layer}.role", f"no role {spec.role!r} in {', '.join(map(str, roles_path))}"))

    b = m.benchmark
    if (b.role is None) == (b.playbook is None):
        out.append(Problem("benchmark", "give exactly one of benchmark.role or benchmark.playbook"))
    elif b.role is not None and not _role_exists(b.role, roles_path):
        out.append(Problem("benchmark.role", f"no role {b.role!r} in {', '.join(map(str, roles_path))}"))
    elif b.playbook is not None:
        pb = exp.benchmark_playbook()
        if pb is None or not pb.is_file():
            out.append(Problem("benchmark.playbook", f"no such playbook: {pb}"))

    if m.tuner.name not in registry.names():
        out.append(Problem("tuner.name", f"unknown tuner {m.tuner.name!r}; known: {', '.join(registry.names())}"))
    elif space_ok and (why := registry.check(m.tuner.name, m.tuner.options, _distributions(m.tunables))):
        out.append(Problem("tuner.options" if why.startswith("options") else "tuner.name", why))

    if (
        m.target.inventory is not None
        and _resolve_content_path(m.target.inventory, exp.base_dir, "inventories") is None
    ):
        out.append(
            Problem(
                "target.inventory",
                f"no inventory {m.target.inventory!r} next to the file or in knobflow's inventories/",
            )
        )

    if m.storage is not None and not re.match(r"^[a-z][a-z0-9+]*://", m.storage):
        out.append(Problem("storage", f"must be a database URL such as sqlite:///path/to.db, got {m.storage!r}"))

    if m.parallel != 1:
        out.append(
            Problem(
                "parallel",
                "only parallel: 1 is supported in this version (parallel trials come with the Airflow executors work)",
            )
        )

    # The same variable set in two places is ambiguous: refuse it. A layer role's `<role>_settings`
    # and `knobflow_*` carry each trial's values: setting them as extra variables would override them.
    settings_vars = {f"{layer.role}_settings" for layer in m.layers.values()}
    owners: dict[str, str] = {}
    sources = [("vars", m.vars)] + [(f"layers.{k}.vars", v.vars) for k, v in m.layers.items()]
    sources.append(("benchmark.vars", b.vars))
    for where, variables in sources:
        for key in variables:
            if key == "knobflow" or key.startswith("knobflow_") or key in settings_vars:
                out.append(
                    Problem(
                        f"{where}.{key}",
                        f"{key!r} is reserved: knobflow sets it for every trial (extra variables would override "
                        "the trial's values)",
                    )
                )
            elif key in owners:
                out.append(Problem(f"{where}.{key}", f"also set in {owners[key]}; set each variable once"))
            else:
                owners[key] = where
    return out
