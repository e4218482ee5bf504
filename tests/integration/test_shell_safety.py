"""Tunable values with shell metacharacters never reach a shell unquoted.

Each role's own tests try its settings; these follow a value through the generic paths: the
trial's parameters templated into a benchmark's argv (bench_command runs it without a shell), and
a layer role that writes a file a shell later reads (the custom-layer example, which quotes).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from knobflow.ansible import bridge
from tests.conftest import REPO

pytestmark = pytest.mark.slow

NASTY = [
    "1; touch {marker} #",
    "$(touch {marker})",
    "`touch {marker}`",
    "x' ; touch {marker} ; echo '",
    'x" && touch {marker} && echo "',
    "a|touch {marker}",
    "{{{{ lookup('pipe', 'touch {marker}') }}}}",
]


@pytest.mark.parametrize("template", NASTY)
def test_a_value_in_a_benchmark_argv_arrives_literally(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "pwned"
    value = template.format(marker=marker)
    # The value travels as a trial parameter and is templated into the command's arguments.
    extravars = {
        "knobflow": {
            "params": {"app": {"mode": value}},
            "layers": {},
            "benchmark": {"role": "bench_command", "warmup": 0, "repeats": 1, "aggregate": "median", "timeout": 30},
        },
        "bench_command_argv": [
            "{{ ansible_playbook_python }}",
            "-c",
            "import json, sys; print(json.dumps({'n': len(sys.argv[1]), 'ok': 1}))",
            "{{ knobflow.params.app.mode }}",
        ],
    }
    r = bridge.run_playbook("trial.yml", extravars=extravars)
    assert not marker.exists()
    # A Jinja expression arrives as its text too: knobflow passes the trial's values as data that
    # Ansible never templates (without that, the lookup above ran `touch`).
    assert r.ok, r.reason
    assert r.stats["knobflow_metrics"]["n"] == len(value)


@pytest.mark.parametrize("template", NASTY)
def test_a_value_a_layer_writes_for_a_shell_stays_one_literal_word(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "pwned"
    value = template.format(marker=marker)
    env_file = tmp_path / "app.env"
    extravars = {
        "knobflow": {"params": {"app": {"mode": value}}, "layers": {"app": {"role": "env_file"}}},
        "env_file_path": str(env_file),
    }
    roles = [REPO / "examples" / "custom-layer" / "roles", REPO / "roles"]
    r = bridge.run_playbook("apply.yml", extravars=extravars, roles_path=roles)
    assert r.ok, r.reason
    # The file is read by a shell, as a service's start script would.
    out = subprocess.run(
        ["sh", "-c", '. "$1"; printf %s "$MODE"', "sh", str(env_file)], capture_output=True, text=True, check=True
    )
    assert out.stdout == value
    assert not marker.exists()
    assert bridge.run_playbook("revert.yml", extravars=extravars, roles_path=roles).ok
    assert not env_file.exists()
