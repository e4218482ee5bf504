"""The liberty role, for real through knobflow's playbooks, on Liberty server directories made under
tmp_path (no Liberty server runs here: none can be installed). The override file is read back with
an XML parser, jvm.options line by line; idempotence, check mode, exact revert with and without
files, bad names and values, and values that try to break out of their attribute or line."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import role_module

pytestmark = pytest.mark.slow

M = role_module("liberty", "liberty_config")
PWNED = Path("/tmp/knobflow-pwned")

SERVER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<server description="orders">
    <!-- the application's own configuration: knobflow never edits this file -->
    <featureManager><feature>restfulWS-3.1</feature><feature>jdbc-4.3</feature></featureManager>
    <httpEndpoint id="defaultHttpEndpoint" httpPort="9080" httpsPort="9443"/>
    <executor coreThreads="4"/>
    <connectionManager id="ordersPool" maxPoolSize="10"/>
    <dataSource id="orders" jndiName="jdbc/orders" connectionManagerRef="ordersPool"/>
</server>
"""
JVM_OPTIONS = "# site options\n-Xmx256m\n-Dorders.mode=fast\n-XX:+HeapDumpOnOutOfMemoryError"


def server(tmp_path: Path, jvm: str | None = JVM_OPTIONS) -> Path:
    d = tmp_path / "wlp" / "usr" / "servers" / "orders"
    d.mkdir(parents=True)
    (d / "server.xml").write_text(SERVER_XML)
    if jvm is not None:
        (d / "jvm.options").write_text(jvm)
    return d


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under the server directory, with its bytes (folders as b'<dir>')."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(d.rglob("*"))}


def overrides(d: Path) -> dict[str, dict[str, str]]:
    """The override file as an XML parser reads it: {"tag" or "tag[id]": attributes}."""
    root = ET.parse(d / "configDropins" / "overrides" / "knobflow.xml").getroot()
    assert root.tag == "server"
    out = {}
    for e in root:
        attrs = dict(e.attrib)
        ident = attrs.pop("id", None)
        out[f"{e.tag}[{ident}]" if ident else e.tag] = attrs
    return out


def jvm_lines(d: Path) -> list[str]:
    return [line for line in (d / "jvm.options").read_text().splitlines() if line and not line.startswith("#")]


def _vars(d: Path, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "liberty_server_dir": str(d),
        **extra,
        "knobflow": {"layers": {"runtime": {"role": "liberty"}}, "params": {"runtime": settings}},
    }


SETTINGS = {
    "executor_core_threads": 8,
    "executor_max_threads": 64.0,
    "executor_keep_alive_s": 30,
    "http_max_keep_alive_requests": 500,
    "http_persist_timeout_s": 15,
    "tcp_max_open_connections": 20000,
    "pool_max_size": 40,
    "pool_min_size": 5,
    "pool_purge_policy": "validateallconnections",
    "jvm_heap_max_mb": 1024,
    "jvm_gc": "G1",
    "jvm_max_gc_pause_ms": 50,
}


def test_apply_idempotent_check_mode_and_exact_revert(tmp_path: Path) -> None:
    d = server(tmp_path)
    os.chmod(d / "jvm.options", 0o600)
    original = snapshot(d)
    extra = {"liberty_connection_manager_id": "ordersPool"}

    r = bridge.run_playbook("apply.yml", extravars=_vars(d, SETTINGS, **extra), check=True, diff=True)
    assert r.ok, r.reason
    assert r.changed == ["localhost: Apply Liberty settings"]
    assert snapshot(d) == original, "check mode writes nothing"

    r = bridge.run_playbook("apply.yml", extravars=_vars(d, SETTINGS, **extra))
    assert r.ok, r.reason
    assert overrides(d) == {
        "executor": {"coreThreads": "8", "maxThreads": "64", "keepAlive": "30s"},
        "httpOptions[defaultHttpOptions]": {"maxKeepAliveRequests": "500", "persistTimeout": "15s"},
        "tcpOptions[defaultTCPOptions]": {"maxOpenConnections": "20000"},
        "connectionManager[ordersPool]": {
            "maxPoolSize": "40",
            "minPoolSize": "5",
            "purgePolicy": "ValidateAllConnections",
        },
    }
    assert jvm_lines(d) == [
        "-Xmx256m",
        "-Dorders.mode=fast",
        "-XX:+HeapDumpOnOutOfMemoryError",
        "-XX:+UseG1GC",
        "-Xmx1024m",
        "-XX:MaxGCPauseMillis=50",
    ], "the user's lines stay first and in order; knobflow's block (by tunable name) comes last: its -Xmx wins"
    assert (d / "jvm.options").read_text().startswith(JVM_OPTIONS + "\n")
    assert ((d / "jvm.options").stat().st_mode & 0o777) == 0o600
    assert (d / "server.xml").read_text() == SERVER_XML, "server.xml is never edited"
    written = snapshot(d)

    r = bridge.run_playbook("apply.yml", extravars=_vars(d, SETTINGS, **extra))
    assert r.ok, r.reason
    assert r.changed == [] and snapshot(d) == written, "a second apply changes nothing"

    # Only XML settings now: the JVM block goes, the override file is rewritten.
    r = bridge.run_playbook("apply.yml", extravars=_vars(d, {"executor_max_threads": 16}, **extra))
    assert r.ok and r.changed, r.reason
    assert overrides(d) == {"executor": {"maxThreads": "16"}}
    assert jvm_lines(d) == ["-Xmx256m", "-Dorders.mode=fast", "-XX:+HeapDumpOnOutOfMemoryError"]

    r = bridge.run_playbook("revert.yml", extravars=_vars(d, {}), check=True)
    assert r.ok and r.changed, r.reason
    assert overrides(d) == {"executor": {"maxThreads": "16"}}, "check mode does not revert"

    r = bridge.run_playbook("revert.yml", extravars=_vars(d, {}))
    assert r.ok, r.reason
    assert snapshot(d) == original, "revert restores jvm.options byte for byte and removes configDropins/"
    assert ((d / "jvm.options").stat().st_mode & 0o777) == 0o600
    r = bridge.run_playbook("revert.yml", extravars=_vars(d, {}))
    assert r.ok and r.changed == []


