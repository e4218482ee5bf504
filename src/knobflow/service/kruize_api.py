"""The Kruize HPO REST contract (``/experiment_trials``, ``/health``, ``/plot``, ``/listexperiments``).

Clients written for Kruize HPO ("HPO as a Service": the Kruize demos, Autotune's experiment
manager, shell scripts with curl) work against knobflow unchanged: the same paths, operations,
field names, status codes and error sentences (typos included), checked in the same order. The
contract is ../shared/specs/kruize-api.md; docs/api.md ("Kruize HPO compatibility") says how it
maps onto knobflow and where knobflow goes further:

* a Kruize search space becomes a knobflow experiment with ``runner: client`` (the conversion is
  :func:`knobflow.kruize.to_experiment`'s), kept in the store: everything survives a restart;
* ``parallel_trials`` = K allows K trials in flight; the config of any trial that exists can be read;
* ``GET /experiment_trials/best`` returns the best configuration at any time; plots are drawn at
  any time;
* every tunable is validated (a bad one is a 400 naming the tunable and the field);
* ``error`` results fail the trial (``failure`` prunes it, as Kruize does); values are kept exact;
* JSON bodies carry ``application/json``; a request with ``Accept: application/json`` gets its
  errors as ``{"error": "<sentence>"}``. Sentences are ``text/plain`` (Kruize sends everything as
  ``text/html``, which would let a sentence quoting a request be read as HTML).

Request bodies are parsed here from the raw request (not by pydantic models), so that each check and
its sentence are Kruize's. The type checks are Kruize's own JSON schemas, run by ``jsonschema``
(its best match is the error Kruize reports).
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any
from urllib.parse import parse_qs, quote

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError, best_match
from starlette.concurrency import run_in_threadpool

from knobflow import kruize, spec
from knobflow.service.core import Service, ServiceError

# --------------------------------------------------------------------------------------------
# Kruize HPO's sentences, exactly (src/utils.py: HPOErrorConstants, HPOMessages)

NOT_FOUND = "Could not be find requested resource. Please check the URL!"
INVALID_CONTENT_TYPE = "Invalid content type. Should be application/json!"
JSON_STRUCTURE_ERROR = "Invalid JSON structure: "
REQUIRED_PROPERTY = " is a required property!"
VALUE_MISSING = "Parameters cannot be empty or null!"
INVALID_OPERATION = "Invalid Operation value!"
ADDITIONAL_PROPERTIES = "Additional properties are not allowed"
DIRECTION_NOT_SUPPORTED = "Direction not supported!"
VALUE_TYPE_NOT_SUPPORTED = "Unsupported value type!"
HPO_ALGO_NOT_SUPPORTED = "HPO algorithm not supported!"
INVALID_TOTAL_TRIALS = "Total trials should be greater than 0!"
INVALID_RESULT_STATUS = "Trial result status is invalid!"
MISSING_PARAMETERS = "Missing required parameters"
EXPERIMENT_NOT_FOUND = "Experiment not found!"
EXPERIMENT_EXISTS = "Experiment already exists!"
NEGATIVE_TRIAL = "Trial number cannot be negative!"
TRIAL_EXCEEDED = "Requested trial exceeds the completed trial limit!"
TRIAL_PRECEDES = "Requested trial is already completed!"
NON_INTEGER_VALUE = "Only Integer value is allowed!"
NEGATIVE_VALUE = "result_value cannot be negative!"
VALUE_TYPE_MISMATCH = "Value and value type do not match!"
PLOT_UNAVAILABLE = "Plot Unavailable!"
EXPERIMENT_POSTED = "Experiment posted successfully! Trial {number} started.."
RESULT_POSTED = "Result posted successfully!"
TRIALS_COMPLETED = "Trials completed for experiment: "
EXPERIMENT_DELETED = "Experiment deleted!"
HEALTHY = "OK"
UNHEALTHY = "Service Unavailable"

# knobflow's own sentences, where it goes further (in Kruize's style)
INVALID_PARALLEL_TRIALS = "Parallel trials should be greater than 0!"
TOO_MANY_TRIALS = "Total trials should not be greater than {limit} (knobflow's limit)!"
NOT_FINITE = "result_value should be a finite number!"
INVALID_NAME = (
    "Experiment name not supported: use at most 100 letters, digits, '_', '.' or '-', "
    "starting with a letter or a digit!"
)
NOT_A_CLIENT_EXPERIMENT = (
    "Experiment {name} is run by knobflow itself (runner: {runner}): trials are asked for and reported "
    "only for runner: client experiments!"
)
PLOT_TYPE_NOT_SUPPORTED = "Plot type not supported!"
NO_BEST = "No trial has completed yet!"
SEVERAL_OBJECTIVES = "The experiment has several objectives: it has a Pareto front, not one best configuration!"

OPERATIONS = ("EXP_TRIAL_GENERATE_NEW", "EXP_TRIAL_GENERATE_SUBSEQUENT", "EXP_TRIAL_RESULT", "EXP_DELETE")
DIRECTIONS = ("minimize", "maximize")
VALUE_TYPES = ("double", "int", "float")
TUNABLE_TYPES = ("double", "integer", "categorical")
# Kruize's trial_result -> knobflow's trial state
TRIAL_RESULTS = {"success": "complete", "failure": "pruned", "error": "fail"}
# Kruize's plot types -> the figure of knobflow.report (slice: drawn here)
PLOT_TYPES = {
    "tunable_importance": "importance",
    "optimization_history": "history",
    "parallel_coordinate": "parallel",
    "slice": "slice",
}
DEFAULT_PLOT = "tunable_importance"
PLOTLY_CDN = "https://cdn.plot.ly/plotly-2.35.2.min.js"

# What a Kruize search space says that knobflow keeps in the experiment's description, one line each
# (as knobflow.kruize keeps the Kruize names of tunables and the experiment_id).
KRUIZE_PARALLEL = "Kruize parallel_trials: "
KRUIZE_VALUE_TYPE = "Kruize value_type: "
KRUIZE_ALLOW_NEGATIVE = "Kruize allow_negative: "
CREATED = "Created through the Kruize HPO API (EXP_TRIAL_GENERATE_NEW)."
# A numeric range holds at most this many steps (Optuna computes the grid in 28-digit decimals).
MAX_STEPS = 10**15
# A client that asked for a trial and never reported it: failed after this long (knobflow's
# budget.trial_timeout; its default, 30 minutes, is shorter than many benchmarks Kruize clients run).
TRIAL_TIMEOUT = 86_400

# --------------------------------------------------------------------------------------------
# Kruize's JSON schemas (src/json_validate.py), one per operation. Property and `required` orders
# are Kruize's: they decide which error jsonschema reports first. `allow_negative` is knobflow's
# (a boolean: negative result values are accepted for the experiment).

_NAME_ONLY: dict[str, Any] = {"experiment_name": {"type": "string"}}


def _operation_schema(operation: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**properties, "operation": {"enum": [operation]}},
        "required": required,
        "additionalProperties": False,
    }


SEARCH_SPACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "experiment_name": {"type": "string"},
        "total_trials": {"type": "integer"},
        "parallel_trials": {"type": "integer"},
        "experiment_id": {"type": "string"},
        "value_type": {"type": "string"},
        "hpo_algo_impl": {"type": "string"},
        "objective_function": {"type": "string"},
        "function_variables": {"type": "array"},
        "tunables": {"type": "array"},
        "direction": {"type": "string"},
        "allow_negative": {"type": "boolean"},
    },
    "required": ["experiment_name", "experiment_id", "total_trials", "objective_function", "tunables", "direction"],
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "EXP_TRIAL_GENERATE_NEW": _operation_schema(
        "EXP_TRIAL_GENERATE_NEW", {"search_space": SEARCH_SPACE_SCHEMA}, ["search_space", "operation"]
    ),
    "EXP_TRIAL_GENERATE_SUBSEQUENT": _operation_schema(
        "EXP_TRIAL_GENERATE_SUBSEQUENT", _NAME_ONLY, ["experiment_name", "operation"]
    ),
    "EXP_TRIAL_RESULT": _operation_schema(
        "EXP_TRIAL_RESULT",
        {
            "experiment_name": {"type": "string"},
            "trial_number": {"type": "integer"},
            "trial_result": {"type": "string"},
            "result_value_type": {"type": "string"},
            "result_value": {"type": "number"},
        },
        ["experiment_name", "trial_number", "trial_result", "result_value_type", "result_value", "operation"],
    ),
    "EXP_DELETE": _operation_schema("EXP_DELETE", _NAME_ONLY, ["experiment_name", "operation"]),
}
VALIDATORS = {op: Draft7Validator(schema) for op, schema in SCHEMAS.items()}


class Reply(Exception):
    """A response to send: ``status`` and Kruize's sentence."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status
        self.sentence = sentence


