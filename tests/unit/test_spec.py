from __future__ import annotations

import re
from pathlib import Path

import pytest

from knobflow import spec
from tests.conftest import DATA, REPO, knobflow

BAD = sorted((DATA / "bad_specs").glob("*.yaml"))


def _expectations(path: Path) -> tuple[str, str | None]:
    lines = path.read_text().splitlines()
    expect = lines[0].removeprefix("# expect:").strip()
    message = lines[1].removeprefix("# message:").strip() if lines[1].startswith("# message:") else None
    return expect, message


def test_demo_experiment_is_valid() -> None:
    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    assert exp.name == "sqlite-demo"
    assert exp.maximize
    assert len(exp.tunables) == 7
    assert exp.defaults()["journal_mode"] == "delete"
    assert set(exp.params_by_layer(exp.defaults())) == {"stack"}


def test_corpus_has_at_least_forty_kinds() -> None:
    assert len(BAD) >= 40
    assert len({_expectations(p) for p in BAD}) >= 40, "each file is a different mistake"


def test_validating_every_broken_file_creates_nothing(tmp_path: Path) -> None:
    """One CLI call over the whole corpus: every file is reported invalid, with its field, and no
    store, log or Airflow home appears."""
    home = tmp_path / "home"
    proc = knobflow("validate", *map(str, BAD), home=home)
    assert proc.returncode == 2
    for path in BAD:
        expect, _ = _expectations(path)
        assert f"{path}: invalid" in proc.stderr, path
        assert f"{path}:" in proc.stderr and f"{expect}: " in proc.stderr, path
    assert "ok:" not in proc.stdout
    assert not home.exists(), "validate must not create anything"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_file_names_the_field(path: Path) -> None:
    expect, message = _expectations(path)
    with pytest.raises(spec.SpecError) as info:
        spec.load(path)
    problems = info.value.problems
    assert problems, "a SpecError must carry at least one problem"
    paths = [p.path for p in problems]
    assert expect in paths, f"expected a problem at {expect!r}, got {paths}"
    if message:
        assert any(message in p.message for p in problems)
    text = str(info.value)
    # Every line names the file and, where YAML knows it, the line.
    for line in text.splitlines():
        assert line.startswith(str(path))
        assert re.match(rf"{re.escape(str(path))}:\d+: ", line), line


@pytest.mark.parametrize("path", BAD[:12], ids=[p.stem for p in BAD[:12]])
def test_validate_cli_exits_nonzero_and_creates_nothing(path: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    expect, _ = _expectations(path)
    proc = knobflow("validate", str(path), home=home)
    assert proc.returncode == 2
    assert f"{expect}: " in proc.stderr if expect else "invalid" in proc.stderr
    assert not home.exists(), "validate must not create anything"
    assert not list(tmp_path.iterdir())


def test_run_on_bad_file_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = knobflow("run", str(DATA / "bad_specs" / "high_not_above_low.yaml"), home=home)
    assert proc.returncode == 2
    assert "tunables[1].high: must be greater than low" in proc.stderr
    assert not home.exists()


def test_several_problems_are_all_reported() -> None:
    text = (DATA / "bad_specs" / "high_not_above_low.yaml").read_text()
    text = text.replace("direction: maximize", "direction: sideways").replace("trials: 5", "trials: 0")
    with pytest.raises(spec.SpecError) as info:
        spec.parse(text, source="x.yaml", base_dir=REPO)
    paths = {p.path for p in info.value.problems}
    assert {"objective.direction", "budget.trials"} <= paths


def test_missing_file() -> None:
    with pytest.raises(spec.SpecError, match="file not found"):
        spec.load("/nonexistent/x.yaml")


def test_space_fingerprint_tracks_the_space_only() -> None:
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    a = spec.parse(text, base_dir=REPO / "experiments")
    b = spec.parse(text.replace("trials: 20", "trials: 40"), base_dir=REPO / "experiments")
    c = spec.parse(text.replace("high: 1000", "high: 2000"), base_dir=REPO / "experiments")
    assert a.space_fingerprint() == b.space_fingerprint()
    assert a.space_fingerprint() != c.space_fingerprint()
    # Reordering tunables changes nothing; another objective metric makes trials incomparable.
    reordered = spec.parse(
        text.replace("  - name: journal_mode\n", "  - name: journal_mode_tmp\n"), base_dir=REPO / "experiments"
    )
    assert reordered.space_fingerprint() != a.space_fingerprint()  # sanity: names count
    d = a.model.model_copy(update={"tunables": list(reversed(a.model.tunables))})
    assert spec.Experiment(model=d, path=None, base_dir=a.base_dir).space_fingerprint() == a.space_fingerprint()
    e = spec.parse(text.replace("metric: throughput_ops", "metric: read_p99_ms"), base_dir=REPO / "experiments")
    assert e.space_fingerprint() != a.space_fingerprint()


def test_float_and_step_tunables() -> None:
    text = (DATA / "bad_specs" / "high_not_above_low.yaml").read_text().replace("    high: 0\n", "    high: 1000\n")
    text = text.replace(
        "  - name: journal_mode\n",
        "  - name: ratio\n    layer: stack\n    type: float\n    low: 0.0\n    high: 1.0\n    step: 0.25\n"
        "    default: 0.5\n  - name: journal_mode\n",
    )
    exp = spec.parse(text, base_dir=REPO)
    assert [t.name for t in exp.tunables] == ["cache_size_kib", "batch_size", "ratio", "journal_mode"]
