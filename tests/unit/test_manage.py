"""Many experiments in one store: list, show, best (one objective or a Pareto front, never an
infeasible trial), and delete (archive by default, purge on request, always confirmed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from knobflow import importer, spec
from knobflow.store import Store
from tests.conftest import BIN, DATA, REPO, knobflow

IMPORT = DATA / "import"
MULTI_ROWS = [  # threads, cache, throughput, p99_ms
    (8, "small", 1000, 20),
    (16, "large", 1500, 30),
    (32, "large", 1800, 45),
    (4, "small", 900, 10),
    (64, "large", 2500, 80),  # best on both counts but breaks the SLO p99_ms <= 50
    (2, "small", 800, 25),  # dominated by the first
]


def _store(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'knobflow.db'}")


def _fill(home: Path, tmp_path: Path) -> Store:
    """import-demo from rows.json (5 trials, 2 infeasible, 1 failed) and multi-demo (6 trials)."""
    store = _store(home)
    single = spec.load(IMPORT / "experiment.yaml")
    importer.plan_import(single, IMPORT / "rows.json").apply(store.open(single))
    rows = tmp_path / "multi.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"threads": t, "cache": c, "throughput": x, "p99_ms": p}) + "\n" for t, c, x, p in MULTI_ROWS
        )
    )
    multi = spec.load(IMPORT / "multi.yaml")
    plan = importer.plan_import(multi, rows)
    assert not plan.rejected
    plan.apply(store.open(multi))
    return store


def _knobflow_typing(*args: str, home: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    """The CLI with something typed on its standard input."""
    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    return subprocess.run(
        [str(BIN / "knobflow"), *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_list_shows_objectives_best_pareto_and_status(tmp_path: Path, home: Path) -> None:
    _fill(home, tmp_path)
    proc = knobflow("list", home=home, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["experiment", "trials", "failed", "objective", "best", "status"]
    assert re.search(r"^import-demo\s+0\s+0\s+max throughput\s+1250\.5 \(#2\)\s+new$", proc.stdout, re.M)
    assert re.search(r"^multi-demo\s+0\s+0\s+max throughput, min p99_ms\s+pareto: 4\s+new$", proc.stdout, re.M)
    rows = {r["name"]: r for r in json.loads(knobflow("list", "--json", home=home, check=True).stdout)}
    assert rows["import-demo"]["best"] == 1250.5 and rows["import-demo"]["imported"] == 5
    assert rows["multi-demo"]["pareto"] == 4 and rows["multi-demo"]["best"] is None
    assert rows["multi-demo"]["objectives"] == [
        {"name": "throughput", "direction": "maximize"},
        {"name": "p99_ms", "direction": "minimize"},
    ]


def test_best_of_several_objectives_is_the_feasible_pareto_front(tmp_path: Path, home: Path) -> None:
    _fill(home, tmp_path)
    proc = knobflow("best", "multi-demo", home=home)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "experiment multi-demo: Pareto front of 4 trials (maximize throughput, minimize p99_ms):"
    assert [line.split(":")[0].strip() for line in lines[1:5]] == ["trial 1", "trial 2", "trial 3", "trial 4"]
    assert "threads=64" not in proc.stdout, "an infeasible trial is never on the front"
    assert "1 trial broke an SLO" in proc.stdout
    data = json.loads(knobflow("best", "multi-demo", "--json", home=home, check=True).stdout)
    assert [p["trial"] for p in data["pareto"]] == [1, 2, 3, 4] and data["best"] is None


def test_best_is_never_an_infeasible_trial(tmp_path: Path, home: Path) -> None:
    _fill(home, tmp_path)
    proc = knobflow("best", "import-demo", home=home)
    assert proc.returncode == 0, proc.stderr
    # Trial 3 has the highest throughput (1400) but breaks an SLO.
    assert proc.stdout.splitlines()[0] == "experiment import-demo: best trial 2, throughput = 1250.5, imported"
    assert "failed trial 4: out of memory" in proc.stdout
    data = json.loads(knobflow("best", "import-demo", "--json", home=home, check=True).stdout)
    assert data["best"]["trial"] == 2 and data["infeasible"] == 2
    assert data["failed"] == [{"trial": 4, "reason": "out of memory", "source": "imported"}]


def test_show_describes_the_experiment_and_every_trial(tmp_path: Path, home: Path) -> None:
    _fill(home, tmp_path)
    proc = knobflow("show", "import-demo", home=home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in (
        "experiment import-demo (new)",
        "objective: maximize throughput",
        "SLO: p99_ms <= 2 * baseline",
        "constraint: young_mb <= heap_mb / 2",
        "region_mb (runtime, int [1, 32], default 4)  when {'gc': 'G1'}",
        "tuner: random (seed 1)",
        "budget: 0 of 10 trials done (0 failed), 0 running, 1 waiting",
        "5 imported trials (not counted in the budget)",
        "experiment import-demo: best trial 2, throughput = 1250.5",
        "2 trials broke an SLO",
    ):
        assert text in out, text
    table = out[out.index("trials:\n") :].splitlines()[2:]
    assert len(table) == 6
    assert table[0].split()[:3] == ["0", "waiting", "-"] and "baseline" in table[0]
    assert table[3].split()[:4] == ["3", "complete", "1400", "NO"]
    assert table[4].split()[:2] == ["4", "fail"] and "(out of memory)" in table[4]
    data = json.loads(knobflow("show", "multi-demo", "--json", home=home, check=True).stdout)
    assert data["budget"] == {
        "trials": 10,
        "done": 0,
        "completed": 0,
        "failed": 0,
        "running": 0,
        "waiting": 1,
        "imported": 6,
        "warm_start": 0,
    }
    assert [t["number"] for t in data["trials"]] == list(range(7))
    assert [p["trial"] for p in data["pareto"]] == [1, 2, 3, 4]
    assert data["trials"][5]["feasible"] is False and data["trials"][5]["violations"] == ["p99_ms <= 50"]

    proc = knobflow("show", "nope", home=home)
    assert proc.returncode == 2 and "no experiment named 'nope'" in proc.stderr and "import-demo" in proc.stderr


def test_delete_asks_archives_frees_the_name_and_purges(tmp_path: Path, home: Path) -> None:
    store = _fill(home, tmp_path)
    proc = _knobflow_typing("delete", "import-demo", home=home, stdin="import-dem\n")
    assert proc.returncode == 1 and "nothing deleted" in proc.stderr
    proc = _knobflow_typing("delete", "import-demo", home=home, stdin="")
    assert proc.returncode == 1 and "pass --yes" in proc.stderr
    assert store.exists("import-demo")

    proc = _knobflow_typing("delete", "import-demo", home=home, stdin="import-demo\n")
    assert proc.returncode == 0, proc.stderr
    assert "archive experiment import-demo (6 trials)" in proc.stdout
    (archive,) = store.archives("import-demo")
    assert re.fullmatch(r"archive:import-demo:\d{8}T\d{6}Z", archive)
    assert not store.exists("import-demo")
    assert len(store.trials(store.load(archive))) == 6
    assert store.load(archive).user_attrs["spec"]["name"] == "import-demo"

    # The name is free: the experiment starts afresh; the archive is hidden from list unless --all.
    fresh = store.open(spec.load(IMPORT / "experiment.yaml"))
    assert len(store.trials(fresh)) == 1
    listed = knobflow("list", home=home, check=True).stdout
    assert "archive:" not in listed and "import-demo" in listed
    listed = knobflow("list", "--all", home=home, check=True).stdout
    assert re.search(rf"^{re.escape(archive)}\s+0\s+0\s+max throughput\s+1250\.5 \(#2\)\s+archived$", listed, re.M)
    shown = knobflow("show", archive, home=home, check=True).stdout
    assert "archived from import-demo" in shown

    knobflow("delete", "import-demo", "--yes", home=home, check=True)
    assert len(store.archives("import-demo")) == 2
    store.open(spec.load(IMPORT / "experiment.yaml"))
    proc = knobflow("delete", "import-demo", "--purge", "--all-archives", "--yes", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "deleted experiment import-demo for good" in proc.stdout
    assert store.names() == ["multi-demo"]

    # An archive itself is destroyed, never archived again.
    knobflow("delete", "multi-demo", "--yes", home=home, check=True)
    (archive,) = store.archives("multi-demo")
    proc = knobflow("delete", archive, "--yes", home=home, check=True)
    assert f"deleted archive {archive} for good" in proc.stdout
    assert store.names() == []


@pytest.mark.parametrize("command", ["show", "best", "export", "delete"])
def test_reading_a_missing_store_creates_nothing(tmp_path: Path, command: str) -> None:
    args = [command, "some-experiment"] + (["--yes"] if command == "delete" else [])
    proc = knobflow(*args, home=tmp_path / "h")
    assert proc.returncode == 2 and "no experiment named 'some-experiment'" in proc.stderr
    proc = knobflow("list", "--all", home=tmp_path / "h", check=True)
    assert "no experiments" in proc.stdout
    assert not (tmp_path / "h").exists()