def test_without_jvm_options_and_with_existing_dropins(tmp_path: Path) -> None:
    d = server(tmp_path, jvm=None)
    other = d / "configDropins" / "overrides" / "site.xml"
    other.parent.mkdir(parents=True)
    other.write_text('<server><logging traceSpecification="*=info"/></server>\n')
    original = snapshot(d)
    marker = tmp_path / "restarted"
    extra = {"liberty_restart_argv": ["/usr/bin/touch", str(marker)]}
    settings = {"jvm_heap_max_mb": 512, "jvm_heap_min_mb": 512, "jvm_tiered_compilation": False}
    r = bridge.run_playbook("apply.yml", extravars=_vars(d, settings, **extra))
    assert r.ok, r.reason
    assert jvm_lines(d) == ["-Xmx512m", "-Xms512m", "-XX:-TieredCompilation"]
    assert not (d / "configDropins" / "overrides" / "knobflow.xml").exists(), "no XML settings, no override file"
    assert marker.exists()
    r = bridge.run_playbook("revert.yml", extravars=_vars(d, {}, **extra))
    assert r.ok, r.reason
    assert snapshot(d) == original, "jvm.options was not there before: it is gone; the user's dropin stays"


def test_bad_names_and_values_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    d = server(tmp_path)
    original = snapshot(d)
    settings = {
        "executor_max_threads": 2,
        "executor_core_threads": '"/><evil/>',
        "pool_max_size": 10,
        "jvm_gc": "CMS",
        "jvm_heap_max_mb": "1g",
        "no_such_tunable": 1,
    }
    r = bridge.run_playbook("apply.yml", extravars=_vars(d, settings))
    assert not r.ok
    reason = r.reason or ""
    assert "Apply Liberty settings" in reason
    assert "executor_max_threads (executor/@maxThreads): must be between 4 and 100000 or -1, got 2" in reason
    assert "executor_core_threads (executor/@coreThreads): must be an integer" in reason
    assert "pool_max_size: set liberty_connection_manager_id" in reason
    assert "jvm_gc (JVM option): must be one of G1" in reason
    assert "jvm_heap_max_mb (JVM option): must be an integer, got '1g'" in reason
    assert "unknown setting 'no_such_tunable'" in reason
    assert snapshot(d) == original
    r = bridge.run_playbook("apply.yml", extravars=_vars(tmp_path / "nowhere", {"executor_max_threads": 8}))
    assert not r.ok and "has no server.xml: not a Liberty server configuration directory" in (r.reason or "")


def test_injection_is_escaped_in_xml_and_refused_in_jvm_options(tmp_path: Path) -> None:
    PWNED.unlink(missing_ok=True)
    d = server(tmp_path)
    value = "x\"/><evil/><!-- $(touch /tmp/knobflow-pwned) `touch /tmp/knobflow-pwned` & '"
    extra = {
        "liberty_attributes": {"greeting": {"element": "webContainer", "attribute": "displayText"}},
        "liberty_jvm_option_templates": {"flag": "-Dorders.flag={value}"},
        "liberty_restart_argv": ["/bin/echo", value],
    }
    r = bridge.run_playbook("apply.yml", extravars=_vars(d, {"greeting": value, "flag": "on"}, **extra))
    assert r.ok, r.reason
    root = ET.parse(d / "configDropins" / "overrides" / "knobflow.xml").getroot()
    assert [e.tag for e in root.iter()] == ["server", "webContainer"], "exactly one element, no <evil/>"
    assert root[0].attrib == {"displayText": value}, "the attribute holds the literal value"
    assert jvm_lines(d)[-1] == "-Dorders.flag=on"
    assert not PWNED.exists()
    # A JVM option line cannot be broken out of: such values are refused (by the playbook, and the module).
    r = bridge.run_playbook("apply.yml", extravars=_vars(d, {"greeting": value, "flag": "a\n-Xmx1m"}, **extra))
    assert not r.ok and "flag (JVM option): 'a\\n-Xmx1m' is not a safe JVM option value" in (r.reason or "")
    assert jvm_lines(d)[-1] == "-Dorders.flag=on"
    for bad in ("on; touch /tmp/knobflow-pwned", "$(touch /tmp/knobflow-pwned)", "`id`", "a b", "x'y"):
        errors = _build({"flag": bad}, jvm_option_templates={"flag": "-Dorders.flag={value}"})
        assert errors and "is not a safe JVM option value" in errors[0], bad
    errors = _build({"greeting": "line\nbreak"}, attributes=extra["liberty_attributes"])
    assert errors and "line break" in errors[0]
    assert not PWNED.exists()


