"""Kruize HPO search spaces to knobflow experiment files and back.

A Kruize HPO search space (the ``search_space`` of an ``EXP_TRIAL_GENERATE_NEW`` request; see
``docs/cli.md`` and the Kruize contract) names the experiment, the trial budget, the objective (a
metric name or a formula over metrics), its direction, the algorithm, and the tunables with their
``value_type`` (``double``, ``integer`` or ``categorical``), bounds and step or choices.

``to_experiment`` maps it to an experiment file. What Kruize cannot say (the layer each tunable
belongs to, the roles that apply them, the benchmark, the tunables' current values) comes from
options or documented guesses; everything in the Kruize file that knobflow cannot express is
reported as a warning, never dropped silently. ``from_experiment`` maps an experiment back and
refuses, naming the field, what Kruize cannot express (conditions, constraints, log scales, several
objectives, SLOs, a float without a step).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from knobflow.spec import EXPERIMENT_NAME_RE, LAYERS, Experiment

HPO_TO_TUNER = {"optuna_tpe": "tpe-univariate", "optuna_tpe_multivariate": "tpe", "optuna_skopt": "gp"}
TUNER_TO_HPO = {v: k for k, v in HPO_TO_TUNER.items()}
SEARCH_SPACE_FIELDS = (
    "experiment_name",
    "experiment_id",
    "total_trials",
    "parallel_trials",
    "value_type",
    "hpo_algo_impl",
    "objective_function",
    "direction",
    "function_variables",
    "tunables",
)
TUNABLE_FIELDS = ("name", "value_type", "lower_bound", "upper_bound", "step", "choices")
KRUIZE_NAME = "Kruize name: "
KRUIZE_ID = "Kruize experiment_id: "
MAX_TRIALS = 1024

# Layer guesses (documented in docs/cli.md). Checked in this order; the first that matches wins.
JVM_FLAGS = {
    "gc",
    "gcpolicy",
    "gcthreads",
    "xmx",
    "xms",
    "xmn",
    "xss",
    "maxrampercentage",
    "initialrampercentage",
    "minrampercentage",
}
SYSCTL_ROOTS = ("kernel", "vm", "net", "fs", "dev", "abi", "sunrpc")


class KruizeError(Exception):
    """The conversion is impossible; ``problems`` names each field that stops it."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass
class Conversion:
    """A converted document and what could not be carried over."""

    data: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Names and layers


def sanitize(name: str) -> str:
    """A tunable name knobflow accepts: ``quarkus.thread-pool.core-threads`` -> ``quarkus_thread_pool_core_threads``."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", name.strip())
    if not out or out[0].isdigit():
        out = "_" + out
    return out


def guess_layer(name: str) -> tuple[str, bool]:
    """(layer, confident) for a Kruize tunable name.

    container: names starting with cpu or memory (cpuRequest, memoryLimit). os: sysctl names
    (vm.swappiness, net.core.somaxconn, kernel.*, fs.*). stack: other names with a dot or a dash
    (quarkus.thread-pool.core-threads). runtime: JVM options (gc, gcthreads, Xmx, MaxRAMPercentage),
    HotSpot-style flags written in UpperCamelCase (MaxInlineLevel, FreqInlineSize) and names
    containing GC. Anything else: runtime, not confident (the caller warns).
    """
    low = name.lower()
    if low.startswith(("cpu", "memory")):
        return "container", True
    root = re.split(r"[._]", low, maxsplit=1)[0]
    if root in SYSCTL_ROOTS and re.search(r"[._]", low):
        return "os", True
    if "." in name or "-" in name:
        return "stack", True
    if low in JVM_FLAGS or low.startswith("gc") or "GC" in name:
        return "runtime", True
    if re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
        return "runtime", True
    return "runtime", False


def kruize_name(t: Any) -> str:
    """The Kruize name of a knobflow tunable: the one recorded in its description, else its own."""
    for line in (t.description or "").splitlines():
        if line.startswith(KRUIZE_NAME):
            return line.removeprefix(KRUIZE_NAME).strip()
    return str(t.name)


def parse_assignment(text: str, what: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (KEY, VALUE). Raises ValueError naming the option."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{what}: expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def yaml_value(text: str) -> Any:
    """A command-line value: YAML (numbers, booleans, lists) except Jinja templates, which stay text."""
    if "{{" in text and not text.lstrip().startswith("["):
        return text
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


# --------------------------------------------------------------------------------------------
# Kruize -> knobflow


def load_search_space(path: Path) -> dict[str, Any]:
    """A search space from a file: the bare object, or a whole ``EXP_TRIAL_GENERATE_NEW`` request."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise KruizeError(str(path), ["file not found"]) from None
    except json.JSONDecodeError as exc:
        raise KruizeError(str(path), [f"line {exc.lineno}: not valid JSON: {exc.msg}"]) from None
    if isinstance(data, list):
        if len(data) != 1:
            raise KruizeError(str(path), [f"holds a list of {len(data)} search spaces; convert one at a time"])
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("search_space"), dict):
        data = data["search_space"]
    if not isinstance(data, dict):
        raise KruizeError(str(path), [f"a search space must be a JSON object, got {type(data).__name__}"])
    return data


