"""``knobflow serve``: the tuning service standalone, under uvicorn.

It listens on 127.0.0.1:8085 by default (Kruize HPO's port). It refuses to listen beyond loopback
without a bearer token; with a token (``KNOBFLOW_SERVICE_TOKEN``, or ``--token-file``) every request
must carry ``Authorization: Bearer <token>``, on loopback too. The token is never taken from the
command line, where other users of the machine could read it in the process list.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV = "KNOBFLOW_SERVICE_TOKEN"
STORAGE_ENV = "KNOBFLOW_SERVICE_STORAGE"
DEFAULT_PORT = 8085
MIN_TOKEN_CHARS = 16


class ServeError(Exception):
    """The service cannot start as asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) resolves only to loopback addresses."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {str(info[4][0]) for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def read_token(token_file: str | None) -> str | None:
    """The bearer token: from ``token_file`` (its first line) or the environment; None when neither."""
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ServeError(f"--token-file {token_file}: cannot read it: {exc.strerror or exc}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ServeError(f"--token-file {token_file}: the file is empty")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ServeError(
            f"the token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def check_listen(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise ServeError(
            f"refusing to listen on {host} without a token: anyone who reaches it could create experiments and "
            f"report results. Set {TOKEN_ENV} (or --token-file FILE), or listen on 127.0.0.1"
        )


def from_env() -> Any:
    """The app from the environment (``KNOBFLOW_SERVICE_STORAGE``, ``KNOBFLOW_SERVICE_TOKEN``): the
    factory uvicorn's workers call (``uvicorn --factory knobflow.service.serve:from_env``)."""
    from knobflow.service.app import bearer_token, create_app

    storage = os.environ.get(STORAGE_ENV)
    if not storage:
        raise ServeError(f"{STORAGE_ENV} is not set")
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    return create_app(storage, auth=bearer_token(token) if token else None)


def serve(
    *,
    storage: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token_file: str | None = None,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Run the service until it is stopped. Raises :class:`ServeError` before listening when the
    token is missing (beyond loopback) or bad, or the store cannot be opened."""
    import uvicorn

    from knobflow.store import Store

    token = read_token(token_file)
    check_listen(host, token)
    try:
        Store(storage).names()  # fail here, plainly, rather than on the first request
    except Exception as exc:
        raise ServeError(f"cannot open the store {storage}: {exc}") from None
    os.environ[STORAGE_ENV] = storage
    if token is not None:
        os.environ[TOKEN_ENV] = token
    else:
        os.environ.pop(TOKEN_ENV, None)
    auth = "bearer token" if token else "none (loopback only)"
    print(f"knobflow service on http://{host}:{port} (store {storage}; auth: {auth})", file=sys.stderr, flush=True)
    uvicorn.run(
        "knobflow.service.serve:from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        proxy_headers=False,
    )
