"""A Python client of knobflow's tuning service: the native REST API (``/api/v1``) over httpx.

::

    from knobflow.client import KnobflowClient

    with KnobflowClient("https://knobflow.example:8085", token="...") as kf:
        kf.create_experiment(Path("experiments/my-service.yaml"))   # runner: client
        result = kf.optimize("my-service", lambda params: run_my_benchmark(params))
        print(result.stop_reason, kf.best("my-service")["best"])

``base_url`` is the service's root: ``http://127.0.0.1:8085`` for ``knobflow serve``, or
``https://airflow.example/knobflow`` for the service mounted in Airflow's api-server (with an Airflow
JWT as the token). Every method returns what the API returns, as plain JSON data: dicts and lists
(a trial is a dict with ``number``, ``state``, ``params``, ``value``, ``values``, ``metrics``,
``feasible``, ``violations``, ``reason``, ``baseline``, ...; see ``/openapi.json``), except
:meth:`KnobflowClient.optimize`, which returns an :class:`OptimizeResult`.

Errors: the service's refusals raise :class:`KnobflowServiceError` (``status`` and ``message``, the
service's ``{"error": "<sentence>"}``), as a subclass per status: :class:`KnobflowBadRequest` (400),
:class:`KnobflowUnauthorized` (401, 403), :class:`KnobflowNotFound` (404), :class:`KnobflowConflict`
(409: a name taken, a budget spent or another stop rule, a trial already told),
:class:`KnobflowUnavailable` (503: the service's store is down). A service that cannot be reached
raises :class:`KnobflowUnreachable` (also a :class:`ConnectionError`), naming the URL.

Retries: reads (GET) are retried on connection errors and 503s, a few times with a short backoff.
Writes (create, ask, tell, archive) are retried only when the connection could not be opened at all,
so the request never left; see :meth:`KnobflowClient._send` for why they are never retried otherwise.

This module imports only the standard library and httpx, so it can be
used where knobflow's engine (Optuna, SQLAlchemy) is not wanted: the Airflow hook imports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

import httpx

from knobflow import __version__

log = logging.getLogger(__name__)
T = TypeVar("T")

API = "/api/v1"
DEFAULT_TIMEOUT = 30.0
RETRIES = 3  # further attempts after the first, for the requests that may be retried
BACKOFF = 0.25  # seconds before the first retry; doubled for each next one


# Errors ---------------------------------------------------------------------------------------


class KnobflowError(Exception):
    """Anything the client raises about the service (the base of the classes below)."""


class KnobflowUnreachable(KnobflowError, ConnectionError):
    """The service could not be reached (refused, unresolvable, timed out, dropped connection)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach the knobflow service at {url}: {reason}")
        self.url = url
        self.reason = reason


