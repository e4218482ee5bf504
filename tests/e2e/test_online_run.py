"""`knobflow run` with an online tuner (``tuner: hybrid``) end to end: Airflow dag.test(),
ansible-runner, the real SQLite workload, the store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow.store import Store
from knobflow.tuners.online_adapter import ATTR
from tests.conftest import REPO, knobflow

pytestmark = pytest.mark.slow


def test_run_with_the_hybrid_tuner(tmp_path: Path, home: Path) -> None:
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("name: sqlite-demo", "name: test-sqlite-hybrid").replace('- "1"', '- "0.2"')
    text = text.replace("repeats: 3", "repeats: 1").replace("trials: 20", "trials: 4")
    text = text.replace("name: auto", "name: hybrid")
    f = tmp_path / "hybrid.yaml"
    f.write_text(text)
    assert "tuner hybrid" in knobflow("validate", str(f), home=home, check=True).stdout

    proc = knobflow("run", str(f), home=home, check=True)
    lines = [line for line in proc.stdout.splitlines() if re.match(r"^trial +\d+", line)]
    assert len(lines) == 4 and "(baseline)" in lines[0], proc.stdout
    assert "best: trial" in proc.stdout and "gain over the baseline:" in proc.stdout

    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    trials = store.trials(store.load("test-sqlite-hybrid"))
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].user_attrs["baseline"] is True and ATTR not in trials[0].system_attrs
    for t in trials[1:]:
        assert t.user_attrs["proposed_by"] == "hybrid"
        assert set(t.system_attrs[ATTR]) == {"key", "seed", "config", "rejected"}
        assert t.system_attrs[ATTR]["seed"] == 42  # tuner.seed of the demo
    best = knobflow("best", "test-sqlite-hybrid", home=home, check=True)
    assert "best trial" in best.stdout
