from __future__ import annotations

from pathlib import Path

import pytest

from knobflow import cli
from tests.conftest import knobflow


def test_a_second_run_of_the_same_experiment_is_refused(tmp_path: Path) -> None:
    with cli._experiment_lock(tmp_path, "exp"):
        with pytest.raises(RuntimeError, match=r"already running \(pid \d+\)"), cli._experiment_lock(tmp_path, "exp"):
            pass
        with cli._experiment_lock(tmp_path, "other"):  # other experiments are not blocked
            pass
    with cli._experiment_lock(tmp_path, "exp"):  # released after use
        pass


def test_bad_arguments(tmp_path: Path) -> None:
    proc = knobflow("run", "experiments/sqlite-demo.yaml", "--trials", "0", home=tmp_path / "h")
    assert proc.returncode == 2 and "--trials and --max-failed must be at least 1" in proc.stderr
    proc = knobflow("best", "no-such-experiment", home=tmp_path / "h")
    assert proc.returncode == 2 and "no experiment named 'no-such-experiment'" in proc.stderr
    assert not (tmp_path / "h").exists(), "reading commands create nothing"


def test_list_on_an_empty_store(tmp_path: Path) -> None:
    proc = knobflow("list", home=tmp_path / "h", check=True)
    assert "no experiments" in proc.stdout
    assert not (tmp_path / "h").exists()