class KnobflowServiceError(KnobflowError):
    """The service answered with an error: ``status`` (the HTTP status) and ``message`` (its sentence).

    Raised as the subclass for the status when there is one (:func:`service_error` picks it), so
    ``except KnobflowConflict`` and ``err.status == 409`` are equivalent.
    """

    def __init__(self, status: int, message: str, *, method: str | None = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.url = url

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"{self.status}: {self.message}{where}"


class KnobflowBadRequest(KnobflowServiceError):
    """400: the request is wrong; the message names the field."""


class KnobflowUnauthorized(KnobflowServiceError):
    """401 or 403: no token, or a wrong one."""


class KnobflowNotFound(KnobflowServiceError):
    """404: no such experiment or trial."""


class KnobflowConflict(KnobflowServiceError):
    """409: the experiment's state refuses the request (name taken, budget spent, stop rule, trial told)."""


class KnobflowUnavailable(KnobflowServiceError):
    """503: the service is up but its store is not."""


_BY_STATUS: dict[int, type[KnobflowServiceError]] = {
    400: KnobflowBadRequest,
    401: KnobflowUnauthorized,
    403: KnobflowUnauthorized,
    404: KnobflowNotFound,
    409: KnobflowConflict,
    503: KnobflowUnavailable,
}


def service_error(
    status: int, message: str, *, method: str | None = None, url: str | None = None
) -> KnobflowServiceError:
    """The :class:`KnobflowServiceError` (subclass) for ``status``."""
    return _BY_STATUS.get(status, KnobflowServiceError)(status, message, method=method, url=url)


def _error_message(response: httpx.Response) -> str:
    """The service's sentence: ``{"error": ...}``; else FastAPI's ``{"detail": ...}`` (Airflow's own
    401s in front of the mounted service); else the start of the body, or the status's phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
        if body.get("detail") is not None:
            return json.dumps(body["detail"])
    text = response.text.strip()
    if text:
        return text[:500]
    return response.reason_phrase or f"HTTP {response.status_code}"


# An async transport (httpx.ASGITransport) under the synchronous client --------------------------


class _SyncOverAsync(httpx.BaseTransport):
    """Runs an async transport (such as ``httpx.ASGITransport(app=...)``, the service in this
    process) for the synchronous client: each request on an event loop of its own (``asyncio.run``;
    in a helper thread when the calling thread already runs a loop). Nothing outlives a request, so
    an unclosed client leaves no thread behind."""

    def __init__(self, transport: httpx.AsyncBaseTransport):
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return _run(self._handle(request))

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        try:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return httpx.Response(response.status_code, headers=response.headers, content=body)

    def close(self) -> None:
        _run(self._transport.aclose())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# The client -------------------------------------------------------------------------------------


@dataclass
class OptimizeResult:
    """What :meth:`KnobflowClient.optimize` did.

    :ivar trials: the trials this call told, in order, as the service returned them.
    :ivar stop_reason: the service's sentence when it refused to start another trial (409: budget
        spent, ``max_failed`` reached, a time limit, a target, patience, no configuration left);
        None when the loop stopped because it had run ``n_trials``.
    """

    trials: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None


Objective = Callable[[dict[str, Any]], "float | int | Sequence[float] | Mapping[str, Any]"]


class KnobflowClient:
    """A client of one knobflow service.

    :param base_url: the service's root URL (a trailing ``/api/v1`` is accepted and dropped).
    :param token: the bearer token (``knobflow serve --token``, or an Airflow JWT for the service
        mounted in Airflow); None sends no ``Authorization`` header.
    :param timeout: seconds for each request (connect, read, write).
    :param transport: an httpx transport to use instead of the network: a synchronous one, or an
        async one such as ``httpx.ASGITransport(app=create_app(...))`` (run on a thread of its own).
    :param retries: further attempts for a request that may be retried (see the module docstring).
    :param backoff: seconds before the first retry, doubled for each next one.

    Use it as a context manager, or call :meth:`close`, to close its connections.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        retries: int = RETRIES,
        backoff: float = BACKOFF,
    ) -> None:
        url = (base_url or "").strip().rstrip("/")
        if url.endswith(API):
            url = url[: -len(API)].rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a string, got {type(token).__name__}")
        self.base_url = url
        self.token = token or None
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        headers = {"User-Agent": f"knobflow-client/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(transport, httpx.AsyncBaseTransport) and not isinstance(transport, httpx.BaseTransport):
            transport = _SyncOverAsync(transport)
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:  # never the token
        return f"KnobflowClient({self.base_url!r}, token={'***' if self.token else None})"

    # Lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the client's connections (and its transport)."""
        self._http.close()

    def __enter__(self) -> KnobflowClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Requests ----------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: str | None = None,
        content_type: str | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; raise :class:`KnobflowServiceError` for an error status.

        A GET is retried on any transport error (refused, reset, timed out) and on a 503: reading
        twice changes nothing. Any other request (create, ask, tell, archive) is retried only when
        the connection could not be opened (``httpx.ConnectError``/``ConnectTimeout``: nothing was
        sent). Once the request may have reached the service it is never retried blindly: an ask
        whose answer was lost has started a trial (a retry would start another and leave the first
        running, holding a slot of ``parallel``, until ``budget.trial_timeout`` expires it); a tell
        that landed would be answered 409 "already finished" on a retry, and a create 409 "already
        exists", reporting an error for a request that succeeded. The caller, who knows what it
        asked for, decides: :meth:`trials` shows what the service recorded.
        """
        idempotent = method == "GET"
        headers = {"Content-Type": content_type} if content_type else None
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            try:
                if content is not None:
                    response = self._http.request(method, path, content=content, headers=headers, params=params)
                elif json_body is not None:
                    response = self._http.request(method, path, json=json_body, params=params)
                else:
                    response = self._http.request(method, path, params=params)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt < self.retries:
                    attempt = self._wait(attempt, method, url, exc)
                    continue
                raise KnobflowUnreachable(self.base_url, _reason(exc)) from exc
            except httpx.TransportError as exc:
                if idempotent and attempt < self.retries:
                    attempt = self._wait(attempt, method, url, exc)
                    continue
                what = "" if idempotent else f" ({method} {path} may or may not have been carried out)"
                raise KnobflowUnreachable(self.base_url, _reason(exc) + what) from exc
            if response.status_code == 503 and idempotent and attempt < self.retries:
                attempt = self._wait(attempt, method, url, f"503 {_error_message(response)}")
                continue
            if response.is_success:
                return response
            raise service_error(response.status_code, _error_message(response), method=method, url=url)

    def _wait(self, attempt: int, method: str, url: str, why: object) -> int:
        delay = self.backoff * (2**attempt)
        log.warning("knobflow: %s %s failed (%s); retrying in %.2f s", method, url, why, delay)
        if delay:
            time.sleep(delay)
        return attempt + 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise KnobflowServiceError(
                response.status_code,
                f"the service's answer is not JSON: {response.text[:200]!r}",
                method=method,
                url=f"{self.base_url}{path}",
            ) from None

    @staticmethod
    def _exp(name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an experiment name must be a non-empty string, got {name!r}")
        return f"{API}/experiments/{quote(name, safe='')}"

    # The service -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}`` when the service and its store are up (:class:`KnobflowUnavailable` else)."""
        return cast(dict[str, Any], self._json("GET", f"{API}/health"))

    # Experiments -------------------------------------------------------------------------------
    def create_experiment(self, document: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
        """Create an experiment (``runner: client``) and return its summary.

        ``document`` is an experiment file's content: a mapping (sent as JSON), a string of YAML (or
        JSON) text, or a path (:class:`pathlib.Path`) to an experiment file, whose text is sent (a
        ``.json`` file as JSON, anything else as YAML). A string is always the text, never a path:
        pass ``Path(...)`` for a file. 400 names each problem; 409 when the name is taken.
        """
        path = f"{API}/experiments"
        if isinstance(document, os.PathLike):
            file = Path(document)
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                raise KnobflowError(f"cannot read the experiment file {file}: {exc.strerror or exc}") from None
            kind = "application/json" if file.suffix.lower() == ".json" else "application/yaml"
            return cast(dict[str, Any], self._json("POST", path, content=text, content_type=kind))
        if isinstance(document, str):
            return cast(dict[str, Any], self._json("POST", path, content=document, content_type="application/yaml"))
        if isinstance(document, Mapping):
            return cast(dict[str, Any], self._json("POST", path, json_body=dict(document)))
        raise TypeError(f"document must be a mapping, YAML text or a Path, got {type(document).__name__}")

    def experiments(self) -> list[dict[str, Any]]:
        """Every experiment's summary (archived ones left out)."""
        return cast(list[dict[str, Any]], self._json("GET", f"{API}/experiments"))

    def experiment(self, name: str) -> dict[str, Any]:
        """An experiment's summary: runner, tuner, objectives, budget, progress, best, baseline, gain,
        stop reason."""
        return cast(dict[str, Any], self._json("GET", self._exp(name)))

    def archive(self, name: str) -> dict[str, Any]:
        """Archive an experiment (its name is free again): ``{"experiment", "archived_as"}``."""
        return cast(dict[str, Any], self._json("DELETE", self._exp(name)))

    def best(self, name: str) -> dict[str, Any]:
        """The best configuration (``best``), the baseline, the gain, or the Pareto front (``pareto``)."""
        return cast(dict[str, Any], self._json("GET", f"{self._exp(name)}/best"))

    def importance(self, name: str) -> dict[str, Any]:
        """Each tunable's importance; 409 while too few trials are complete to rank them."""
        return cast(dict[str, Any], self._json("GET", f"{self._exp(name)}/importance"))

    def export(self, name: str, format: Literal["json", "csv"] = "json") -> Any:
        """Every trial as rows ``knobflow import`` reads back: a list of dicts (``json``) or CSV text."""
        if format not in ("json", "csv"):
            raise ValueError(f"format must be json or csv, got {format!r}")
        path = f"{self._exp(name)}/export"
        if format == "json":
            return self._json("GET", path, params={"format": "json"})
        return self._send("GET", path, params={"format": "csv"}).text

    # Trials ------------------------------------------------------------------------------------
    def ask(self, name: str, n: int = 1, note: str | None = None) -> list[dict[str, Any]]:
        """Start up to ``n`` trials and return them (fewer when the budget runs out on the way).

        Each trial's ``params`` is the configuration to run; tell its outcome with its ``number``.
        :class:`KnobflowConflict` when no trial may start: its message is the stop rule's reason.
        Never retried once sent (see :meth:`_send`).
        """
        body: dict[str, Any] = {"n": n}
        if note is not None:
            body["note"] = note
        answer = self._json("POST", f"{self._exp(name)}/ask", json_body=body)
        return cast(list[dict[str, Any]], answer["trials"])

    def tell(
        self,
        name: str,
        number: int,
        *,
        value: float | None = None,
        values: Sequence[float] | None = None,
        metrics: Mapping[str, Any] | None = None,
        state: Literal["complete", "fail", "pruned"] = "complete",
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Report trial ``number``'s outcome and return the trial as recorded.

        ``complete`` needs ``value`` (one objective), ``values`` (one per objective) or ``metrics``
        (the objectives and SLOs are computed from them); ``fail`` records a failed configuration
        (it counts toward ``max_failed``) with ``reason``; ``pruned`` leaves the trial out.
        400 for a wrong outcome, 409 when the trial is already finished. Never retried once sent.
        """
        body: dict[str, Any] = {"state": state}
        if value is not None:
            body["value"] = value
        if values is not None:
            body["values"] = list(values)
        if metrics is not None:
            body["metrics"] = dict(metrics)
        if reason is not None:
            body["reason"] = reason
        return cast(dict[str, Any], self._json("POST", f"{self._exp(name)}/trials/{int(number)}/tell", json_body=body))

    def trials(self, name: str) -> list[dict[str, Any]]:
        """Every trial of the experiment, in number order."""
        return cast(list[dict[str, Any]], self._json("GET", f"{self._exp(name)}/trials"))

    def trial(self, name: str, number: int) -> dict[str, Any]:
        """One trial."""
        return cast(dict[str, Any], self._json("GET", f"{self._exp(name)}/trials/{int(number)}"))

    # The loop ----------------------------------------------------------------------------------
    def optimize(
        self,
        name: str,
        objective: Objective,
        n_trials: int | None = None,
        *,
        catch: tuple[type[Exception], ...] = (),
        note: str | None = None,
    ) -> OptimizeResult:
        """Ask, run ``objective(params)``, tell; repeat until the service refuses another trial (409:
        budget spent or another stop rule) or this call has told ``n_trials`` trials.

        ``objective`` returns the outcome: a number (the objective's value), a sequence of numbers
        (one per objective), or a mapping of metrics (the service computes the objectives and checks
        the SLOs from them, as from a benchmark's metrics).

        When ``objective`` raises, the trial is told ``fail`` with the exception as its reason, so it
        does not stay running until ``budget.trial_timeout``; then the exception propagates (a crash
        is more often a bug in the objective than a bad configuration, and going on would spend the
        budget on it), except for the exception types in ``catch``, after which the loop goes on (a
        configuration that crashes the system under test is a failed trial; ``max_failed`` still
        stops the experiment). An interrupt (``KeyboardInterrupt``, ``SystemExit``) tells the trial
        ``pruned`` (not measured: it counts as no failure) and propagates. A result the service
        refuses (400: a missing metric, the wrong number of values) fails the trial with the
        service's sentence and raises :class:`KnobflowBadRequest`.
        """
        if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0):
            raise ValueError(f"n_trials must be a non-negative integer or None, got {n_trials!r}")
        result = OptimizeResult()
        while n_trials is None or len(result.trials) < n_trials:
            try:
                [trial] = self.ask(name, 1, note=note)
            except KnobflowConflict as exc:
                # A 409 is a stop rule, unless the experiment is not one clients run (runner: ansible):
                # that is a mistake to raise, not an experiment to call finished.
                if not result.trials and self.experiment(name).get("runner") != "client":
                    raise
                result.stop_reason = exc.message
                break
            number = trial["number"]
            try:
                outcome = objective(dict(trial["params"]))
                kwargs = _outcome(outcome)
            except catch as exc:
                log.warning("knobflow: trial %s of %s failed: %s: %s", number, name, type(exc).__name__, exc)
                result.trials.append(self.tell(name, number, state="fail", reason=_exc_reason(exc)))
                continue
            except Exception as exc:
                self._tell_quietly(name, number, "fail", _exc_reason(exc))
                raise
            except BaseException as exc:
                self._tell_quietly(name, number, "pruned", f"interrupted ({type(exc).__name__})")
                raise
            try:
                result.trials.append(self.tell(name, number, **kwargs))
            except KnobflowBadRequest as exc:
                self._tell_quietly(name, number, "fail", f"the service refused the objective's result: {exc.message}")
                raise
        return result

    def _tell_quietly(self, name: str, number: int, state: Literal["fail", "pruned"], reason: str) -> None:
        """Tell a trial's end while another exception is on its way: a failure here is logged, not raised,
        so it does not hide that exception."""
        try:
            self.tell(name, number, state=state, reason=reason)
        except Exception as exc:  # the original exception matters more
            log.warning("knobflow: could not tell trial %s of %s %s: %s", number, name, state, exc)


def _outcome(outcome: Any) -> dict[str, Any]:
    """tell()'s keyword arguments for what an objective returned."""
    if isinstance(outcome, bool) or outcome is None:
        raise TypeError(f"the objective returned {outcome!r}: return a number, a list of numbers or a dict of metrics")
    if isinstance(outcome, int | float):
        return {"value": float(outcome)}
    if isinstance(outcome, Mapping):
        return {"metrics": dict(outcome)}
    if isinstance(outcome, Sequence) and not isinstance(outcome, str | bytes):
        return {"values": [float(v) for v in outcome]}
    raise TypeError(
        f"the objective returned a {type(outcome).__name__}: return a number, a list of numbers or a dict of metrics"
    )


def _exc_reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "KnobflowBadRequest",
    "KnobflowClient",
    "KnobflowConflict",
    "KnobflowError",
    "KnobflowNotFound",
    "KnobflowServiceError",
    "KnobflowUnauthorized",
    "KnobflowUnavailable",
    "KnobflowUnreachable",
    "OptimizeResult",
    "service_error",
]
