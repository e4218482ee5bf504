"""knobflow's native REST API, version 1 (``/api/v1``).

Experiments are created from an experiment file's content (JSON, or YAML with ``Content-Type:
application/yaml``); trials are asked for (one or a batch) and told (value(s), metrics, state,
reason). Errors are JSON ``{"error": "<sentence>"}`` with the status: 400 a bad request (the
sentence names the field), 401 no or a wrong token, 404 an unknown experiment or trial, 409 a
request the experiment's state refuses (a name taken, a budget spent, a trial already told).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from knobflow.service.core import Service, ServiceError

NAME = Annotated[str, Path(description="The experiment's name", max_length=100)]
NUMBER = Annotated[int, Path(description="The trial's number in its experiment (0 is the baseline)", ge=0)]
Scalar = float | int | str | bool | None


class Error(BaseModel):
    error: str = Field(description="What is wrong, naming the field")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=1, le=100, description="How many trials to start (fewer when the budget runs out)")
    note: str | None = Field(None, max_length=2000, description="Kept with each trial (who asked, why)")


class TellRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["complete", "fail", "pruned"] = Field(
        "complete", description="complete: measured; fail: the configuration failed; pruned: leave it out"
    )
    value: float | None = Field(None, description="The objective's value (single-objective experiments)")
    values: list[float] | None = Field(None, description="One value per objective, in the file's order")
    metrics: dict[str, Scalar] | None = Field(
        None, description="The benchmark's metrics; the objective(s) and SLOs are computed from them"
    )
    reason: str | None = Field(None, max_length=10000, description="Why the trial failed (or a note)")


class Trial(BaseModel):
    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None
    values: list[float] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    feasible: bool = True
    violations: list[str] = Field(default_factory=list)
    reason: str | None = None
    baseline: bool = False
    started: float | None = None
    finished: float | None = None
    note: str | None = None
    source: str | None = None


class AskResponse(BaseModel):
    experiment: str
    trials: list[Trial]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "A bad request; the error names the field"},
    401: {"model": Error, "description": "No bearer token, or a wrong one"},
    404: {"model": Error, "description": "No such experiment or trial"},
    409: {"model": Error, "description": "The experiment's state refuses the request"},
}

CREATE_BODY = {
    "requestBody": {
        "required": True,
        "description": "An experiment file (docs/experiment-file.md): a JSON object, or YAML text",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def router(service: Service) -> APIRouter:
    r = APIRouter(prefix="/api/v1", responses=ERRORS)

    @r.get("/health", tags=["service"], summary="The service and its store are up")
    def health() -> dict[str, Any]:
        service.names()  # reads the store: a store that is down is a 503 (see the app's handler)
        return {"status": "ok"}

    @r.get("/experiments", tags=["experiments"], summary="List the store's experiments (not archives)")
    def list_experiments() -> list[dict[str, Any]]:
        out = []
        for name in service.names():
            try:
                out.append(service.summary(name))
            except ServiceError:  # archived or deleted meanwhile, or made by an older knobflow
                continue
        return out

    @r.post(
        "/experiments",
        tags=["experiments"],
        status_code=201,
        summary="Create an experiment from an experiment file",
        openapi_extra=CREATE_BODY,
    )
    async def create(request: Request) -> dict[str, Any]:
        raw = await request.body()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ServiceError(400, "body: not UTF-8 text") from None
        document: dict[str, Any] | str
        if kind in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            document = text
        else:
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ServiceError(400, f"body: not valid JSON: {exc.msg} (line {exc.lineno})") from None
            if not isinstance(loaded, dict):
                raise ServiceError(400, f"body: an experiment file must be an object, got {type(loaded).__name__}")
            document = loaded
        exp = service.create(document, source="request body")
        return service.summary(exp.name)

    @r.get("/experiments/{name}", tags=["experiments"], summary="An experiment: progress, best, baseline, gain")
    def show(name: NAME) -> dict[str, Any]:
        return service.summary(name)

    @r.delete("/experiments/{name}", tags=["experiments"], summary="Archive an experiment (its name is free again)")
    def archive(name: NAME) -> dict[str, Any]:
        return {"experiment": name, "archived_as": service.archive(name)}

    @r.post(
        "/experiments/{name}/ask",
        tags=["trials"],
        summary="Start one trial or a batch: the configurations to run",
        response_model=AskResponse,
    )
    def ask(name: NAME, body: Annotated[AskRequest | None, Body()] = None) -> dict[str, Any]:
        n, note = (1, None) if body is None else (body.n, body.note)
        return {"experiment": name, "trials": service.ask(name, n, note=note)}

    @r.post(
        "/experiments/{name}/trials/{number}/tell",
        tags=["trials"],
        summary="Report a trial's outcome",
        response_model=Trial,
    )
    def tell(name: NAME, number: NUMBER, body: TellRequest) -> dict[str, Any]:
        return service.tell(
            name,
            number,
            state=body.state,
            value=body.value,
            values=body.values,
            metrics=body.metrics,
            reason=body.reason,
        )

    @r.get("/experiments/{name}/trials", tags=["trials"], summary="Every trial", response_model=list[Trial])
    def trials(name: NAME) -> list[dict[str, Any]]:
        return service.trials(name)

    @r.get("/experiments/{name}/trials/{number}", tags=["trials"], summary="One trial", response_model=Trial)
    def trial(name: NAME, number: NUMBER) -> dict[str, Any]:
        return service.trial(name, number)

    @r.get("/experiments/{name}/best", tags=["experiments"], summary="The best configuration (or Pareto front)")
    def best(name: NAME) -> dict[str, Any]:
        return service.best(name)

    @r.get("/experiments/{name}/importance", tags=["experiments"], summary="Parameter importance")
    def importance(name: NAME) -> dict[str, Any]:
        return service.importance(name)

    @r.get(
        "/experiments/{name}/export",
        tags=["experiments"],
        summary="Every trial as rows `knobflow import` reads back (JSON, or CSV with format=csv)",
        response_model=None,
    )
    def export(name: NAME, format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json") -> Any:
        text = service.export(name, format)
        if format == "json":
            return JSONResponse(json.loads(text))
        return PlainTextResponse(text, media_type="text/csv")

    return r
