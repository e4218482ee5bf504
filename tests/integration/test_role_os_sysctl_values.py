"""roles/os_sysctl's value checks, key syntax and name resolution, without root (the real
/proc/sys of this machine is read, never written); and tcp_bench's small helpers."""

from __future__ import annotations

from typing import Any

import pytest

from knobflow.workloads import tcp_bench
from tests.conftest import role_module

m = role_module("os_sysctl", "os_sysctl")


@pytest.mark.parametrize(
    ("value", "current", "text"),
    [
        (4096, "128", "4096"),
        ("4096", "128", "4096"),
        (8192.0, "128", "8192"),
        (True, "0", "1"),
        (False, "1", "0"),
        ("40000  50000", "32768\t60999", "40000 50000"),
        ([4096, "131072", 6291456], "4096\t131072\t33554432", "4096 131072 6291456"),
        ("+07", "1", "7"),
        ("bbr", "cubic", "bbr"),
    ],
)
def test_values_are_normalised(value: Any, current: str, text: str) -> None:
    assert m.check_value(value, current) == text


@pytest.mark.parametrize(
    ("value", "current", "message"),
    [
        ("1; touch /tmp/x #", "128", "must be an integer, got '1; touch /tmp/x #'"),
        ("$(id)", "128", "must be an integer"),
        (1.5, "128", "must be an integer, got 1.5"),
        ("1 2", "4096 131072 33554432", "must be 3 integers separated by spaces, like '4096 131072 33554432'"),
        ([1, [2]], "1 2", "flat list"),
        ([], "1", "empty list"),
        ("  ", "1", "is empty"),
        ("1\n2", "1", "control character"),
        ("`id`", "cubic", "characters a sysctl value does not take"),
        ("cubic reno|id", "cubic", "characters a sysctl value does not take"),
        ({"a": 1}, "1", "unsupported type dict"),
    ],
)
def test_bad_values_are_refused(value: Any, current: str, message: str) -> None:
    with pytest.raises(m.SysctlError, match=None) as exc:
        m.check_value(value, current)
    assert message in str(exc.value)


def test_same_compares_integers_as_numbers() -> None:
    assert m.same("32768\t60999", "32768 60999")
    assert m.same("007", "7")
    assert not m.same("1 2", "1 3")
    assert m.same("cubic", " cubic\n")


@pytest.mark.parametrize(
    ("key", "parts", "shown"),
    [
        ("net.core.somaxconn", ["net", "core", "somaxconn"], "net.core.somaxconn"),
        ("net/ipv4/conf/eth0.100/rp_filter", ["net", "ipv4", "conf", "eth0.100", "rp_filter"], None),
        ("net.ipv4.conf.eth0/100.rp_filter", ["net", "ipv4", "conf", "eth0.100", "rp_filter"], None),
        ("/net/core/somaxconn", ["net", "core", "somaxconn"], "net.core.somaxconn"),
    ],
)
def test_key_syntax(key: str, parts: list[str], shown: str | None) -> None:
    assert m.key_parts(key) == parts
    assert m.key_name(parts) == (shown or "net.ipv4.conf.eth0/100.rp_filter")


@pytest.mark.parametrize("key", ["net..core", "net.core.somaxconn/../../x", "", "net/../vm/swappiness"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(m.SysctlError, match="bad sysctl key"):
        m.key_parts(key)


def test_names_resolve_by_walking_proc_sys() -> None:
    assert m.find_by_name("net_core_somaxconn") == [["net", "core", "somaxconn"]]
    assert m.find_by_name("net_ipv4_tcp_fin_timeout") == [["net", "ipv4", "tcp_fin_timeout"]]
    assert m.find_by_name("net_ipv4_ip_local_port_range") == [["net", "ipv4", "ip_local_port_range"]]
    assert m.find_by_name("net_core_somaxcon") == []
    assert m.resolve("x", {"x": "net.ipv4.ip_local_port_range"}) == ["net", "ipv4", "ip_local_port_range"]
    with pytest.raises(m.SysctlError, match="unknown sysctl setting 'net_nosuch'"):
        m.resolve("net_nosuch", {})


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert tcp_bench.percentile(values, 0.5) == 50.0
    assert tcp_bench.percentile(values, 0.99) == 99.0
    assert tcp_bench.percentile([3.0], 0.99) == 3.0
    assert tcp_bench.percentile([], 0.5) == 0.0


def test_random_loopback_addresses() -> None:
    for _ in range(50):
        a = tcp_bench.random_loopback().split(".")
        assert a[0] == "127" and all(1 <= int(x) <= 254 for x in a[1:]) and a != ["127", "0", "0", "1"]


def test_failures_count_in_p99_all_ms_and_nothing_completed_is_not_fast() -> None:
    res = tcp_bench.Results(latencies=[0.01] * 95, errors=5, error_kinds={"EADDRNOTAVAIL": 5})
    out = tcp_bench.summarise(res, 2.0, 4.0, {"listen_overflows": 1}, {"listen_overflows": 3})
    assert out["p99_ms"] == 10.0 and out["p99_all_ms"] == 4000.0
    assert out["connections_per_s"] == 47.5 and out["error_rate"] == 0.05 and out["listen_overflows"] == 2
    empty = tcp_bench.summarise(tcp_bench.Results(errors=3), 2.0, 4.0, {}, {})
    assert empty["p99_ms"] == empty["p50_ms"] == empty["p99_all_ms"] == 4000.0 and empty["connections"] == 0
