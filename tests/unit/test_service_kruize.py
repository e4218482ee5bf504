"""The Kruize HPO contract on /experiment_trials (../shared/specs/kruize-api.md, docs/api.md).

* A port of Kruize HPO's negative-case table, extended to every field of every operation: empty,
  blank, null, missing, wrong type and out of range, plus the common checks (content type, JSON,
  operation, additional properties, path). Each case asserts the status and Kruize's exact sentence,
  as a plain sentence and, with ``Accept: application/json``, as ``{"error": "<sentence>"}``.
* A Kruize-style client loop (create, get config, run, post result, next) runs a whole experiment,
  survives a restart of the service in the middle, and runs two trials in flight with
  ``parallel_trials: 2``.
* What knobflow adds: any past trial's config, the best configuration, failure/error mapped to
  pruned/failed, exact values, negative values when declared, plots at any time.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from knobflow.service.app import create_app
from knobflow.service.kruize_api import (
    ADDITIONAL_PROPERTIES,
    DIRECTION_NOT_SUPPORTED,
    EXPERIMENT_EXISTS,
    EXPERIMENT_NOT_FOUND,
    HPO_ALGO_NOT_SUPPORTED,
    INVALID_CONTENT_TYPE,
    INVALID_NAME,
    INVALID_OPERATION,
    INVALID_PARALLEL_TRIALS,
    INVALID_RESULT_STATUS,
    INVALID_TOTAL_TRIALS,
    NEGATIVE_TRIAL,
    NEGATIVE_VALUE,
    NO_BEST,
    NON_INTEGER_VALUE,
    NOT_FINITE,
    NOT_FOUND,
    PLOT_TYPE_NOT_SUPPORTED,
    PLOT_UNAVAILABLE,
    TRIAL_EXCEEDED,
    TRIAL_PRECEDES,
    VALUE_MISSING,
    VALUE_TYPE_NOT_SUPPORTED,
)

# The example search space of the contract.
SPACE: dict[str, Any] = {
    "experiment_name": "petclinic-jvm-tuning",
    "experiment_id": "a123",
    "total_trials": 50,
    "parallel_trials": 1,
    "value_type": "double",
    "hpo_algo_impl": "optuna_tpe",
    "objective_function": "transaction_response_time",
    "direction": "minimize",
    "tunables": [
        {"name": "memoryRequest", "value_type": "double", "lower_bound": 270, "upper_bound": 1024, "step": 1},
        {"name": "cpuRequest", "value_type": "double", "lower_bound": 1.0, "upper_bound": 3.0, "step": 0.01},
        {"name": "MaxInlineLevel", "value_type": "integer", "lower_bound": 9, "upper_bound": 50, "step": 1},
        {
            "name": "gc",
            "value_type": "categorical",
            "choices": ["G1GC", "ParallelGC", "SerialGC", "ShenandoahGC", "ZGC"],
        },
    ],
}
MISSING = object()  # a field left out of a body

# Sentences the contract fixes (the constants of the module are checked against them here).
EXACT = {
    "not found": "Could not be find requested resource. Please check the URL!",
    "content type": "Invalid content type. Should be application/json!",
    "empty": "Parameters cannot be empty or null!",
    "operation": "Invalid Operation value!",
    "negative trial": "Trial number cannot be negative!",
    "exceeds": "Requested trial exceeds the completed trial limit!",
    "completed": "Requested trial is already completed!",
    "negative value": "result_value cannot be negative!",
    "experiment not found": "Experiment not found!",
    "exists": "Experiment already exists!",
}


def test_sentences_are_kruizes() -> None:
    assert list(EXACT.values()) == [
        NOT_FOUND,
        INVALID_CONTENT_TYPE,
        VALUE_MISSING,
        INVALID_OPERATION,
        NEGATIVE_TRIAL,
        TRIAL_EXCEEDED,
        TRIAL_PRECEDES,
        NEGATIVE_VALUE,
        EXPERIMENT_NOT_FOUND,
        EXPERIMENT_EXISTS,
    ]


# --------------------------------------------------------------------------------------------
# Bodies


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        if v is MISSING:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def space(name: str = "neg-new", **changes: Any) -> dict[str, Any]:
    return _apply({**SPACE, "experiment_name": name}, changes)


def new(ss: Any = None, **top: Any) -> dict[str, Any]:
    body = {"operation": "EXP_TRIAL_GENERATE_NEW", "search_space": space() if ss is None else ss}
    return _apply(body, top)


def new_with(**changes: Any) -> dict[str, Any]:
    return new(space(**changes))


def tunable(i: int, **changes: Any) -> dict[str, Any]:
    """The search space with tunable ``i`` changed."""
    tunables = copy.deepcopy(SPACE["tunables"])
    tunables[i] = _apply(tunables[i], changes)
    return new_with(tunables=tunables)


def result(**changes: Any) -> dict[str, Any]:
    base = {
        "operation": "EXP_TRIAL_RESULT",
        "experiment_name": "neg-exp",
        "trial_number": 1,
        "trial_result": "success",
        "result_value_type": "double",
        "result_value": 98.78,
    }
    return _apply(base, changes)


def subsequent(**changes: Any) -> dict[str, Any]:
    return _apply({"operation": "EXP_TRIAL_GENERATE_SUBSEQUENT", "experiment_name": "neg-exp"}, changes)


def delete(**changes: Any) -> dict[str, Any]:
    return _apply({"operation": "EXP_DELETE", "experiment_name": "neg-exp"}, changes)


BODIES: dict[str, Callable[..., dict[str, Any]]] = {
    "EXP_TRIAL_GENERATE_NEW": new,
    "EXP_TRIAL_RESULT": result,
    "EXP_TRIAL_GENERATE_SUBSEQUENT": subsequent,
    "EXP_DELETE": delete,
}

# --------------------------------------------------------------------------------------------
# The negative-case table: (id, request, status, sentence). A request is ("post", body),
# ("raw", text, content type) or ("get", path with its query).

Case = tuple[str, tuple[Any, ...], int, str]
CASES: list[Case] = []


def case(cid: str, req: tuple[Any, ...], status: int, sentence: str) -> None:
    CASES.append((cid, req, status, sentence))


def post(cid: str, body: Any, status: int, sentence: str) -> None:
    case(cid, ("post", body), status, sentence)


def get(cid: str, path: str, status: int, sentence: str) -> None:
    case(cid, ("get", path), status, sentence)


# Common checks, in Kruize's order: path, content type, JSON, operation, then the operation's schema.
case("path", ("raw", json.dumps(subsequent()), "application/json", "/experiment_trials/x"), 404, NOT_FOUND)
get("path-get", "/experiment_trials/x/y", 404, NOT_FOUND)
case("content-type-text", ("raw", json.dumps(subsequent()), "text/plain"), 400, INVALID_CONTENT_TYPE)
case("content-type-form", ("raw", "a=b", "application/x-www-form-urlencoded"), 400, INVALID_CONTENT_TYPE)
case("content-type-none", ("raw", json.dumps(subsequent()), None), 400, INVALID_CONTENT_TYPE)
case("content-type-html", ("raw", json.dumps(subsequent()), "text/html"), 400, INVALID_CONTENT_TYPE)
case("json-empty-body", ("raw", "", "application/json"), 400, "Invalid JSON structure: Expecting value")
case(
    "json-unclosed",
    ("raw", "{", "application/json"),
    400,
    "Invalid JSON structure: Expecting property name enclosed in double quotes",
)
case("json-no-value", ("raw", '{"operation": }', "application/json"), 400, "Invalid JSON structure: Expecting value")
case("json-extra-data", ("raw", "{} {}", "application/json"), 400, "Invalid JSON structure: Extra data")
case(
    "json-single-quotes",
    ("raw", "{'operation': 'EXP_DELETE'}", "application/json"),
    400,
    "Invalid JSON structure: Expecting property name enclosed in double quotes",
)
post("json-array", [], 400, "'operation' is a required property!")
post("json-number", 5, 400, "'operation' is a required property!")
post("json-string", "EXP_DELETE", 400, "'operation' is a required property!")
post("json-empty-object", {}, 400, "'operation' is a required property!")
for op, make in BODIES.items():
    post(f"{op}-operation-missing", make(operation=MISSING), 400, "'operation' is a required property!")
    post(f"{op}-operation-empty", make(operation=""), 400, VALUE_MISSING)
    post(f"{op}-operation-blank", make(operation=" "), 400, VALUE_MISSING)
    post(f"{op}-operation-null", make(operation=None), 400, VALUE_MISSING)
    post(f"{op}-operation-invalid", make(operation="EXP_TRIAL_GENERATE_CURRENT"), 400, INVALID_OPERATION)
    post(f"{op}-operation-lowercase", make(operation=op.lower()), 400, INVALID_OPERATION)
    post(f"{op}-operation-number", make(operation=5), 400, INVALID_OPERATION)
    post(f"{op}-operation-list", make(operation=[op]), 400, INVALID_OPERATION)
    post(f"{op}-additional-field", make(cpu="cputunable"), 400, ADDITIONAL_PROPERTIES)
post("operation-old-exp-stop", delete(operation="EXP_STOP"), 400, INVALID_OPERATION)
post("operation-text-null", delete(operation="null"), 400, INVALID_OPERATION)

# EXP_TRIAL_GENERATE_NEW: the search space itself.
post("new-search-space-missing", new(search_space=MISSING), 400, "'search_space' is a required property")
post("new-search-space-null", new(search_space=None), 400, VALUE_MISSING)
post("new-search-space-string", new(search_space="x"), 400, "Parameter search_space 'x' is not of type 'object'")
post("new-search-space-array", new(search_space=[]), 400, "Parameter search_space [] is not of type 'object'")
post("new-search-space-empty", new(search_space={}), 400, "'experiment_name' is a required property")
post("new-search-space-additional", new_with(cpu="cputunable"), 400, ADDITIONAL_PROPERTIES)
post("new-search-space-slo-class", new_with(slo_class="response_time"), 400, ADDITIONAL_PROPERTIES)

# Every search-space field: empty, blank, null, missing (required ones), wrong type, out of range.
REQUIRED = ("experiment_name", "experiment_id", "total_trials", "objective_function", "tunables", "direction")
for field in REQUIRED:
    post(f"new-{field}-missing", new_with(**{field: MISSING}), 400, f"'{field}' is a required property")
for field in ("experiment_name", "experiment_id", "objective_function", "direction", "value_type", "hpo_algo_impl"):
    post(f"new-{field}-empty", new_with(**{field: ""}), 400, VALUE_MISSING)
    post(f"new-{field}-blank", new_with(**{field: " "}), 400, VALUE_MISSING)
    post(f"new-{field}-null", new_with(**{field: None}), 400, VALUE_MISSING)
    post(f"new-{field}-number", new_with(**{field: 5}), 400, f"Parameter {field} 5 is not of type 'string'")
    post(f"new-{field}-list", new_with(**{field: ["x"]}), 400, f"Parameter {field} ['x'] is not of type 'string'")
    post(f"new-{field}-bool", new_with(**{field: True}), 400, f"Parameter {field} True is not of type 'string'")
for field in ("total_trials", "parallel_trials"):
    post(f"new-{field}-null", new_with(**{field: None}), 400, VALUE_MISSING)
    post(f"new-{field}-empty", new_with(**{field: ""}), 400, VALUE_MISSING)
    post(f"new-{field}-string", new_with(**{field: "5"}), 400, f"Parameter {field} '5' is not of type 'integer'")
    post(f"new-{field}-float", new_with(**{field: 2.5}), 400, f"Parameter {field} 2.5 is not of type 'integer'")
    post(f"new-{field}-bool", new_with(**{field: True}), 400, f"Parameter {field} True is not of type 'integer'")
    post(f"new-{field}-object", new_with(**{field: {}}), 400, f"Parameter {field} {{}} is not of type 'integer'")
for field in ("tunables", "function_variables"):
    post(f"new-{field}-null", new_with(**{field: None}), 400, VALUE_MISSING)
    post(f"new-{field}-string", new_with(**{field: "x"}), 400, f"Parameter {field} 'x' is not of type 'array'")
    post(f"new-{field}-object", new_with(**{field: {}}), 400, f"Parameter {field} {{}} is not of type 'array'")
    post(f"new-{field}-number", new_with(**{field: 1}), 400, f"Parameter {field} 1 is not of type 'array'")
post("new-tunables-empty", new_with(tunables=[]), 400, VALUE_MISSING)
post("new-allow_negative-null", new_with(allow_negative=None), 400, VALUE_MISSING)
post(
    "new-allow_negative-string",
    new_with(allow_negative="yes"),
    400,
    "Parameter allow_negative 'yes' is not of type 'boolean'",
)
post(
    "new-allow_negative-number", new_with(allow_negative=1), 400, "Parameter allow_negative 1 is not of type 'boolean'"
)
# Out of range.
post("new-experiment_name-text-null", new_with(experiment_name="null"), 400, VALUE_MISSING)
post("new-experiment_name-exists", new_with(experiment_name="neg-exp"), 400, EXPERIMENT_EXISTS)
post("new-experiment_name-space", new_with(experiment_name="pet clinic"), 400, INVALID_NAME)
post("new-experiment_name-slash", new_with(experiment_name="a/b"), 400, INVALID_NAME)
post("new-experiment_name-leading-dash", new_with(experiment_name="-a"), 400, INVALID_NAME)
post("new-experiment_name-too-long", new_with(experiment_name="a" * 101), 400, INVALID_NAME)
post("new-total_trials-zero", new_with(total_trials=0), 400, INVALID_TOTAL_TRIALS)
post("new-total_trials-negative", new_with(total_trials=-5), 400, INVALID_TOTAL_TRIALS)
post(
    "new-total_trials-above-limit",
    new_with(total_trials=1025),
    400,
    "Total trials should not be greater than 1024 (knobflow's limit)!",
)
post("new-parallel_trials-zero", new_with(parallel_trials=0), 400, INVALID_PARALLEL_TRIALS)
post("new-parallel_trials-negative", new_with(parallel_trials=-1), 400, INVALID_PARALLEL_TRIALS)
post("new-direction-invalid", new_with(direction="xyz"), 400, DIRECTION_NOT_SUPPORTED)
post("new-direction-capitalised", new_with(direction="Minimize"), 400, DIRECTION_NOT_SUPPORTED)
post("new-direction-text-null", new_with(direction="null"), 400, DIRECTION_NOT_SUPPORTED)
post("new-value_type-invalid", new_with(value_type="xyz"), 400, VALUE_TYPE_NOT_SUPPORTED)
post("new-value_type-integer", new_with(value_type="integer"), 400, VALUE_TYPE_NOT_SUPPORTED)
post("new-hpo_algo_impl-invalid", new_with(hpo_algo_impl="optuna_xyz"), 400, HPO_ALGO_NOT_SUPPORTED)
post("new-hpo_algo_impl-knobflow-name", new_with(hpo_algo_impl="tpe"), 400, HPO_ALGO_NOT_SUPPORTED)
# Several search-space errors: comma-joined, in the order of the fields.
post(
    "new-several-errors",
    new_with(value_type="xyz", total_trials=0, direction="up"),
    400,
    f"{INVALID_TOTAL_TRIALS},{VALUE_TYPE_NOT_SUPPORTED},{DIRECTION_NOT_SUPPORTED}",
)
post("new-several-empty", new_with(experiment_id=" ", objective_function=""), 400, VALUE_MISSING)

# Every tunable field (knobflow goes further: Kruize validates no tunable): a 400 naming the
# tunable and the field.
T0, T2, T3 = "tunables[0] (memoryRequest)", "tunables[2] (MaxInlineLevel)", "tunables[3] (gc)"
post(
    "tunable-not-object",
    new_with(tunables=["memoryRequest"]),
    400,
    "tunables[0]: must be an object, got 'memoryRequest'",
)
post("tunable-null", new_with(tunables=[None]), 400, "tunables[0]: must be an object, got None")
post("tunable-name-missing", tunable(0, name=MISSING), 400, "tunables[0].name: required (a non-empty string), got None")
post("tunable-name-empty", tunable(0, name=""), 400, "tunables[0].name: required (a non-empty string), got ''")
post("tunable-name-blank", tunable(0, name=" "), 400, "tunables[0].name: required (a non-empty string), got ' '")
post("tunable-name-null", tunable(0, name=None), 400, "tunables[0].name: required (a non-empty string), got None")
post("tunable-name-number", tunable(0, name=5), 400, "tunables[0].name: required (a non-empty string), got 5")
post(
    "tunable-name-duplicate",
    tunable(1, name="memoryRequest"),
    400,
    "tunables[1] (memoryRequest).name: duplicate tunable (also tunables[0])",
)
for cid, value in (("missing", MISSING), ("null", None), ("empty", ""), ("number", 1), ("int", "int"), ("xyz", "xyz")):
    got = None if value is MISSING else value
    post(
        f"tunable-value_type-{cid}",
        tunable(0, value_type=value),
        400,
        f"{T0}.value_type: must be double, integer or categorical, got {got!r}",
    )
for field in ("lower_bound", "upper_bound"):
    post(f"tunable-{field}-missing", tunable(0, **{field: MISSING}), 400, f"{T0}.{field}: required (a number)")
    post(f"tunable-{field}-null", tunable(0, **{field: None}), 400, f"{T0}.{field}: required (a number)")
    post(f"tunable-{field}-string", tunable(0, **{field: "270"}), 400, f"{T0}.{field}: must be a number, got '270'")
    post(f"tunable-{field}-empty", tunable(0, **{field: ""}), 400, f"{T0}.{field}: must be a number, got ''")
    post(f"tunable-{field}-bool", tunable(0, **{field: True}), 400, f"{T0}.{field}: must be a number, got True")
    post(f"tunable-{field}-list", tunable(0, **{field: [1]}), 400, f"{T0}.{field}: must be a number, got [1]")
post("tunable-step-null", tunable(0, step=None), 400, f"{T0}.step: must be a number, got None")
post("tunable-step-string", tunable(0, step="1"), 400, f"{T0}.step: must be a number, got '1'")
post("tunable-step-zero", tunable(0, step=0), 400, f"{T0}.step: must be positive, got 0")
post("tunable-step-negative", tunable(0, step=-1), 400, f"{T0}.step: must be positive, got -1")
post(
    "tunable-step-above-range",
    tunable(0, step=5000),
    400,
    f"{T0}.step: 5000.0 is larger than the range [270.0, 1024.0]",
)
post(
    "tunable-step-too-small",
    tunable(1, upper_bound=1e300),
    400,
    "tunables[1] (cpuRequest).step: 0.01 is too small for the range [1.0, 1e+300] (more than 10^15 steps)",
)
post(
    "tunable-range-too-wide",
    tunable(1, lower_bound=-1e308, upper_bound=1e308, step=MISSING),
    400,
    "tunables[1] (cpuRequest).upper_bound: the range [-1e+308, 1e+308] is too wide",
)
post(
    "tunable-bounds-reversed",
    tunable(0, lower_bound=2000),
    400,
    f"{T0}.upper_bound: must be greater than lower_bound (1024.0 <= 2000.0)",
)
post(
    "tunable-bounds-equal",
    tunable(0, lower_bound=1024),
    400,
    f"{T0}.upper_bound: must be greater than lower_bound (1024.0 <= 1024.0)",
)
post(
    "tunable-integer-fractional-bound",
    tunable(2, lower_bound=9.5),
    400,
    f"{T2}.lower_bound: an integer tunable needs an integer, got 9.5",
)
post(
    "tunable-integer-fractional-step",
    tunable(2, step=0.5),
    400,
    f"{T2}.step: an integer tunable needs an integer, got 0.5",
)
post(
    "tunable-choices-missing", tunable(3, choices=MISSING), 400, f"{T3}.choices: required (a non-empty list), got None"
)
post("tunable-choices-null", tunable(3, choices=None), 400, f"{T3}.choices: required (a non-empty list), got None")
post(
    "tunable-choices-string", tunable(3, choices="G1GC"), 400, f"{T3}.choices: required (a non-empty list), got 'G1GC'"
)
post(
    "tunable-choices-empty",
    tunable(3, choices=[]),
    400,
    f"{T3}.choices: a categorical tunable needs a non-empty list of choices",
)
post(
    "tunable-choices-duplicate",
    tunable(3, choices=["G1GC", "G1GC"]),
    400,
    f"{T3}.choices: choices must be unique, got ['G1GC', 'G1GC']",
)
post(
    "tunable-choices-nested",
    tunable(3, choices=[["G1GC"]]),
    400,
    f"{T3}.choices: each choice must be a string, number or boolean",
)
post(
    "tunable-several-problems",
    new_with(
        tunables=[
            {"name": "a", "value_type": "double", "lower_bound": "1", "upper_bound": 2},
            {"name": "b", "value_type": "float8"},
        ]
    ),
    400,
    "tunables[0] (a).lower_bound: must be a number, got '1',"
    "tunables[1] (b).value_type: must be double, integer or categorical, got 'float8'",
)

# EXP_TRIAL_RESULT: every field. Experiment neg-exp: trial 0 reported, trial 1 running.
for field in ("experiment_name", "trial_number", "trial_result", "result_value_type", "result_value"):
    post(f"result-{field}-missing", result(**{field: MISSING}), 400, f"'{field}' is a required property")
    post(f"result-{field}-null", result(**{field: None}), 400, VALUE_MISSING)
post("result-experiment_name-empty", result(experiment_name=""), 400, VALUE_MISSING)
post("result-experiment_name-blank", result(experiment_name=" "), 400, VALUE_MISSING)
post("result-experiment_name-text-null", result(experiment_name="null"), 400, VALUE_MISSING)
post(
    "result-experiment_name-number",
    result(experiment_name=5),
    400,
    "Parameter experiment_name 5 is not of type 'string'",
)
post("result-experiment_name-unknown", result(experiment_name="no-such-experiment"), 404, EXPERIMENT_NOT_FOUND)
post("result-trial_number-empty", result(trial_number=""), 400, VALUE_MISSING)
post("result-trial_number-string", result(trial_number="1"), 400, "Parameter trial_number '1' is not of type 'integer'")
post("result-trial_number-float", result(trial_number=1.5), 400, "Parameter trial_number 1.5 is not of type 'integer'")
post("result-trial_number-bool", result(trial_number=True), 400, "Parameter trial_number True is not of type 'integer'")
post("result-trial_number-negative", result(trial_number=-1), 400, NEGATIVE_TRIAL)
post("result-trial_number-exceeds", result(trial_number=10000), 400, TRIAL_EXCEEDED)
post("result-trial_number-not-started", result(trial_number=2), 400, TRIAL_EXCEEDED)
post("result-trial_number-huge", result(trial_number=10**30), 400, TRIAL_EXCEEDED)
post("result-trial_number-completed", result(trial_number=0), 400, TRIAL_PRECEDES)
for field, sentence in (("trial_result", INVALID_RESULT_STATUS), ("result_value_type", VALUE_TYPE_NOT_SUPPORTED)):
    post(f"result-{field}-empty", result(**{field: ""}), 400, sentence)
    post(f"result-{field}-blank", result(**{field: " "}), 400, sentence)
    post(f"result-{field}-invalid", result(**{field: "xyz"}), 400, sentence)
    post(
        f"result-{field}-capitalised",
        result(**{field: "SUCCESS" if field == "trial_result" else "Double"}),
        400,
        sentence,
    )
    post(f"result-{field}-number", result(**{field: 1}), 400, f"Parameter {field} 1 is not of type 'string'")
post("result-trial_result-prune", result(trial_result="prune"), 400, INVALID_RESULT_STATUS)
post(
    "result-result_value-string",
    result(result_value="98.78"),
    400,
    "Parameter result_value '98.78' is not of type 'number'",
)
post("result-result_value-empty", result(result_value=""), 400, VALUE_MISSING)
post("result-result_value-bool", result(result_value=True), 400, "Parameter result_value True is not of type 'number'")
post("result-result_value-list", result(result_value=[1]), 400, "Parameter result_value [1] is not of type 'number'")
post("result-result_value-negative", result(result_value=-98.68), 400, NEGATIVE_VALUE)
post("result-result_value-negative-failure", result(trial_result="failure", result_value=-1), 400, NEGATIVE_VALUE)
for literal in ("NaN", "Infinity", "-Infinity"):
    text = json.dumps(result()).replace("98.78", literal)
    case(f"result-result_value-{literal}", ("raw", text, "application/json"), 400, NOT_FINITE)
# Kruize's order: the experiment, then the trial number, then the result's fields.
post(
    "result-order-name-first",
    result(experiment_name="nope", trial_number=-1, trial_result="x"),
    404,
    EXPERIMENT_NOT_FOUND,
)
post("result-order-trial-first", result(trial_number=10000, trial_result="x", result_value=-1), 400, TRIAL_EXCEEDED)
post("result-order-status-before-type", result(trial_result="x", result_value_type="x"), 400, INVALID_RESULT_STATUS)
post("result-order-type-before-value", result(result_value_type="x", result_value=-1), 400, VALUE_TYPE_NOT_SUPPORTED)
post("result-order-schema-first", result(trial_number="1", cpu=1), 400, ADDITIONAL_PROPERTIES)

# EXP_TRIAL_GENERATE_SUBSEQUENT and EXP_DELETE: the experiment's name.
for op, make in (("subsequent", subsequent), ("delete", delete)):
    post(
        f"{op}-experiment_name-missing", make(experiment_name=MISSING), 400, "'experiment_name' is a required property"
    )
    post(f"{op}-experiment_name-empty", make(experiment_name=""), 400, VALUE_MISSING)
    post(f"{op}-experiment_name-blank", make(experiment_name="  "), 400, VALUE_MISSING)
    post(f"{op}-experiment_name-null", make(experiment_name=None), 400, VALUE_MISSING)
    post(f"{op}-experiment_name-text-null", make(experiment_name="null"), 400, VALUE_MISSING)
    post(
        f"{op}-experiment_name-number",
        make(experiment_name=5),
        400,
        "Parameter experiment_name 5 is not of type 'string'",
    )
    post(
        f"{op}-experiment_name-object",
        make(experiment_name={"a": 1}),
        400,
        "Parameter experiment_name {'a': 1} is not of type 'string'",
    )
    post(f"{op}-experiment_name-unknown", make(experiment_name="no-such-experiment"), 404, EXPERIMENT_NOT_FOUND)
    post(f"{op}-experiment_name-archive", make(experiment_name="archive:neg-exp:x"), 404, EXPERIMENT_NOT_FOUND)
    post(f"{op}-search-space-field", make(search_space=space()), 400, ADDITIONAL_PROPERTIES)
post("subsequent-completed", subsequent(experiment_name="neg-full"), 400, "Trials completed for experiment: neg-full")

# GET /experiment_trials: the config of a trial.
CONFIG = "/experiment_trials"
get("config-no-parameters", CONFIG, 400, "Missing required parameters: experiment_name, trial_number")
get("config-name-only", f"{CONFIG}?experiment_name=neg-exp", 400, "Missing required parameters: trial_number")
get("config-trial-only", f"{CONFIG}?trial_number=0", 400, "Missing required parameters: experiment_name")
get(
    "config-name-empty",
    f"{CONFIG}?experiment_name=&trial_number=0",
    400,
    "Missing required parameters: experiment_name",
)
get(
    "config-trial-empty",
    f"{CONFIG}?experiment_name=neg-exp&trial_number=",
    400,
    "Missing required parameters: trial_number",
)
get(
    "config-both-empty",
    f"{CONFIG}?experiment_name=&trial_number=",
    400,
    "Missing required parameters: experiment_name, trial_number",
)
get("config-name-blank", f"{CONFIG}?experiment_name=%20&trial_number=0", 400, VALUE_MISSING)
get("config-name-null", f"{CONFIG}?experiment_name=null&trial_number=0", 400, VALUE_MISSING)
get("config-name-unknown", f"{CONFIG}?experiment_name=nope&trial_number=0", 404, EXPERIMENT_NOT_FOUND)
get("config-trial-blank", f"{CONFIG}?experiment_name=neg-exp&trial_number=%20", 400, VALUE_MISSING)
get("config-trial-null", f"{CONFIG}?experiment_name=neg-exp&trial_number=null", 400, VALUE_MISSING)
get("config-trial-text", f"{CONFIG}?experiment_name=neg-exp&trial_number=abc", 400, NON_INTEGER_VALUE)
get("config-trial-float", f"{CONFIG}?experiment_name=neg-exp&trial_number=1.5", 400, NON_INTEGER_VALUE)
get("config-trial-float-integral", f"{CONFIG}?experiment_name=neg-exp&trial_number=1.0", 400, NON_INTEGER_VALUE)
get("config-trial-underscore", f"{CONFIG}?experiment_name=neg-exp&trial_number=1_0", 400, NON_INTEGER_VALUE)
get("config-trial-negative", f"{CONFIG}?experiment_name=neg-exp&trial_number=-1", 400, NEGATIVE_TRIAL)
get("config-trial-exceeds", f"{CONFIG}?experiment_name=neg-exp&trial_number=99", 400, TRIAL_EXCEEDED)
get("config-trial-not-started", f"{CONFIG}?experiment_name=neg-exp&trial_number=2", 400, TRIAL_EXCEEDED)
get("config-trial-huge", f"{CONFIG}?experiment_name=neg-exp&trial_number={10**30}", 400, TRIAL_EXCEEDED)
# GET /experiment_trials/best (knobflow's).
BEST = "/experiment_trials/best"
get("best-no-name", BEST, 400, "Missing required parameters: experiment_name")
get("best-name-empty", f"{BEST}?experiment_name=", 400, "Missing required parameters: experiment_name")
get("best-name-blank", f"{BEST}?experiment_name=%20", 400, VALUE_MISSING)
get("best-name-null", f"{BEST}?experiment_name=null", 400, VALUE_MISSING)
get("best-name-unknown", f"{BEST}?experiment_name=nope", 404, EXPERIMENT_NOT_FOUND)
get("best-nothing-complete", f"{BEST}?experiment_name=neg-fresh", 400, NO_BEST)
# GET /plot.
get("plot-no-name", "/plot", 400, "Missing required parameters!")
get("plot-name-empty", "/plot?experiment_name=", 400, "Missing required parameters!")
get("plot-name-blank", "/plot?experiment_name=%20", 400, VALUE_MISSING)
get("plot-name-unknown", "/plot?experiment_name=nope", 404, EXPERIMENT_NOT_FOUND)
get("plot-type-unknown", "/plot?experiment_name=neg-exp&type=xyz", 400, PLOT_TYPE_NOT_SUPPORTED)
get("plot-nothing-to-plot", "/plot?experiment_name=neg-fresh&type=optimization_history", 404, PLOT_UNAVAILABLE)
get("plot-importance-one-trial", "/plot?experiment_name=neg-exp", 404, PLOT_UNAVAILABLE)


def test_the_table_covers_every_operation_and_field() -> None:
    ids = {c[0] for c in CASES}
    assert len(ids) == len(CASES), "case ids must be unique"
    for field in [*SPACE, "function_variables", "allow_negative"]:
        assert any(i.startswith(f"new-{field}-") for i in ids), field
    for field in ("experiment_name", "trial_number", "trial_result", "result_value_type", "result_value"):
        kinds = {i.removeprefix(f"result-{field}-") for i in ids if i.startswith(f"result-{field}-")}
        assert {"missing", "null"} <= kinds, field
    for op in BODIES:
        assert f"{op}-operation-missing" in ids and f"{op}-additional-field" in ids
    assert len(CASES) > 250


# --------------------------------------------------------------------------------------------
# Running requests


def send(client: TestClient, req: tuple[Any, ...], headers: dict[str, str] | None = None) -> Any:
    kind = req[0]
    if kind == "post":
        return client.post("/experiment_trials", json=req[1], headers=headers)
    if kind == "raw":
        path = req[3] if len(req) > 3 else "/experiment_trials"
        h = dict(headers or {})
        if req[2] is not None:
            h["content-type"] = req[2]
        return client.post(path, content=req[1].encode(), headers=h)
    return client.get(req[1], headers=headers)


def ok(r: Any, text: str | None = None) -> Any:
    assert r.status_code == 200, r.text
    if text is not None:
        assert r.text == text
    return r


def start(client: TestClient, ss: dict[str, Any]) -> None:
    r = client.post("/experiment_trials", json={"operation": "EXP_TRIAL_GENERATE_NEW", "search_space": ss})
    ok(r, "Experiment posted successfully! Trial 0 started..")


def report(client: TestClient, name: str, number: int, value: float, status: str = "success") -> Any:
    body = {
        "operation": "EXP_TRIAL_RESULT",
        "experiment_name": name,
        "trial_number": number,
        "trial_result": status,
        "result_value_type": "double",
        "result_value": value,
    }
    return client.post("/experiment_trials", json=body)


def next_trial(client: TestClient, name: str) -> Any:
    return client.post(
        "/experiment_trials", json={"operation": "EXP_TRIAL_GENERATE_SUBSEQUENT", "experiment_name": name}
    )


def config(client: TestClient, name: str, number: int) -> dict[str, Any]:
    r = ok(client.get("/experiment_trials", params={"experiment_name": name, "trial_number": number}))
    assert r.headers["content-type"] == "application/json"
    data = json.loads(r.text)
    assert r.text == json.dumps(data)  # Kruize's spacing
    assert all(set(item) == {"tunable_name", "tunable_value"} for item in data)
    return {item["tunable_name"]: item["tunable_value"] for item in data}


def in_space(cfg: dict[str, Any], tunables: list[dict[str, Any]]) -> None:
    assert list(cfg) == [t["name"] for t in tunables]
    for t in tunables:
        v = cfg[t["name"]]
        if t["value_type"] == "categorical":
            assert v in t["choices"]
            continue
        assert t["lower_bound"] <= v <= t["upper_bound"], (t["name"], v)
        k = (v - t["lower_bound"]) / t.get("step", 1)
        assert abs(k - round(k)) < 1e-6, (t["name"], v)
        if t["value_type"] == "integer":
            assert isinstance(v, int)
        else:
            assert isinstance(v, float)


def cost(cfg: dict[str, Any]) -> float:
    """A benchmark: response time from a configuration (lower is better)."""
    gc = {"G1GC": 0.0, "ParallelGC": 5.0, "SerialGC": 30.0, "ShenandoahGC": 2.0, "ZGC": 1.0}[cfg["gc"]]
    memory, cpu, inline = cfg["memoryRequest"], cfg["cpuRequest"], cfg["MaxInlineLevel"]
    value = 50 + abs(memory - 700) / 10 + 10 * abs(cpu - 2.2) + abs(inline - 20) + gc
    return round(value, 6) + 1e-7  # not a two-decimal value: knobflow keeps it exact


def loop(client: TestClient, name: str, *, first: int, until: int | None = None) -> list[tuple[int, float]]:
    """Kruize's client loop from trial ``first``: get config, run, post result, next; until the
    service says the trials are completed (or trial ``until`` is next)."""
    done = []
    number = first
    tunables = SPACE["tunables"]
    while until is None or number < until:
        cfg = config(client, name, number)
        in_space(cfg, tunables)
        value = cost(cfg)
        ok(report(client, name, number, value), "Result posted successfully!")
        done.append((number, value))
        r = next_trial(client, name)
        if r.status_code == 400:
            assert r.text == f"Trials completed for experiment: {name}"
            break
        ok(r)
        assert int(r.text) == number + 1  # a result is recorded at once: never the old number
        number = int(r.text)
    return done


# --------------------------------------------------------------------------------------------
# The negative table against a service with three experiments


@pytest.fixture(scope="module")
def neg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """neg-exp: trial 0 reported, trial 1 running; neg-full: its one trial reported; neg-fresh:
    trial 0 running."""
    db = tmp_path_factory.mktemp("kruize") / "k.db"
    client = TestClient(create_app(f"sqlite:///{db}"))
    start(client, space("neg-exp", total_trials=3))
    ok(report(client, "neg-exp", 0, 10.0))
    ok(next_trial(client, "neg-exp"), "1")
    start(client, space("neg-full", total_trials=1))
    ok(report(client, "neg-full", 0, 10.0))
    start(client, space("neg-fresh", total_trials=3))
    yield client


@pytest.mark.parametrize("accept", ["kruize", "json"])
@pytest.mark.parametrize(("req", "status", "sentence"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_negative_case(neg: TestClient, req: tuple[Any, ...], status: int, sentence: str, accept: str) -> None:
    if accept == "json":
        r = send(neg, req, {"accept": "application/json"})
        assert (r.status_code, r.json()) == (status, {"error": sentence})
        assert r.headers["content-type"] == "application/json"
    else:
        r = send(neg, req)
        assert (r.status_code, r.text) == (status, sentence)
        assert r.headers["content-type"].startswith("text/plain")


def test_negative_cases_changed_nothing(neg: TestClient) -> None:
    assert sorted(s["name"] for s in neg.get("/api/v1/experiments").json()) == ["neg-exp", "neg-fresh", "neg-full"]
    states = [t["state"] for t in neg.get("/api/v1/experiments/neg-exp/trials").json()]
    assert states == ["complete", "running"]
    ok(next_trial(neg, "neg-exp"), "1")  # with parallel_trials 1: the trial not reported yet, no new one


# --------------------------------------------------------------------------------------------
# The client loop


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(f"sqlite:///{tmp_path}/k.db"))


def test_client_loop_runs_a_whole_experiment(client: TestClient) -> None:
    name = SPACE["experiment_name"]
    start(client, {**SPACE, "total_trials": 12})
    # Trial 0 is knobflow's baseline: the middle of each range (on the step), the first choice.
    assert config(client, name, 0) == {"memoryRequest": 647.0, "cpuRequest": 2.0, "MaxInlineLevel": 29, "gc": "G1GC"}
    done = loop(client, name, first=0)
    assert [n for n, _ in done] == list(range(12))
    # Finished: it stays finished, and every past trial's config can still be read.
    r = next_trial(client, name)
    assert (r.status_code, r.text) == (400, f"Trials completed for experiment: {name}")
    for n, value in done:
        assert cost(config(client, name, n)) == value

    best_n, best_v = min(done, key=lambda x: x[1])
    r = ok(client.get("/experiment_trials/best", params={"experiment_name": name}))
    assert r.headers["content-type"] == "application/json"
    best = r.json()
    assert best["experiment_name"] == name
    assert best["direction"] == "minimize"
    assert best["trial_number"] == best_n
    assert best["optimal_value"] == {
        "objective_function": "transaction_response_time",
        "value": best_v,  # exact: not rounded to 2 decimals
        "value_type": "double",
    }
    assert {t["tunable_name"]: t["tunable_value"] for t in best["tunables"]} == config(client, name, best_n)
    assert best["baseline_value"] == done[0][1]

    # The experiment in knobflow's terms.
    s = ok(client.get(f"/api/v1/experiments/{name}")).json()
    assert s["runner"] == "client"
    assert s["tuner"] == "tpe-univariate"
    assert s["budget"] == {"trials": 12, "max_failed": 12}
    assert "Kruize experiment_id: a123" in s["description"]
    assert s["progress"]["completed"] == 12

    page = ok(client.get("/listexperiments")).text
    assert name in page and "Completed" in page
    assert f"plot?experiment_name={name}&amp;type=slice" in page


def test_the_experiment_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    name = SPACE["experiment_name"]
    first = TestClient(create_app(url))
    start(first, {**SPACE, "total_trials": 8})
    before = loop(first, name, first=0, until=4)
    assert [n for n, _ in before] == [0, 1, 2, 3]
    configs = {n: config(first, name, n) for n in range(5)}
    del first

    second = TestClient(create_app(url))  # a new service over the same store
    assert {n: config(second, name, n) for n in range(5)} == configs
    r = report(second, name, 3, 1.0)
    assert (r.status_code, r.text) == (400, TRIAL_PRECEDES)  # what was reported stays reported
    ok(next_trial(second, name), "4")  # trial 4 was started before the restart: still the current one
    after = loop(second, name, first=4)
    assert [n for n, _ in before + after] == list(range(8))
    trials = ok(second.get(f"/api/v1/experiments/{name}/trials")).json()
    assert [t["state"] for t in trials] == ["complete"] * 8


def test_parallel_trials_two_in_flight(client: TestClient) -> None:
    name = "parallel"
    start(client, {**SPACE, "experiment_name": name, "total_trials": 5, "parallel_trials": 2})
    ok(next_trial(client, name), "1")  # a second trial in flight
    ok(next_trial(client, name), "0")  # two in flight: no third; the oldest one
    c0, c1 = config(client, name, 0), config(client, name, 1)
    in_space(c0, SPACE["tunables"])
    in_space(c1, SPACE["tunables"])
    ok(report(client, name, 1, cost(c1)), "Result posted successfully!")  # results in any order
    ok(next_trial(client, name), "2")
    ok(report(client, name, 0, cost(c0)))
    ok(next_trial(client, name), "3")
    ok(report(client, name, 3, cost(config(client, name, 3))))
    ok(next_trial(client, name), "4")
    ok(report(client, name, 4, cost(config(client, name, 4))))
    ok(next_trial(client, name), "2")  # the budget is spent; trial 2 is still to report
    ok(report(client, name, 2, cost(config(client, name, 2))))
    r = next_trial(client, name)
    assert (r.status_code, r.text) == (400, f"Trials completed for experiment: {name}")
    trials = ok(client.get(f"/api/v1/experiments/{name}/trials")).json()
    assert [t["state"] for t in trials] == ["complete"] * 5


def test_failure_prunes_error_fails_values_exact(client: TestClient) -> None:
    name = "outcomes"
    start(client, {**SPACE, "experiment_name": name, "total_trials": 4})
    ok(report(client, name, 0, 0, "failure"))
    ok(next_trial(client, name), "1")
    ok(report(client, name, 1, 0, "error"))
    ok(next_trial(client, name), "2")
    ok(report(client, name, 2, 12.3456789))
    trials = ok(client.get(f"/api/v1/experiments/{name}/trials")).json()
    assert [t["state"] for t in trials] == ["pruned", "fail", "complete"]
    assert trials[2]["value"] == 12.3456789
    assert "failure" in trials[0]["reason"] and "error" in trials[1]["reason"]
    # A failed or pruned trial's config is readable too; its result cannot be posted again.
    assert set(config(client, name, 1)) == {"memoryRequest", "cpuRequest", "MaxInlineLevel", "gc"}
    r = report(client, name, 1, 5.0)
    assert (r.status_code, r.text) == (400, TRIAL_PRECEDES)


def test_negative_values_when_the_experiment_allows_them(client: TestClient) -> None:
    start(client, {**SPACE, "experiment_name": "profit", "direction": "maximize", "allow_negative": True})
    ok(report(client, "profit", 0, -12.5), "Result posted successfully!")
    start(client, {**SPACE, "experiment_name": "cost"})
    r = report(client, "cost", 0, -12.5)
    assert (r.status_code, r.text) == (400, NEGATIVE_VALUE)


def test_kruize_names_come_back_as_sent(client: TestClient) -> None:
    tunables = [
        {"name": "quarkus.thread-pool.core-threads", "value_type": "integer", "lower_bound": 1, "upper_bound": 10},
        {"name": "quarkus_thread_pool_core_threads", "value_type": "INTEGER", "lower_bound": 1, "upper_bound": 4},
        {"name": "FreqInlineSize", "value_type": "double", "lower_bound": 0.5, "upper_bound": 1.5},
        {"name": "UseStringDeduplication", "value_type": "categorical", "choices": ["true", "false"]},
    ]
    start(
        client, {**SPACE, "experiment_name": "names", "tunables": tunables, "hpo_algo_impl": "optuna_tpe_multivariate"}
    )
    cfg = config(client, "names", 0)
    assert cfg == {
        "quarkus.thread-pool.core-threads": 5,
        "quarkus_thread_pool_core_threads": 2,
        "FreqInlineSize": 1.0,  # a double without a step: continuous
        "UseStringDeduplication": "true",
    }
    assert ok(client.get("/api/v1/experiments/names")).json()["tuner"] == "tpe"


def test_delete_archives_the_experiment(client: TestClient) -> None:
    name = "to-delete"
    start(client, {**SPACE, "experiment_name": name, "total_trials": 3})
    body = {"operation": "EXP_DELETE", "experiment_name": name}
    ok(client.post("/experiment_trials", json=body), "Experiment deleted!")
    r = client.post("/experiment_trials", json=body)
    assert (r.status_code, r.text) == (404, EXPERIMENT_NOT_FOUND)
    r = client.get("/experiment_trials", params={"experiment_name": name, "trial_number": 0})
    assert (r.status_code, r.text) == (404, EXPERIMENT_NOT_FOUND)
    r = next_trial(client, name)
    assert (r.status_code, r.text) == (404, EXPERIMENT_NOT_FOUND)
    assert "Deleted" in ok(client.get("/listexperiments")).text
    start(client, {**SPACE, "experiment_name": name, "total_trials": 3})  # the name is free again


def test_content_type_with_charset_and_json_accept_on_success(client: TestClient) -> None:
    ss = {**SPACE, "experiment_name": "charset"}
    r = client.post(
        "/experiment_trials",
        content=json.dumps({"operation": "EXP_TRIAL_GENERATE_NEW", "search_space": ss}).encode(),
        headers={"content-type": "application/json; charset=utf-8", "accept": "application/json"},
    )
    ok(r, "Experiment posted successfully! Trial 0 started..")
    r = client.post(
        "/experiment_trials",
        json={"operation": "EXP_TRIAL_GENERATE_NEW", "search_space": ss},
        headers={"accept": "text/html, application/json;q=0.9"},
    )
    assert (r.status_code, r.json()) == (400, {"error": EXPERIMENT_EXISTS})


def test_pages_plots_and_health(client: TestClient) -> None:
    r = ok(client.get("/health"), "OK")
    page = ok(client.get("/")).text
    assert "listexperiments" in page and r.status_code == 200
    assert "No experiments yet" in ok(client.get("/listexperiments")).text

    name = "plots"
    start(client, {**SPACE, "experiment_name": name, "total_trials": 20})
    page = ok(client.get("/listexperiments")).text
    assert name in page and "Running trial 1 of 20" in page
    loop(client, name, first=0, until=8)
    page = ok(client.get("/listexperiments")).text
    assert "Running trial 9 of 20" in page
    for kind in ("optimization_history", "parallel_coordinate", "slice"):  # at any time
        plot_page_of(client, name, kind)
    # Importance ranks the tunables once 16 trials have completed (knobflow select's minimum).
    r = client.get("/plot", params={"experiment_name": name, "type": "tunable_importance"})
    assert (r.status_code, r.text) == (404, PLOT_UNAVAILABLE)
    loop(client, name, first=8, until=17)
    plot_page_of(client, name, "tunable_importance")
    # The default type is tunable_importance.
    assert "tunable_importance" in ok(client.get("/plot", params={"experiment_name": name})).text


def plot_page_of(client: TestClient, name: str, kind: str) -> None:
    r = ok(client.get("/plot", params={"experiment_name": name, "type": kind}))
    assert r.headers["content-type"].startswith("text/html")
    assert "Plotly.newPlot" in r.text and kind in r.text
    fig = json.loads(r.text.split('id="figure">')[1].split("</script>")[0])
    assert fig["data"], kind


def test_double_step_values_are_clean(client: TestClient) -> None:
    start(client, {**SPACE, "experiment_name": "steps", "total_trials": 15})
    for n in range(15):
        cpu = config(client, "steps", n)["cpuRequest"]
        assert cpu == round(cpu, 2) and not math.isnan(cpu)
        ok(report(client, "steps", n, 1.0 + n))
        r = next_trial(client, "steps")
        if r.status_code == 400:
            break


def test_small_and_exponent_values(client: TestClient) -> None:
    """Numbers JSON writes with an exponent (5e-05) are numbers in the experiment too."""
    tunables = [
        {"name": "ratio", "value_type": "double", "lower_bound": 0.00001, "upper_bound": 0.0001, "step": 0.00001}
    ]
    start(client, {**SPACE, "experiment_name": "small", "tunables": tunables, "total_trials": 3})
    assert config(client, "small", 0) == {"ratio": 5e-05}
    ok(report(client, "small", 0, 1e-07))
    ok(next_trial(client, "small"), "1")
    ratio = config(client, "small", 1)["ratio"]
    assert 0.00001 <= ratio <= 0.0001 and abs(ratio / 0.00001 - round(ratio / 0.00001)) < 1e-6