def _number(value: Any, where: str, problems: list[str], warnings: list[str]) -> float | int | None:
    if isinstance(value, bool):
        problems.append(f"{where}: must be a number, got {value!r}")
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            problems.append(f"{where}: must be a finite number, got {value!r}")
            return None
        return value
    if isinstance(value, str):
        try:
            v = float(value)
        except ValueError:
            problems.append(f"{where}: must be a number, got {value!r}")
            return None
        warnings.append(f"{where}: a number written as text ({value!r}); read as {value.strip()}")
        return int(v) if v.is_integer() and re.fullmatch(r"\s*[+-]?\d+\s*", value) else v
    problems.append(f"{where}: required number is missing" if value is None else f"{where}: must be a number")
    return None


def _tunable(
    i: int,
    raw: Any,
    *,
    layers: dict[str, str],
    defaults: dict[str, str],
    used_names: dict[str, str],
    problems: list[str],
    warnings: list[str],
    unsure: list[str],
) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append(f"tunables[{i}]: must be an object, got {type(raw).__name__}")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"tunables[{i}].name: required (a non-empty string)")
        return None
    where = f"tunables[{i}] ({name})"
    for key in raw:
        if key not in TUNABLE_FIELDS:
            warnings.append(f"{where}.{key}: not a Kruize tunable field and has no knobflow equivalent: dropped")
    kind_raw = raw.get("value_type")
    kind = str(kind_raw).strip().lower() if isinstance(kind_raw, str) else None
    if kind in ("int", "float"):
        warnings.append(
            f"{where}.value_type: {kind_raw!r} is not a Kruize type (Kruize HPO stops the experiment on it); "
            f"read as {'integer' if kind == 'int' else 'double'}"
        )
        kind = "integer" if kind == "int" else "double"
    if kind not in ("double", "integer", "categorical"):
        problems.append(f"{where}.value_type: must be double, integer or categorical, got {kind_raw!r}")
        return None

    kname = sanitize(name)
    if kname in used_names:
        n = 2
        while f"{kname}_{n}" in used_names:
            n += 1
        warnings.append(f"{where}: {name!r} and {used_names[kname]!r} both become {kname!r}; this one is {kname}_{n}")
        kname = f"{kname}_{n}"
    used_names[kname] = name
    out: dict[str, Any] = {"name": kname}
    layer = layers.get(name) or layers.get(kname)
    if layer is None:
        layer, confident = guess_layer(name)
        if not confident:
            unsure.append(name)
    out["layer"] = layer

    if kind == "categorical":
        for key in ("lower_bound", "upper_bound", "step"):
            if key in raw:
                warnings.append(f"{where}.{key}: a categorical tunable has no {key}: dropped")
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: a categorical tunable needs a non-empty list of choices")
            return None
        if any(not isinstance(c, str | int | float | bool) for c in choices):
            problems.append(f"{where}.choices: each choice must be a string, number or boolean")
            return None
        if len({json.dumps(c) for c in choices}) != len(choices):
            problems.append(f"{where}.choices: choices must be unique, got {choices}")
            return None
        out.update(type="categorical", choices=list(choices), default=choices[0])
    else:
        if "choices" in raw:
            warnings.append(f"{where}.choices: a {kind} tunable has no choices: dropped")
        low = _number(raw.get("lower_bound"), f"{where}.lower_bound", problems, warnings)
        high = _number(raw.get("upper_bound"), f"{where}.upper_bound", problems, warnings)
        step: float | int | None = None
        if "step" in raw:
            step = _number(raw.get("step"), f"{where}.step", problems, warnings)
            if step is None:
                return None
            if step <= 0:
                problems.append(f"{where}.step: must be positive, got {step}")
                return None
        if low is None or high is None:
            return None
        if kind == "integer":
            for key, v in (("lower_bound", low), ("upper_bound", high), ("step", step)):
                if v is not None and v != int(v):
                    problems.append(f"{where}.{key}: an integer tunable needs an integer, got {v}")
                    return None
            low, high = int(low), int(high)
            if step is None:
                warnings.append(f"{where}.step: missing (Kruize HPO needs it for integer tunables); using 1")
            step = int(step or 1)
        else:
            low, high = float(low), float(high)
            if step is None:
                warnings.append(
                    f"{where}.step: missing (Kruize HPO needs it for double tunables); knobflow samples the "
                    "range continuously"
                )
            else:
                step = float(step)
        if high <= low:
            problems.append(f"{where}.upper_bound: must be greater than lower_bound ({high} <= {low})")
            return None
        if step is not None:
            k = math.floor((high - low) / step + 1e-9)
            if k < 1:
                problems.append(f"{where}.step: {step} is larger than the range [{low}, {high}]")
                return None
            on_grid = low + k * step
            on_grid = int(on_grid) if kind == "integer" else float(f"{on_grid:.12g}")
            if abs(on_grid - high) > 1e-9 * max(1.0, abs(high)):
                warnings.append(
                    f"{where}.upper_bound: {high} is not on the grid lower_bound + k*step; knobflow uses {on_grid}, "
                    "the largest value on it (Optuna's suggest_discrete_uniform does the same)"
                )
                high = on_grid
        out.update(type="int" if kind == "integer" else "float", low=low, high=high)
        if step is not None and not (kind == "integer" and step == 1):
            out["step"] = step
        out["default"] = low
    given = defaults.get(name, defaults.get(kname))
    if given is not None:
        out["default"] = _default_value(out, given, where, problems)
    if kname != name:
        out["description"] = f"{KRUIZE_NAME}{name}"
    return out


