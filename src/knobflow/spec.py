"""The experiment file: a YAML document parsed into a typed, validated model.

Every problem found is reported with the path of the field and, where the YAML says, its line::

    experiments/x.yaml:14: tunables[3].high: must be greater than low (4 <= 8)

Validation has no side effects: nothing is created on disk or in any store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knobflow import _paths

if TYPE_CHECKING:
    from knobflow.objective import Objectives
    from knobflow.space import Space

LAYERS = ("container", "runtime", "stack", "os")
NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
EXPERIMENT_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Model):
    """One objective: a metric the benchmark reports, or an expression over several."""

    metric: str | None = Field(default=None, min_length=1, description="Name of the metric the benchmark reports.")
    expression: str | None = Field(default=None, description="An expression over metrics, e.g. throughput / p99_ms.")
    name: Annotated[str, Field(pattern=NAME_RE)] | None = None
    direction: Literal["maximize", "minimize"]

    @property
    def label(self) -> str:
        return self.name or self.metric or (self.expression or "")


class Tunable(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    layer: Annotated[str, Field(pattern=NAME_RE)]  # a built-in layer (LAYERS) or one declared under `layers`
    type: Literal["int", "float", "categorical", "bool"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: list[Scalar] | None = None
    default: Scalar
    description: str = ""
    when: dict[str, Scalar | list[Scalar]] | str | None = None


class Layer(_Model):
    role: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    vars: dict[str, Any] = Field(default_factory=dict)


class Step(_Model):
    """A set-up or tear-down step: one task file of a role, run once per `knobflow run`."""

    role: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    tasks_from: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "main"
    vars: dict[str, Any] = Field(default_factory=dict)


class TunerSpec(_Model):
    name: str = "auto"
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Budget(_Model):
    trials: Annotated[int, Field(ge=1, le=1024)]
    max_failed: Annotated[int, Field(ge=1)] = 5
    trial_timeout: Annotated[int, Field(ge=1)] = 1800
    time_limit: Annotated[int, Field(ge=1)] | str | None = None  # seconds, or "90m", "2h", "1h30m"
    target: float | None = None  # stop once the best value reaches this
    patience: Annotated[int, Field(ge=1)] | None = None  # stop after this many trials without improvement

    def time_limit_s(self) -> int | None:
        return None if self.time_limit is None else parse_duration(self.time_limit)


class Noise(_Model):
    remeasure_best: Annotated[int, Field(ge=0)] = 0  # every N trials run the incumbent again (0: never)
    repeat_duplicates: bool = False  # run a configuration that was already measured again


class WarmStart(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Annotated[str, Field(alias="from", pattern=EXPERIMENT_NAME_RE)]
    storage: str | None = None
    trials: Annotated[int, Field(ge=1)] | None = None  # the best N (default: all that fit this space)


def parse_duration(value: int | str) -> int:
    """Seconds from 3600, "3600", "90s", "45m", "2h" or "1h30m". Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"must be at least 1 second, got {value}")
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return parse_duration(int(text))
    m = re.fullmatch(r"(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+)\s*s)?", text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"not a duration: {value!r} (use seconds, or e.g. 90m, 2h, 1h30m)")
    d, h, mi, se = (int(g or 0) for g in m.groups())
    total = ((d * 24 + h) * 60 + mi) * 60 + se
    if total < 1:
        raise ValueError(f"must be at least 1 second, got {value!r}")
    return total


class Benchmark(_Model):
    role: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    playbook: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    warmup: Annotated[int, Field(ge=0)] = 1
    repeats: Annotated[int, Field(ge=1)] = 3
    aggregate: Literal["median", "mean", "trimmed_mean", "min", "max"] = "median"
    timeout: Annotated[int, Field(ge=1)] = 600


class Target(_Model):
    inventory: str | None = None
    hosts: str = "all"
    # all: each trial runs on every host of `hosts` together (one system spread over them);
    # one: the hosts are copies of one system and each trial takes one free host, so trials can run
    # in parallel (`parallel`), one benchmark per host at a time.
    per_trial: Literal["all", "one"] = "all"


