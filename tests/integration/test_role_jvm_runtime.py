"""jvm_runtime and jvm_workload, run for real: the options reach a real JVM (OpenJDK on PATH),
the Java workload compiles through the set-up role and reports the collector it ran with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import REPO, role_module

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None or shutil.which("javac") is None, reason="needs a JDK on PATH"),
]

MARKER = Path("/tmp/knobflow-pwned")
LAYERS = {"runtime": {"role": "jvm_runtime"}}


def _vars(tmp: Path, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "knobflow": {
            "experiment": "t",
            "trial": 0,
            "home": str(tmp / "home"),
            "params": {"runtime": settings},
            "layers": LAYERS,
        },
        "jvm_runtime_path": str(tmp / "jvm" / "jvm.options"),
        "jvm_runtime_cache_dir": str(tmp / "cache"),
        **extra,
    }


def _apply(tmp: Path, settings: dict[str, Any], check: bool = False, **extra: Any) -> bridge.RunResult:
    return bridge.run_playbook("apply.yml", extravars=_vars(tmp, settings, **extra), check=check, diff=check)


def _revert(tmp: Path, **extra: Any) -> bridge.RunResult:
    return bridge.run_playbook("revert.yml", extravars=_vars(tmp, {}, **extra))


def _flags(argv: list[str], env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """What a real JVM started this way reports: {flag: (value, origin)} from -XX:+PrintFlagsFinal."""
    base = {k: v for k, v in os.environ.items() if k not in ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")}
    out = subprocess.run(
        [*argv, "-XX:+PrintFlagsFinal", "-version"],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    flags = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "=":
            origin = line.rsplit("{", 1)[-1].rstrip("} ")
            flags[parts[1]] = (parts[3] if not parts[3].startswith("{") else "", origin)
    return flags


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a folder with its bytes and mode."""
    return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GcBench compiled by the jvm_workload set-up role (setup.yml), as an experiment does."""
    home = tmp_path_factory.mktemp("workload") / "home"
    ev = {"knobflow": {"home": str(home), "setup": [{"role": "jvm_workload", "tasks_from": "main"}]}}
    r = bridge.run_playbook("setup.yml", extravars=ev)
    assert r.ok, r.reason
    assert any("Compile" in c for c in r.changed)
    again = bridge.run_playbook("setup.yml", extravars=ev)
    assert again.ok and again.changed == [], again.changed
    return home / "targets" / "jvm-gc" / "classes"


def _gcbench(classes: Path, jvm_args: list[str], env: dict[str, str] | None = None, *args: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k not in ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")}
    out = subprocess.run(
        ["java", *jvm_args, "-cp", str(classes), "GcBench", "--duration", "0.5", "--warmup", "0", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


SETTINGS = {
    "gc": "Parallel",
    "xmx_mb": 1024,
    "xms_mb": 256,
    "xx_MaxTenuringThreshold": 5,
    "xx_UseAdaptiveSizePolicy": False,
    "xx_G1NewSizePercent": 10,  # experimental: the role adds -XX:+UnlockExperimentalVMOptions
    "xx_TieredStopAtLevel": 1,
}
EXPECTED_FILE = (
    "# Managed by knobflow (jvm_runtime): restored to the original by its revert.\n"
    "-XX:+UnlockExperimentalVMOptions\n-XX:+UseParallelGC\n-Xmx1024m\n-Xms256m\n"
    "-XX:G1NewSizePercent=10\n-XX:MaxTenuringThreshold=5\n-XX:TieredStopAtLevel=1\n-XX:-UseAdaptiveSizePolicy\n"
)


def test_jvm_options_file_apply_verify_idempotent_check_and_exact_revert(tmp_path: Path, classes: Path) -> None:
    folder = tmp_path / "jvm"
    folder.mkdir()
    path = folder / "jvm.options"
    path.write_text("# hand-written\n-Xss1m\n")
    path.chmod(0o640)
    before = _state(folder)

    first = _apply(tmp_path, SETTINGS)
    assert first.ok, first.reason
    assert first.changed == ["localhost: Apply JVM options"]
    assert path.read_text() == EXPECTED_FILE
    # The real JVM, started with the file as an argument file, took every option from it.
    flags = _flags(["java", f"@{path}"])
    assert flags["UseParallelGC"] == ("true", "command line")
    assert flags["MaxHeapSize"] == (str(1024 * 1024 * 1024), "command line")
    assert flags["InitialHeapSize"] == (str(256 * 1024 * 1024), "command line")
    assert flags["MaxTenuringThreshold"] == ("5", "command line")
    assert flags["UseAdaptiveSizePolicy"] == ("false", "command line")
    assert flags["TieredStopAtLevel"] == ("1", "command line")
    assert flags["G1NewSizePercent"] == ("10", "command line")
    # ... and so does the workload: it reports the Parallel collector's beans and the heap.
    seen = _gcbench(classes, [f"@{path}"])
    assert seen["gc"] == "PS MarkSweep,PS Scavenge" or set(seen["gc"].split(",")) == {"PS MarkSweep", "PS Scavenge"}
    assert 800 <= seen["heap_max_mb"] <= 1024
    assert "-XX:+UseParallelGC" in seen["jvm_args"]

    assert _apply(tmp_path, SETTINGS).changed == [], "a second apply must change nothing"
    other = {"gc": "Serial", "xmx_mb": 200}
    check = _apply(tmp_path, other, check=True)
    assert check.ok and check.changed == ["localhost: Apply JVM options"]
    assert path.read_text() == EXPECTED_FILE, "check mode must not write"
    assert _apply(tmp_path, other).ok  # a second, different apply keeps the very first original

    check_revert = bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, {}), check=True)
    assert check_revert.ok and check_revert.changed and "Serial" in path.read_text()
    r = _revert(tmp_path)
    assert r.ok and r.changed == ["localhost: Revert the JVM options file to the original"]
    assert _state(folder) == before, "the revert must restore the file byte for byte, mode included"
    assert _revert(tmp_path).changed == [], "reverting twice changes nothing"


@pytest.mark.parametrize("var", ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS"])
def test_env_file_is_picked_up_by_the_jvm_and_reverted_to_no_file(tmp_path: Path, var: str, classes: Path) -> None:
    path = tmp_path / "jvm" / "java.env"
    extra = {"jvm_runtime_output": "env", "jvm_runtime_path": str(path), "jvm_runtime_env_var": var}
    settings = {"gc": "Serial", "xmx_mb": 768, "xx_AlwaysPreTouch": False, "xx_ParallelGCThreads": 1}
    r = _apply(tmp_path, settings, **extra)
    assert r.ok, r.reason
    text = path.read_text()
    assert f"{var}='-XX:+UseSerialGC -Xmx768m -XX:-AlwaysPreTouch -XX:ParallelGCThreads=1'\n" in text
    # The file's consumer sources it in a shell and exports the variable; the JVM then says it picked it up.
    script = 'set -a; . "$1"; exec java -cp "$2" GcBench --duration 0.5 --warmup 0'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(path), str(classes)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Picked up " + var in out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(seen["gc"].split(",")) == {"Copy", "MarkSweepCompact"}
    assert 600 <= seen["heap_max_mb"] <= 768
    assert _apply(tmp_path, settings, **extra).changed == []
    assert _revert(tmp_path, **extra).ok
    assert not path.exists() and not path.parent.exists(), "no file before: neither it nor its folder after the revert"


def test_json_output_feeds_bench_command_environment_in_a_trial(tmp_path: Path, classes: Path) -> None:
    """The JSON output read with lookup('file') | from_json as bench_command_environment: a whole trial."""
    path = tmp_path / "jvm" / "java-env.json"
    v = _vars(
        tmp_path,
        {"gc": "Serial", "xmx_mb": 768, "xms_mb": 768},
        jvm_runtime_output="json",
        jvm_runtime_path=str(path),
        bench_command_environment="{{ lookup('file', jvm_runtime_path) | from_json }}",
        bench_command_argv=["java", "-cp", str(classes), "GcBench", "--duration", "0.5", "--warmup", "0"],
    )
    v["knobflow"]["benchmark"] = {"role": "bench_command", "warmup": 0, "repeats": 1, "aggregate": "median"}
    r = bridge.run_playbook("trial.yml", extravars=v)
    assert r.ok, r.reason
    assert json.loads(path.read_text()) == {"JAVA_TOOL_OPTIONS": "-XX:+UseSerialGC -Xmx768m -Xms768m"}
    metrics = r.stats["knobflow_metrics"]
    assert metrics["throughput_ops"] > 0 and metrics["p99_ms"] >= metrics["p50_ms"]
    assert 600 <= metrics["heap_max_mb"] <= 768  # the benchmark JVM ran with -Xmx768m
    assert _revert(tmp_path, jvm_runtime_output="json", jvm_runtime_path=str(path)).ok
    assert not path.exists()


def test_the_experiment_file_wiring_runs_a_trial(tmp_path: Path) -> None:
    """experiments/jvm-gc.yaml's own variables (set-up, layer, benchmark argv `java @file ...`),
    shortened to a 1-second run: set-up, validation and one trial with a non-default collector."""
    from knobflow import engine, spec

    exp = spec.load(REPO / "experiments" / "jvm-gc.yaml")
    ev = engine._extravars(exp, 1, {"gc": "Parallel", "xmx_mb": 1024, "xms_mb": 512, "xx_NewRatio": 1})
    ev["knobflow"]["home"] = str(tmp_path / "home")
    ev["jvm_runtime_cache_dir"] = str(tmp_path / "cache")
    argv = list(ev["bench_command_argv"])
    argv[argv.index("--duration") + 1] = "1"
    argv[argv.index("--warmup") + 1] = "0"
    ev["bench_command_argv"] = argv
    ev["knobflow"]["benchmark"].update(warmup=0, repeats=1)
    ev["knobflow"]["setup"] = [{"role": s.role, "tasks_from": s.tasks_from} for s in exp.model.setup]
    assert bridge.run_playbook("setup.yml", extravars=ev).ok
    ev["knobflow"]["validate"] = ["runtime"]
    ev["knobflow"]["tunables"] = engine._tunables_by_layer(exp)
    checked = bridge.run_playbook("validate.yml", extravars=ev)
    assert checked.ok, checked.reason
    r = bridge.run_playbook("trial.yml", extravars=ev)
    assert r.ok, r.reason
    assert 800 <= r.stats["knobflow_metrics"]["heap_max_mb"] <= 1024
    options = (tmp_path / "home" / "targets" / "jvm-gc" / "jvm.options").read_text().splitlines()
    assert "-XX:+UseParallelGC" in options and "-XX:NewRatio=1" in options


REFUSED_TUNABLES = [
    (
        {"name": "xx_NoSuchFlag", "type": "bool", "default": False},
        "tunable xx_NoSuchFlag (value True): this JVM has no flag -XX:NoSuchFlag",
    ),
    (
        {"name": "xx_maxTenuringThreshold", "type": "int", "low": 1, "high": 15, "default": 15},
        "-XX:maxTenuringThreshold (did you mean MaxTenuringThreshold? flag names are case-sensitive)",
    ),
    (
        {"name": "xx_UseNUMA", "type": "int", "low": 0, "high": 1, "default": 0},
        "tunable xx_UseNUMA: -XX:UseNUMA is a bool flag, but the tunable is int (use type: bool)",
    ),
    (
        {"name": "xx_MaxGCPauseMillis", "type": "categorical", "choices": [100, "fast"], "default": 100},
        "tunable xx_MaxGCPauseMillis (choice 'fast'): -XX:MaxGCPauseMillis (uintx) must be an integer, got 'fast'",
    ),
    (
        {"name": "gc", "type": "categorical", "choices": ["G1", "Parallel", "CMS"], "default": "G1"},
        "tunable gc (choice 'CMS'): ConcMarkSweep: this JVM has no -XX:+UseConcMarkSweepGC",
    ),
    ({"name": "heap_mb", "type": "int", "low": 16, "high": 2048, "default": 1024}, "unknown tunable 'heap_mb'"),
    # Well typed, but out of what the JVM accepts: found by starting it.
    (
        {"name": "xx_TieredStopAtLevel", "type": "int", "low": 1, "high": 5, "default": 4},
        "tunable xx_TieredStopAtLevel (high 5): the JVM refuses -XX:TieredStopAtLevel=5",
    ),
    (
        {"name": "xss_kb", "type": "int", "low": 16, "high": 2048, "default": 1024},
        "tunable xss_kb (low 16): the JVM refuses -Xss16k",
    ),
]


def test_validate_names_every_tunable_the_jvm_refuses(tmp_path: Path) -> None:
    ev = _vars(tmp_path, {})
    good = [{"name": "xx_MaxTenuringThreshold", "type": "int", "low": 1, "high": 15, "default": 15}]
    ev["knobflow"].update(validate=["runtime"], tunables={"runtime": good + [t for t, _ in REFUSED_TUNABLES]})
    r = bridge.run_playbook("validate.yml", extravars=ev)
    assert not r.ok and r.reason is not None
    for _, message in REFUSED_TUNABLES:
        assert message in r.reason, (message, r.reason)
    assert "tunable xx_MaxTenuringThreshold" not in r.reason
    assert "tunable xx_TieredStopAtLevel (low" not in r.reason and "(default 4)" not in r.reason
    assert not (tmp_path / "jvm").exists(), "validation writes nothing"


def test_validate_accepts_the_experiment_tunables(tmp_path: Path) -> None:
    from knobflow import engine, spec

    exp = spec.load(REPO / "experiments" / "jvm-gc.yaml")
    ev = _vars(tmp_path, {})
    ev["knobflow"].update(validate=["runtime"], tunables=engine._tunables_by_layer(exp))
    r = bridge.run_playbook("validate.yml", extravars=ev)
    assert r.ok, r.reason
    assert list((tmp_path / "cache").glob("*.json")), "the JVM's flag list is cached"


@pytest.mark.parametrize(
    ("settings", "messages"),
    [
        (
            {"xx_UseNUMA": 1, "xx_MaxGCPauseMillis": 2.5, "xx_NoSuchFlag": True, "gc": "gencon", "xmx_mb": "lots"},
            [
                "xx_UseNUMA: -XX:UseNUMA is a bool flag: give true or false, got 1",
                "xx_MaxGCPauseMillis: -XX:MaxGCPauseMillis (uintx) must be an integer, got 2.5",
                "xx_NoSuchFlag: this JVM has no flag -XX:NoSuchFlag",
                "gc: 'gencon' is not a HotSpot collector",
                "xmx_mb must be an integer, got 'lots'",
            ],
        ),
        (
            {"gc": "Parallel", "xx_UseSerialGC": True, "xmx_mb": 256, "xx_MaxHeapSize": 10**9, "xx_NewRatio": -1},
            [
                "xx_UseSerialGC and gc both choose the collector",
                "xx_MaxHeapSize and xmx_mb both set MaxHeapSize",
                "xx_NewRatio: -XX:NewRatio (uintx) must be between 0 and",
            ],
        ),
        ({"xms_mb": 512, "xmx_mb": 256}, ["xms_mb (512) is larger than xmx_mb (256)"]),
        ({"xx_CICompilerCount": 1}, ["xx_CICompilerCount: the JVM refuses -XX:CICompilerCount=1"]),
    ],
)
def test_apply_refuses_bad_values_naming_the_tunable(
    tmp_path: Path, settings: dict[str, Any], messages: list[str]
) -> None:
    r = _apply(tmp_path, settings)
    assert not r.ok and r.reason is not None
    for message in messages:
        assert message in r.reason, (message, r.reason)
    assert not (tmp_path / "jvm").exists()


EVIL = [
    "1; touch /tmp/knobflow-pwned #",
    "$(touch /tmp/knobflow-pwned)",
    "`touch /tmp/knobflow-pwned`",
    "x\n-XX:OnError=touch /tmp/knobflow-pwned",
    "a' -XX:OnError=touch\\ /tmp/knobflow-pwned '",
]


@pytest.mark.parametrize("output", ["jvm_options", "env"])
def test_shell_metacharacters_never_reach_a_shell(tmp_path: Path, output: str) -> None:
    MARKER.unlink(missing_ok=True)
    settings: dict[str, Any] = {
        "gc": EVIL[1],
        "xmx_mb": EVIL[2],
        "xx_OnError": EVIL[0],
        "xx_OnOutOfMemoryError": EVIL[4],
    }
    settings.update({f"xx_ErrorFile{'_' * i}": evil for i, evil in enumerate(EVIL)})
    settings["xx_ErrorFile"] = EVIL[3]
    settings["xx_" + EVIL[0]] = True
    r = _apply(tmp_path, settings, jvm_runtime_output=output)
    assert not r.ok and r.reason is not None and "invalid JVM settings" in r.reason
    for name in ("gc", "xmx_mb", "xx_OnError", "xx_OnOutOfMemoryError", "xx_ErrorFile"):
        assert f"{name}:" in r.reason or f"{name} " in r.reason, (name, r.reason)
    assert "is not a tunable name" in r.reason
    r = _apply(tmp_path, {}, jvm_runtime_output=output, jvm_runtime_extra_options=EVIL)
    assert not r.ok and "jvm_runtime_extra_options" in (r.reason or "")
    ev = _vars(tmp_path, {})
    choices = ["a", *EVIL]
    ev["knobflow"].update(
        validate=["runtime"],
        tunables={"runtime": [{"name": "xx_ErrorFile", "type": "categorical", "choices": choices, "default": "a"}]},
    )
    r = bridge.run_playbook("validate.yml", extravars=ev)
    assert not r.ok and "has characters the role does not write" in (r.reason or "")
    assert not (tmp_path / "jvm").exists()
    assert not MARKER.exists()


def test_workload_reports_the_collector_and_fails_on_a_heap_too_small(classes: Path) -> None:
    assert set(_gcbench(classes, ["-XX:+UseSerialGC"])["gc"].split(",")) == {"Copy", "MarkSweepCompact"}
    g1 = _gcbench(classes, ["-XX:+UseG1GC"])
    assert set(g1["gc"].split(",")) == {"G1 Young Generation", "G1 Old Generation"}
    for key in ("throughput_ops", "p50_ms", "p99_ms", "p999_ms", "max_ms", "gc_count", "gc_time_ms", "heap_max_mb"):
        assert isinstance(g1[key], (int, float)), key
    assert g1["p50_ms"] <= g1["p99_ms"] <= g1["max_ms"]
    base = {k: v for k, v in os.environ.items() if k != "JAVA_TOOL_OPTIONS"}
    small = subprocess.run(
        ["java", "-Xmx48m", "-cp", str(classes), "GcBench", "--duration", "0.5", "--warmup", "0"],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert small.returncode == 3 and "out of memory: the heap is too small" in small.stderr, small.stderr


def test_jvm_workload_recompiles_only_when_the_source_changes(tmp_path: Path) -> None:
    src = tmp_path / "GcBench.java"
    shutil.copy(REPO / "src" / "knobflow" / "workloads" / "java" / "GcBench.java", src)
    ev = {
        "knobflow": {"home": str(tmp_path / "home"), "setup": [{"role": "jvm_workload"}]},
        "jvm_workload_sources": [str(src)],
    }
    classes = tmp_path / "home" / "targets" / "jvm-gc" / "classes"
    check = bridge.run_playbook("setup.yml", extravars=ev, check=True)
    assert check.ok and check.changed and not classes.exists(), "check mode compiles nothing"
    assert bridge.run_playbook("setup.yml", extravars=ev).ok
    stamp = (classes / "GcBench.class").stat().st_mtime_ns
    assert bridge.run_playbook("setup.yml", extravars=ev).changed == []
    src.write_text(src.read_text() + "\n// changed\n")
    again = bridge.run_playbook("setup.yml", extravars=ev)
    assert again.ok and any("Compile" in c for c in again.changed)
    assert (classes / "GcBench.class").stat().st_mtime_ns != stamp
    src.write_text(src.read_text() + "\nthis is not java\n")
    broken = bridge.run_playbook("setup.yml", extravars=ev)
    assert not broken.ok and "javac exited" in (broken.reason or "")
    assert (classes / "GcBench.class").exists(), "a failed compilation keeps the previous classes"
    ev["knobflow"]["teardown"] = [{"role": "jvm_workload", "tasks_from": "clean"}]
    assert bridge.run_playbook("teardown.yml", extravars=ev).ok
    assert not classes.exists()


def test_without_a_jvm_values_are_checked_by_their_own_type(tmp_path: Path) -> None:
    """jvm_runtime_java names no binary on PATH: no flag list, no JVM started, the value's type decides."""
    extra = {"jvm_runtime_java": "knobflow-no-such-java"}
    r = _apply(tmp_path, {"gc": "Z", "xmx_mb": 512, "xx_AnyFlag": True, "xx_SomeNumber": 3}, **extra)
    assert r.ok, r.reason
    lines = (tmp_path / "jvm" / "jvm.options").read_text().splitlines()[1:]
    assert lines == ["-XX:+UseZGC", "-Xmx512m", "-XX:+AnyFlag", "-XX:SomeNumber=3"]
    bad = _apply(tmp_path, {"xx_AnyFlag": "on\n-XX:OnError=x", "gc": "Concurrent"}, **extra)
    assert not bad.ok and "xx_AnyFlag" in (bad.reason or "") and "gc: 'Concurrent'" in (bad.reason or "")
    missing = _apply(tmp_path, {}, jvm_runtime_java=str(tmp_path / "bin" / "java"))
    assert not missing.ok and "is not an executable file" in (missing.reason or "")
    assert _revert(tmp_path).ok and not (tmp_path / "jvm" / "jvm.options").exists()


def test_openj9_mapping_without_a_jvm() -> None:
    """No OpenJ9 here: the mapping alone (the module's build function), as the role writes it."""
    mod = role_module("jvm_runtime", "jvm_runtime")
    unlocks, options, _, _, errors = mod.build(
        {
            "gc": "balanced",
            "xmx_mb": 1024,
            "gc_threads": 2,
            "reserved_code_cache_mb": 64,
            "xx_UseContainerSupport": True,
        },
        "openj9",
        None,
    )
    assert errors == [] and unlocks == []
    assert options == [
        "-Xgcpolicy:balanced",
        "-Xmx1024m",
        "-Xcodecachetotal64m",
        "-Xgcthreads2",
        "-XX:+UseContainerSupport",
    ]
    assert "is not an OpenJ9 -Xgcpolicy" in mod.build({"gc": "G1"}, "openj9", None)[4][0]
    assert "no OpenJ9 equivalent" in mod.build({"max_metaspace_mb": 64}, "openj9", None)[4][0]
