"""roles/os_sysctl, roles/netns and the tcp_bench workload, for real, inside throw-away network namespaces.

Every test works in a namespace of its own (created by a fixture, deleted in its finalizer). The
host's (root namespace's) values of every key the tests touch are compared before and after each
test: nothing here may change them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import REPO

IP = shutil.which("ip") or "/usr/sbin/ip"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not Path(IP).exists(), reason="needs root and iproute2 (ip netns, setns)"),
]

# Keys the tests set or try to set; their root-namespace values must never change.
WATCHED = [
    "net/core/somaxconn",
    "net/core/rmem_max",
    "net/ipv4/tcp_tw_reuse",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_rmem",
    "net/ipv4/tcp_abort_on_overflow",
    "net/ipv4/tcp_fin_timeout",
    "net/ipv4/tcp_max_syn_backlog",
    "vm/swappiness",
]
LAYERS = {"os": {"role": "os_sysctl"}}


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check)


def ns_read(ns: str, key: str) -> str:
    """The raw text of /proc/sys/<key> inside namespace ``ns`` (key as a path: net/core/somaxconn)."""
    return ip("netns", "exec", ns, "cat", f"/proc/sys/{key}").stdout


def root_read(keys: list[str]) -> dict[str, str]:
    return {k: Path(f"/proc/sys/{k}").read_text() for k in keys}


@pytest.fixture(autouse=True)
def host_untouched() -> Iterator[None]:
    before = root_read(WATCHED)
    yield
    assert root_read(WATCHED) == before, "the host's sysctls changed"


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with lo up; deleted afterwards whatever happens."""
    name = f"kft-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


def _vars(
    tmp_path: Path,
    ns: str,
    settings: dict[str, Any],
    keys: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "knobflow": {
            "experiment": "t",
            "trial": 0,
            "home": str(tmp_path),
            "params": {"os": settings},
            "layers": LAYERS,
        },
        "os_sysctl_netns": ns,
        "os_sysctl_keys": keys or {},
        "os_sysctl_state_dir": str(tmp_path / "state"),
        **extra,
    }


def _state(tmp_path: Path, ns: str) -> Path:
    return tmp_path / "state" / f"netns-{ns}.json"


SETTINGS = {
    "net_core_somaxconn": 1024,
    "net_ipv4_tcp_tw_reuse": 1,
    "port_range": "40000 50000",
    "net_ipv4_tcp_rmem": [4096, 65536, 4194304],
    "net_ipv4_tcp_abort_on_overflow": True,
}
KEYS = {"port_range": "net.ipv4.ip_local_port_range"}
EXPECTED = {
    "net/core/somaxconn": "1024",
    "net/ipv4/tcp_tw_reuse": "1",
    "net/ipv4/ip_local_port_range": "40000\t50000",
    "net/ipv4/tcp_rmem": "4096\t65536\t4194304",
    "net/ipv4/tcp_abort_on_overflow": "1",
}
NS_KEYS = [*EXPECTED, "net/ipv4/tcp_fin_timeout"]


def _ns_values(ns: str) -> dict[str, str]:
    return {k: ns_read(ns, k) for k in NS_KEYS}