class Promote(_Model):
    """``promote``: after the last trial, apply the best configuration to ``hosts`` and leave it there."""

    hosts: str | None = None  # an inventory host or group; target.hosts when not given
    approval: bool = True  # wait for a person's approval in Airflow (human-in-the-loop) first
    approval_timeout: Annotated[int, Field(ge=60)] = 86_400  # seconds to wait for it; then nothing is applied


SCHEDULE_PRESETS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually")


class Continuous(_Model):
    """``mode: continuous``: one round per scheduled run (:mod:`knobflow.continuous`)."""

    schedule: str = "@hourly"  # a cron expression or an Airflow preset
    max_step: Annotated[float, Field(gt=0, le=1)] = 0.25  # largest move per round, fraction of a range
    reward_floor: Annotated[float, Field(ge=-1, le=1)] = -0.2  # below it: restore the last good configuration
    pause_after: Annotated[int, Field(ge=1)] = 3  # consecutive bad rounds before pausing
    per_host: bool = False  # tune each host of target.hosts apart, one after another in a round
    # autoscope with per_host: each feature's value for a host, from the inventory:
    # "group" (the host's group among the feature's values), "host" (its name) or "var:NAME"
    context: dict[str, str] = Field(default_factory=dict)


def schedule_problem(schedule: str) -> str | None:
    """Why ``schedule`` is neither an Airflow preset nor a cron expression, or None."""
    if schedule.startswith("@"):
        if schedule in SCHEDULE_PRESETS:
            return None
        return f"unknown preset {schedule!r}; use a cron expression or one of {', '.join(SCHEDULE_PRESETS)}"
    from croniter import croniter

    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        return f"not a cron expression (five fields: minute hour day month weekday) or preset: {schedule!r}"
    return None


