"""`knobflow import` and `export`, and warm start: measured rows become trials, bad rows are named
by file and line, imported trials never spend the budget, and a warm-started experiment starts
from the source's best."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from knobflow import engine, importer, results, spec
from knobflow.store import Store, StoreError
from knobflow.tuners import registry
from knobflow.tuners.base import ask
from tests.conftest import DATA, knobflow

IMPORT = DATA / "import"
EXPERIMENT = IMPORT / "experiment.yaml"
COLUMNS = [
    "baseline",
    "gc",
    "region_mb",
    "heap_mb",
    "young_mb",
    "ratio",
    "pretouch",
    "page_size",
    "throughput",
    "p99_ms",
    "note",
]
WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _store(home: Path) -> Store:
    return Store(f"sqlite:///{home / 'knobflow.db'}")


def _good_row(rng: random.Random) -> dict[str, Any]:
    gc = rng.choice(["G1", "Parallel"])
    heap = rng.randrange(1, 17) * 256
    return {
        "baseline": "",
        "gc": gc,
        "region_mb": rng.randint(1, 32) if gc == "G1" else "",
        "heap_mb": heap,
        "young_mb": rng.randint(64, heap // 2),
        "ratio": round(rng.random(), 3),
        "pretouch": rng.choice(list(WORDS)),
        "page_size": rng.choice([4096, 65536]),
        "throughput": round(rng.uniform(500, 2000), 2),
        "p99_ms": round(rng.uniform(5, 30), 2),
        "note": "",
    }


def _expected_params(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        "gc": row["gc"],
        "heap_mb": int(row["heap_mb"]),
        "young_mb": int(row["young_mb"]),
        "ratio": float(row["ratio"]),
        "pretouch": WORDS[str(row["pretouch"])],
        "page_size": int(row["page_size"]),
    }
    if row["region_mb"] != "":
        out["region_mb"] = int(row["region_mb"])
    return out


def _write_csv(path: Path) -> tuple[dict[int, dict[str, Any]], list[tuple[int, str]]]:
    """200 data rows: the baseline first, 5 bad ones of different kinds, one note spanning two lines.

    Returns the good rows by physical line, and the (line, message) of each bad row.
    """
    rng = random.Random(7)
    rows = [_good_row(rng) for _ in range(200)]
    rows[0].update(
        baseline="true",
        gc="G1",
        region_mb=4,
        heap_mb=1024,
        young_mb=256,
        ratio=0.5,
        pretouch="false",
        page_size=4096,
        throughput=1000,
        p99_ms=20,
    )
    rows[40]["note"] = "measured twice,\nthe second run kept"  # a quoted cell over two physical lines
    rows[41]["p99_ms"] = 45.0  # above 2 * the baseline row's 20: breaks the relative SLO only
    bad = {
        17: ({"heap_mb": 1000}, "heap_mb=1000 is not on the grid 256 + k*256"),
        60: ({"gc": "CMS", "region_mb": ""}, "gc: 'CMS' is not one of the choices ['G1', 'Parallel']"),
        99: ({"heap_mb": 512, "young_mb": 400}, "breaks the constraint young_mb <= heap_mb / 2"),
        150: (
            {"gc": "Parallel", "region_mb": 8},
            "region_mb is set but inactive (its condition gc == 'G1' does not hold)",
        ),
        199: ({"throughput": ""}, "no value for the objective metric 'throughput'"),
    }
    for i, (change, _) in bad.items():
        rows[i].update(change)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    line = 2
    good: dict[int, dict[str, Any]] = {}
    expected = []
    for i, row in enumerate(rows):
        before = buf.tell()
        writer.writerow([row[c] for c in COLUMNS])
        if i in bad:
            expected.append((line, bad[i][1]))
        else:
            good[line] = row
        line += buf.getvalue()[before:].count("\n")
    path.write_text(buf.getvalue())
    return good, expected


def test_a_200_row_csv_with_5_bad_rows_imports_195_and_names_the_5(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "measured.csv"
    good, expected = _write_csv(path)
    assert [line for line, _ in expected][-1] == 202  # the two-line note shifts every later row by one

    proc = knobflow("import", str(path), "--into", str(EXPERIMENT), home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "imported 195 of 200 rows into experiment import-demo; 5 rejected:"
    assert out[1:6] == [f"{path}:{line}: {message}" for line, message in expected]

    store = _store(home)
    study = store.load("import-demo")
    trials = store.trials(study)
    imported = [t for t in trials if t.user_attrs.get("imported")]
    assert len(imported) == 195
    assert all(t.state == TrialState.COMPLETE for t in imported)
    by_line = {t.user_attrs["imported"]["line"]: t for t in imported}
    assert set(by_line) == set(good)
    for line, row in good.items():
        t = by_line[line]
        assert t.params == _expected_params(row), line
        assert t.values == [float(row["throughput"])]
        assert t.user_attrs["metrics"] == {"throughput": row["throughput"], "p99_ms": row["p99_ms"]}
        assert t.user_attrs["imported"]["file"] == str(path.resolve())
    assert isinstance(by_line[2].params["pretouch"], bool) and isinstance(by_line[2].params["page_size"], int)
    # Relative SLOs are checked against the row marked baseline (p99 20): 45 breaks "<= 2 * baseline".
    assert by_line[2].user_attrs["imported"]["baseline"] is True
    line_41 = next(line for line, row in good.items() if row["p99_ms"] == 45.0)
    assert by_line[line_41].user_attrs["slo_violations"] == ["p99_ms <= 2 * baseline"]
    assert sum(bool(t.user_attrs["slo_violations"]) for t in imported) == 1

    # Imported trials spend no budget: the baseline is still queued first, and nothing stops the run.
    p = store.progress(study)
    assert (p.done, p.completed, p.failed, p.waiting, p.imported) == (0, 0, 0, 1, 195)
    exp = spec.load(EXPERIMENT)
    assert engine.stop_reason(exp, store, study, engine.limits(exp)) is None
    first = ask(registry.create("random", seed=1), study, exp.space())
    assert first.user_attrs["baseline"] is True and first.params == exp.defaults()


def test_dry_run_writes_nothing_and_strict_imports_nothing(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "measured.csv"
    _, expected = _write_csv(path)
    proc = knobflow("import", str(path), "--into", str(EXPERIMENT), "--dry-run", home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("would import 195 of 200 rows into experiment import-demo (dry run")
    assert not home.exists(), "a dry run creates nothing"

    proc = knobflow("import", str(path), "--into", str(EXPERIMENT), "--strict", home=home)
    assert proc.returncode == 2
    err = proc.stderr.splitlines()
    assert err[0] == "knobflow import: imported nothing into experiment import-demo: 5 of 200 rows rejected (--strict):"
    assert err[1:] == [f"{path}:{line}: {message}" for line, message in expected]
    assert not (home / "knobflow.db").exists()


JSON_REJECTED = [
    (20, "heap_mb=8192 is outside [256, 4096]"),
    (
        22,
        "xmx is not a tunable of this experiment "
        "(tunables: gc, region_mb, heap_mb, young_mb, ratio, pretouch, page_size)",
    ),
    (25, "the objective metric 'throughput' is not a number: 'fast'"),
    (27, "young_mb is missing"),
    (29, "young_mb: 256.5 is not an integer"),
]


def test_a_json_list_reports_the_line_where_each_bad_object_starts(home: Path) -> None:
    src = IMPORT / "rows.json"
    proc = knobflow("import", str(src), "--into", str(EXPERIMENT), home=home)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "imported 5 of 10 rows into experiment import-demo; 5 rejected:"
    assert out[1:] == [f"{src}:{line}: {message}" for line, message in JSON_REJECTED]

    store = _store(home)
    trials = {t.user_attrs["imported"]["line"]: t for t in store.trials(store.load("import-demo")) if t.number}
    assert sorted(trials) == [2, 4, 14, 17, 31]
    # Flat rows with typed and text values, and the nested {"params", "metrics"} form.
    assert trials[4].params == {
        "gc": "Parallel",
        "heap_mb": 2048,
        "young_mb": 512,
        "ratio": 0.25,
        "pretouch": True,
        "page_size": 65536,
    }
    assert trials[14].params["region_mb"] == 16 and trials[14].values == [1400.0]
    failed = trials[17]
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"] == "out of memory"
    assert failed.values is None
    # p99 45 and 60 against the baseline row's 20: both break the relative SLO; 60 breaks both.
    assert trials[14].user_attrs["slo_violations"] == ["p99_ms <= 2 * baseline"]
    assert trials[31].user_attrs["slo_violations"] == ["p99_ms <= 50", "p99_ms <= 2 * baseline"]
    assert store.progress(store.load("import-demo")).done == 0


def test_json_lines_and_an_unknown_baseline(tmp_path: Path, home: Path) -> None:
    rows = json.loads((IMPORT / "rows.json").read_text())
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[1:3]) + "\n\n" + json.dumps({"gc": "G1"}) + "\n")
    proc = knobflow("import", str(path), "--into", str(EXPERIMENT), home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "imported 2 of 3 rows into experiment import-demo; 1 rejected:"
    assert proc.stdout.splitlines()[1].startswith(f"{path}:4: region_mb is missing; heap_mb is missing")
    assert "neither the study nor the file" in proc.stderr
    store = _store(home)
    imported = [t for t in store.trials(store.load("import-demo")) if t.number]
    for t in imported:  # no baseline anywhere: the relative SLO cannot be checked, and says so
        (violation,) = t.user_attrs["slo_violations"]
        assert violation.startswith("p99_ms <= 2 * baseline (cannot be checked") and "baseline" in violation


def test_the_study_s_measured_baseline_wins_over_the_file_s(home: Path) -> None:
    exp = spec.load(EXPERIMENT)
    store = _store(home)
    study = store.open(exp)
    t = ask(registry.create("random", seed=1), study, exp.space())
    store.finish(
        study, t.number, state=TrialState.COMPLETE, value=900.0, attrs={"metrics": {"throughput": 900, "p99_ms": 10}}
    )
    knobflow("import", str(IMPORT / "rows.json"), "--into", str(EXPERIMENT), home=home, check=True)
    trials = {t.user_attrs["imported"]["line"]: t for t in store.trials(study) if t.user_attrs.get("imported")}
    assert trials[4].user_attrs["slo_violations"] == []  # 18.5 <= 2 * 10
    assert trials[14].user_attrs["slo_violations"] == ["p99_ms <= 2 * baseline"]  # 45 > 20


def test_unreadable_files_are_reported_with_their_line(tmp_path: Path, home: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[\n  {"gc": "G1"},\n  {"gc": }\n]\n')
    proc = knobflow("import", str(bad_json), "--into", str(EXPERIMENT), home=home)
    assert proc.returncode == 2 and f"{bad_json}:3: not valid JSON" in proc.stderr
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("gc,gc\nG1,G1\n")
    proc = knobflow("import", str(bad_csv), "--into", str(EXPERIMENT), home=home)
    assert proc.returncode == 2 and f"{bad_csv}:1: the header names column 'gc' twice" in proc.stderr
    unknown = tmp_path / "rows.txt"
    unknown.write_text("x\n")
    proc = knobflow("import", str(unknown), "--into", str(EXPERIMENT), home=home)
    assert proc.returncode == 2 and "use --format" in proc.stderr
    assert not (home / "knobflow.db").exists()


def test_cells_are_read_as_the_tunable_s_type() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert importer.coerce("b", CategoricalDistribution((False, True)), "Yes") == (True, None)
    assert importer.coerce("b", CategoricalDistribution((False, True)), 0) == (False, None)
    assert importer.coerce("b", CategoricalDistribution((False, True)), "maybe")[1] == (
        "b: 'maybe' is not a boolean (use true/false, yes/no or 1/0)"
    )
    assert importer.coerce("p", CategoricalDistribution((1024, 4096)), "4096") == (4096, None)
    assert importer.coerce("p", CategoricalDistribution((1024, 4096)), 4096.0) == (4096, None)
    assert importer.coerce("s", CategoricalDistribution(("off", "1")), "1") == ("1", None)
    assert importer.coerce("i", IntDistribution(0, 10), "7.0") == (7, None)
    assert importer.coerce("i", IntDistribution(0, 10), "7.5")[1] == "i: '7.5' is not an integer"
    assert importer.coerce("f", FloatDistribution(0, 1), "nan")[1] == "f: 'nan' is not a finite number"
    assert importer.coerce("f", FloatDistribution(0, 1), " 0.25 ") == (0.25, None)


# --------------------------------------------------------------------------------------------
# export


def _variant(tmp_path: Path, name: str, *, replace: tuple[tuple[str, str], ...] = (), extra: str = "") -> Path:
    text = EXPERIMENT.read_text().replace("name: import-demo", f"name: {name}")
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + extra)
    return path


def _run_trials(exp: spec.Experiment, store: Store, n: int) -> None:
    """Trials as the engine records them (ask, metrics, objective, SLOs, finish), without Ansible."""
    study = store.open(exp)
    tuner = registry.create("random", seed=5)
    objectives = exp.objectives()
    base = None
    for i in range(n):
        t = ask(tuner, study, exp.space())
        if i == 3:
            store.finish(study, t.number, state=TrialState.FAIL, value=None, attrs={"metrics": {}, "reason": "crashed"})
            continue
        # "heap_mb" is also a tunable's name: the CSV export must tell them apart.
        metrics = {"throughput": 1000 + 37.5 * i, "p99_ms": 10.0 + 3 * i, "heap_mb": 900.5 + i}
        base = base or metrics
        outcome = objectives.evaluate(metrics, base)
        assert outcome.values is not None
        store.finish(
            study,
            t.number,
            state=TrialState.COMPLETE,
            value=outcome.values[0],
            attrs={"metrics": metrics, "slo_violations": outcome.violations},
            constraints=outcome.constraint_values,
        )


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_then_import_gives_the_same_trials(tmp_path: Path, home: Path, fmt: str) -> None:
    store = _store(home)
    _run_trials(spec.load(EXPERIMENT), store, 8)
    out = tmp_path / f"export.{fmt}"
    proc = knobflow("export", "import-demo", "-o", str(out), home=home)
    assert proc.returncode == 0, proc.stderr
    assert "exported 8 trials of experiment import-demo" in proc.stderr
    if fmt == "csv":
        assert "metrics.heap_mb" in out.read_text().splitlines()[0]

    copy = _variant(tmp_path, "import-copy")
    proc = knobflow("import", str(out), "--into", str(copy), home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "imported 8 of 8 rows into experiment import-copy"

    original = {t.number: t for t in store.trials(store.load("import-demo")) if t.state.is_finished()}
    again = [t for t in store.trials(store.load("import-copy")) if t.user_attrs.get("imported")]
    assert len(again) == len(original) == 8
    for t in again:
        src = original[int(t.user_attrs["imported"]["trial"])]
        assert t.params == src.params
        assert t.state == src.state
        assert t.values == src.values
        assert t.user_attrs.get("slo_violations", []) == src.user_attrs.get("slo_violations", [])
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["metrics"] == src.user_attrs["metrics"]
        else:
            assert t.user_attrs["reason"] == "crashed"
    assert sum(bool(t.user_attrs["imported"].get("baseline")) for t in again) == 1


def test_export_to_stdout_and_of_a_missing_store(tmp_path: Path, home: Path) -> None:
    proc = knobflow("export", "import-demo", home=tmp_path / "nowhere")
    assert proc.returncode == 2 and "no experiment named 'import-demo'" in proc.stderr
    assert not (tmp_path / "nowhere").exists()
    knobflow("import", str(IMPORT / "rows.json"), "--into", str(EXPERIMENT), home=home, check=True)
    proc = knobflow("export", str(EXPERIMENT), "--format", "jsonl", home=home, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["state"] for r in rows] == ["complete", "complete", "complete", "failed", "complete"]


# --------------------------------------------------------------------------------------------
# warm start


def test_a_warm_started_experiment_starts_from_the_imported_best(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "measured.csv"
    _write_csv(path)
    knobflow("import", str(path), "--into", str(EXPERIMENT), home=home, check=True)
    store = _store(home)
    a_trials = store.trials(store.load("import-demo"))
    a = spec.load(EXPERIMENT)
    a_best = results.best(a.space(), a.objectives(), a_trials)
    assert a_best is not None

    b = spec.load(_variant(tmp_path, "warm-b", extra="warm_start:\n  from: import-demo\n"))
    study = store.open(b)
    tuner = registry.create("random", seed=1)
    first = ask(tuner, study, b.space())
    assert first.user_attrs["baseline"] is True and first.params == b.defaults()
    second = ask(tuner, study, b.space())
    assert second.params == a_best.record.params
    assert second.user_attrs["warm_start_best"] is True

    copied = [t for t in store.trials(study) if t.user_attrs.get("warm_start")]
    a_complete = [t for t in a_trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["warm_start"]["trial"] for t in copied) == [t.number for t in a_complete]
    assert all(t.user_attrs["warm_start"]["from"] == "import-demo" for t in copied)
    for t in copied:
        src = a_trials[t.user_attrs["warm_start"]["trial"]]
        assert t.params == src.params and t.values == src.values
    best_copy = next(t for t in copied if t.user_attrs["warm_start"]["trial"] == a_best.record.number)
    assert second.user_attrs["remeasure_of"] == best_copy.number
    info = study.user_attrs["warm_start"]
    assert (info["copied"], info["skipped"], info["best"]["trial"]) == (195, 0, best_copy.number)
    p = store.progress(study)
    assert (p.done, p.warm_start) == (0, 195)
    # Opening again copies nothing more.
    assert len(store.trials(store.open(b))) == len(store.trials(study))


def test_warm_start_fits_the_source_trials_to_the_new_space(tmp_path: Path, home: Path) -> None:
    knobflow("import", str(IMPORT / "rows.json"), "--into", str(EXPERIMENT), home=home, check=True)
    threads = "  - name: threads\n    layer: runtime\n    type: int\n    low: 1\n    high: 16\n    default: 4\n"
    changes = (
        ("high: 4096", "high: 2048"),  # the trial with heap_mb 4096 no longer fits
        ("  - name: page_size", threads + "  - name: page_size_gone"),
        ("metric: throughput\n  direction: maximize", "metric: p99_ms\n  direction: minimize"),
    )
    text = _variant(tmp_path, "warm-c", replace=changes).read_text()
    # Drop the page_size tunable (now "page_size_gone") and its layer.
    text = text.replace(text[text.index("  - name: page_size_gone") : text.index("constraints:")], "")
    text = text.replace("  os:\n    role: sqlite_config\n", "")
    path = tmp_path / "warm-c.yaml"
    path.write_text(text + "warm_start:\n  from: import-demo\n")
    c = spec.load(path)
    store = _store(home)
    study = store.open(c)
    info = study.user_attrs["warm_start"]
    assert info["copied"] == 3 and info["dropped_tunables"] == ["page_size"]
    assert info["filled_defaults"] == {"threads": 3}
    ((skip),) = info["skipped_why"]
    assert skip["why"] == "heap_mb=4096 is outside its domain ([256, 2048] step 256)"
    copied = [t for t in store.trials(study) if t.user_attrs.get("warm_start")]
    # Values recomputed with this experiment's objective (p99_ms, minimised) from the metrics.
    assert sorted(t.values[0] for t in copied) == [18.5, 20.0, 60.0]
    assert all(t.params["threads"] == 4 and "page_size" not in t.params for t in copied)
    queued = [t for t in store.trials(study) if t.state == TrialState.WAITING]
    assert [bool(t.user_attrs.get("baseline")) for t in queued] == [True, False]
    assert queued[1].system_attrs["fixed_params"] == next(t.params for t in copied if t.values[0] == 18.5)

    # warm_start.trials keeps the best N that fit.
    path.write_text(path.read_text().replace("name: warm-c", "name: warm-d") + "  trials: 1\n")
    study = store.open(spec.load(path))
    info = study.user_attrs["warm_start"]
    assert info["copied"] == 1 and info["skipped"] == 3
    assert "not among the best 1 (warm_start.trials)" in [s["why"] for s in info["skipped_why"]]
    (only,) = [t for t in store.trials(study) if t.user_attrs.get("warm_start")]
    assert only.values == [18.5]


def test_warm_start_from_a_missing_experiment_is_a_clear_error(tmp_path: Path, home: Path) -> None:
    store = _store(home)
    b = spec.load(_variant(tmp_path, "warm-x", extra="warm_start:\n  from: nowhere\n"))
    with pytest.raises(StoreError, match=r"warm_start.from: no experiment named 'nowhere' in sqlite:///.*knobflow\.db"):
        store.open(b)
    assert not store.exists("warm-x"), "nothing is created when the source is missing"
    other = tmp_path / "other.db"
    c = spec.load(
        _variant(tmp_path, "warm-y", extra=f"warm_start:\n  from: import-demo\n  storage: sqlite:///{other}\n")
    )
    with pytest.raises(StoreError, match=r"no experiment named 'import-demo' in sqlite:///.*other\.db.*does not exist"):
        store.open(c)
    assert not other.exists() and not store.exists("warm-y")