def test_apply_verify_idempotent_check_mode_and_exact_revert(netns: str, tmp_path: Path) -> None:
    before = _ns_values(netns)
    assert before["net/core/somaxconn"].strip() != "1024", "pick values that differ from a new namespace's"

    check = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, netns, SETTINGS, KEYS), check=True, diff=True)
    assert check.ok, check.reason
    assert check.changed, "check mode reports the change it would make"
    assert _ns_values(netns) == before and not _state(tmp_path, netns).exists(), "check mode must change nothing"

    first = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, netns, SETTINGS, KEYS))
    assert first.ok, first.reason
    assert first.changed
    for key, value in EXPECTED.items():  # the real values, read by another process in the namespace
        assert ns_read(netns, key).strip() == value, key
    state = json.loads(_state(tmp_path, netns).read_text())
    assert dict(state["original"])["net.core.somaxconn"] == before["net/core/somaxconn"].strip()

    second = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, netns, SETTINGS, KEYS))
    assert second.ok, second.reason
    assert second.changed == [], "a second apply of the same settings changes nothing"

    # Another configuration: keys it does not name go back to their original value, the saved
    # originals stay those of before the first change.
    other = {"net_core_somaxconn": 2048, "net_ipv4_tcp_fin_timeout": 17}
    third = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, netns, other, KEYS))
    assert third.ok, third.reason
    now = _ns_values(netns)
    assert now["net/core/somaxconn"].strip() == "2048" and now["net/ipv4/tcp_fin_timeout"].strip() == "17"
    for key in ("net/ipv4/tcp_tw_reuse", "net/ipv4/ip_local_port_range", "net/ipv4/tcp_rmem"):
        assert now[key] == before[key], key

    dry = bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, netns, {}), check=True)
    assert dry.ok and dry.changed and _ns_values(netns) == now, "a revert in check mode changes nothing"

    back = bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, netns, {}))
    assert back.ok, back.reason
    assert _ns_values(netns) == before, "the revert restores the original values exactly"
    assert not _state(tmp_path, netns).exists(), "the revert forgets the saved state"
    again = bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, netns, {}))
    assert again.ok and again.changed == []


def _fails(tmp_path: Path, ns: str, settings: dict[str, Any], keys: dict[str, str] | None = None, **kw: Any) -> str:
    before = _ns_values(ns)
    r = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, ns, settings, keys, **kw))
    assert not r.ok, "expected a failure"
    assert _ns_values(ns) == before, "a failed apply must change nothing"
    assert not _state(tmp_path, ns).exists(), "a failed first apply must leave no saved state"
    assert r.reason is not None
    return r.reason


def test_unknown_global_and_bad_values_are_named_and_change_nothing(netns: str, tmp_path: Path) -> None:
    reason = _fails(
        tmp_path,
        netns,
        {
            "net_core_somaxconn": 1000,  # valid, but the apply must not happen half-way
            "net_core_somaxcon": 1,
            "vm_swappiness": 10,
            "net_core_rmem_max": 1000000,
            "net_core_netdev_max_backlog": 5000,
            "net_ipv4_tcp_rmem": "1 2",
            "net_ipv4_tcp_fin_timeout": "soon",
            "net_ipv4_tcp_tw_reuse": 1.5,
            "bad_key": 1,
        },
        {"bad_key": "net.core.nosuch"},
    )
    assert "Apply sysctl settings" in reason
    for part in (
        "unknown sysctl setting 'net_core_somaxcon'",
        "vm.swappiness is not per network namespace",
        "net.core.rmem_max is global: the kernel makes it read-only inside network namespace",
        "net.core.netdev_max_backlog is global: the kernel shows it only in the root network namespace",
        "net.ipv4.tcp_rmem (setting 'net_ipv4_tcp_rmem'): must be 3 integers",
        "net.ipv4.tcp_fin_timeout (setting 'net_ipv4_tcp_fin_timeout'): must be an integer, got 'soon'",
        "net.ipv4.tcp_tw_reuse (setting 'net_ipv4_tcp_tw_reuse'): must be an integer, got 1.5",
        "setting 'bad_key': unknown sysctl key net.core.nosuch",
    ):
        assert part in reason, part


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port_range": "60999 32768"}, "net.ipv4.ip_local_port_range: the kernel refused '60999 32768': EINVAL"),
        ({"net_core_somaxconn": -1}, "net.core.somaxconn: the kernel refused '-1': EINVAL"),
        ({"net_ipv4_tcp_congestion_control": "no_such_algorithm"}, "the kernel refused 'no_such_algorithm': ENOENT"),
    ],
)
def test_kernel_refusals_are_named_and_rolled_back(
    netns: str, tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    # A valid key first, written before the refused one: it must be put back.
    reason = _fails(tmp_path, netns, {"net_ipv4_tcp_fin_timeout": 11, **settings}, KEYS)
    assert message in reason


def test_ambiguous_names_fail_naming_both_keys_and_a_map_resolves_them(netns: str, tmp_path: Path) -> None:
    # An interface called all_mc gives net/ipv4/conf/all_mc/forwarding, which, with '_' for '/',
    # reads like net/ipv4/conf/all/mc_forwarding.
    ip("-n", netns, "link", "add", "all_mc", "type", "veth", "peer", "name", "all_mc_peer")
    reason = _fails(tmp_path, netns, {"net_ipv4_conf_all_mc_forwarding": 1})
    assert "ambiguous sysctl setting 'net_ipv4_conf_all_mc_forwarding'" in reason
    assert "net.ipv4.conf.all.mc_forwarding" in reason and "net.ipv4.conf.all_mc.forwarding" in reason

    keys = {"net_ipv4_conf_all_mc_forwarding": "net/ipv4/conf/all_mc/forwarding"}
    r = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, netns, {"net_ipv4_conf_all_mc_forwarding": 1}, keys))
    assert r.ok, r.reason
    assert ns_read(netns, "net/ipv4/conf/all_mc/forwarding").strip() == "1"
    assert bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, netns, {}, keys)).ok
    assert ns_read(netns, "net/ipv4/conf/all_mc/forwarding").strip() == "0"


