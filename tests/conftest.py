"""Shared fixtures. Airflow's environment is set here, before anything imports Airflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
BIN = Path(sys.executable).parent

# One embedded Airflow for the whole session, outside the repository.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="knobflow-tests-"))
os.environ["KNOBFLOW_AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_SESSION_DIR / 'airflow' / 'airflow.db'}"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ.setdefault("KNOBFLOW_HOME", str(_SESSION_DIR / "home"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty $KNOBFLOW_HOME for one test."""
    h = tmp_path / "home"
    monkeypatch.setenv("KNOBFLOW_HOME", str(h))
    return h


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    """A copy of tests/data/experiments that a test may edit."""
    d = tmp_path / "experiments"
    shutil.copytree(DATA / "experiments", d)
    return d


def knobflow(*args: str, home: Path, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the knobflow CLI in a subprocess, as a user would."""
    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    proc = subprocess.run(
        [str(BIN / "knobflow"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"knobflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def roles_module_utils() -> None:
    """Make the roles' module_utils importable as ``ansible.module_utils.<name>`` in this process.

    Ansible does this when it runs a module: a loaded role's ``module_utils/`` folder (its
    dependencies' too, such as ``knobflow_common``) is on the module_utils search path.
    """
    import ansible.module_utils

    for d in sorted((REPO / "roles").glob("*/module_utils")):
        if str(d) not in ansible.module_utils.__path__:
            ansible.module_utils.__path__.append(str(d))


def role_module(role: str, name: str) -> Any:
    """A role's Ansible module (roles/ROLE/library/NAME.py), loaded from its file as Ansible runs it."""
    import importlib.util

    roles_module_utils()
    path = REPO / "roles" / role / "library" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