class ExperimentModel(_Model):
    name: Annotated[str, Field(pattern=EXPERIMENT_NAME_RE, max_length=100)]
    description: str = ""
    objective: Objective | None = None
    objectives: Annotated[list[Objective], Field(min_length=2)] | None = None
    slos: list[str] = Field(default_factory=list)
    tunables: Annotated[list[Tunable], Field(min_length=1)]
    constraints: list[str] = Field(default_factory=list)
    layers: dict[Annotated[str, Field(pattern=NAME_RE)], Layer] = Field(default_factory=dict)
    setup: list[Step] = Field(default_factory=list)
    teardown: list[Step] = Field(default_factory=list)
    roles_path: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)  # your own roles
    vars: dict[str, Any] = Field(default_factory=dict)
    tuner: TunerSpec = Field(default_factory=TunerSpec)
    budget: Budget
    # ansible: knobflow applies each trial's configuration and runs the benchmark (Airflow, `knobflow
    # run`). client: clients of the tuning service run the trials (ask, run, tell): no benchmark,
    # and layers need no roles.
    runner: Literal["ansible", "client"] = "ansible"
    benchmark: Benchmark | None = None
    target: Target = Field(default_factory=Target)
    storage: str | None = None
    parallel: Annotated[int, Field(ge=1)] = 1
    finish: Literal["revert", "best", "keep"] = "revert"
    promote: Promote | None = None
    noise: Noise = Field(default_factory=Noise)
    warm_start: WarmStart | None = None
    mode: Literal["offline", "continuous"] = "offline"
    continuous: Continuous | None = None


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
    def continuous(self) -> Continuous:
        """The continuous-tuning settings (their defaults when the file gives no block)."""
        return self.model.continuous or Continuous()

    def for_hosts(self, pattern: str) -> Experiment:
        """This experiment with ``target.hosts`` replaced (one host of a per-host continuous round)."""
        target = self.model.target.model_copy(update={"hosts": pattern})
        return dataclasses.replace(self, model=self.model.model_copy(update={"target": target}))

    def tuner_options(self) -> dict[str, Any]:
        """The tuner's options; for per-host contexts (``continuous.context``) with a placeholder
        context that fits the features (each host's own comes from the inventory in each round)."""
        options = self.model.tuner.options
        c = self.model.continuous
        if self.model.mode == "continuous" and c is not None and c.context and "context" not in options:
            from knobflow.tuners.online_adapter import per_host_options

            return per_host_options(options)
        return options

    @property
    def tunables(self) -> list[Tunable]:
        return self.model.tunables

    @property
    def objective_list(self) -> list[Objective]:
        m = self.model
        return [m.objective] if m.objective is not None else list(m.objectives or [])

    @property
    def maximize(self) -> bool:
        """The (first) objective's direction."""
        return self.objective_list[0].direction == "maximize"

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objective_list]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_list) > 1

    def objective_text(self) -> str:
        """``maximize throughput`` or ``maximize throughput, minimize p99_ms`` (+ SLOs)."""
        text = ", ".join(f"{o.direction} {o.label}" for o in self.objective_list)
        if self.model.slos:
            text += f" subject to {'; '.join(self.model.slos)}"
        return text

    def space(self) -> Space:
        from knobflow.space import Space

        return Space.from_model(self.model)

    def objectives(self) -> Objectives:
        from knobflow import objective

        return objective.from_model(self.model)

    def defaults(self) -> dict[str, Scalar]:
        """The baseline: every active tunable at its default (inactive ones are left out)."""
        return self.space().defaults()

    def inventory(self) -> Path:
        inv = self.model.target.inventory
        if inv is None:
            return _paths.default_inventory()
        return _resolve_content_path(inv, self.base_dir, "inventories") or (self.base_dir / inv)

    def declared_roles_path(self) -> list[Path]:
        return [(self.base_dir / Path(os.path.expandvars(p)).expanduser()).resolve() for p in self.model.roles_path]

    def roles_path(self) -> list[Path]:
        """Where Ansible looks for roles: the file's ``roles_path`` entries (relative to the file; ``~``
        and environment variables expanded), then a ``roles/`` folder next to the file, then knobflow's own."""
        own = self.base_dir / "roles"
        paths = [*self.declared_roles_path(), *([own] if own.is_dir() else [])]
        return list(dict.fromkeys([*paths, _paths.roles_dir()]))

    @property
    def benchmark(self) -> Benchmark:
        """The benchmark (its defaults for an experiment whose clients run the trials)."""
        return self.model.benchmark or Benchmark()

    def benchmark_playbook(self) -> Path | None:
        pb = self.benchmark.playbook
        return None if pb is None else (self.base_dir / pb).resolve()

    def storage_url(self) -> str:
        if self.model.storage:
            return self.model.storage
        return f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}"

    def space_fingerprint(self) -> str:
        """A hash of what makes trials comparable: the search space (in any order) and the objective metric.

        A study refuses a file whose fingerprint differs from the one it was created with.
        """
        rows: list[list[Any]] = [
            [t.name, t.type, t.low, t.high, t.step, t.log, t.choices] + ([t.when] if t.when is not None else [])
            for t in self.model.tunables
        ]
        space: list[Any] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
        objectives = [[o.metric, o.expression] if o.expression else o.metric for o in self.objective_list]
        space.append(["objective", objectives[0] if len(objectives) == 1 else objectives])
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
        for step in [*self.model.setup, *self.model.teardown]:
            merged.update(step.vars)
        merged.update(self.benchmark.vars)
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


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set ``overrides`` (dotted paths such as ``tuner.name``) in a parsed document, in place."""
    for path, value in overrides.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError("<overrides>", [Problem(path, f"cannot set {path}: {part} is not a mapping")])
            node = child
        node[leaf] = value


def parse(
    text: str, *, source: str = "<string>", base_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> Experiment:
    """Parse and validate an experiment document. Raises :class:`SpecError`.

    ``overrides`` sets fields before validation, by dotted path (``{"tuner.name": "tpe"}``): a DAG
    run's trigger parameters reach the experiment this way and are validated like the file.
    """
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
    if overrides:
        _apply_overrides(data, overrides)
    marks: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _marks(node, (), marks)
    try:
        model = ExperimentModel.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, _from_overrides(_pydantic_problems(err, marks), overrides)) from None
    exp = Experiment(model=model, path=None, base_dir=(base_dir or Path.cwd()).resolve())
    problems = _semantic_problems(exp, data)
    if problems:
        for i, p in enumerate(problems):
            loc = _parse_path(p.path)
            problems[i] = Problem(p.path, p.message, _line_for(loc, marks))
        raise SpecError(source, _from_overrides(problems, overrides))
    return exp


def _from_overrides(problems: list[Problem], overrides: dict[str, Any] | None) -> list[Problem]:
    """Say which problems come from an override, not from the file's own text."""
    if not overrides:
        return problems
    out = []
    for p in problems:
        hit = next(
            (k for k in overrides if p.path == k or p.path.startswith(k + ".") or p.path.startswith(k + "[")), None
        )
        if hit is not None:
            p = Problem(p.path, f"{p.message} (set by the run's parameters: {hit} = {overrides[hit]!r})")
        out.append(p)
    return out