def _build(settings: dict[str, Any], **p: Any) -> list[str]:
    params = {
        "settings": settings,
        "attributes": {},
        "jvm_option_templates": {},
        "http_options_id": "defaultHttpOptions",
        "tcp_options_id": "defaultTCPOptions",
        "connection_manager_id": "pool",
        **p,
    }
    return list(M.build(params)[3])


@pytest.mark.parametrize(
    ("settings", "extra", "message"),
    [
        ({"executor_core_threads": 50, "executor_max_threads": 10}, {}, "executor: coreThreads=50 is more than"),
        ({"executor_core_threads": 50, "executor_max_threads": -1}, {}, None),  # -1: unbounded
        ({"pool_min_size": 9, "pool_max_size": 5}, {}, "pool: minPoolSize=9 is more than maxPoolSize=5"),
        ({"jvm_heap_min_mb": 2048, "jvm_heap_max_mb": 1024}, {}, "-Xms2048m is more than -Xmx1024m"),
        ({"x": 1}, {"attributes": {"x": {"element": "a b", "attribute": "c"}}}, "is not an XML element name"),
        ({"x": 1}, {"attributes": {"x": {"element": "executor", "attribute": "id"}}}, "is not usable"),
        ({"x": "${wlp.user.dir}"}, {"attributes": {"x": {"element": "a", "attribute": "b"}}}, "would expand"),
        ({"x": 2}, {"attributes": {"x": {"element": "executor", "attribute": "maxThreads"}}}, "between 4 and 100000"),
        ({"x": 1}, {"jvm_option_templates": {"x": "-Xmx{value}m; rm"}}, "is not a safe JVM option template"),
        ({"x": 1}, {"jvm_option_templates": {"x": "-Xmx1m"}}, "must hold {value} or {sign}"),
        ({"x": True}, {"jvm_option_templates": {"x": "-XX:{sign}UseNUMA"}}, None),
        ({"http_keep_alive_enabled": "maybe"}, {}, "must be true or false"),
    ],
)
def test_build_rules(settings: dict[str, Any], extra: dict[str, Any], message: str | None) -> None:
    errors = _build(settings, **extra)
    if message is None:
        assert errors == []
    else:
        assert any(message in e for e in errors), errors


def test_a_second_garbage_collector_or_a_later_line_is_refused(tmp_path: Path) -> None:
    d = server(tmp_path, jvm="-XX:+UseParallelGC\n")
    r = bridge.run_playbook("apply.yml", extravars=_vars(d, {"jvm_gc": "G1"}))
    assert not r.ok and "selects a garbage collector too" in (r.reason or "")
    assert (d / "jvm.options").read_text() == "-XX:+UseParallelGC\n"
    # A line after knobflow's block (moved there by hand) would win over it: refused, named.
    text = M.render_jvm("-Dx=1\n", ["-Xmx64m"]) + "-Xmx2g\n"
    _, errors = M.jvm_conflicts(text, ["-Xmx64m"])
    assert errors and "comes after knobflow's block and wins" in errors[0]


def test_validate_playbook_names_the_tunable_the_role_cannot_apply(tmp_path: Path) -> None:
    d = server(tmp_path)
    good = [
        {"name": "executor_max_threads", "type": "int", "low": 8, "high": 512, "default": -1},
        {"name": "jvm_gc", "type": "categorical", "choices": ["G1", "Parallel"]},
    ]
    v = {
        "liberty_server_dir": str(d),
        "knobflow": {"layers": {"rt": {"role": "liberty"}}, "validate": ["rt"], "tunables": {"rt": good}},
    }
    r = bridge.run_playbook("validate.yml", extravars=v)
    assert r.ok, r.reason
    v["knobflow"]["tunables"]["rt"] = [
        *good,
        {"name": "jvm_gc2", "type": "int"},
        {"name": "executor_max_threads", "type": "int", "low": 1, "high": 8},
    ]
    r = bridge.run_playbook("validate.yml", extravars=v)
    assert not r.ok
    assert "tunable 'jvm_gc2': the liberty role does not know it" in (r.reason or "")
    assert "tunable 'executor_max_threads': value 1 must be between 4 and 100000 or -1" in (r.reason or "")
