"""The SSH path for real: knobflow's playbooks over Ansible's ``ssh`` connection to an ``sshd`` running
in a network namespace of this machine (tests/sshhost.py).

The namespace shares this machine's filesystem, so the host's target files live under a folder of
its own (the inventory's ``target_dir``) and the tests tell the SSH host's changes from local ones.
That the work really went over SSH is checked twice: sshd logs an ``Accepted publickey`` login from
this side of the veth pair, and the host's ``ansible_python_interpreter`` is a wrapper that records
the network namespace of every module (and of the benchmark) it starts: all of them must be the
test host's namespace, not this machine's.

Without sshd (Debian's openssh-server) these tests are skipped, or fail when KNOBFLOW_REQUIRE_SSHD=1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from knobflow.ansible import bridge
from knobflow.store import Store
from tests import sshhost
from tests.conftest import BIN, REPO, knobflow

pytestmark = pytest.mark.slow

HOST = "ssh-target"
ORIGINAL = '{"pragmas": {"journal_mode": "delete"}, "batch_size": 1, "note": "hand-written on the SSH host"}\n'


@pytest.fixture
def ssh_target(tmp_path: Path) -> Iterator[sshhost.SSHHost]:
    sshhost.require()
    with sshhost.ssh_host(tmp_path / "sshd", name=HOST) as host:
        yield host
    assert host.process is not None and host.process.poll() is not None, "sshd still runs"
    assert not Path(f"/run/netns/{host.netns}").exists(), "the namespace was not deleted"


def _target_dir(tmp_path: Path) -> Path:
    """The SSH host's own folder, with a hand-written configuration file the tests expect back."""
    d = tmp_path / "hosts" / HOST
    d.mkdir(parents=True)
    (d / "config.json").write_text(ORIGINAL)
    return d


def _netns_recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A Python interpreter for the inventory that logs its network namespace, then runs the venv's."""
    log = tmp_path / "netns.log"
    wrapper = tmp_path / "python-netns"
    wrapper.write_text(
        f'#!/bin/sh\nreadlink /proc/self/ns/net >> {shlex.quote(str(log))}\nexec {shlex.quote(sys.executable)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, log


def _inventory(host: sshhost.SSHHost, path: Path, target: Path, python: Path) -> Path:
    return host.write_inventory(
        path, hostname=HOST, hostvars={"target_dir": str(target), "ansible_python_interpreter": str(python)}
    )


def _assert_ran_in_the_namespace(host: sshhost.SSHHost, log: Path) -> int:
    seen = log.read_text().split()
    assert seen, "no module ran through the SSH host's interpreter"
    assert set(seen) == {host.netns_id()}, (seen, host.netns_id())
    assert host.netns_id() != os.readlink("/proc/self/ns/net")
    return len(seen)


# The sqlite demo's layer and benchmark, with every path under the host's target_dir and the
# benchmark run by the host's Python (the controller's, ansible_playbook_python, is no path there).
BENCH_ARGV = [
    "{{ ansible_python_interpreter }}",
    "-m",
    "knobflow.workloads.sqlite_workload",
    "--config",
    "{{ target_dir }}/config.json",
    "--db",
    "{{ target_dir }}/orders.db",
    "--duration",
    "0.2",
]


def _trial_vars(home: Path, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "sqlite_config_path": "{{ target_dir }}/config.json",
        "bench_command_argv": BENCH_ARGV,
        "knobflow": {
            "experiment": "ssh",
            "trial": 0,
            "home": str(home),
            "params": {"stack": settings},
            "layers": {"stack": {"role": "sqlite_config"}},
            "benchmark": {"role": "bench_command", "warmup": 0, "repeats": 2, "aggregate": "median", "timeout": 30},
        },
    }


def test_a_trial_over_ssh_applies_benchmarks_and_reverts(tmp_path: Path, ssh_target: sshhost.SSHHost) -> None:
    target = _target_dir(tmp_path)
    cfg = target / "config.json"
    python, nslog = _netns_recorder(tmp_path)
    inv = _inventory(ssh_target, tmp_path / "hosts.yml", target, python)
    home = tmp_path / "home"
    log = tmp_path / "trial.log"
    logins = len(ssh_target.accepted_logins())

    r = bridge.run_playbook(
        "trial.yml", inventory=inv, extravars=_trial_vars(home, {"journal_mode": "wal", "batch_size": 50}), log_path=log
    )
    assert r.ok, f"{r.reason}\n{log.read_text()}\n{ssh_target.log_text()}"
    assert r.stats["knobflow_metrics"]["throughput_ops"] > 0
    assert len(r.stats["knobflow_benchmark"]["runs"]) == 2
    assert json.loads(cfg.read_text()) == {"batch_size": 50, "pragmas": {"journal_mode": "wal"}}
    assert r.changed and all(c.startswith(f"{HOST}: ") for c in r.changed), r.changed
    # Over SSH: a key login from this side of the veth pair, and every module in the host's namespace.
    new = ssh_target.accepted_logins()[logins:]
    assert new and all(re.search(rf"Accepted publickey for root from {re.escape(ssh_target.gateway)} ", x) for x in new)
    _assert_ran_in_the_namespace(ssh_target, nslog)
    assert not (home / "targets").exists(), "nothing may land on the local default target"

    again = bridge.run_playbook("revert.yml", inventory=inv, extravars=_trial_vars(home, {}))
    assert again.ok, again.reason
    assert cfg.read_text() == ORIGINAL
    assert not list(target.glob("*.knobflow-*")), "revert forgets the saved state"


def test_knobflow_run_over_ssh(tmp_path: Path, home: Path, ssh_target: sshhost.SSHHost) -> None:
    target = _target_dir(tmp_path)
    cfg = target / "config.json"
    python, nslog = _netns_recorder(tmp_path)
    exp_dir = tmp_path / "experiments"
    _inventory(ssh_target, exp_dir / "ssh-hosts.yml", target, python)

    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("name: sqlite-demo", "name: test-ssh-run").replace('- "1"', '- "0.2"')
    text = text.replace("repeats: 3", "repeats: 1").replace("trials: 20", "trials: 3")
    text = text.replace("{{ knobflow.home }}/targets/sqlite-demo/", "{{ target_dir }}/")
    text = text.replace('"{{ ansible_playbook_python }}"', '"{{ ansible_python_interpreter }}"')
    text += "target: {inventory: ssh-hosts.yml, hosts: ssh_hosts}\nfinish: revert\n"
    assert text.count("{{ target_dir }}/") == 3 and "ansible_playbook_python" not in text
    f = exp_dir / "ssh.yaml"
    f.write_text(text)

    proc = knobflow("run", str(f), home=home, check=True)
    lines = [line for line in proc.stdout.splitlines() if re.match(r"^trial +\d+", line)]
    assert len(lines) == 3 and all("throughput_ops=" in line for line in lines), proc.stdout
    assert "finish: target reverted" in proc.stdout, proc.stdout

    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    trials = store.trials(store.load("test-ssh-run"))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("reason") for t in trials]
    assert all(t.value is not None and t.value > 0 for t in trials)
    # Three trials and the revert, each with its modules run in the host's namespace.
    assert _assert_ran_in_the_namespace(ssh_target, nslog) >= 3 * 3 + 1
    assert ssh_target.accepted_logins()
    assert cfg.read_text() == ORIGINAL
    assert not list(target.glob("*.knobflow-*"))
    assert not (home / "targets").exists(), "nothing may land on the local default target"


