"""The Ansible content passes ansible-lint at the production profile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("target", ["roles", "playbooks", "examples/custom-layer/roles"])
def test_ansible_lint_production_profile(target: str) -> None:
    lint = Path(sys.executable).parent / "ansible-lint"
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles")}
    out = subprocess.run(
        [str(lint), "--offline", "--profile", "production", "playbooks" if target == "playbooks" else "."],
        cwd=REPO if target == "playbooks" else REPO / target,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
