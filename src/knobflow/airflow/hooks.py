"""The ``knobflow`` connection type: where a knobflow store lives, or a remote knobflow service.

A ``knobflow`` connection names one of two things.

**A knobflow store**: the database holding the experiments and their trials (one Optuna study per
experiment), shared by every worker that runs trials. The connection names it in one of two ways:

* extra ``{"storage": "<SQLAlchemy URL>"}``: any URL knobflow's store accepts, such as
  ``sqlite:////var/lib/knobflow/knobflow.db`` or ``postgresql+psycopg://user:pw@db:5432/knobflow``;
* the standard fields of a PostgreSQL database: Host, Port (default 5432), Login, Password and
  Schema (shown as "Database"); the URL is then
  ``postgresql+psycopg://login:password@host:port/schema`` (psycopg 3), each part URL-quoted.

Setting both is refused, so a connection never means two stores.

**A remote knobflow service** (``knobflow serve``, or the service mounted in an Airflow api-server
at ``/knobflow``): extra ``{"service_url": "<http(s) URL of the service's root>", "token": "..."}``.
``token`` is the service's bearer token (``knobflow serve --token``; for the service mounted in
Airflow, a JWT from that Airflow's ``POST /auth/token``); it may be left out for a service that
serves without authentication. The form shows it as a password field, and Airflow masks an extra
named ``token`` in logs. A service connection uses only these two extras: the PostgreSQL fields
and extra ``storage`` name a store, and a connection naming a store and a service is refused, as
is one with a service URL and any PostgreSQL field (a token belongs in extra ``token``, not in
Password). The standard fields are not used for the service's address because they already mean
a PostgreSQL database here: a Host would be ambiguous.

Examples, as environment variables::

    AIRFLOW_CONN_KNOBFLOW_DEFAULT='{"conn_type": "knobflow", "extra": {"storage": "sqlite:////data/knobflow.db"}}'
    AIRFLOW_CONN_KNOBFLOW_REMOTE='{"conn_type": "knobflow",
        "extra": {"service_url": "https://tuning.example:8085", "token": "..."}}'

What uses which: :meth:`KnobflowHook.get_storage_url` and :meth:`KnobflowHook.get_store` need a
store connection, and so do everything built on them: the generated DAGs' tasks and the operators
(they run trials against a store), the ``knobflow_best``/``knobflow_trials`` macros given
``conn_id``, and the service mounted in the api-server (``knobflow_default``). Given a service
connection they raise :class:`KnobflowConnectionError` saying so. :meth:`KnobflowHook.get_client`
needs a service connection: it is for users' own DAGs and tasks that drive a remote service (create
an experiment, ask, run something, tell; read the best configuration) through
:class:`knobflow.client.KnobflowClient`.

Every Airflow process imports this module when it resolves a connection type, so it imports
nothing heavy at module level: the store (Optuna, SQLAlchemy) and the client (httpx) are imported
when they are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from knobflow.airflow.provider_info import UI_HIDDEN_FIELDS, UI_PLACEHOLDERS, UI_RELABELING

if TYPE_CHECKING:
    from knobflow.client import KnobflowClient
    from knobflow.store import Store

POSTGRES_DRIVER = "postgresql+psycopg"  # psycopg 3: pinned in constraints.txt, SQLAlchemy 2.1's default
POSTGRES_PORT = 5432


class KnobflowConnectionError(ValueError):
    """A ``knobflow`` connection does not name what is asked of it (a store, or a service), or names two."""


def _extra_str(extra: dict[str, Any], key: str, conn_id: str, what: str) -> str:
    """Extra ``key`` (or the form's prefixed ``extra__knobflow__<key>``), stripped; "" when unset."""
    value = extra.get(key) or extra.get(f"extra__knobflow__{key}")
    if value is not None and not isinstance(value, str):
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r}: extra {key!r} must be {what}, got {type(value).__name__}"
        )
    return (value or "").strip()


def _store_and_service(
    extra: dict[str, Any],
    *,
    host: str | None,
    port: int | None,
    login: str | None,
    password: str | None,
    schema: str | None,
    conn_id: str,
) -> str:
    """The service URL the fields name ("" for none); raises when they name a service and a store, or a
    service and PostgreSQL fields."""
    service_url = _extra_str(extra, "service_url", conn_id, "a URL string")
    if not service_url:
        return ""
    storage = extra.get("storage") or extra.get("extra__knobflow__storage")
    storage_text = storage.strip() if isinstance(storage, str) else storage
    host = (host or "").strip()
    if storage_text or host:
        store = f"extra 'storage' ({_redacted(storage_text)})" if storage_text else f"host {host!r}"
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r} names both a store ({store}) and a knobflow service "
            f"(extra 'service_url' {service_url!r}); keep one of them"
        )
    stray = [label for label, v in (("port", port), ("login", login), ("password", password), ("schema", schema)) if v]
    if stray:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r} names a knobflow service (extra 'service_url') but sets PostgreSQL "
            f"fields too ({', '.join(stray)}), which name a store; clear them (the service's bearer token goes "
            "in extra 'token', not in password)"
        )
    return service_url