def schema_sentence(err: ValidationError) -> str:
    """Kruize's sentence for a schema error: a null or blank value is "Parameters cannot be empty or
    null!", a wrong type "Parameter <field> <jsonschema's message>", an unknown field "Additional
    properties are not allowed", a missing one jsonschema's "'<field>' is a required property"."""
    if err.validator == "type":
        value = err.instance
        if value is None or (isinstance(value, str) and not value.strip()):
            return VALUE_MISSING
        field = err.path[-1] if err.path else "body"
        return f"Parameter {field} {err.message}"
    if err.validator == "additionalProperties":
        return ADDITIONAL_PROPERTIES
    return str(err.message)


def schema_problem(operation: str, body: dict[str, Any]) -> str | None:
    """The sentence for the error jsonschema reports first (its best match), or None."""
    err = best_match(VALIDATORS[operation].iter_errors(body))
    return None if err is None else schema_sentence(err)


def max_trials() -> int:
    """knobflow's limit on an experiment's trials (spec.Budget.trials)."""
    for m in spec.Budget.model_fields["trials"].metadata:
        le = getattr(m, "le", None)
        if isinstance(le, int):
            return le
    return kruize.MAX_TRIALS


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and (not value.strip() or value == "null"))


def search_space_problems(ss: dict[str, Any]) -> list[str]:
    """Kruize's checks of a search space's values, in the order of its fields (distinct sentences)."""
    out: list[str] = []
    for key, value in ss.items():
        empty = isinstance(value, str) and not value.strip()
        if empty or (key == "tunables" and value == []) or (key == "experiment_name" and value == "null"):
            sentence = VALUE_MISSING
        elif key == "direction" and value not in DIRECTIONS:
            sentence = DIRECTION_NOT_SUPPORTED
        elif key == "hpo_algo_impl" and value not in kruize.HPO_TO_TUNER:
            sentence = HPO_ALGO_NOT_SUPPORTED
        elif key == "value_type" and value not in VALUE_TYPES:
            sentence = VALUE_TYPE_NOT_SUPPORTED
        elif key == "total_trials" and value < 1:
            sentence = INVALID_TOTAL_TRIALS
        elif key == "total_trials" and value > max_trials():
            sentence = TOO_MANY_TRIALS.format(limit=max_trials())
        elif key == "parallel_trials" and value < 1:
            sentence = INVALID_PARALLEL_TRIALS
        else:
            continue
        if sentence not in out:
            out.append(sentence)
    return out


