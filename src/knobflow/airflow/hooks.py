"""The ``knobflow`` connection type: where a knobflow store lives.

A knobflow store is the database holding the experiments and their trials (one Optuna study per
experiment), shared by every worker that runs trials. A ``knobflow`` connection names it in one
of two ways:

* extra ``{"storage": "<SQLAlchemy URL>"}``: any URL knobflow's store accepts, such as
  ``sqlite:////var/lib/knobflow/knobflow.db`` or ``postgresql+psycopg://user:pw@db:5432/knobflow``;
* the standard fields of a PostgreSQL database: Host, Port (default 5432), Login, Password and
  Schema (shown as "Database"); the URL is then
  ``postgresql+psycopg://login:password@host:port/schema`` (psycopg 3), each part URL-quoted.

Setting both is refused, so a connection never means two stores.

Example, as an environment variable::

    AIRFLOW_CONN_KNOBFLOW_DEFAULT='{"conn_type": "knobflow", "extra": {"storage": "sqlite:////data/knobflow.db"}}'

This version's connection names a store only; a remote knobflow REST service (issue 7) is not
supported yet.

Every Airflow process imports this module when it resolves a connection type, so it imports
nothing heavy at module level: the store (Optuna, SQLAlchemy) is imported when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from knobflow.airflow.provider_info import UI_HIDDEN_FIELDS, UI_PLACEHOLDERS, UI_RELABELING

if TYPE_CHECKING:
    from knobflow.store import Store

POSTGRES_DRIVER = "postgresql+psycopg"  # psycopg 3: pinned in constraints.txt, SQLAlchemy 2.1's default
POSTGRES_PORT = 5432


class KnobflowConnectionError(ValueError):
    """A ``knobflow`` connection does not name a store (or names two)."""


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
    or two.
    """
    extra = extra or {}
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


def _redacted(url: str) -> str:
    """The URL with its password replaced by ``***`` (as given when it does not parse)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class KnobflowHook(BaseHook):
    """Opens the knobflow store a ``knobflow`` connection names.

    :param knobflow_conn_id: the connection's id (default ``knobflow_default``).
    """

    conn_name_attr = "knobflow_conn_id"
    default_conn_name = "knobflow_default"
    conn_type = "knobflow"
    hook_name = "knobflow"

    def __init__(self, knobflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.knobflow_conn_id = knobflow_conn_id

    def get_storage_url(self) -> str:
        """The SQLAlchemy URL of the store (password included: do not log it)."""
        conn = self.get_connection(self.knobflow_conn_id)
        return storage_url_from_fields(
            extra=conn.extra_dejson,
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            conn_id=self.knobflow_conn_id,
        )

    def get_store(self) -> Store:
        """The store, opened (Optuna creates its tables in an empty database the first time)."""
        from knobflow.store import Store

        return Store(self.get_storage_url())

    def get_conn(self) -> Store:
        """The store (Airflow's generic name for :meth:`get_store`)."""
        return self.get_store()

    def test_connection(self) -> tuple[bool, str]:
        """Reach the store's database and list its experiments; creates nothing.

        A reachable PostgreSQL database without a store yet passes (the first experiment run creates
        the store's tables there); a SQLite file that does not exist fails.
        """
        try:
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
        listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return True, f"knobflow store {_redacted(url)}: {len(names)} experiments" + (f" ({listed})" if names else "")

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
