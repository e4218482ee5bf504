"""Kruize HPO search spaces to experiment files and back: fields mapped as the Kruize contract says,
layers guessed by name, names made into identifiers and restored, everything that cannot be carried
over reported, and a converted search space that validates and runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import TrialState

from knobflow import kruize
from knobflow.store import Store
from knobflow.tuners.optuna import missing_modules
from tests.conftest import DATA, REPO, knobflow

KRUIZE = DATA / "kruize"
TFB = KRUIZE / "tfb_qrh_search_space.json"
ROLES = ["--role", "container=noop_layer", "--role", "runtime=noop_layer", "--role", "stack=noop_layer"]
BENCH = [
    "--var",
    "noop_layer_file={{ knobflow.home }}/noop-layer.json",
    "--benchmark-var",
    'bench_command_argv=["{{ ansible_playbook_python }}", "{{ knobflow.experiment_dir }}/bench.py"]',
]


def _workdir(tmp_path: Path) -> Path:
    """A folder with the roles the converted file names (noop_layer) and the benchmark script."""
    d = tmp_path / "kruize"
    d.mkdir()
    shutil.copytree(DATA / "experiments" / "roles", d / "roles")
    shutil.copy(KRUIZE / "bench.py", d / "bench.py")
    return d


def _convert(tmp_path: Path, home: Path, *extra: str) -> tuple[Path, Any]:
    d = _workdir(tmp_path)
    out = d / "experiment.yaml"
    proc = knobflow("kruize", "import", str(TFB), "-o", str(out), *ROLES, *BENCH, *extra, home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


@pytest.mark.parametrize(
    ("name", "layer", "confident"),
    [
        ("cpuRequest", "container", True),
        ("memoryLimit", "container", True),
        ("MaxInlineLevel", "runtime", True),
        ("FreqInlineSize", "runtime", True),
        ("gc", "runtime", True),
        ("gcthreads", "runtime", True),
        ("Xmx", "runtime", True),
        ("MaxRAMPercentage", "runtime", True),
        ("quarkus.thread-pool.core-threads", "stack", True),
        ("hibernate.jdbc.fetch_size", "stack", True),
        ("vm.swappiness", "os", True),
        ("net.core.somaxconn", "os", True),
        ("kernel_sched_migration_cost_ns", "os", True),
        ("nettyBufferCheck", "runtime", False),
    ],
)
def test_layer_guesses(name: str, layer: str, confident: bool) -> None:
    assert kruize.guess_layer(name) == (layer, confident)


def test_names_become_identifiers() -> None:
    assert kruize.sanitize("quarkus.thread-pool.core-threads") == "quarkus_thread_pool_core_threads"
    assert kruize.sanitize("2nd-level") == "_2nd_level"
    assert kruize.sanitize("MaxInlineLevel") == "MaxInlineLevel"


def test_objective_function_is_a_metric_or_a_formula() -> None:
    base = {
        "experiment_name": "x",
        "total_trials": 3,
        "direction": "minimize",
        "tunables": [{"name": "cpuRequest", "value_type": "double", "lower_bound": 1, "upper_bound": 2, "step": 0.5}],
    }
    conv = kruize.to_experiment({**base, "objective_function": "transaction_response_time"})
    assert conv.data["objective"] == {"metric": "transaction_response_time", "direction": "minimize"}
    conv = kruize.to_experiment({**base, "objective_function": "transaction-response-time"})
    assert conv.data["objective"]["metric"] == "transaction-response-time"
    assert any("read as a metric name" in w for w in conv.warnings)
    conv = kruize.to_experiment({**base, "objective_function": "1000 * Throughput / Avg_Watts**2"})
    assert conv.data["objective"]["expression"] == "1000 * Throughput / Avg_Watts**2"
    with pytest.raises(kruize.KruizeError, match="objective_function: required"):
        kruize.to_experiment(base)


def test_the_techempower_search_space_converts_and_validates(tmp_path: Path, home: Path) -> None:
    out, proc = _convert(tmp_path, home)
    assert "warning: layer guessed (runtime) for nettyBufferCheck" in proc.stderr
    assert "warning: Kruize search spaces have no defaults" in proc.stderr
    text = out.read_text()
    assert text.startswith("# Converted from the Kruize HPO search space")
    doc = yaml.safe_load(text)
    assert doc["name"] == "tfb-qrh"
    assert "Kruize experiment_id: a123" in doc["description"]
    assert doc["objective"] == {
        "name": "objective_function",
        "expression": "1000*(125*THROUGHPUT_RATE_3m)/(150*RESPONSE_TIME_RATE_3m)/(25*MAX_RESPONSE_TIME/1000)",
        "direction": "maximize",
    }
    assert doc["tuner"] == {"name": "tpe-univariate"}  # Kruize's optuna_tpe
    assert doc["budget"] == {"trials": 5}
    t = {x["name"]: x for x in doc["tunables"]}
    assert t["memoryRequest"] == {
        "name": "memoryRequest",
        "layer": "container",
        "type": "float",
        "low": 270.0,
        "high": 1024.0,
        "step": 1.0,
        "default": 270.0,
    }
    assert t["cpuRequest"]["step"] == 0.1 and t["cpuRequest"]["layer"] == "container"
    assert t["MaxInlineLevel"] == {
        "name": "MaxInlineLevel",
        "layer": "runtime",
        "type": "int",
        "low": 9,
        "high": 50,
        "default": 9,
    }
    assert t["quarkus_thread_pool_queue_size"]["step"] == 10
    assert t["gc"]["layer"] == "runtime" and t["gc"]["choices"][0] == "G1GC"
    core = t["quarkus_thread_pool_core_threads"]
    assert core["layer"] == "stack" and core["description"] == "Kruize name: quarkus.thread-pool.core-threads"
    assert t["TieredCompilation"]["choices"] == ["true", "false"]  # Kruize's strings, kept as strings
    assert doc["layers"] == {r: {"role": "noop_layer"} for r in ("container", "runtime", "stack")}
    assert doc["benchmark"]["vars"]["bench_command_argv"][1] == "{{ knobflow.experiment_dir }}/bench.py"
    proc = knobflow("validate", str(out), home=home)
    assert proc.returncode == 0, proc.stderr
    assert "17 tunables" in proc.stdout and not home.exists()


def test_import_then_export_gives_the_same_search_space(tmp_path: Path, home: Path) -> None:
    out, _ = _convert(tmp_path, home)
    back = tmp_path / "back.json"
    proc = knobflow("kruize", "export", str(out), "-o", str(back), home=home)
    assert proc.returncode == 0, proc.stderr
    assert "warning: defaults: Kruize search spaces have no defaults" in proc.stderr
    original, again = json.loads(TFB.read_text()), json.loads(back.read_text())
    assert again["tunables"] == original["tunables"]
    assert again == original


def test_options_override_guesses_and_set_defaults(tmp_path: Path, home: Path) -> None:
    out, proc = _convert(
        tmp_path,
        home,
        "--layer",
        "nettyBufferCheck=stack",
        "--default",
        "quarkus.thread-pool.core-threads=8",
        "--default",
        "gc=ParallelGC",
        "--default",
        "cpuRequest=1.2",
    )
    assert "nettyBufferCheck" not in proc.stderr.split("no defaults")[0]
    t = {x["name"]: x for x in yaml.safe_load(out.read_text())["tunables"]}
    assert t["nettyBufferCheck"]["layer"] == "stack"
    assert (t["quarkus_thread_pool_core_threads"]["default"], t["gc"]["default"]) == (8, "ParallelGC")
    assert t["cpuRequest"]["default"] == 1.2
    d = out.parent
    proc = knobflow("kruize", "import", str(TFB), "-o", str(d / "x.yaml"), "--default", "gc=CMS", home=home)
    assert proc.returncode == 2
    assert "--default for tunables[7] (gc): gc: 'CMS' is not one of the choices" in proc.stderr
    assert not (d / "x.yaml").exists()
    proc = knobflow("kruize", "import", str(TFB), "-o", str(out), home=home)
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr


def test_what_knobflow_cannot_express_is_reported(tmp_path: Path, home: Path) -> None:
    space = {
        "operation": "EXP_TRIAL_GENERATE_NEW",
        "search_space": {
            "experiment_name": "petclinic jvm",
            "experiment_id": "a1",
            "total_trials": 2000,
            "parallel_trials": 2,
            "value_type": "int",
            "hpo_algo_impl": "optuna_skopt",
            "objective_function": "transaction_response_time",
            "direction": "minimize",
            "function_variables": [{"name": "latency", "value_type": "double", "query": "rate(x[1m])"}],
            "slo_class": "response_time",
            "tunables": [
                {"name": "memoryRequest", "value_type": "DOUBLE", "lower_bound": 270, "upper_bound": 1024.5, "step": 1},
                {"name": "cpuRequest", "value_type": "double", "lower_bound": 1.0, "upper_bound": 3.0},
                {"name": "MaxInlineLevel", "value_type": "int", "lower_bound": "9", "upper_bound": 50, "step": 1},
                {"name": "gc", "value_type": "categorical", "choices": ["G1GC", "ZGC"], "query_url": "none"},
            ],
        },
    }
    src = tmp_path / "space.json"
    src.write_text(json.dumps(space))
    d = _workdir(tmp_path)
    out = d / "petclinic.yaml"
    proc = knobflow("kruize", "import", str(src), "-o", str(out), *ROLES, *BENCH, home=home)
    assert proc.returncode == 0, proc.stderr
    warnings = [line.removeprefix("warning: ") for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    expected = [
        "slo_class: not a Kruize search-space field",
        "experiment_name: 'petclinic jvm' is not a knobflow experiment name; using 'petclinic-jvm'",
        "total_trials: 2000 is above knobflow's limit; using 1024",
        "parallel_trials: 2: knobflow runs one trial at a time",
        "value_type: 'int': knobflow records objective values as floating-point numbers",
        "function_variables[0] (latency): not used by objective_function",
        "function_variables[0] (latency).query: no knobflow equivalent; dropped",
        "tunables[0] (memoryRequest).upper_bound: 1024.5 is not on the grid lower_bound + k*step; knobflow uses 1024.0",
        "tunables[1] (cpuRequest).step: missing (Kruize HPO needs it for double tunables)",
        "tunables[2] (MaxInlineLevel).value_type: 'int' is not a Kruize type",
        "tunables[2] (MaxInlineLevel).lower_bound: a number written as text ('9')",
        "tunables[3] (gc).query_url: not a Kruize tunable field and has no knobflow equivalent: dropped",
        "Kruize search spaces have no defaults",
    ]
    for text in expected:
        assert any(w.startswith(text) for w in warnings), text
    doc = yaml.safe_load(out.read_text())
    if missing_modules("gp"):  # Optuna's GP needs torch: knobflow's own GP tuner stands in, with a warning
        assert doc["tuner"] == {"name": "auto"}
        assert any(w.startswith("hpo_algo_impl: optuna_skopt maps to knobflow's gp tuner") for w in warnings)
    else:
        assert doc["tuner"] == {"name": "gp"}
    assert doc["name"] == "petclinic-jvm" and doc["budget"] == {"trials": 1024}
    assert doc["objective"] == {"metric": "transaction_response_time", "direction": "minimize"}
    assert {t["name"]: t["layer"] for t in doc["tunables"]} == {
        "memoryRequest": "container",
        "cpuRequest": "container",
        "MaxInlineLevel": "runtime",
        "gc": "runtime",
    }
    assert "# Not carried over, or guessed" in out.read_text()
    assert knobflow("validate", str(out), home=home).returncode == 0


def test_a_search_space_knobflow_cannot_read_is_refused_naming_each_field(tmp_path: Path, home: Path) -> None:
    space = {
        "experiment_name": "x",
        "total_trials": 0,
        "direction": "up",
        "objective_function": "a +* b",
        "tunables": [
            {"name": "a", "value_type": "integer", "lower_bound": 5, "upper_bound": 1},
            {"name": "b", "value_type": "string"},
            {"name": "c", "value_type": "categorical"},
            {"name": "d", "value_type": "integer", "upper_bound": 3, "step": 0.5, "lower_bound": 1},
        ],
    }
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(space))
    proc = knobflow("kruize", "import", str(src), "-o", str(tmp_path / "x.yaml"), home=home)
    assert proc.returncode == 2
    for text in (
        "total_trials: must be an integer >= 1, got 0",
        "direction: must be minimize or maximize, got 'up'",
        "objective_function: 'a +* b' is not a formula knobflow can evaluate",
        "tunables[0] (a).upper_bound: must be greater than lower_bound (1 <= 5)",
        "tunables[1] (b).value_type: must be double, integer or categorical, got 'string'",
        "tunables[2] (c).choices: a categorical tunable needs a non-empty list of choices",
        "tunables[3] (d).step: an integer tunable needs an integer, got 0.5",
        "cannot convert (7 problems)",
    ):
        assert f"{src}: {text}" in proc.stderr, text
    assert not (tmp_path / "x.yaml").exists()


def test_export_refuses_what_kruize_cannot_express(home: Path) -> None:
    f = DATA / "import" / "experiment.yaml"
    proc = knobflow("kruize", "export", str(f), home=home)
    assert proc.returncode == 2 and proc.stdout == ""
    for text in (
        "slos: Kruize has no SLOs",
        "constraints: Kruize has no constraints between tunables (young_mb <= heap_mb / 2)",
        "tunables[1] (region_mb).when: Kruize has no conditional tunables",
        "tunables[4] (ratio).step: a Kruize double needs a step",
        "Kruize cannot express this experiment (4 problems)",
    ):
        assert f"{f}: {text}" in proc.stderr, text
    proc = knobflow("kruize", "export", str(REPO / "experiments" / "sqlite-demo.yaml"), home=home)
    assert proc.returncode == 2 and "tunables[2] (cache_size_kib).log: Kruize has no log-scale tunables" in proc.stderr
    proc = knobflow("kruize", "export", str(DATA / "import" / "multi.yaml"), home=home)
    assert proc.returncode == 2 and "objectives: Kruize optimises one objective_function; this experiment has 2" in (
        proc.stderr
    )


@pytest.mark.slow
def test_a_converted_search_space_runs(tmp_path: Path, home: Path) -> None:
    out, _ = _convert(tmp_path, home)
    assert knobflow("validate", str(out), home=home).returncode == 0
    proc = knobflow("run", str(out), "--trials", "3", home=home, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    trials = store.trials(store.load("tfb-qrh"))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs["baseline"] is True
    assert all(t.values and t.values[0] > 0 for t in trials)
    assert set(trials[1].params) == {t["name"] for t in yaml.safe_load(out.read_text())["tunables"]}