def service_from_fields(
    *,
    extra: dict[str, Any] | None = None,
    host: str | None = None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    conn_id: str = "?",
) -> tuple[str, str | None]:
    """The remote service a connection's fields describe: ``(service_url, token)`` (see the module
    docstring); the token is None when the connection has none.

    Raises :class:`KnobflowConnectionError` naming ``conn_id`` when the fields name no service, a
    service and a store, or a URL that is not http(s).
    """
    extra = extra or {}
    url = _store_and_service(
        extra, host=host, port=port, login=login, password=password, schema=schema, conn_id=conn_id
    )
    if not url:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r} names no knobflow service: set extra 'service_url' to the "
            "service's URL, such as https://tuning.example:8085 (this connection names a store)"
        )
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r}: extra 'service_url' must be an http:// or https:// URL "
            f"such as https://tuning.example:8085, got {url!r}"
        )
    token = _extra_str(extra, "token", conn_id, "a string (the service's bearer token)")
    return url, token or None


def storage_url_from_fields(
    *,
    extra: dict[str, Any] | None = None,
    host: str | None = None,
    port: int | None = None,
    login: str | None = None,
    password: str | None = None,
    schema: str | None = None,
    conn_id: str = "?",
) -> str:
    """The store URL a connection's fields describe (see the module docstring).

    Raises :class:`KnobflowConnectionError` naming ``conn_id`` when the fields describe no store
    or two, or a remote knobflow service (extra ``service_url``) instead of a store.
    """
    extra = extra or {}
    service_url = _store_and_service(
        extra, host=host, port=port, login=login, password=password, schema=schema, conn_id=conn_id
    )
    if service_url:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r} names a remote knobflow service ({service_url}), not a store: "
            "knobflow's DAGs, operators and macros run and read trials in a store; name one with extra "
            "'storage' or the PostgreSQL fields (KnobflowHook.get_client() is what a service connection is for)"
        )
    # The connection form may store a declared field under its prefixed name.
    storage = extra.get("storage") or extra.get("extra__knobflow__storage")
    if storage is not None and not isinstance(storage, str):
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r}: extra 'storage' must be a URL string, got {type(storage).__name__}"
        )
    storage = (storage or "").strip()
    host = (host or "").strip()
    if storage and host:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r} names two stores: extra 'storage' ({_redacted(storage)}) and "
            f"host {host!r}; keep one of them"
        )
    if storage:
        if "://" not in storage:
            raise KnobflowConnectionError(
                f"knobflow connection {conn_id!r}: extra 'storage' must be a database URL such as "
                f"sqlite:////path/to/knobflow.db, got {storage!r}"
            )
        return storage
    if not host:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r} names no store: set extra 'storage' to a database URL, or "
            "Host and Schema (the database) to a PostgreSQL database"
        )
    if not schema:
        raise KnobflowConnectionError(
            f"knobflow connection {conn_id!r}: Schema (the PostgreSQL database holding the store) is empty"
        )
    if password and not login:
        raise KnobflowConnectionError(f"knobflow connection {conn_id!r}: a password is set but no login")
    from sqlalchemy.engine import URL

    url = URL.create(
        POSTGRES_DRIVER,
        username=login or None,
        password=password or None,
        host=host,
        port=int(port) if port else POSTGRES_PORT,
        database=schema,
    )
    return url.render_as_string(hide_password=False)


def missing_store(url: str) -> str | None:
    """Why there is no knobflow store at ``url`` yet, or None when there is one. Creates nothing.

    A SQLite store is missing when its file does not exist; another database when it has no
    ``studies`` table (Optuna creates its tables the first time an experiment opens the store).
    Raises what SQLAlchemy raises when the database cannot be reached.
    """
    if url.startswith("sqlite:///"):
        from pathlib import Path

        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            return f"there is no knobflow store at {path} (no such file)"
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            has_studies = inspect(conn).has_table("studies")
    finally:
        engine.dispose()
    if not has_studies:
        return f"the database {_redacted(url)} holds no knobflow store (no experiment has been run with it)"
    return None


