"""knobflow's Airflow provider metadata, read by Airflow's ProvidersManager.

The ``apache_airflow_provider`` entry point in ``pyproject.toml`` names :func:`get_provider_info`.
Airflow calls it in every process that discovers providers (``airflow providers list``, the API
server's connection form, workers resolving a connection's hook), validates the dict against
``airflow/provider_info.schema.json`` and refuses the provider when ``package-name`` is not the
installed distribution's name. Keep this module free of imports beyond the standard library: it
is imported before anything else of knobflow.

The connection form's fields are declared here (``conn-fields``, ``ui-field-behaviour``), the way
Airflow 3.2+ reads them without importing the hook; :class:`knobflow.airflow.hooks.KnobflowHook`
builds its ``get_ui_field_behaviour()`` from the same data.
"""

from __future__ import annotations

from typing import Any

from knobflow import __version__

PACKAGE_NAME = "knobflow"
INTEGRATION = "knobflow"
CONN_TYPE = "knobflow"

# The connection names a knobflow store: either extra ``storage`` (any SQLAlchemy URL), or a
# PostgreSQL database in the standard fields. Or it names a remote knobflow service: extra
# ``service_url`` and ``token`` (a password field: the form masks it), the standard fields empty.
# See knobflow.airflow.hooks.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "storage": {
        "label": "Store URL",
        "description": "SQLAlchemy URL of the knobflow store, for example sqlite:////var/lib/knobflow/knobflow.db "
        "or postgresql+psycopg://user:password@host:5432/knobflow. Leave empty to use the PostgreSQL "
        "database named by Host, Port, Login, Password and Database, or for a Service URL.",
        "schema": {"type": ["string", "null"]},
    },
    "service_url": {
        "label": "Service URL",
        "description": "Instead of a store: the URL of a remote knobflow service (knobflow serve, or "
        "https://airflow.example/knobflow in an Airflow api-server), for your own tasks that use "
        "KnobflowHook.get_client(). Leave Store URL and the PostgreSQL fields empty then. The generated "
        "DAGs, operators and macros need a store.",
        "schema": {"type": ["string", "null"]},
    },
    "token": {
        "label": "Service token",
        "description": "The bearer token of the knobflow service named by Service URL (knobflow serve --token, "
        "or an Airflow JWT for the service mounted in Airflow). Empty for a service without authentication.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
}

UI_HIDDEN_FIELDS: list[str] = []
UI_RELABELING: dict[str, str] = {
    "host": "PostgreSQL host",
    "port": "PostgreSQL port",
    "login": "PostgreSQL user",
    "password": "PostgreSQL password",
    "schema": "Database",
}
UI_PLACEHOLDERS: dict[str, str] = {
    "host": "127.0.0.1 (empty when Store URL or Service URL is set)",
    "port": "5432",
    "login": "knobflow",
    "schema": "knobflow",
    "storage": "sqlite:////var/lib/knobflow/knobflow.db",
    "service_url": "https://tuning.example:8085 (instead of a store)",
}


def get_provider_info() -> dict[str, Any]:
    """The provider metadata dict (see ``airflow/provider_info.schema.json``)."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "knobflow",
        "description": "Hyperparameter tuning for system performance: experiments run as Airflow DAGs, "
        "trials apply configurations and run benchmarks with Ansible, Optuna-based tuners.\n",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["knobflow.airflow.operators"],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["knobflow.airflow.hooks"],
            }
        ],
        "connection-types": [
            {
                "hook-class-name": "knobflow.airflow.hooks.KnobflowHook",
                "hook-name": "knobflow",
                "connection-type": CONN_TYPE,
                "conn-fields": {name: dict(field) for name, field in CONN_FIELDS.items()},
                "ui-field-behaviour": {
                    "hidden-fields": list(UI_HIDDEN_FIELDS),
                    "relabeling": dict(UI_RELABELING),
                    "placeholders": dict(UI_PLACEHOLDERS),
                },
            }
        ],
        # No "plugins" entry: the `airflow.plugins` entry point loads the plugin. Listing it here too
        # makes Airflow (with lazy_discover_providers off) load it twice and record an import error.
    }