def load(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment file (with ``overrides``: see :func:`parse`)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), [Problem("", "file not found")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [Problem("", f"cannot read: {exc}")]) from None
    exp = parse(text, source=str(path), base_dir=p.resolve().parent, overrides=overrides)
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


def role_tasks_file(name: str, tasks_from: str, roles_path: list[Path]) -> Path | None:
    """The task file ``tasks_from`` of role ``name`` as Ansible would find it (first role found wins)."""
    for d in roles_path:
        if (d / name / "tasks").is_dir():
            for ext in (".yml", ".yaml", ""):
                if (d / name / "tasks" / f"{tasks_from}{ext}").is_file():
                    return d / name / "tasks" / f"{tasks_from}{ext}"
            return None
    return None


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
    space_ok = not out  # the checks below need a valid space
    if space_ok:
        out.extend(_space_problems(m))
        space_ok = not out
    out.extend(_objective_problems(m))
    out.extend(_budget_problems(m))

    for i, (entry, folder) in enumerate(zip(m.roles_path, exp.declared_roles_path(), strict=True)):
        if not folder.is_dir():
            out.append(Problem(f"roles_path[{i}]", f"no such folder: {folder} (from {entry!r})"))
    roles_path = exp.roles_path()
    client = m.runner == "client"
    if client:
        out.extend(_client_problems(m))
    used_layers = list(dict.fromkeys(t.layer for t in m.tunables))
    for layer in used_layers:
        if layer not in m.layers and not client:  # a client applies the values itself: any layer name
            first = next(i for i, t in enumerate(m.tunables) if t.layer == layer)
            if layer in LAYERS:
                missing = f"layer {layer!r} has no role: add layers.{layer}.role (the role that applies it)"
            else:
                missing = (
                    f"unknown layer {layer!r}: the built-in layers are {', '.join(LAYERS)}; to add your own, "
                    f"declare it under layers.{layer} with the role that applies it"
                )
            out.append(Problem(f"tunables[{first}].layer", missing))
    for layer, spec in m.layers.items():
        if not _role_exists(spec.role, roles_path):
            out.append(Problem(f"layers.{layer}.role", f"no role {spec.role!r} in {', '.join(map(str, roles_path))}"))
        elif spec.role.count(".") < 2 and role_tasks_file(spec.role, "revert", roles_path) is None:
            out.append(
                Problem(
                    f"layers.{layer}.role",
                    f"role {spec.role!r} has no tasks/revert.yml: a layer role must be able to put back what it "
                    "changed (see docs/roles.md)",
                )
            )
    for kind, steps in (("setup", m.setup), ("teardown", m.teardown)):
        for i, step in enumerate(steps):
            if not _role_exists(step.role, roles_path):
                out.append(Problem(f"{kind}[{i}].role", f"no role {step.role!r} in {', '.join(map(str, roles_path))}"))
            elif step.role.count(".") < 2 and role_tasks_file(step.role, step.tasks_from, roles_path) is None:
                out.append(Problem(f"{kind}[{i}].tasks_from", f"role {step.role!r} has no tasks/{step.tasks_from}.yml"))

    b = exp.benchmark
    if m.benchmark is None and not client:
        out.append(
            Problem(
                "benchmark",
                "required: the benchmark each trial runs (benchmark.role or benchmark.playbook); or runner: client "
                "when clients of the tuning service run the trials",
            )
        )
    elif client:
        pass  # checked in _client_problems
    elif (b.role is None) == (b.playbook is None):
        out.append(Problem("benchmark", "give exactly one of benchmark.role or benchmark.playbook"))
    elif b.role is not None and not _role_exists(b.role, roles_path):
        out.append(Problem("benchmark.role", f"no role {b.role!r} in {', '.join(map(str, roles_path))}"))
    elif b.playbook is not None:
        pb = exp.benchmark_playbook()
        if pb is None or not pb.is_file():
            out.append(Problem("benchmark.playbook", f"no such playbook: {pb}"))

    out.extend(_continuous_problems(m))
    if m.tuner.name not in registry.names():
        out.append(Problem("tuner.name", f"unknown tuner {m.tuner.name!r}; known: {', '.join(registry.names())}"))
    elif space_ok and (
        why := registry.check(
            m.tuner.name, exp.tuner_options(), _distributions(m.tunables), objectives=len(exp.objective_list)
        )
    ):
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

    if m.promote is not None and m.mode == "continuous":
        out.append(
            Problem("promote", "a continuous experiment applies each round's configuration itself; remove promote")
        )

    if m.parallel > 1:
        if m.target.per_trial != "one" and not client:
            out.append(
                Problem(
                    "parallel",
                    f"parallel: {m.parallel} needs target.per_trial: one (each trial on one free host of "
                    "target.hosts); with per_trial: all every trial uses all the hosts, so trials cannot overlap",
                )
            )
        if m.mode == "continuous":
            out.append(Problem("parallel", "a continuous experiment runs one round at a time; remove parallel"))
        elif m.tuner.name in registry.sequential():
            out.append(
                Problem(
                    "parallel",
                    f"tuner {m.tuner.name!r} learns from each trial before it proposes the next, so it runs one "
                    f"trial at a time; use parallel: 1, or a tuner that proposes while trials run "
                    f"({', '.join(n for n in registry.names() if n not in registry.sequential())})",
                )
            )

    # The same variable set in two places is ambiguous: refuse it. A layer role's `<role>_settings`
    # and `knobflow_*` carry each trial's values: setting them as extra variables would override them.
    settings_vars = {f"{layer.role}_settings" for layer in m.layers.values()}
    owners: dict[str, str] = {}
    sources = [("vars", m.vars)] + [(f"layers.{k}.vars", v.vars) for k, v in m.layers.items()]
    sources += [(f"setup[{i}].vars", st.vars) for i, st in enumerate(m.setup)]
    sources += [(f"teardown[{i}].vars", st.vars) for i, st in enumerate(m.teardown)]
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