def test_an_unknown_host_key_fails_the_trial_as_unreachable(tmp_path: Path, ssh_target: sshhost.SSHHost) -> None:
    target = _target_dir(tmp_path)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    args = f"-o UserKnownHostsFile={empty} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes"
    inv = ssh_target.write_inventory(
        tmp_path / "hosts.yml", hostname=HOST, hostvars={"target_dir": str(target), "ansible_ssh_common_args": args}
    )
    r = bridge.run_playbook("trial.yml", inventory=inv, extravars=_trial_vars(tmp_path / "home", {"batch_size": 5}))
    assert not r.ok
    assert r.reason is not None and f"unreachable on {HOST}" in r.reason and "Host key verification failed" in r.reason
    assert (target / "config.json").read_text() == ORIGINAL
    assert not ssh_target.accepted_logins()


@pytest.mark.parametrize("required", ["", "1"])
def test_a_missing_sshd_skips_or_fails_as_configured(monkeypatch: pytest.MonkeyPatch, required: str) -> None:
    monkeypatch.setattr(sshhost, "sshd_path", lambda: None)
    monkeypatch.setenv(sshhost.REQUIRE_ENV, required)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    message = r"install Debian's openssh-server package \(apt-get install -y openssh-server\)"
    with pytest.raises(expected, match=message):
        sshhost.require()


@pytest.mark.parametrize(
    ("inventory", "host", "variable", "value"),
    [
        ("ssh-example/hosts.yml", "db2.example.com", "ansible_port", 2222),
        ("ssh-example/hosts.yml", "db1.example.com", "ansible_connection", "ssh"),
        ("kubernetes-example/hosts.yml", "shop-prod", "k8s_namespace", "shop"),
        ("kubernetes-example/pods.yml", "shop-db-0", "ansible_connection", "kubernetes.core.kubectl"),
    ],
)
def test_the_example_inventories_parse(inventory: str, host: str, variable: str, value: Any) -> None:
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(REPO / "inventories" / inventory), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "WARNING" not in out.stderr, out.stderr
    assert json.loads(out.stdout)["_meta"]["hostvars"][host][variable] == value