def _number_problem(where: str, value: Any, *, required: bool = True) -> str | None:
    if value is None and required:
        return f"{where}: required (a number)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where}: must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{where}: must be a finite number, got {value!r}"
    return None


def tunable_problems(tunables: list[Any]) -> list[str]:
    """What is wrong with the tunables' types, each naming the tunable and the field. (Kruize checks
    none of it; the rest, bounds against each other, steps and choices, is checked by
    :func:`knobflow.kruize.to_experiment`.)"""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(tunables):
        if not isinstance(t, dict):
            out.append(f"tunables[{i}]: must be an object, got {t!r}")
            continue
        name = t.get("name")
        if not isinstance(name, str) or not name.strip():
            out.append(f"tunables[{i}].name: required (a non-empty string), got {name!r}")
            continue
        where = f"tunables[{i}] ({name})"
        if name in seen:
            out.append(f"{where}.name: duplicate tunable (also tunables[{seen[name]}])")
            continue
        seen[name] = i
        kind = t.get("value_type")
        if not isinstance(kind, str) or kind.strip().lower() not in TUNABLE_TYPES:
            out.append(f"{where}.value_type: must be double, integer or categorical, got {kind!r}")
            continue
        if kind.strip().lower() == "categorical":
            if not isinstance(t.get("choices"), list):
                out.append(f"{where}.choices: required (a non-empty list), got {t.get('choices')!r}")
            continue
        problems = [_number_problem(f"{where}.{key}", t.get(key)) for key in ("lower_bound", "upper_bound")]
        if "step" in t:
            problems.append(_number_problem(f"{where}.step", t["step"], required=False))
        found = [p for p in problems if p]
        out += found
        if found:
            continue
        low, high, step = t["lower_bound"], t["upper_bound"], t.get("step")
        if not math.isfinite(high - low):
            out.append(f"{where}.upper_bound: the range [{low}, {high}] is too wide")
        elif isinstance(step, int | float) and step > 0 and not (high - low) / step <= MAX_STEPS:
            out.append(f"{where}.step: {step} is too small for the range [{low}, {high}] (more than 10^15 steps)")
    return out


