"""Where knobflow keeps its state and finds its Ansible content."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def knobflow_home() -> Path:
    """The state directory: ``$KNOBFLOW_HOME``, default ``./.knobflow`` (not created here)."""
    return Path(os.environ.get("KNOBFLOW_HOME", ".knobflow")).expanduser().resolve()


def content_dir() -> Path:
    """The folder holding ``playbooks/``, ``roles/``, ``inventories/``, ``dags/`` and ``experiments/``.

    In a checkout (``pip install -e .``) that is the repository itself; in an installed wheel it
    is ``knobflow/_content`` inside the package. ``$KNOBFLOW_CONTENT`` overrides both.
    """
    override = os.environ.get("KNOBFLOW_CONTENT")
    if override:
        return Path(override).expanduser().resolve()
    checkout = _PACKAGE_DIR.parent.parent
    if (checkout / "playbooks" / "trial.yml").is_file() and (checkout / "roles").is_dir():
        return checkout
    return _PACKAGE_DIR / "_content"


def playbooks_dir() -> Path:
    return content_dir() / "playbooks"


def roles_dir() -> Path:
    return content_dir() / "roles"


def dags_dir() -> Path:
    return content_dir() / "dags"


def default_inventory() -> Path:
    return content_dir() / "inventories" / "local"
