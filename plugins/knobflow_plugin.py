"""knobflow's Airflow plugin, for deployments that load plugins from Airflow's plugins folder.

Copy this file into ``$AIRFLOW_HOME/plugins`` (``[core] plugins_folder``) when knobflow is
importable in Airflow's environment without being pip-installed (for example on ``PYTHONPATH``).
When knobflow is pip-installed, its ``airflow.plugins`` entry point registers the plugin already;
this file then exposes nothing, so the plugin is not registered twice (Airflow would skip the
second copy, report "Plugin 'knobflow' already registered" as a plugin import error, and its task
runner would stop loading the entry-point plugins that come after it).
"""

from __future__ import annotations

from importlib.metadata import entry_points

KNOBFLOW_ENTRY_POINT = "knobflow.airflow.plugin:KnobflowPlugin"


def registered_by_entry_point() -> bool:
    """Whether an installed distribution registers knobflow's plugin through ``airflow.plugins``."""
    return any(ep.value.replace(" ", "") == KNOBFLOW_ENTRY_POINT for ep in entry_points(group="airflow.plugins"))


if not registered_by_entry_point():
    try:
        from knobflow.airflow.plugin import KnobflowPlugin
    except ImportError as exc:
        raise ImportError(
            f"knobflow is not importable in this Airflow environment ({exc}); install it with "
            "`pip install -c constraints.txt knobflow` (which also registers the plugin without this file)"
        ) from exc

    __all__ = ["KnobflowPlugin"]