def _default_value(t: dict[str, Any], text: str, where: str, problems: list[str]) -> Any:
    from knobflow.importer import coerce
    from knobflow.space import in_domain

    if t["type"] == "categorical":
        from optuna.distributions import CategoricalDistribution

        dist: Any = CategoricalDistribution(choices=tuple(t["choices"]))
    elif t["type"] == "int":
        from optuna.distributions import IntDistribution

        dist = IntDistribution(t["low"], t["high"], step=t.get("step", 1))
    else:
        from optuna.distributions import FloatDistribution

        dist = FloatDistribution(t["low"], t["high"], step=t.get("step"))
    value, why = coerce(t["name"], dist, text)
    if why is None and not in_domain(dist, value):
        why = f"{value} is outside the tunable's range or off its step"
    if why is not None:
        problems.append(f"--default for {where}: {why}")
        return t["default"]
    return value


def to_experiment(
    space: dict[str, Any],
    *,
    source: str = "<search space>",
    roles: dict[str, str] | None = None,
    layers: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
    benchmark_role: str = "bench_command",
    benchmark_vars: dict[str, Any] | None = None,
    variables: dict[str, Any] | None = None,
) -> Conversion:
    """An experiment file (as a mapping) from a Kruize search space. Raises :class:`KruizeError`."""
    from knobflow.expr import ExprError, compile_expr

    roles, layers, defaults = dict(roles or {}), dict(layers or {}), dict(defaults or {})
    problems: list[str] = []
    warnings: list[str] = []
    for layer in [*roles, *layers.values()]:
        if layer not in LAYERS:
            problems.append(f"unknown layer {layer!r} in --role/--layer (layers: {', '.join(LAYERS)})")
    for key in space:
        if key not in SEARCH_SPACE_FIELDS:
            warnings.append(f"{key}: not a Kruize search-space field (Kruize HPO refuses it); ignored")

    name = space.get("experiment_name")
    if not isinstance(name, str) or not name.strip():
        problems.append("experiment_name: required (a non-empty string)")
        name = "kruize-experiment"
    elif not re.match(EXPERIMENT_NAME_RE, name) or len(name) > 100:
        fixed = re.sub(r"[^A-Za-z0-9_.-]", "-", name.strip()).lstrip("_.-")[:100] or "kruize-experiment"
        warnings.append(f"experiment_name: {name!r} is not a knobflow experiment name; using {fixed!r}")
        name = fixed
    description = f"Converted from the Kruize HPO search space {Path(source).name} by `knobflow kruize import`."
    exp_id = space.get("experiment_id")
    if exp_id is not None:
        description += f"\n{KRUIZE_ID}{exp_id}"

    trials = space.get("total_trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        problems.append(f"total_trials: must be an integer >= 1, got {trials!r}")
        trials = 1
    elif trials > MAX_TRIALS:
        warnings.append(f"total_trials: {trials} is above knobflow's limit; using {MAX_TRIALS}")
        trials = MAX_TRIALS
    parallel = space.get("parallel_trials", 1)
    if parallel != 1:
        warnings.append(f"parallel_trials: {parallel!r}: knobflow runs one trial at a time here (parallel: 1)")
    value_type = space.get("value_type", "double")
    if value_type not in ("double", "float"):
        warnings.append(
            f"value_type: {value_type!r}: knobflow records objective values as floating-point numbers"
            + ("" if value_type == "int" else " (Kruize HPO refuses this value)")
        )

    direction = space.get("direction")
    if not isinstance(direction, str) or direction.strip().lower() not in ("minimize", "maximize"):
        problems.append(f"direction: must be minimize or maximize, got {direction!r}")
        direction = "maximize"
    objective: dict[str, Any] = {}
    formula = space.get("objective_function")
    used_metrics: set[str] = set()
    if not isinstance(formula, str) or not formula.strip():
        problems.append("objective_function: required (a metric name or a formula over metrics)")
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", formula.strip()):
        objective = {"metric": formula.strip()}
        used_metrics = {formula.strip()}
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]*[A-Za-z0-9_]", formula.strip()):
        # "transaction-response-time" or "http.requests": a label such as Kruize shows, not a subtraction.
        objective = {"metric": formula.strip()}
        used_metrics = {formula.strip()}
        warnings.append(
            f"objective_function: {formula!r} is read as a metric name (write a formula with spaces around "
            "its operators, e.g. 'a - b', if it is one)"
        )
    else:
        try:
            e = compile_expr(formula, boolean=False, what="metric")
            objective = {"name": "objective_function", "expression": e.text}
            used_metrics = set(e.names)
        except ExprError as exc:
            problems.append(f"objective_function: {formula!r} is not a formula knobflow can evaluate: {exc}")
    objective["direction"] = str(direction).strip().lower()

    fvars = space.get("function_variables")
    if fvars is not None:
        if not isinstance(fvars, list):
            warnings.append("function_variables: not a list; ignored")
        else:
            for j, v in enumerate(fvars):
                vname = v.get("name") if isinstance(v, dict) else None
                vtype = v.get("value_type", "double") if isinstance(v, dict) else None
                if vname not in used_metrics:
                    warnings.append(
                        f"function_variables[{j}] ({vname}): not used by objective_function; knobflow keeps only "
                        "the metrics the objective uses"
                    )
                elif vtype not in ("double", "float"):
                    warnings.append(
                        f"function_variables[{j}] ({vname}).value_type: {vtype!r}: knobflow reads every metric "
                        "as a number; the type is not kept"
                    )
                extra = sorted(set(v) - {"name", "value_type"}) if isinstance(v, dict) else []
                for key in extra:
                    warnings.append(f"function_variables[{j}] ({vname}).{key}: no knobflow equivalent; dropped")

    algo = space.get("hpo_algo_impl", "optuna_tpe")
    tuner = HPO_TO_TUNER.get(algo)
    if tuner is None:
        warnings.append(
            f"hpo_algo_impl: {algo!r} is not a Kruize algorithm (optuna_tpe, optuna_tpe_multivariate, optuna_skopt); "
            "using tpe-univariate (Kruize's default, optuna_tpe)"
        )
        tuner = "tpe-univariate"
    elif tuner == "gp":
        from knobflow.tuners.optuna import missing_modules

        missing = missing_modules("gp")
        if missing:
            warnings.append(
                f"hpo_algo_impl: optuna_skopt maps to knobflow's gp tuner, which needs {', '.join(missing)} "
                "(not installed): using auto, knobflow's own Gaussian-process tuner; install 'knobflow[gp]' "
                "and set tuner.name: gp to use Optuna's"
            )
            tuner = "auto"

    raw_tunables = space.get("tunables")
    tunables: list[dict[str, Any]] = []
    if not isinstance(raw_tunables, list) or not raw_tunables:
        problems.append("tunables: required (a non-empty list)")
    else:
        used: dict[str, str] = {}
        unsure: list[str] = []
        for i, raw in enumerate(raw_tunables):
            t = _tunable(
                i,
                raw,
                layers=layers,
                defaults=defaults,
                used_names=used,
                problems=problems,
                warnings=warnings,
                unsure=unsure,
            )
            if t is not None:
                tunables.append(t)
        known = set(used) | set(used.values())
        for n in [*layers, *defaults]:
            if n not in known:
                problems.append(f"--layer/--default: no tunable named {n!r} in the search space")
        if unsure:
            warnings.append(
                f"layer guessed (runtime) for {', '.join(unsure)}: the name does not say; "
                "set it with --layer NAME=LAYER if wrong"
            )
        no_default = [t["name"] for t in tunables if t["name"] not in defaults and used[t["name"]] not in defaults]
        if no_default:
            warnings.append(
                "Kruize search spaces have no defaults: the baseline (trial 0) runs "
                f"{', '.join(no_default)} at the lower bound or first choice; set each `default` to the value in "
                "use today (or pass --default NAME=VALUE)"
            )
    if problems:
        raise KruizeError(source, problems)

    used_layers = sorted({t["layer"] for t in tunables}, key=LAYERS.index)
    layer_map: dict[str, Any] = {}
    for layer in sorted(set(used_layers) | set(roles), key=LAYERS.index):
        if layer in roles:
            layer_map[layer] = {"role": roles[layer]}
        else:
            names = [t["name"] for t in tunables if t["layer"] == layer]
            warnings.append(
                f"layer {layer} ({', '.join(names)}) has no role: pass --role {layer}=ROLE (the Ansible role that "
                "applies these settings)"
            )
    doc: dict[str, Any] = {"name": name, "description": description, "objective": objective, "tunables": tunables}
    if layer_map:
        doc["layers"] = layer_map
    if variables:
        doc["vars"] = dict(variables)
    bench: dict[str, Any] = {"role": benchmark_role}
    if benchmark_vars:
        bench["vars"] = dict(benchmark_vars)
    doc["benchmark"] = bench
    doc["tuner"] = {"name": tuner}
    doc["budget"] = {"trials": trials}
    return Conversion(doc, warnings)


