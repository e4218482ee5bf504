from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Optuna creates its tables on first open; concurrent first opens must not fail."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    code = f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); from knobflow.store import Store; Store({url!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not errors, errors[0]