def _listed(names: list[str]) -> str:
    listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"{len(names)} experiments" + (f" ({listed})" if names else "")


def _redacted(url: str) -> str:
    """The URL with its password replaced by ``***`` (as given when it does not parse)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class KnobflowHook(BaseHook):
    """The knobflow store or the remote knobflow service a ``knobflow`` connection names.

    A store connection: :meth:`get_storage_url`, :meth:`get_store`. A service connection
    (:attr:`is_remote`): :meth:`get_client`, a :class:`knobflow.client.KnobflowClient` for a task
    of your own DAG that drives the service (create an experiment with ``runner: client``, ask,
    run, tell, read the best configuration). The generated DAGs, the operators and the macros still
    run and read trials in a store: they take a store connection only (a later version may run them
    against a service).

    :param knobflow_conn_id: the connection's id (default ``knobflow_default``).
    """

    conn_name_attr = "knobflow_conn_id"
    default_conn_name = "knobflow_default"
    conn_type = "knobflow"
    hook_name = "knobflow"

    def __init__(self, knobflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.knobflow_conn_id = knobflow_conn_id

    def _fields(self) -> dict[str, Any]:
        conn = self.get_connection(self.knobflow_conn_id)
        return {
            "extra": conn.extra_dejson,
            "host": conn.host,
            "port": conn.port,
            "login": conn.login,
            "password": conn.password,
            "schema": conn.schema,
            "conn_id": self.knobflow_conn_id,
        }

    @property
    def is_remote(self) -> bool:
        """Whether the connection names a remote knobflow service (extra ``service_url``) rather than a
        store. Raises :class:`KnobflowConnectionError` when it names both."""
        fields = self._fields()
        return bool(_store_and_service(fields.pop("extra") or {}, **fields))

    def get_storage_url(self) -> str:
        """The SQLAlchemy URL of the store (password included: do not log it)."""
        return storage_url_from_fields(**self._fields())

    def get_store(self) -> Store:
        """The store, opened (Optuna creates its tables in an empty database the first time)."""
        from knobflow.store import Store

        return Store(self.get_storage_url())

    def get_service(self) -> tuple[str, str | None]:
        """The remote service's URL and bearer token (None without one): do not log the token."""
        return service_from_fields(**self._fields())

    def get_client(self, *, timeout: float | None = None, **kwargs: Any) -> KnobflowClient:
        """A :class:`knobflow.client.KnobflowClient` of the service the connection names (close it, or
        use it as a context manager). ``timeout`` and ``kwargs`` go to the client.

        Raises :class:`KnobflowConnectionError` for a connection that names a store.
        """
        from knobflow.client import DEFAULT_TIMEOUT, KnobflowClient

        url, token = self.get_service()
        return KnobflowClient(url, token, timeout=DEFAULT_TIMEOUT if timeout is None else timeout, **kwargs)

    def get_conn(self) -> Store | KnobflowClient:
        """Airflow's generic name: the store (:meth:`get_store`), or for a service connection the
        client (:meth:`get_client`)."""
        return self.get_client() if self.is_remote else self.get_store()

    def test_connection(self) -> tuple[bool, str]:
        """Reach the store's database and list its experiments, or the service's health and
        experiments; creates nothing.

        A reachable PostgreSQL database without a store yet passes (the first experiment run creates
        the store's tables there); a SQLite file that does not exist fails.
        """
        try:
            if self.is_remote:
                return self._test_service()
            url = self.get_storage_url()
            missing = missing_store(url)
            if missing is not None:
                if url.startswith("sqlite:///"):
                    return False, missing + "; the first experiment run with this storage creates it"
                return True, f"reachable, but {missing}; the first experiment run creates it"
            from knobflow.store import Store, is_archive

            names = [n for n in Store(url).names() if not is_archive(n)]
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"knobflow store {_redacted(url)}: {_listed(names)}"

    def _test_service(self) -> tuple[bool, str]:
        with self.get_client(retries=0) as client:
            client.health()
            names = [str(e.get("name")) for e in client.experiments()]
            return True, f"knobflow service {client.base_url}: {_listed(names)}"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabelled fields and placeholders of the connection form.

        Airflow 3.3 reads the same data from the provider info's ``ui-field-behaviour`` and does
        not call this method (it is deprecated there); it is kept for tools that still ask the hook.
        """
        return {
            "hidden_fields": list(UI_HIDDEN_FIELDS),
            "relabeling": dict(UI_RELABELING),
            "placeholders": dict(UI_PLACEHOLDERS),
        }