def experiment_yaml(conv: Conversion, source: str) -> str:
    """The experiment file's text: a header naming the source and the warnings, then the YAML."""
    head = [f"# Converted from the Kruize HPO search space {source} by `knobflow kruize import`."]
    if conv.warnings:
        head.append("# Not carried over, or guessed (review before running):")
        head += [f"#   - {w}" for w in conv.warnings]
    body = yaml.safe_dump(conv.data, sort_keys=False, allow_unicode=True, width=110)
    return "\n".join(head) + "\n" + body


# --------------------------------------------------------------------------------------------
# knobflow -> Kruize


def from_experiment(exp: Experiment) -> Conversion:
    """A Kruize search space from an experiment. Raises :class:`KruizeError` naming what Kruize cannot express."""
    from knobflow.expr import compile_expr

    m = exp.model
    source = str(exp.path or exp.name)
    problems: list[str] = []
    warnings: list[str] = []
    if m.objectives is not None:
        problems.append(f"objectives: Kruize optimises one objective_function; this experiment has {len(m.objectives)}")
    if m.slos:
        problems.append(f"slos: Kruize has no SLOs (service-level objectives); this experiment has {len(m.slos)}")
    if m.constraints:
        problems.append(f"constraints: Kruize has no constraints between tunables ({'; '.join(m.constraints)})")
    tunables: list[dict[str, Any]] = []
    for i, t in enumerate(m.tunables):
        where = f"tunables[{i}] ({t.name})"
        if t.when is not None:
            problems.append(f"{where}.when: Kruize has no conditional tunables")
        if t.log:
            problems.append(f"{where}.log: Kruize has no log-scale tunables")
        if t.type == "float" and t.step is None:
            problems.append(f"{where}.step: a Kruize double needs a step (add one, e.g. (high - low) / 100)")
        name = kruize_name(t)
        if t.type == "int":
            tunables.append(
                {
                    "name": name,
                    "value_type": "integer",
                    "lower_bound": t.low,
                    "upper_bound": t.high,
                    "step": int(t.step or 1),
                }
            )
        elif t.type == "float":
            tunables.append(
                {"name": name, "value_type": "double", "lower_bound": t.low, "upper_bound": t.high, "step": t.step}
            )
        elif t.type == "bool":
            warnings.append(f'{where}: a bool tunable becomes categorical with the choices "true" and "false"')
            tunables.append({"name": name, "value_type": "categorical", "choices": ["true", "false"]})
        else:
            tunables.append({"name": name, "value_type": "categorical", "choices": list(t.choices or [])})
    if problems:
        raise KruizeError(source, problems)

    o = exp.objective_list[0]
    formula = o.metric if o.metric is not None else str(o.expression)
    exp_id = m.name
    for line in m.description.splitlines():
        if line.startswith(KRUIZE_ID):
            exp_id = line.removeprefix(KRUIZE_ID).strip()
    algo = TUNER_TO_HPO.get(m.tuner.name)
    if algo is None:
        warnings.append(f"tuner.name: {m.tuner.name!r} has no Kruize equivalent; hpo_algo_impl is optuna_tpe")
        algo = "optuna_tpe"
    if m.tuner.seed is not None or m.tuner.options:
        warnings.append("tuner.seed / tuner.options: Kruize takes neither; not exported")
    warnings.append("defaults: Kruize search spaces have no defaults; the baseline configuration is not exported")
    lost = sorted(m.budget.model_fields_set - {"trials"})
    if lost:
        warnings.append(f"budget.{', budget.'.join(lost)}: Kruize has only total_trials; not exported")
    for key in ("noise", "warm_start"):
        if key in m.model_fields_set:
            warnings.append(f"{key}: no Kruize equivalent; not exported")
    data: dict[str, Any] = {
        "experiment_name": m.name,
        "experiment_id": exp_id,
        "total_trials": m.budget.trials,
        "parallel_trials": 1,
        "value_type": "double",
        "hpo_algo_impl": algo,
        "objective_function": formula,
        "direction": o.direction,
    }
    if o.expression is not None:
        e = compile_expr(o.expression, boolean=False, what="metric")
        text = o.expression or ""

        def first_use(n: str) -> int:
            m = re.search(rf"\b{re.escape(n)}\b", text)
            return m.start() if m else len(text)

        names = sorted(e.names, key=lambda n: (first_use(n), n))
        data["function_variables"] = [{"name": n, "value_type": "double"} for n in names]
    data["tunables"] = tunables
    return Conversion(data, warnings)