def _client_problems(m: ExperimentModel) -> list[Problem]:
    """``runner: client``: clients of the tuning service run the trials; what only Ansible runs
    (a benchmark, set-up and tear-down steps, promote, continuous rounds) has no place."""
    why = "clients of the tuning service run the trials (runner: client)"
    out = []
    if m.benchmark is not None:
        out.append(Problem("benchmark", f"{why}: knobflow runs no benchmark; remove benchmark"))
    for kind, steps in (("setup", m.setup), ("teardown", m.teardown)):
        if steps:
            out.append(Problem(kind, f"{why}: knobflow runs no {kind} steps; remove {kind}"))
    if m.promote is not None:
        out.append(Problem("promote", f"{why}: knobflow applies no configuration; remove promote"))
    if m.mode == "continuous":
        out.append(Problem("mode", f"{why}: continuous rounds are run by knobflow (runner: ansible)"))
    return out


def _space_problems(m: ExperimentModel) -> list[Problem]:
    """Conditions and constraints: they parse, name tunables, have no cycle, can hold, and the
    defaults (the baseline, run first) satisfy every constraint."""
    import random

    from knobflow.expr import ExprError, compile_expr
    from knobflow.space import Space, SpaceError, in_domain, parse_condition
    from knobflow.store import distribution

    out: list[Problem] = []
    names = {t.name for t in m.tunables}
    index = {t.name: i for i, t in enumerate(m.tunables)}
    for i, t in enumerate(m.tunables):
        try:
            cond = parse_condition(t.when, t.name, names)
        except SpaceError as exc:
            out.append(Problem(f"tunables[{i}].{exc.field}", exc.message))
            continue
        for parent, values in cond.equals if cond else ():
            dist = distribution(m.tunables[index[parent]])
            for v in values:
                if not in_domain(dist, v):
                    out.append(
                        Problem(
                            f"tunables[{i}].when.{parent}",
                            f"{v!r} is not a value {parent} can take, so {t.name} could never be active",
                        )
                    )
    for j, c in enumerate(m.constraints):
        try:
            compile_expr(c, known=names, boolean=True, what="tunable")
        except ExprError as exc:
            out.append(Problem(f"constraints[{j}]", str(exc)))
    if out:
        return out
    try:
        space = Space.from_model(m)
    except SpaceError as exc:  # a cycle
        first = next((i for i, t in enumerate(m.tunables) if t.when is not None), 0)
        return [Problem(f"tunables[{first}].{exc.field}", exc.message)]
    from knobflow.expr import ExprError as _EE

    try:
        base = space.defaults()
        broken = space.violations(base)
    except _EE as exc:
        return [Problem("constraints", str(exc))]
    for text in broken:
        j = next(k for k, c in enumerate(m.constraints) if c.strip() == text)
        shown = ", ".join(f"{n}={base[n]!r}" for n in sorted(space.constraints[j].names))
        out.append(
            Problem(
                f"constraints[{j}]",
                f"the defaults break it ({shown}); the baseline runs the defaults, so they must satisfy every "
                "constraint",
            )
        )
    # A condition that never holds, or a tunable whose parent is never active: sample the space.
    rng = random.Random(0)
    seen_active: set[str] = set(base)
    try:
        for _ in range(3000):
            seen_active |= set(space.random(rng))
            if len(seen_active) == len(space.params):
                break
    except _EE as exc:
        return [Problem("tunables", f"a condition cannot be evaluated: {exc}")]
    for name in space.params:
        if name not in seen_active:
            i = index[name]
            out.append(
                Problem(
                    f"tunables[{i}].when",
                    f"this condition ({space.params[name].condition.describe()}) never holds in 3000 "  # type: ignore[union-attr]
                    f"sampled configurations: {name} would never be tuned",
                )
            )
    return out