def test_shell_metacharacters_never_reach_a_shell(netns: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    values = {
        "net_core_somaxconn": f"1; touch {marker} #",
        "net_ipv4_tcp_congestion_control": f"$(touch {marker})",
        "net_ipv4_tcp_fin_timeout": f"`touch {marker}`",
        "net_ipv4_tcp_tw_reuse": f"1\ntouch {marker}",
        "net_ipv4_tcp_max_syn_backlog": f"1 && touch {marker}",
        "net_ipv4_tcp_syn_retries": f"cubic|touch {marker}",
    }
    reason = _fails(tmp_path, netns, values)
    for name in values:
        assert f"(setting {name!r})" in reason, name
    _fails(tmp_path, netns, {"x": 1}, {"x": f"net.core.somaxconn; touch {marker}"})
    reason = _fails(tmp_path, netns, {"net_core_somaxconn": 1}, os_sysctl_netns=f"{netns}; touch {marker}")
    assert "bad network namespace name" in reason
    assert not marker.exists()


def test_missing_namespace_and_stale_state(netns: str, tmp_path: Path) -> None:
    r = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, "kft-does-not-exist", {"net_core_somaxconn": 1}))
    assert not r.ok and "network namespace 'kft-does-not-exist' does not exist" in (r.reason or "")
    # Applied, then the namespace is deleted: the revert drops the saved values and succeeds.
    gone = f"kft-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", gone)
    try:
        assert bridge.run_playbook("apply.yml", extravars=_vars(tmp_path, gone, {"net_core_somaxconn": 99})).ok
    finally:
        ip("netns", "del", gone)
    assert _state(tmp_path, gone).exists()
    r = bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, gone, {}))
    assert r.ok, r.reason
    assert not _state(tmp_path, gone).exists()


