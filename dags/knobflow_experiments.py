"""Airflow DAG file: one knobflow DAG per experiment file.

Experiment files come from ``experiments/`` next to this folder and from the files and folders
listed in ``$KNOBFLOW_EXPERIMENTS`` (separated by ``os.pathsep``). A file that does not validate is
reported in the log and skipped; the others still load.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from airflow.sdk import get_parsing_context

from knobflow.airflow.dag_factory import load_experiment_dags

log = logging.getLogger(__name__)


def _experiment_files() -> list[Path]:
    named: list[Path] = []
    for entry in filter(None, os.environ.get("KNOBFLOW_EXPERIMENTS", "").split(os.pathsep)):
        p = Path(entry).expanduser()
        named.extend(sorted(p.glob("*.y*ml")) if p.is_dir() else [p])
    here = Path(__file__).resolve().parent.parent / "experiments"
    bundled = sorted(here.glob("*.y*ml")) if here.is_dir() else []
    seen: set[Path] = set()
    files = []
    for f in [*named, *bundled]:  # files named explicitly first: they win a name clash
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            files.append(r)
    return files


# A task's process parses this file to run one task of one DAG: build that DAG alone.
_dags, _errors = load_experiment_dags(_experiment_files(), only=get_parsing_context().dag_id)
for _file, _error in _errors.items():
    log.error("knobflow: skipped experiment file %s:\n%s", _file, _error)
globals().update(_dags)
