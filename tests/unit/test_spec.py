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


def _custom(tmp_path: Path, extra: str = "") -> Path:
    roles = tmp_path / "ops-roles" / "env_file" / "tasks"
    roles.mkdir(parents=True)
    for name in ("main", "revert"):
        (roles / f"{name}.yml").write_text("---\n- name: Noop\n  ansible.builtin.debug:\n    msg: x\n")
    f = tmp_path / "exp" / "custom.yaml"
    f.parent.mkdir()
    f.write_text(
        "name: custom\nobjective: {metric: score, direction: maximize}\n"
        "tunables:\n"
        "  - {name: threads, layer: app, type: int, low: 1, high: 4, default: 1}\n"
        "  - {name: batch_size, layer: stack, type: int, low: 1, high: 9, default: 1}\n"
        "layers:\n  app: {role: env_file}\n  stack: {role: sqlite_config}\n"
        "roles_path: [../ops-roles]\n"
        "benchmark: {role: bench_command, vars: {bench_command_argv: [echo]}}\nbudget: {trials: 2}\n" + extra
    )
    return f


def test_a_custom_layer_is_declared_with_its_role_from_the_roles_path(tmp_path: Path) -> None:
    exp = spec.load(_custom(tmp_path))
    assert exp.roles_path()[0] == (tmp_path / "ops-roles").resolve()
    assert exp.roles_path()[-1] == REPO / "roles"
    assert exp.params_by_layer({"threads": 2, "batch_size": 3}) == {"app": {"threads": 2}, "stack": {"batch_size": 3}}


def test_an_undeclared_custom_layer_says_how_to_declare_it(tmp_path: Path) -> None:
    f = _custom(tmp_path)
    f.write_text(f.read_text().replace("  app: {role: env_file}\n", ""))
    with pytest.raises(spec.SpecError) as info:
        spec.load(f)
    [problem] = info.value.problems
    assert problem.path == "tunables[0].layer"
    assert "unknown layer 'app'" in problem.message and "declare it under layers.app" in problem.message


def test_setup_and_teardown_vars_are_extra_variables_checked_like_the_others(tmp_path: Path) -> None:
    exp = spec.load(_custom(tmp_path, "setup:\n  - {role: env_file, vars: {pg_port: 5499}}\n"))
    assert exp.extravars()["pg_port"] == 5499
    f = _custom(tmp_path / "again", "vars: {pg_port: 1}\nteardown:\n  - {role: env_file, vars: {pg_port: 5499}}\n")
    with pytest.raises(spec.SpecError) as info:
        spec.load(f)
    assert [p.path for p in info.value.problems] == ["teardown[0].vars.pg_port"]


CLIENT_RUN = """\
name: client-run
runner: client
objective: {metric: rps, direction: maximize}
tunables:
  - {name: threads, layer: web_tier, type: int, low: 1, high: 64, default: 8}
  - {name: gc, layer: runtime, type: categorical, choices: [G1, Parallel], default: G1}
parallel: 3
budget: {trials: 10}
"""


def test_a_client_run_experiment_needs_no_benchmark_roles_or_hosts(tmp_path: Path, home: Path) -> None:
    from knobflow import engine
    from knobflow.airflow.dag_factory import load_experiment_dags

    exp = spec.parse(CLIENT_RUN)
    assert exp.model.runner == "client" and exp.model.benchmark is None and exp.benchmark.repeats == 3
    path = tmp_path / "client-run.yaml"
    path.write_text(CLIENT_RUN)
    # Neither `knobflow run` nor Airflow runs it; a generated DAG is not made for it.
    proc = knobflow("run", str(path), home=home)
    assert proc.returncode == 2 and "runner: client" in proc.stderr
    dags, errors = load_experiment_dags([path])
    assert dags == {} and errors == {}
    with pytest.raises(engine.SetupFailed, match="runner: client"):
        engine.prepare(exp, engine.limits(exp))
    # Without runner: client, the benchmark is required and every layer needs its role.
    with pytest.raises(spec.SpecError) as err:
        spec.parse(CLIENT_RUN.replace("runner: client\n", ""))
    paths = {p.path for p in err.value.problems}
    assert {"benchmark", "tunables[0].layer"} <= paths
