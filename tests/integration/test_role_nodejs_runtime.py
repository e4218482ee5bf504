"""nodejs_runtime, run for real: a real node started with the written environment sees the values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("node") is None, reason="needs node on PATH")]

MARKER = Path("/tmp/knobflow-pwned")
LAYERS = {"runtime": {"role": "nodejs_runtime"}}
PROBE = (
    "const v8=require('v8');console.log(JSON.stringify({limit:v8.getHeapStatistics().heap_size_limit,"
    "uv:process.env.UV_THREADPOOL_SIZE,gc:typeof globalThis.gc}))"
)


def _vars(tmp: Path, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "knobflow": {
            "experiment": "t",
            "trial": 0,
            "home": str(tmp / "home"),
            "params": {"runtime": settings},
            "layers": LAYERS,
        },
        "nodejs_runtime_path": str(tmp / "node" / "node.env"),
        **extra,
    }


def _apply(tmp: Path, settings: dict[str, Any], check: bool = False, **extra: Any) -> bridge.RunResult:
    return bridge.run_playbook("apply.yml", extravars=_vars(tmp, settings, **extra), check=check, diff=check)


def _revert(tmp: Path, **extra: Any) -> bridge.RunResult:
    return bridge.run_playbook("revert.yml", extravars=_vars(tmp, {}, **extra))


def _node_with_env_file(path: Path) -> dict[str, Any]:
    """Start node the way a service script would: source the file with the variables exported."""
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "UV_THREADPOOL_SIZE")}
    out = subprocess.run(
        ["/bin/sh", "-c", 'set -a; . "$1"; exec node -e "$2"', "sh", str(path), PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen: dict[str, Any] = json.loads(out.stdout)
    return seen


def _limit_without_settings() -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "UV_THREADPOOL_SIZE")}
    out = subprocess.run(["node", "-e", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    limit: int = json.loads(out.stdout)["limit"]
    return limit


SETTINGS = {"max_old_space_size_mb": 300, "max_semi_space_size_mb": 8, "uv_threadpool_size": 7, "node_expose_gc": True}
EXPECTED = (
    "# Managed by knobflow (nodejs_runtime): restored to the original by its revert.\n"
    "NODE_OPTIONS='--max-old-space-size=300 --max-semi-space-size=8 --expose-gc'\n"
    "UV_THREADPOOL_SIZE='7'\n"
)


def test_env_file_apply_real_node_idempotent_check_and_exact_revert(tmp_path: Path) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    path = folder / "node.env"
    original = b"# written by hand\nNODE_ENV=production\n"
    path.write_bytes(original)
    path.chmod(0o600)

    r = _apply(tmp_path, SETTINGS)
    assert r.ok, r.reason
    assert r.changed == ["localhost: Apply Node.js runtime settings"]
    assert path.read_text() == EXPECTED
    seen = _node_with_env_file(path)
    assert seen["uv"] == "7"
    assert seen["gc"] == "function", "--expose-gc reached node"
    # heap_size_limit = old space + young generation: 300 MiB + a few semi-spaces, far below the default.
    assert 300 * 2**20 <= seen["limit"] <= 340 * 2**20
    assert seen["limit"] < _limit_without_settings()

    assert _apply(tmp_path, SETTINGS).changed == [], "a second apply must change nothing"
    check = _apply(tmp_path, {"uv_threadpool_size": 2}, check=True)
    assert check.ok and check.changed and path.read_text() == EXPECTED, "check mode must not write"
    assert _apply(tmp_path, {"uv_threadpool_size": 2}).ok
    assert _node_with_env_file(path)["uv"] == "2"

    r = _revert(tmp_path)
    assert r.ok and r.changed
    assert path.read_bytes() == original and (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["node.env"]
    assert _revert(tmp_path).changed == []


def test_json_output_and_revert_to_no_file(tmp_path: Path) -> None:
    path = tmp_path / "node" / "node-env.json"
    extra = {"nodejs_runtime_output": "json", "nodejs_runtime_path": str(path)}
    assert _apply(tmp_path, {"max_old_space_size_mb": 128, "v8_stack_trace_limit": 30}, **extra).ok
    env = json.loads(path.read_text())
    assert env == {"NODE_OPTIONS": "--max-old-space-size=128 --stack-trace-limit=30"}
    base = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
    out = subprocess.run(
        ["node", "-e", "console.log(Error.stackTraceLimit, require('v8').getHeapStatistics().heap_size_limit)"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    limit_trace, limit_heap = out.stdout.split()
    assert limit_trace == "30" and 128 * 2**20 <= int(limit_heap) <= 180 * 2**20
    assert _revert(tmp_path, **extra).ok
    assert not path.exists() and not path.parent.exists(), "no file before: neither it nor its folder after the revert"


BAD = {
    "v8_stack_size": (2000, "v8_stack_size: node refuses --stack-size=2000"),  # not allowed in NODE_OPTIONS
    "v8_jitless": (1, "v8_jitless: --jitless is a bool flag: give true or false, got 1"),
    "v8_no_such_flag": (1, "v8_no_such_flag: this node's V8 has no flag --no-such-flag"),
    "node_no_such_option": (True, "node_no_such_option: node has no option --no-such-option"),
    "max_old_space_size_mb": ("big", "max_old_space_size_mb must be an integer, got 'big'"),
    "uv_threadpool_size": (5000, "uv_threadpool_size must be between 1 and 1024"),
    "heap_mb": (5, "unknown tunable 'heap_mb'"),
}


def test_apply_refuses_bad_values_naming_the_tunable(tmp_path: Path) -> None:
    # The static problems are all reported at once; the one node itself refuses, alone.
    r = _apply(tmp_path, {name: value for name, (value, _) in BAD.items() if name != "v8_stack_size"})
    assert not r.ok and r.reason is not None
    for name, (_, message) in BAD.items():
        if name != "v8_stack_size":
            assert message in r.reason, (message, r.reason)
    r = _apply(tmp_path, {"v8_stack_size": 2000, "uv_threadpool_size": 4})
    assert not r.ok and r.reason is not None and BAD["v8_stack_size"][1] in r.reason, r.reason
    assert "not allowed in NODE_OPTIONS" in r.reason
    assert not (tmp_path / "node").exists()


def test_validate_names_the_tunable_node_refuses(tmp_path: Path) -> None:
    good = [
        {"name": "max_old_space_size_mb", "type": "int", "low": 64, "high": 4096, "default": 2048},
        {"name": "uv_threadpool_size", "type": "int", "low": 1, "high": 64, "default": 4},
        {"name": "node_expose_gc", "type": "bool", "default": False},
    ]
    ev = _vars(tmp_path, {})
    ev["knobflow"].update(validate=["runtime"], tunables={"runtime": good})
    r = bridge.run_playbook("validate.yml", extravars=ev)
    assert r.ok, r.reason
    bad = [
        *good,
        {"name": "v8_stack_size", "type": "int", "low": 500, "high": 4000, "default": 984},
        {"name": "v8_jitless", "type": "int", "low": 0, "high": 1, "default": 0},
    ]
    ev["knobflow"]["tunables"] = {"runtime": bad}
    r = bridge.run_playbook("validate.yml", extravars=ev)
    assert not r.ok and r.reason is not None
    assert "tunable v8_jitless (low 0): --jitless is a bool flag" in r.reason
    # The default of v8_stack_size already breaks node: reported with the tunable named.
    assert "the defaults together: v8_stack_size: node refuses --stack-size=984" in r.reason
    assert "not allowed in NODE_OPTIONS" in r.reason
    assert "max_old_space_size_mb" not in r.reason


EVIL = [
    "1; touch /tmp/knobflow-pwned #",
    "$(touch /tmp/knobflow-pwned)",
    "`touch /tmp/knobflow-pwned`",
    "a\nNODE_OPTIONS=--require=/tmp/x",
    "x' --require=/tmp/knobflow-pwned '",
]


def test_shell_metacharacters_never_reach_a_shell(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    settings: dict[str, Any] = {"uv_threadpool_size": EVIL[0]}
    for i, evil in enumerate(EVIL):
        settings[f"node_title{'_' * i}"] = evil  # node_title, node_title_, ...: each refused
    settings["node_title"] = EVIL[1]
    settings["v8_stack_trace_limit"] = EVIL[2]
    r = _apply(tmp_path, settings)
    assert not r.ok and "invalid Node.js settings" in (r.reason or "")
    assert "node_title: '$(touch /tmp/knobflow-pwned)' has characters the role does not write" in (r.reason or "")
    assert "v8_stack_trace_limit" in (r.reason or "") and "uv_threadpool_size" in (r.reason or "")
    r = _apply(tmp_path, {}, nodejs_runtime_extra_options=EVIL)
    assert not r.ok and "nodejs_runtime_extra_options" in (r.reason or "")
    assert not (tmp_path / "node").exists()
    assert not MARKER.exists()