def middle_default(t: dict[str, Any]) -> Any:
    """A Kruize tunable has no default: knobflow's baseline (trial 0) runs the middle of each range,
    snapped down to the step, and the first choice of each categorical tunable."""
    if t["type"] == "categorical":
        return t["choices"][0]
    low, high, step = t["low"], t["high"], t.get("step")
    if t["type"] == "int":
        s = int(step or 1)
        return int(low + ((high - low) // s // 2) * s)
    if step is None:
        return float(f"{(low + high) / 2:.15g}")
    k = math.floor((high - low) / step / 2 + 1e-9)
    return float(f"{low + k * step:.15g}")


def experiment_document(ss: dict[str, Any]) -> dict[str, Any]:
    """The experiment file (``runner: client``) of a search space that passed Kruize's checks.
    Raises :class:`Reply` 400 naming each tunable problem."""
    problems = tunable_problems(ss["tunables"])
    if problems:
        raise Reply(400, ",".join(problems))
    name = ss["experiment_name"]
    total = int(ss["total_trials"])
    # objective_function is a label only (Kruize never evaluates it; the client sends the value):
    # knobflow keeps it as the objective's metric name, whatever it says.
    label = ss["objective_function"].strip()
    space = {k: v for k, v in ss.items() if k not in ("function_variables", "allow_negative", "parallel_trials")}
    space["objective_function"] = "objective_function"
    try:
        conv = kruize.to_experiment(space, source="search_space")
    except kruize.KruizeError as exc:
        raise Reply(400, ",".join(exc.problems)) from None
    doc = conv.data
    for key in ("benchmark", "layers", "vars"):
        doc.pop(key, None)
    lines = [CREATED, f"{kruize.KRUIZE_ID}{ss['experiment_id']}"]
    lines.append(f"{KRUIZE_PARALLEL}{int(ss.get('parallel_trials', 1))}")
    lines.append(f"{KRUIZE_VALUE_TYPE}{ss.get('value_type', 'double')}")
    if ss.get("allow_negative"):
        lines.append(f"{KRUIZE_ALLOW_NEGATIVE}true")
    doc["name"] = name
    doc["description"] = "\n".join(lines)
    doc["runner"] = "client"
    doc["objective"] = {"metric": label, "direction": ss["direction"]}
    # Kruize never stops an experiment for failed trials: every trial of the budget runs.
    doc["budget"] = {"trials": total, "max_failed": total, "trial_timeout": TRIAL_TIMEOUT}
    for t in doc["tunables"]:
        t["default"] = middle_default(t)
    return doc


def description_value(exp: spec.Experiment, prefix: str) -> str | None:
    for line in (exp.model.description or "").splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    return None


def parallel_trials(exp: spec.Experiment) -> int:
    """How many trials may be in flight (Kruize's parallel_trials; 1 for other experiments)."""
    text = description_value(exp, KRUIZE_PARALLEL)
    return int(text) if text and text.isdigit() and int(text) >= 1 else 1


def allows_negative(exp: spec.Experiment) -> bool:
    return description_value(exp, KRUIZE_ALLOW_NEGATIVE) == "true"


def _plain(value: Any, t: spec.Tunable) -> Any:
    if isinstance(value, float) and not isinstance(value, bool):
        return float(f"{value:.15g}")  # 2.65, not 2.6500000000000004
    if t.type == "int" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return value


def kruize_config(exp: spec.Experiment, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's configuration as Kruize sends it: the tunables' Kruize names, in the search space's order."""
    return [
        {"tunable_name": kruize.kruize_name(t), "tunable_value": _plain(params[t.name], t)}
        for t in exp.tunables
        if t.name in params
    ]


# --------------------------------------------------------------------------------------------
# Responses


def wants_json(request: Request) -> bool:
    return any(
        part.split(";")[0].strip().lower() == "application/json"
        for part in request.headers.get("accept", "").split(",")
    )


def sentence_response(request: Request, status: int, sentence: str) -> Response:
    if status >= 400 and wants_json(request):
        return JSONResponse({"error": sentence}, status_code=status)
    return PlainTextResponse(sentence, status_code=status)


def json_response(data: Any) -> Response:
    # Kruize's spacing (json.dumps' defaults), as application/json.
    return Response(json.dumps(data), media_type="application/json")


def _query(request: Request) -> dict[str, list[str]]:
    # As Kruize reads a query: blank values are dropped, so `trial_number=` is a missing parameter.
    return parse_qs(request.url.query)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path") or "")


# --------------------------------------------------------------------------------------------
# The router


class KruizeAPI:
    """The Kruize HPO operations over a :class:`Service`."""

    def __init__(self, service: Service):
        self.service = service

    # Checks ----------------------------------------------------------------------------------
    def existing(self, name: Any) -> spec.Experiment:
        """The experiment ``name``: "Parameters cannot be empty or null!" for a blank name or the
        literal null, 404 "Experiment not found!" for an unknown one."""
        if not isinstance(name, str) or _blank(name):
            raise Reply(400, VALUE_MISSING)
        try:
            return self.service.experiment(name)
        except ServiceError as exc:
            if exc.status == 404:
                raise Reply(404, EXPERIMENT_NOT_FOUND) from None
            raise Reply(400, exc.message) from None

    def client_experiment(self, name: Any) -> spec.Experiment:
        exp = self.existing(name)
        if exp.model.runner != "client":
            raise Reply(400, NOT_A_CLIENT_EXPERIMENT.format(name=name, runner=exp.model.runner))
        return exp

    def trial(self, name: str, number: int, *, running: bool) -> dict[str, Any]:
        """Trial ``number`` of ``name`` (with Kruize's sentences for a number that is negative, not
        reached yet, or, when ``running``, already finished)."""
        if number < 0:
            raise Reply(400, NEGATIVE_TRIAL)
        by_number = {t["number"]: t for t in self.service.trials(name)}
        t = by_number.get(number)
        if t is None or t["state"] == "waiting":
            raise Reply(400, TRIAL_EXCEEDED)
        if running and t["state"] != "running":
            raise Reply(400, TRIAL_PRECEDES)
        return t

    # POST /experiment_trials -----------------------------------------------------------------
    def operation(self, body: Any) -> tuple[int, str]:
        """Run one POSTed operation; returns (status, sentence)."""
        if not isinstance(body, dict) or "operation" not in body:
            return 400, "'operation'" + REQUIRED_PROPERTY
        op = body["operation"]
        if op is None or (isinstance(op, str) and not op.strip()):
            return 400, VALUE_MISSING
        if not isinstance(op, str) or op not in OPERATIONS:
            return 400, INVALID_OPERATION
        problem = schema_problem(op, body)
        if problem:
            return 400, problem
        if op == "EXP_TRIAL_GENERATE_NEW":
            return self.generate_new(body["search_space"])
        if op == "EXP_TRIAL_RESULT":
            return self.result(body)
        if op == "EXP_TRIAL_GENERATE_SUBSEQUENT":
            return self.generate_subsequent(body["experiment_name"])
        return self.delete(body["experiment_name"])

    def generate_new(self, ss: dict[str, Any]) -> tuple[int, str]:
        problems = search_space_problems(ss)
        if problems:
            return 400, ",".join(problems)
        name = ss["experiment_name"]
        if self.service.store.exists(name):
            return 400, EXPERIMENT_EXISTS
        if not re.match(spec.EXPERIMENT_NAME_RE, name) or len(name) > 100:
            return 400, INVALID_NAME
        doc = experiment_document(ss)
        try:
            # As YAML text: a mapping would reach the file's parser as JSON, whose 5e-05 YAML reads as text.
            self.service.create(yaml.safe_dump(doc, sort_keys=False), source="search_space")
        except ServiceError as exc:
            if exc.status == 409:
                return 400, EXPERIMENT_EXISTS
            return 400, exc.message
        try:
            started = self.service.ask(name, 1, note="asked through the Kruize HPO API")
        except ServiceError as exc:
            return 400, exc.message
        return 200, EXPERIMENT_POSTED.format(number=started[0]["number"])

    def result(self, body: dict[str, Any]) -> tuple[int, str]:
        name = body["experiment_name"]
        exp = self.client_experiment(name)
        number = body["trial_number"]
        if isinstance(number, float) and not number.is_integer():
            return 400, NON_INTEGER_VALUE
        self.trial(name, int(number), running=True)
        status = body["trial_result"]
        if status not in TRIAL_RESULTS:
            return 400, INVALID_RESULT_STATUS
        if body["result_value_type"] not in VALUE_TYPES:
            return 400, VALUE_TYPE_NOT_SUPPORTED
        value = body["result_value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 400, VALUE_TYPE_MISMATCH
        if not math.isfinite(value):
            return 400, NOT_FINITE
        if value < 0 and not allows_negative(exp):
            return 400, NEGATIVE_VALUE
        state = TRIAL_RESULTS[status]
        try:
            if state == "complete":
                self.service.tell(name, int(number), state=state, value=value)
            else:
                self.service.tell(
                    name,
                    int(number),
                    state=state,
                    reason=f"the client reported the trial's result as {status!r} (Kruize trial_result), "
                    f"result_value {value!r}",
                )
        except ServiceError as exc:
            if exc.status == 404:
                return 404, EXPERIMENT_NOT_FOUND
            if exc.status == 409:  # reported meanwhile by another request
                return 400, TRIAL_PRECEDES
            return 400, exc.message
        return 200, RESULT_POSTED

    def generate_subsequent(self, name: Any) -> tuple[int, str]:
        """The next trial's number: a running trial when ``parallel_trials`` are in flight (with 1,
        the trial not reported yet), else a new trial; when the budget is spent and nothing runs,
        "Trials completed for experiment: <name>"."""
        exp = self.client_experiment(name)
        try:
            asked = self.service.ask(name, 1, note="asked through the Kruize HPO API", max_running=parallel_trials(exp))
        except ServiceError as exc:
            if exc.status == 404:
                return 404, EXPERIMENT_NOT_FOUND
            if exc.status != 409:
                return 400, exc.message
            running = sorted(t["number"] for t in self.service.trials(name) if t["state"] == "running")
            if running:  # nothing more may start; the trials in flight are still to report
                return 200, str(running[0])
            return 400, TRIALS_COMPLETED + name
        return 200, str(asked[0]["number"])

    def delete(self, name: Any) -> tuple[int, str]:
        self.existing(name)
        try:
            self.service.archive(name)
        except ServiceError as exc:
            if exc.status == 404:
                return 404, EXPERIMENT_NOT_FOUND
            return 400, exc.message
        return 200, EXPERIMENT_DELETED

    # GET -------------------------------------------------------------------------------------
    def config(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        missing = [k for k in ("experiment_name", "trial_number") if k not in query]
        if missing:
            raise Reply(400, f"{MISSING_PARAMETERS}: {', '.join(missing)}")
        name = query["experiment_name"][0]
        exp = self.existing(name)
        text = query["trial_number"][0].strip()
        if _blank(text):
            raise Reply(400, VALUE_MISSING)
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise Reply(400, NON_INTEGER_VALUE)
        t = self.trial(name, int(text), running=False)
        return kruize_config(exp, t["params"])

    def best(self, query: dict[str, list[str]]) -> dict[str, Any]:
        if "experiment_name" not in query:
            raise Reply(400, f"{MISSING_PARAMETERS}: experiment_name")
        name = query["experiment_name"][0]
        exp = self.existing(name)
        if exp.multi_objective:
            raise Reply(400, SEVERAL_OBJECTIVES)
        out = self.service.best(name)
        b = out["best"]
        if b is None:
            raise Reply(400, NO_BEST)
        o = exp.objective_list[0]
        return {
            "experiment_name": name,
            "direction": o.direction,
            "trial_number": b["number"],
            "optimal_value": {
                "objective_function": o.metric if o.metric is not None else o.label,
                "value": b["value"],
                "value_type": description_value(exp, KRUIZE_VALUE_TYPE) or "double",
            },
            "tunables": kruize_config(exp, b["params"]),
            "baseline_value": None if out["baseline"] is None else out["baseline"]["value"],
            "gain_pct": out["gain_pct"],
        }

    def plot(self, request: Request, query: dict[str, list[str]]) -> str:
        if "experiment_name" not in query:
            raise Reply(400, MISSING_PARAMETERS + "!")
        name = query["experiment_name"][0]
        kind = query.get("type", [DEFAULT_PLOT])[0]
        key = PLOT_TYPES.get(kind)
        if key is None:
            raise Reply(400, PLOT_TYPE_NOT_SUPPORTED)
        exp = self.existing(name)
        fig = figure(self.service, exp, key)
        if not fig.get("data"):
            raise Reply(404, PLOT_UNAVAILABLE)
        return plot_page(request, name, kind, fig)

    def list_page(self, request: Request) -> str:
        root = _root(request)
        rows = []
        for name in self.service.names():
            try:
                s = self.service.summary(name)
            except ServiceError:  # archived meanwhile, or made by an older knobflow
                continue
            links = " ".join(
                f'<a href="{html.escape(root)}/plot?experiment_name={quote(name)}&amp;type={kind}">{kind}</a>'
                for kind in PLOT_TYPES
            )
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(status_text(s))}</td>"
                f'<td class="num">{s["progress"]["done"]} / {s["budget"]["trials"]}</td>'
                f"<td>{html.escape(best_text(s))}</td><td>{links}</td></tr>"
            )
        for name in self.service.store.names():
            origin = archive_origin(name)
            if origin is not None:
                rows.append(
                    f"<tr><td>{html.escape(origin)}</td><td>Deleted (archived as {html.escape(name)})</td>"
                    "<td></td><td></td><td></td></tr>"
                )
        table = (
            "<table><tr><th>Experiment</th><th>Status</th><th>Trials done</th><th>Best</th><th>Plots</th></tr>\n"
            + "\n".join(rows)
            + "\n</table>"
            if rows
            else "<p>No experiments yet.</p>"
        )
        return _html_page("HPO experiments", f"<h1>HPO experiments</h1>\n{table}")


def archive_origin(name: str) -> str | None:
    from knobflow.store import archive_of

    return archive_of(name)


def status_text(s: dict[str, Any]) -> str:
    """Kruize's status column: "Running trial i of N", "Completed", ..."""
    p, total = s["progress"], s["budget"]["trials"]
    if p["running"] == 1:
        return f"Running trial {p['done'] + 1} of {total}"
    if p["running"] > 1:
        return f"Running trials {p['done'] + 1}-{p['done'] + p['running']} of {total}"
    if s["stop_reason"]:
        return "Completed"
    return f"Waiting for trial {p['done'] + 1} of {total}"


def best_text(s: dict[str, Any]) -> str:
    b = s["best"]
    if b is None:
        return "-"
    return f"{b['value']:.6g} (trial {b['number']})"


def figure(service: Service, exp: spec.Experiment, key: str) -> dict[str, Any]:
    """The Plotly figure ``key`` of experiment ``exp`` (knobflow.report's, or the slice plot)."""
    from knobflow import report
    from knobflow.store import distribution

    study = service.store.load(exp.name)
    trials = service.store.trials(study)
    objectives = exp.objectives()
    names = [t.name for t in exp.tunables]
    if key == "history":
        return report.history_figure(trials, objectives)
    if key == "importance":
        return report.importance_figure(trials, objectives, names)
    if key == "parallel":
        return report.parallel_figure(trials, objectives, names, {t.name: distribution(t) for t in exp.tunables})
    return slice_figure(exp, trials)


def slice_figure(exp: spec.Experiment, trials: list[Any]) -> dict[str, Any]:
    """Optuna's slice plot: the objective against each tunable's value, one panel per tunable."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    o = exp.objective_list[0]
    tunables = list(exp.tunables)
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "title": {"text": "Slice plot"},
        "showlegend": False,
        "height": 420,
        "yaxis": {"title": {"text": html.escape(f"{o.label} ({o.direction})")}},
    }
    if not complete or not tunables:
        return {"data": [], "layout": layout}
    n = len(tunables)
    width = 1.0 / n
    for i, t in enumerate(tunables):
        axis = "" if i == 0 else str(i + 1)
        done = [tr for tr in complete if t.name in tr.params]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": t.name,
                "x": [tr.params[t.name] for tr in done],
                "y": [tr.values[0] for tr in done],
                "customdata": [tr.number for tr in done],
                "marker": {"color": [tr.number for tr in done], "colorscale": "Blues", "size": 8},
                "hovertemplate": "trial %{customdata}<br>%{x}: %{y}<extra></extra>",
                "xaxis": f"x{axis}",
                "yaxis": "y",
            }
        )
        layout[f"xaxis{axis}"] = {
            "title": {"text": html.escape(kruize.kruize_name(t))},
            "domain": [i * width + 0.02, (i + 1) * width - 0.02],
            "anchor": "y",
            **({"type": "category"} if t.type in ("categorical", "bool") else {}),
        }
    return {"data": data, "layout": layout}


def plotly_src(request: Request) -> str:
    """Where the page loads plotly.js from: the service (from the plotly package), else the CDN."""
    from knobflow import report

    try:
        report.plotly_js_path()
    except report.ReportError:
        return PLOTLY_CDN
    return f"{_root(request)}/plotly.min.js"


def plot_page(request: Request, name: str, kind: str, fig: dict[str, Any]) -> str:
    from knobflow import report

    title = f"{name}: {kind}"
    body = (
        f"<h1>{html.escape(title)}</h1>\n"
        '<div id="plot" style="min-height: 420px"></div>\n'
        f'<script type="application/json" id="figure">{report.script_json(fig)}</script>\n'
        "<script>\n"
        'var fig = JSON.parse(document.getElementById("figure").textContent);\n'
        'if (typeof Plotly === "undefined") {\n'
        '  document.getElementById("plot").textContent = "plotly.js could not be loaded: the plot cannot be drawn.";\n'
        "} else {\n"
        '  Plotly.newPlot("plot", fig.data, fig.layout, {responsive: true, displaylogo: false});\n'
        "}\n"
        "</script>"
    )
    head = f'<script src="{html.escape(plotly_src(request))}"></script>'
    return _html_page(title, body, head)


def _html_page(title: str, body: str, head: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n{head}\n"
        "<style>body { font-family: sans-serif; margin: 1.5em; } table { border-collapse: collapse; } "
        "th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; } "
        "td.num { text-align: right; }</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def welcome_page(request: Request) -> str:
    root = html.escape(_root(request))
    body = (
        "<h1>knobflow: HPO as a service</h1>\n"
        "<p>This service speaks the Kruize HPO REST API (<code>POST /experiment_trials</code> with the "
        "operations EXP_TRIAL_GENERATE_NEW, EXP_TRIAL_GENERATE_SUBSEQUENT, EXP_TRIAL_RESULT and EXP_DELETE; "
        "<code>GET /experiment_trials?experiment_name=&amp;trial_number=</code>) and knobflow's own API "
        f'(<a href="{root}/docs">/api/v1</a>).</p>\n'
        f'<ul>\n<li><a href="{root}/listexperiments">Experiments</a></li>\n'
        f'<li><a href="{root}/docs">API documentation (OpenAPI)</a></li>\n'
        f'<li><a href="{root}/health">Health</a></li>\n</ul>'
    )
    return _html_page("knobflow", body)


# The query parameters, for the OpenAPI document (the routes read the query as Kruize does).
NAME_PARAMETER = {
    "name": "experiment_name",
    "in": "query",
    "required": True,
    "schema": {"type": "string"},
    "description": "The experiment's name",
}
TRIAL_PARAMETER = {
    "name": "trial_number",
    "in": "query",
    "required": True,
    "schema": {"type": "integer"},
    "description": "A trial's number (0 is the baseline); any trial that was started",
}
PLOT_PARAMETER = {
    "name": "type",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(PLOT_TYPES), "default": DEFAULT_PLOT},
}


def router(service: Service) -> APIRouter:
    """The Kruize HPO routes over ``service``."""
    api = KruizeAPI(service)
    r = APIRouter(tags=["kruize"])

    @r.post(
        "/experiment_trials",
        summary="Kruize HPO: EXP_TRIAL_GENERATE_NEW, EXP_TRIAL_GENERATE_SUBSEQUENT, EXP_TRIAL_RESULT, EXP_DELETE",
        response_class=PlainTextResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
            }
        },
    )
    async def post_operation(request: Request) -> Response:
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime != "application/json":
            return sentence_response(request, 400, INVALID_CONTENT_TYPE)
        raw = await request.body()
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return sentence_response(request, 400, JSON_STRUCTURE_ERROR + "the body is not UTF-8 text")
        except json.JSONDecodeError as exc:
            return sentence_response(request, 400, JSON_STRUCTURE_ERROR + exc.msg)
        try:
            status, sentence = await run_in_threadpool(api.operation, body)
        except Reply as reply:
            status, sentence = reply.status, reply.sentence
        return sentence_response(request, status, sentence)

    @r.get(
        "/experiment_trials",
        summary="Kruize HPO: the configuration of a trial",
        response_class=JSONResponse,
        openapi_extra={"parameters": [NAME_PARAMETER, TRIAL_PARAMETER]},
    )
    def get_config(request: Request) -> Response:
        try:
            return json_response(api.config(_query(request)))
        except Reply as reply:
            return sentence_response(request, reply.status, reply.sentence)

    @r.get(
        "/experiment_trials/best",
        summary="knobflow: the best configuration so far, in Kruize's terms",
        response_class=JSONResponse,
        openapi_extra={"parameters": [NAME_PARAMETER]},
    )
    def get_best(request: Request) -> Response:
        try:
            return json_response(api.best(_query(request)))
        except Reply as reply:
            return sentence_response(request, reply.status, reply.sentence)

    @r.api_route("/experiment_trials/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    def not_found(request: Request, rest: str) -> Response:
        return sentence_response(request, 404, NOT_FOUND)

    @r.get("/health", summary="Kruize HPO: OK when the service and its store are up", response_class=PlainTextResponse)
    def health(request: Request) -> Response:
        try:
            service.names()
        except Exception:  # the store is down: Kruize's 503
            return sentence_response(request, 503, UNHEALTHY)
        return PlainTextResponse(HEALTHY)

    @r.get(
        "/plot",
        summary="Kruize HPO: a plot of an experiment (HTML, Plotly)",
        response_class=HTMLResponse,
        openapi_extra={"parameters": [NAME_PARAMETER, PLOT_PARAMETER]},
    )
    def plot(request: Request) -> Response:
        try:
            return HTMLResponse(api.plot(request, _query(request)))
        except Reply as reply:
            return sentence_response(request, reply.status, reply.sentence)

    @r.get("/plotly.min.js", include_in_schema=False)
    def plotly_js() -> Response:
        from knobflow import report

        try:
            return FileResponse(report.plotly_js_path(), media_type="text/javascript")
        except report.ReportError:
            return PlainTextResponse(NOT_FOUND, status_code=404)

    @r.get(
        "/listexperiments", summary="Kruize HPO: the experiments and their status (HTML)", response_class=HTMLResponse
    )
    def list_experiments(request: Request) -> Response:
        return HTMLResponse(api.list_page(request))

    @r.get("/", summary="Kruize HPO: the welcome page", response_class=HTMLResponse, include_in_schema=False)
    def welcome(request: Request) -> Response:
        return HTMLResponse(welcome_page(request))

    return r