def _objective_problems(m: ExperimentModel) -> list[Problem]:
    from knobflow.expr import ExprError, compile_expr
    from knobflow.objective import compile_slo

    out: list[Problem] = []
    if (m.objective is None) == (m.objectives is None):
        what = "neither" if m.objective is None else "both"
        return [Problem("objective", f"give exactly one of objective (one) or objectives (two or more); got {what}")]
    listed = (
        [("objective", m.objective)]
        if m.objective is not None
        else [(f"objectives[{i}]", o) for i, o in enumerate(m.objectives or [])]
    )
    labels: dict[str, str] = {}
    for where, o in listed:
        if (o.metric is None) == (o.expression is None):
            out.append(Problem(where, "give exactly one of metric or expression"))
            continue
        if o.expression is not None:
            try:
                e = compile_expr(o.expression, boolean=False, what="metric")
            except ExprError as exc:
                out.append(Problem(f"{where}.expression", str(exc)))
                continue
            if not e.names:
                out.append(Problem(f"{where}.expression", f"uses no metric: {o.expression!r} is a constant"))
        if o.label in labels:
            out.append(Problem(f"{where}.name", f"two objectives are called {o.label!r} (also {labels[o.label]})"))
        labels.setdefault(o.label, where)
    for j, text in enumerate(m.slos):
        try:
            compile_slo(text)
        except ExprError as exc:
            out.append(Problem(f"slos[{j}]", str(exc)))
    return out


