"""knobflow's Airflow plugin: template macros that read experiments from a knobflow store.

Registered by the ``airflow.plugins`` entry point (``pip install knobflow``), or by
``plugins/knobflow_plugin.py`` where knobflow is importable but not installed as a package. In any
DAG's templates::

    {{ macros.knobflow.knobflow_best('sqlite-demo') }}
    {{ macros.knobflow.knobflow_best('sqlite-demo', conn_id='knobflow_default')['journal_mode'] }}
    {{ macros.knobflow.knobflow_trials('sqlite-demo') | length }}

The store is the one named by ``storage`` (a SQLAlchemy URL), else by the ``knobflow`` connection
``conn_id``, else the default store ``$KNOBFLOW_HOME/knobflow.db`` (the one ``knobflow best`` and
experiment files without ``storage:`` use). Reading never creates a store.

Every Airflow process imports this module (plugins are loaded everywhere), so the macros import
knobflow's store and results code only when they are called.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.plugins_manager import AirflowPlugin


class KnobflowResultError(LookupError):
    """The store, the experiment or the result a macro asks for does not exist."""


def _store_url(storage: str | None, conn_id: str | None) -> str:
    if storage and conn_id:
        raise ValueError("give the store either as storage (a URL) or as conn_id (a knobflow connection), not both")
    if conn_id:
        from knobflow.airflow.hooks import KnobflowHook

        return KnobflowHook(knobflow_conn_id=conn_id).get_storage_url()
    if storage:
        return storage
    from knobflow import _paths

    return f"sqlite:///{_paths.knobflow_home() / 'knobflow.db'}"


def _open(experiment: str, storage: str | None, conn_id: str | None) -> Any:
    from knobflow.airflow.hooks import missing_store
    from knobflow.store import Store

    url = _store_url(storage, conn_id)
    missing = missing_store(url)
    if missing is not None:
        raise KnobflowResultError(f"no experiment named {experiment!r}: {missing}")
    return Store(url)


def _view(store: Any, experiment: str) -> Any:
    from knobflow.store import StoreError
    from knobflow.views import view

    try:
        return view(store, experiment)
    except StoreError as exc:
        raise KnobflowResultError(str(exc)) from None


def knobflow_best(experiment: str, storage: str | None = None, *, conn_id: str | None = None) -> dict[str, Any]:
    """The parameters of the experiment's best configuration (what ``knobflow best`` reports).

    Only complete trials that broke no SLO count; a configuration measured several times is judged
    on its median. Raises :class:`KnobflowResultError` when the experiment has no such trial or
    has several objectives (no single best: use :func:`knobflow_trials`).

    :param experiment: the experiment's name.
    :param storage: the store's SQLAlchemy URL (default: see the module docstring).
    :param conn_id: a ``knobflow`` connection naming the store, instead of ``storage``.
    """
    from knobflow.views import outcome

    v = _view(_open(experiment, storage, conn_id), experiment)
    if v.objectives.multi:
        raise KnobflowResultError(
            f"experiment {experiment!r} has {len(v.objectives.objectives)} objectives and so a Pareto front, "
            "not one best trial; read its trials with knobflow_trials"
        )
    best = outcome(v)["best"]
    if best is None:
        raise KnobflowResultError(
            f"experiment {experiment!r} has no completed trial that broke no SLO yet: no best configuration"
        )
    return dict(best["params"])


def knobflow_trials(
    experiment: str,
    storage: str | None = None,
    *,
    conn_id: str | None = None,
    state: str | None = "complete",
) -> list[dict[str, Any]]:
    """The experiment's trials in number order, each as a dict.

    Keys: ``number``, ``state`` (``complete``, ``fail``, ``running``, ``waiting``, ``pruned``),
    ``params``, ``value`` (the first objective), ``values``, ``metrics``, ``feasible`` (no SLO
    broken), ``baseline``, ``reason`` (why a trial failed).

    :param experiment: the experiment's name.
    :param storage: the store's SQLAlchemy URL (default: see the module docstring).
    :param conn_id: a ``knobflow`` connection naming the store, instead of ``storage``.
    :param state: only trials in this state (default ``complete``); ``None`` for all of them.
    """
    from knobflow.store import StoreError

    store = _open(experiment, storage, conn_id)
    try:
        records = store.records(experiment)
    except StoreError as exc:
        raise KnobflowResultError(str(exc)) from None
    return [
        {
            "number": r.number,
            "state": r.state,
            "params": dict(r.params),
            "value": r.value,
            "values": r.values,
            "metrics": dict(r.metrics),
            "feasible": r.feasible,
            "baseline": r.baseline,
            "reason": r.reason,
        }
        for r in sorted(records, key=lambda r: r.number)
        if state is None or r.state == state
    ]


def _fastapi_apps() -> list[dict[str, Any]]:
    from knobflow.service.airflow_mount import fastapi_app

    return [fastapi_app()]


class KnobflowPlugin(AirflowPlugin):
    """Registers the ``knobflow`` macros (``{{ macros.knobflow.knobflow_best(...) }}``) and mounts
    the tuning service (the Kruize HPO API, the native API and the experiments' pages) in the
    api-server at ``/knobflow``, behind Airflow's authentication
    (:mod:`knobflow.service.airflow_mount`)."""

    name = "knobflow"
    macros = [knobflow_best, knobflow_trials]
    fastapi_apps = _fastapi_apps()
    # A "knobflow" entry in the UI's Browse menu: the experiments' pages, in the Airflow UI's frame
    # (the browser sends Airflow's JWT cookie with them, which the mounted service checks).
    external_views = [
        {
            "name": "knobflow experiments",
            "href": "/knobflow/ui",
            "destination": "nav",
            "category": "browse",
            "url_route": "knobflow",
        }
    ]
