"""Real ansible-runner runs on localhost of knobflow's playbooks and roles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import DATA, REPO

LAYERS = {"stack": {"role": "sqlite_config"}}


def _vars(home: Path, settings: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "sqlite_config_path": str(home / "cfg" / "config.json"),
        "bench_command_argv": argv
        or [
            "{{ ansible_playbook_python }}",
            "-m",
            "knobflow.workloads.sqlite_workload",
            "--config",
            str(home / "cfg" / "config.json"),
            "--db",
            str(home / "cfg" / "x.db"),
            "--duration",
            "0.2",
        ],
        "knobflow": {
            "experiment": "t",
            "trial": 0,
            "home": str(home),
            "params": {"stack": settings},
            "layers": LAYERS,
            "benchmark": {"role": "bench_command", "warmup": 0, "repeats": 2, "aggregate": "median", "timeout": 30},
        },
    }


def test_trial_playbook_applies_benchmarks_and_reports_metrics(tmp_path: Path) -> None:
    r = bridge.run_playbook(
        "trial.yml", extravars=_vars(tmp_path, {"journal_mode": "wal", "batch_size": 50}), log_path=tmp_path / "log.txt"
    )
    assert r.ok, r.reason
    metrics = r.stats["knobflow_metrics"]
    assert metrics["throughput_ops"] > 0
    assert len(r.stats["knobflow_benchmark"]["runs"]) == 2
    assert json.loads((tmp_path / "cfg" / "config.json").read_text()) == {
        "batch_size": 50,
        "pragmas": {"journal_mode": "wal"},
    }
    assert "PLAY RECAP" in (tmp_path / "log.txt").read_text()


def _apply(tmp_path: Path, settings: dict[str, Any], playbook: str = "apply.yml") -> bridge.RunResult:
    return bridge.run_playbook(playbook, extravars=_vars(tmp_path, settings))


def test_sqlite_config_is_idempotent_and_reverts_exactly(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "config.json"
    cfg.parent.mkdir(parents=True)
    original = '{"pragmas": {"journal_mode": "delete"}, "batch_size": 1, "note": "hand-written"}\n'
    cfg.write_text(original)
    first = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, {"synchronous": "off"}))
    assert first.ok, first.reason
    assert json.loads(cfg.read_text())["pragmas"] == {"synchronous": "off"}
    # A second, different apply keeps the very first original for revert.
    assert bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, {"synchronous": "normal"})).ok
    assert bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, {})).ok
    assert cfg.read_text() == original
    assert not list(cfg.parent.glob("*.knobflow-*"))


def test_revert_removes_a_file_that_was_not_there(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "config.json"
    assert bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, {"batch_size": 9})).ok
    assert cfg.exists()
    assert bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, {})).ok
    assert not cfg.exists()


def test_sqlite_config_module_check_mode_and_second_run(tmp_path: Path) -> None:
    """Run the module's role directly with ansible-playbook's --check and count changes."""
    import subprocess
    import sys

    pb = tmp_path / "pb.yml"
    cfg = tmp_path / "c.json"
    pb.write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n    - role: sqlite_config\n"
        f"      sqlite_config_path: {cfg}\n      sqlite_config_settings: {{journal_mode: wal}}\n"
    )
    bin_dir = Path(sys.executable).parent
    env = {"ANSIBLE_ROLES_PATH": str(REPO / "roles"), "PATH": f"{bin_dir}:/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1"}

    def play(*extra: str) -> str:
        out = subprocess.run(
            [str(bin_dir / "ansible-playbook"), "-i", str(REPO / "inventories" / "local"), str(pb), *extra],
            capture_output=True,
            text=True,
            env=env,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    assert "changed=1" in play("--check", "--diff")
    assert not cfg.exists(), "check mode must not write"
    assert "changed=1" in play()
    assert "changed=0" in play(), "a second run must report no change"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"journal_mode": "bogus"}, "journal_mode: must be one of"),
        ({"cache_size": 10}, "unknown setting 'cache_size'"),
        ({"batch_size": "many"}, "batch_size: must be an integer"),
    ],
)
def test_invalid_settings_fail_with_the_setting_named(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    r = bridge.run_playbook("trial.yml", extravars=_vars(tmp_path, settings))
    assert not r.ok
    assert r.reason is not None and message in r.reason
    assert "Apply SQLite workload settings" in r.reason


def test_failing_benchmark_reports_task_and_message_and_reverts(tmp_path: Path) -> None:
    bench = str(DATA / "experiments" / "bench.py")
    argv = ["{{ ansible_playbook_python }}", bench, "crash", "1"]
    r = bridge.run_playbook("trial.yml", extravars=_vars(tmp_path, {"batch_size": 7}, argv))
    assert not r.ok
    assert r.reason is not None
    assert "Run the benchmark command" in r.reason
    assert "exited with status 3" in r.reason and "boom" in r.reason
    assert not (tmp_path / "cfg" / "config.json").exists(), "the rescue must revert the layer"


def test_benchmark_without_metrics(tmp_path: Path) -> None:
    argv = ["{{ ansible_playbook_python }}", str(DATA / "experiments" / "bench.py"), "garbage", "1"]
    r = bridge.run_playbook("trial.yml", extravars=_vars(tmp_path, {}, argv))
    assert not r.ok
    assert r.reason is not None and "printed no metrics" in r.reason and "not a metric" in r.reason


def test_regex_metrics_and_timeout(tmp_path: Path) -> None:
    v = _vars(tmp_path, {}, ["/bin/echo", "latency: 12.5 ms, rate=400/s"])
    v["bench_command_regex"] = r"latency: (?P<latency_ms>[\d.]+) ms, rate=(?P<rate>\d+)"
    r = bridge.run_playbook("trial.yml", extravars=v)
    assert r.ok, r.reason
    assert r.stats["knobflow_metrics"]["latency_ms"] == 12.5 and r.stats["knobflow_metrics"]["rate"] == 400
    slow = _vars(tmp_path, {}, ["/bin/sleep", "5"])
    slow["knobflow"]["benchmark"]["timeout"] = 1
    r = bridge.run_playbook("trial.yml", extravars=slow)
    assert not r.ok and r.reason is not None and "timed out after 1 s" in r.reason


def _sleepers(tag: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and tag in p.info["cmdline"]]


def test_runner_timeout_and_cancel(tmp_path: Path) -> None:
    import time

    v = _vars(tmp_path, {}, ["/bin/sleep", "31.25"])
    r = bridge.run_playbook("trial.yml", extravars=v, timeout=3)
    assert r.status == "timeout" and r.reason is not None and "timed out after 3 s" in r.reason
    deadline = time.monotonic() + 10
    while _sleepers("31.25") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sleepers("31.25"), "a killed trial must not leave its benchmark running"
    r = bridge.run_playbook("trial.yml", extravars=v, cancel=lambda: True)
    assert r.status == "canceled"


def test_benchmark_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    argv = ["/bin/sh", "-c", "sleep 32.5 & sleep 32.5; wait"]
    v = _vars(tmp_path, {}, argv)
    v["knobflow"]["benchmark"]["timeout"] = 1
    r = bridge.run_playbook("trial.yml", extravars=v)
    assert not r.ok and "timed out after 1 s" in (r.reason or "")
    assert not _sleepers("32.5")


def test_bench_command_errors_name_the_problem(tmp_path: Path) -> None:
    v = _vars(tmp_path, {}, ["/bin/echo", "{}"])
    v["bench_command_chdir"] = str(tmp_path / "nowhere")
    r = bridge.run_playbook("trial.yml", extravars=v)
    assert not r.ok and "is not a directory" in (r.reason or "")
    script = tmp_path / "not-executable.sh"
    script.write_text("echo hi\n")
    r = bridge.run_playbook("trial.yml", extravars=_vars(tmp_path, {}, [str(script)]))
    assert not r.ok and "cannot start the benchmark command" in (r.reason or "") and "ermission" in (r.reason or "")


def test_revert_restores_a_file_that_was_not_json(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg" / "config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("# hand-written, not JSON\n")
    assert bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, {"batch_size": 3})).ok
    r = bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, {}))
    assert r.ok, r.reason
    assert cfg.read_text() == "# hand-written, not JSON\n"


def test_a_caller_stopped_by_sigterm_leaves_no_run_behind(tmp_path: Path) -> None:
    """Airflow turns SIGTERM into an exception in the task; the playbook run must stop with it."""
    import signal
    import subprocess
    import sys
    import time

    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(_vars(tmp_path, {}, ["/bin/sleep", "33.75"])))
    script = (
        "import json, signal, sys\n"
        f"sys.path.insert(0, {str(REPO / 'src')!r})\n"
        "from knobflow.ansible import bridge\n"
        "class Terminated(BaseException): pass  # as Airflow's AirflowTaskTerminated\n"
        "def stop(*a):\n    raise Terminated('terminated')\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"bridge.run_playbook('trial.yml', extravars=json.load(open({str(vars_file)!r})))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _sleepers("33.75") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sleepers("33.75"), "the benchmark should have started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert "terminated" in err
    deadline = time.monotonic() + 10
    while _sleepers("33.75") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sleepers("33.75")