def _budget_problems(m: ExperimentModel) -> list[Problem]:
    out: list[Problem] = []
    if m.budget.time_limit is not None:
        try:
            parse_duration(m.budget.time_limit)
        except ValueError as exc:
            out.append(Problem("budget.time_limit", str(exc)))
    if m.budget.target is not None and not math.isfinite(m.budget.target):
        out.append(Problem("budget.target", f"must be a finite number, got {m.budget.target}"))
    if m.budget.target is not None and m.objectives is not None:
        out.append(Problem("budget.target", "a target value needs a single objective (this experiment has several)"))
    if m.finish == "best" and m.objectives is not None:
        out.append(
            Problem("finish", "best needs a single objective: with several there is a Pareto front, not one best")
        )
    if m.warm_start is not None:
        if m.warm_start.from_ == m.name:
            out.append(Problem("warm_start.from", "an experiment cannot warm-start from itself"))
        if m.warm_start.storage is not None and not re.match(r"^[a-z][a-z0-9+]*://", m.warm_start.storage):
            out.append(
                Problem(
                    "warm_start.storage",
                    f"must be a database URL such as sqlite:///path/to.db, got {m.warm_start.storage!r}",
                )
            )
    return out


def _continuous_problems(m: ExperimentModel) -> list[Problem]:
    from knobflow.tuners.online_adapter import names as online_names

    out: list[Problem] = []
    if m.mode != "continuous":
        if m.continuous is not None:
            out.append(Problem("continuous", "only for mode: continuous (this experiment's mode is offline)"))
        return out
    if m.tuner.name not in online_names():
        out.append(
            Problem(
                "tuner.name",
                f"mode: continuous needs an online tuner ({', '.join(online_names())}), not {m.tuner.name!r}",
            )
        )
    for kind in ("setup", "teardown"):
        if getattr(m, kind):
            out.append(
                Problem(
                    kind,
                    f"{kind} steps are for offline experiments: continuous tuning works on a live system that "
                    "is already running and never finishes",
                )
            )
    c = m.continuous or Continuous()
    if (why := schedule_problem(c.schedule)) is not None:
        out.append(Problem("continuous.schedule", why))
    out.extend(_context_problems(m, c))
    return out


CONTEXT_SOURCE = re.compile(r"^(group|host|var:[A-Za-z_][A-Za-z0-9_]*)$")


def _context_problems(m: ExperimentModel, c: Continuous) -> list[Problem]:
    """``continuous.context``: per-host contexts of an autoscope experiment, checked against its features."""
    if not c.context:
        if (
            c.per_host
            and m.tuner.name == "autoscope"
            and m.tuner.options.get("features")
            and "context" not in m.tuner.options
        ):
            return [
                Problem(
                    "continuous.context",
                    "per_host with autoscope features: give each feature's source, e.g. {group: group}",
                )
            ]
        return []
    if not c.per_host:
        return [Problem("continuous.context", "per-host contexts need per_host: true")]
    if m.tuner.name != "autoscope":
        return [Problem("continuous.context", f"contexts are for tuner autoscope, not {m.tuner.name!r}")]
    if "context" in m.tuner.options:
        return [
            Problem(
                "tuner.options.context",
                "with continuous.context each host's context comes from the inventory; remove it",
            )
        ]
    features = m.tuner.options.get("features")
    if not isinstance(features, list) or not features:
        return [
            Problem(
                "tuner.options.features",
                "continuous.context needs the autoscope features, e.g. [{name: group, values: [web, db]}]",
            )
        ]
    out: list[Problem] = []
    numeric: dict[str, bool] = {}
    for f in features:
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            numeric[f["name"]] = f.get("values") is None
    for name, source in c.context.items():
        where = f"continuous.context.{name}"
        if name not in numeric:
            out.append(Problem(where, f"not a feature of tuner.options.features ({', '.join(numeric)})"))
        elif not CONTEXT_SOURCE.match(source):
            out.append(
                Problem(where, f"{source!r} is not a source: use group, host or var:NAME (an inventory variable)")
            )
        elif numeric[name] and not source.startswith("var:"):
            out.append(Problem(where, f"feature {name!r} is numeric: its source must be var:NAME, not {source!r}"))
    for name in numeric:
        if name not in c.context:
            out.append(
                Problem("continuous.context", f"feature {name!r} has no source (give {name}: group, host or var:NAME)")
            )
    return out