def test_validate_entry_point_asks_the_kernel(netns: str, tmp_path: Path) -> None:
    def validate(tunables: list[dict[str, Any]]) -> bridge.RunResult:
        v = _vars(tmp_path, netns, {}, KEYS)
        v["knobflow"].update(validate=["os"], tunables={"os": tunables})
        return bridge.run_playbook("validate.yml", extravars=v)

    before = _ns_values(netns)
    good = [
        {"name": "net_core_somaxconn", "type": "int", "low": 64, "high": 8192, "default": 128},
        {
            "name": "port_range",
            "type": "categorical",
            "choices": ["32768 60999", "1024 65535"],
            "default": "32768 60999",
        },
        {"name": "net_ipv4_tcp_abort_on_overflow", "type": "bool", "default": False},
    ]
    r = validate(good)
    assert r.ok, r.reason
    assert _ns_values(netns) == before, "validation puts every probed value back"
    bad = [
        *good[:1],
        # 1000 is below ip_unprivileged_port_start (1024): the kernel refuses it.
        {
            "name": "port_range",
            "type": "categorical",
            "choices": ["32768 60999", "1000 65535"],
            "default": "32768 60999",
        },
        {"name": "net_ipv4_tcp_fin_timeout", "type": "float", "low": 1.0, "high": 2.5, "default": 2.0},
        {"name": "net_core_nosuch", "type": "int", "low": 1, "high": 2, "default": 1},
    ]
    r = validate(bad)
    assert not r.ok
    reason = r.reason or ""
    assert "unknown sysctl setting 'net_core_nosuch'" in reason
    assert "tunable 'net_ipv4_tcp_fin_timeout'" in reason and "declare the tunable as int" in reason
    r = validate(bad[:2])
    assert not r.ok and "tunable 'port_range'" in (r.reason or "") and "'1000 65535': EINVAL" in (r.reason or "")
    assert _ns_values(netns) == before


