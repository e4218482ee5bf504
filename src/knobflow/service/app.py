"""The FastAPI application of knobflow's tuning service.

One app serves the Kruize HPO contract (``/experiment_trials``, ``/health``, ``/plot``,
``/listexperiments``), the native API (``/api/v1``) and its OpenAPI document (``/openapi.json``,
``/docs``). ``knobflow serve`` runs it standalone with uvicorn; the Airflow plugin mounts it in the
api-server at ``/knobflow``.

Authentication (``auth``) checks every request before any route, the OpenAPI document and unknown
paths included: standalone, a bearer token (:func:`bearer_token`), compared in constant time;
mounted in Airflow, Airflow's own authentication. ``auth=None`` serves without authentication
(``knobflow serve`` allows that on a loopback address only).
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from knobflow import __version__
from knobflow.service.core import Service, ServiceError

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """No credentials, or wrong ones."""


def bearer_token(token: str) -> Callable[[Request], None]:
    """A dependency that accepts a request only with ``Authorization: Bearer <token>``."""
    if not token:
        raise ValueError("the token must not be empty")
    expected = token.encode()

    def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")

    return check


Auth = Callable[[Request], None] | Callable[[Request], Awaitable[None]]


class Authenticate:
    """ASGI middleware: every HTTP request passes ``check`` before anything else sees it, or is
    answered 401. Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs each request
    through an extra task and re-streams its response."""

    def __init__(self, app: ASGIApp, check: Auth):
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                done = self.check(Request(scope))
                if inspect.isawaitable(done):
                    await done
            except Unauthorized as exc:
                response = JSONResponse({"error": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    storage_url: str,
    *,
    auth: Auth | None = None,
    title: str = "knobflow",
) -> FastAPI:
    """The service over the store at ``storage_url``; ``auth`` guards every route."""
    from knobflow.service import api_v1, kruize_api

    service = Service(storage_url)
    app = FastAPI(
        title=title,
        version=__version__,
        description=(
            "knobflow's tuning service: the Kruize HPO REST contract on /experiment_trials and the native "
            'API on /api/v1. Errors are JSON {"error": "<sentence>"} on /api/v1.'
        ),
    )
    app.state.service = service

    if auth is not None:
        app.add_middleware(Authenticate, check=auth)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            problems.append(f"{where or e.get('loc', ['request'])[0]}: {e.get('msg')}")
        return JSONResponse({"error": "; ".join(problems) or "invalid request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))  # /knobflow in Airflow
        if exc.status_code == 404 and not path.startswith(("/api/", "/ui")):
            # Kruize HPO's answer to a path it does not serve (sic)
            return PlainTextResponse("Could not be find requested resource. Please check the URL!", status_code=404)
        message = "no such path" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(SQLAlchemyError)
    async def store_down(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.exception("the store failed")
        return JSONResponse({"error": f"the store is unavailable: {type(exc).__name__}"}, status_code=503)

    app.include_router(api_v1.router(service))
    app.include_router(kruize_api.router(service))
    app.include_router(ui_router(service))
    return app


def ui_router(service: Service) -> APIRouter:
    """The experiments' pages (``/ui``): the list, and each experiment's best configuration, plots
    and trials, as ``knobflow report`` writes them, with plotly.js served once (``/ui/static``)."""
    from urllib.parse import quote

    from knobflow import report
    from knobflow.store import StoreError

    r = APIRouter(prefix="/ui", tags=["pages"])

    @r.get("", response_class=HTMLResponse, summary="The experiments (a page)")
    def index() -> HTMLResponse:
        # Relative links: the page works under any prefix (/knobflow in Airflow, / standalone).
        return HTMLResponse(report.render_index(service.store, link=lambda name: f"ui/{quote(name, safe='')}"))

    @r.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        try:
            path = report.plotly_js_path()
        except report.ReportError as exc:
            raise ServiceError(503, str(exc)) from None
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @r.get("/{name}", response_class=HTMLResponse, summary="One experiment: best, plots, trials (a page)")
    def experiment(name: str) -> HTMLResponse:
        service.experiment(name)  # 404 for an unknown experiment or an archive
        try:
            page = report.render_experiment(service.store, name, plotly_js="static/plotly.min.js")
        except StoreError:
            raise ServiceError(404, f"no experiment named {name!r}") from None
        return HTMLResponse(page)

    return r
