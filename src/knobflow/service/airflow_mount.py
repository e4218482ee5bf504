"""The tuning service inside Airflow's api-server: the plugin mounts it at ``/knobflow``.

Airflow does not authenticate a plugin's FastAPI app (a mounted app inherits none of the core
API's dependencies), so every request to ``/knobflow`` is checked here against Airflow's own
authentication: the JWT the Airflow UI keeps in its cookie, or ``Authorization: Bearer <JWT>``
(from ``POST /auth/token``), resolved by Airflow's auth manager. Anything else gets 401.

The app is built on its first request (:class:`LazyApp`): Airflow imports plugins in many
processes (task processes among them) that never serve it.

The store is ``KNOBFLOW_SERVICE_STORAGE``, else the ``knobflow_default`` connection, else
``$KNOBFLOW_HOME/knobflow.db``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import Request

log = logging.getLogger(__name__)

URL_PREFIX = "/knobflow"
DEFAULT_CONN_ID = "knobflow_default"


async def airflow_auth(request: Request) -> None:
    """Accept the request only from a user Airflow's auth manager knows (cookie or bearer JWT)."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException

    from knobflow.service.app import Unauthorized

    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    token = given.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    try:
        await resolve_user_from_token(token)
    except HTTPException as exc:
        raise Unauthorized(
            f"sign in to Airflow first, or send Authorization: Bearer <JWT from POST /auth/token> ({exc.detail})"
        ) from None


def storage_url() -> str:
    """The store the mounted service serves (see the module docstring)."""
    url = os.environ.get("KNOBFLOW_SERVICE_STORAGE")
    if url:
        return url
    from knobflow import _paths

    default = f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}"
    try:
        from airflow.sdk.exceptions import AirflowNotFoundException

        from knobflow.airflow.hooks import KnobflowHook
    except ImportError:
        return default
    try:
        return str(KnobflowHook(DEFAULT_CONN_ID).get_storage_url())
    except AirflowNotFoundException:  # no such connection: the default store
        return default
    except Exception as exc:  # a connection that names no store (a remote service, a broken one): say so
        log.warning("the knobflow service in Airflow serves %s: connection %s: %s", default, DEFAULT_CONN_ID, exc)
        return default


class LazyApp:
    """An ASGI app that builds the real one (``factory()``) on its first request."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._factory()
        await self._app(scope, receive, send)


def build() -> Any:
    from knobflow.service.app import create_app

    return create_app(storage_url(), auth=airflow_auth, title="knobflow (in Airflow)")


def fastapi_app() -> dict[str, Any]:
    """The plugin's ``fastapi_apps`` entry."""
    return {"app": LazyApp(build), "url_prefix": URL_PREFIX, "name": "knobflow service"}