def test_host_mode_inside_a_namespace(netns: str, tmp_path: Path) -> None:
    """Without os_sysctl_netns the role sets the keys of the namespace Ansible runs in. Run
    ansible-playbook itself inside the test's namespace, so that "the host" is that namespace."""
    bindir = Path(sys.executable).parent
    extravars = tmp_path / "vars.json"

    def play(playbook: str, settings: dict[str, Any], ns_var: str = "") -> subprocess.CompletedProcess[str]:
        extravars.write_text(json.dumps(_vars(tmp_path, ns_var, settings, KEYS)))
        env = {
            "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "HOME": os.environ.get("HOME", "/root"),
        }
        argv = [IP, "netns", "exec", netns, str(bindir / "ansible-playbook")]
        argv += ["-i", str(REPO / "inventories" / "local"), str(REPO / "playbooks" / playbook), "-e", f"@{extravars}"]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)

    before = _ns_values(netns)
    out = play("apply.yml", {"net_core_somaxconn": 333, "port_range": "50000 50999"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert ns_read(netns, "net/core/somaxconn").strip() == "333"
    assert (tmp_path / "state" / "host.json").exists()
    out = play("apply.yml", {"net_core_somaxconn": 333, "port_range": "50000 50999"})
    assert out.returncode == 0 and "changed=0" in out.stdout, out.stdout
    out = play("apply.yml", {"net_core_somaxconn": 1}, ns_var=netns)
    assert out.returncode != 0 and "is the namespace Ansible runs in" in out.stdout, out.stdout
    out = play("revert.yml", {})
    assert out.returncode == 0, out.stdout + out.stderr
    assert _ns_values(netns) == before


# --- the netns role -------------------------------------------------------------------------------


def test_netns_role_creates_and_deletes_idempotently(tmp_path: Path) -> None:
    name = f"kft-{uuid.uuid4().hex[:8]}"
    host_if = f"kf{uuid.uuid4().hex[:8]}"
    v = {
        "knobflow": {"setup": [{"role": "netns"}], "teardown": [{"role": "netns", "tasks_from": "stop"}]},
        "netns_name": name,
        "netns_veth": True,
        "netns_veth_host": host_if,
        "netns_host_address": "198.18.77.1/30",
        "netns_peer_address": "198.18.77.2/30",
    }
    try:
        dry = bridge.run_playbook("setup.yml", extravars=v, check=True)
        assert dry.ok and dry.changed and not Path(f"/run/netns/{name}").exists(), "check mode creates nothing"
        first = bridge.run_playbook("setup.yml", extravars=v)
        assert first.ok, first.reason
        assert first.changed
        assert Path(f"/run/netns/{name}").exists()
        links = json.loads(ip("-n", name, "-j", "addr", "show").stdout)
        by_name = {link["ifname"]: link for link in links}
        assert "UP" in by_name["lo"]["flags"]
        assert any(a["local"] == "198.18.77.2" for a in by_name["veth0"]["addr_info"])
        host = json.loads(ip("-j", "addr", "show", "dev", host_if).stdout)[0]
        assert any(a["local"] == "198.18.77.1" for a in host["addr_info"]) and "UP" in host["flags"]
        # The link works: the server end in the namespace answers a TCP connection from the host.
        server = subprocess.Popen(
            [
                IP,
                "netns",
                "exec",
                name,
                sys.executable,
                "-c",
                "import socket; s = socket.create_server(('198.18.77.2', 7777)); c, _ = s.accept(); c.sendall(b'hi')",
            ],
        )
        try:
            import socket
            import time

            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("198.18.77.2", 7777), timeout=2) as c:
                        assert c.recv(2) == b"hi"
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        finally:
            server.kill()
            server.wait()
        second = bridge.run_playbook("setup.yml", extravars=v)
        assert second.ok and second.changed == [], "a second set-up changes nothing"

        dry = bridge.run_playbook("teardown.yml", extravars=v, check=True)
        assert dry.ok and dry.changed and Path(f"/run/netns/{name}").exists()
        stop = bridge.run_playbook("teardown.yml", extravars=v)
        assert stop.ok, stop.reason
        assert not Path(f"/run/netns/{name}").exists()
        assert ip("link", "show", host_if, check=False).returncode != 0, "the veth pair is gone"
        again = bridge.run_playbook("teardown.yml", extravars=v)
        assert again.ok and again.changed == []
    finally:
        ip("link", "del", host_if, check=False)
        ip("netns", "del", name, check=False)


def test_netns_role_refuses_bad_names(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    v = {"knobflow": {"setup": [{"role": "netns"}]}, "netns_name": f"x; touch {marker}"}
    r = bridge.run_playbook("setup.yml", extravars=v)
    assert not r.ok and "bad namespace name" in (r.reason or "")
    assert not marker.exists()


# --- the benchmark in a namespace, through a knobflow trial --------------------------------------


def test_tcp_bench_trial_in_the_namespace_responds_to_somaxconn(netns: str, tmp_path: Path) -> None:
    argv = [IP, "netns", "exec", netns, "{{ ansible_playbook_python }}", "-m", "knobflow.workloads.tcp_bench"]
    argv += ["--duration", "2", "--warmup", "0.2", "--burst", "300", "--interval", "0.5", "--service-us", "400"]

    def trial(somaxconn: int) -> dict[str, float]:
        v = _vars(tmp_path, netns, {"net_core_somaxconn": somaxconn}, bench_command_argv=argv)
        v["knobflow"]["benchmark"] = {"role": "bench_command", "warmup": 0, "repeats": 1, "timeout": 60}
        r = bridge.run_playbook("trial.yml", extravars=v)
        assert r.ok, r.reason
        assert ns_read(netns, "net/core/somaxconn").strip() == str(somaxconn)
        metrics: dict[str, float] = r.stats["knobflow_metrics"]
        for name in ("connections_per_s", "p50_ms", "p99_ms", "p99_all_ms", "errors", "error_rate", "listen_overflows"):
            assert name in metrics, name
        assert metrics["connections"] > 0 and 0 <= metrics["error_rate"] <= 1
        return metrics

    small = trial(64)  # bursts of 300 into an accept queue of 64 while the server is busy
    big = trial(4096)  # room for a whole burst
    assert small["listen_overflows"] > 0 and small["syn_retransmits"] > 0, small
    assert big["listen_overflows"] == 0, big
    # Dropped SYNs come back after the 1 s retransmission timeout: the tail shows it.
    assert small["p99_ms"] > 900 and small["p99_ms"] > big["p99_ms"], (small, big)
    assert big["errors"] == 0, big
    assert bridge.run_playbook("revert.yml", extravars=_vars(tmp_path, netns, {})).ok
