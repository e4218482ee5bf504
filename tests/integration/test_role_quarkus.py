"""The quarkus role, for real through knobflow's playbooks: application.properties files under
tmp_path, read back with Java's own java.util.Properties (when a JDK is installed; else with the
module's parser, which the first test checks against Java), idempotence, check mode, exact revert
with and without a file, bad names and values, and values that try to break out of their line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import role_module

pytestmark = pytest.mark.slow

M = role_module("quarkus", "quarkus_properties")
PWNED = Path("/tmp/knobflow-pwned")

PROPS_JAVA = r"""
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;
public class Props {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (Reader r = new InputStreamReader(new FileInputStream(args[0]), StandardCharsets.UTF_8)) { p.load(r); }
        StringBuilder sb = new StringBuilder("{");
        boolean first = true;
        for (String k : new TreeSet<>(p.stringPropertyNames())) {
            if (!first) sb.append(",");
            first = false;
            sb.append(q(k)).append(":").append(q(p.getProperty(k)));
        }
        System.out.println(sb.append("}"));
    }
    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append("\"").toString();
    }
}
"""


@pytest.fixture(scope="module")
def java_props(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A compiled Props class (java.util.Properties.load, as Quarkus reads the file), or None without a JDK."""
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        return None
    d = tmp_path_factory.mktemp("props")
    (d / "Props.java").write_text(PROPS_JAVA)
    subprocess.run([javac, "-d", str(d), str(d / "Props.java")], check=True, capture_output=True, timeout=120)
    return d


def load(path: Path, java: Path | None) -> dict[str, str]:
    """The properties in ``path`` as Java reads them (the module's own parser without a JDK)."""
    if java is not None:
        out = subprocess.run(
            ["java", "-cp", str(java), "Props", str(path)], check=True, capture_output=True, text=True, timeout=120
        )
        return dict(json.loads(out.stdout))
    return {k: v for k, v, _ in M.parse(path.read_text())}


def _vars(path: Path, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "quarkus_properties_path": str(path),
        **extra,
        "knobflow": {"layers": {"stack": {"role": "quarkus"}}, "params": {"stack": settings}},
    }


def _saved(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".knobflow-*"))


ORIGINAL = (
    "# My service\n"
    "quarkus.http.port = 8080\n"
    "quarkus.thread-pool.max-threads=10\n"
    "greeting.message=Hello \\\n"
    "    world\n"
    "! a bang comment\n"
    "%prod.quarkus.datasource.jdbc.max-size=50\n"
    "no.newline.at.end=yes"
)


def test_apply_idempotent_check_mode_and_exact_revert(tmp_path: Path, java_props: Path | None) -> None:
    props = tmp_path / "config" / "application.properties"
    props.parent.mkdir()
    props.write_text(ORIGINAL)
    os.chmod(props, 0o640)
    before = load(props, java_props)
    assert before == {k: v for k, v, _ in M.parse(ORIGINAL)}, "the module's parser reads as Java does"
    settings = {
        "thread_pool_max_threads": 64,
        "thread_pool_core_threads": 8.0,  # a float from a tuner is fine when integral
        "thread_pool_queue_size": "500",
        "datasource_max_size": 20,
        "datasource_acquisition_timeout_s": 3,
        "io_threads": 4,
        "http_max_body_size_mb": 16,
        "http_compression": True,
        "rest_pool": 12,
        "greeting": "Grüße, 100% \\ literal",
    }
    extra = {"quarkus_keys": {"rest_pool": "quarkus.rest-client.connection-pool-size", "greeting": "app.greeting"}}

    r = bridge.run_playbook("apply.yml", extravars=_vars(props, settings, **extra), check=True, diff=True)
    assert r.ok, r.reason
    assert r.changed == ["localhost: Apply Quarkus settings"], "check mode reports the change"
    assert props.read_text() == ORIGINAL and not _saved(props), "check mode writes nothing"

    r = bridge.run_playbook("apply.yml", extravars=_vars(props, settings, **extra))
    assert r.ok, r.reason
    after = load(props, java_props)
    expected = {
        **before,
        "quarkus.thread-pool.max-threads": "64",
        "quarkus.thread-pool.core-threads": "8",
        "quarkus.thread-pool.queue-size": "500",
        "quarkus.datasource.jdbc.max-size": "20",
        "quarkus.datasource.jdbc.acquisition-timeout": "3",
        "quarkus.http.io-threads": "4",
        "quarkus.http.limits.max-body-size": "16M",
        "quarkus.http.enable-compression": "true",
        "quarkus.rest-client.connection-pool-size": "12",
        "app.greeting": "Grüße, 100% \\ literal",
    }
    assert after == expected
    text = props.read_text()
    assert text.startswith(ORIGINAL + "\n"), "everything before the block is kept (a final newline added)"
    assert (props.stat().st_mode & 0o777) == 0o640, "the file keeps its mode"

    r = bridge.run_playbook("apply.yml", extravars=_vars(props, settings, **extra))
    assert r.ok, r.reason
    assert r.changed == [], "a second apply changes nothing"
    assert props.read_text() == text

    # A different configuration replaces the block; revert still restores the very first original.
    r = bridge.run_playbook("apply.yml", extravars=_vars(props, {"io_threads": 2}))
    assert r.ok and r.changed, r.reason
    assert load(props, java_props) == {**before, "quarkus.http.io-threads": "2"}

    r = bridge.run_playbook("revert.yml", extravars=_vars(props, {}), check=True)
    assert r.ok and r.changed, r.reason
    assert load(props, java_props)["quarkus.http.io-threads"] == "2", "check mode does not revert"

    r = bridge.run_playbook("revert.yml", extravars=_vars(props, {}))
    assert r.ok, r.reason
    assert props.read_bytes() == ORIGINAL.encode(), "revert is byte for byte"
    assert (props.stat().st_mode & 0o777) == 0o640
    assert not _saved(props)
    r = bridge.run_playbook("revert.yml", extravars=_vars(props, {}))
    assert r.ok and r.changed == [], "a second revert has nothing to do"


def test_absent_file_is_created_then_removed_with_its_folders(tmp_path: Path, java_props: Path | None) -> None:
    props = tmp_path / "app" / "config" / "application.properties"
    marker = tmp_path / "restarted"
    extra = {"quarkus_restart_argv": ["/usr/bin/touch", str(marker)], "quarkus_profile": "prod"}
    settings = {"thread_pool_max_threads": 32, "event_loops_pool_size": 2}
    r = bridge.run_playbook("apply.yml", extravars=_vars(props, settings, **extra))
    assert r.ok, r.reason
    assert load(props, java_props) == {
        "%prod.quarkus.thread-pool.max-threads": "32",
        "%prod.quarkus.vertx.event-loops-pool-size": "2",
    }
    assert marker.exists(), "the restart command runs after a change"
    marker.unlink()
    r = bridge.run_playbook("apply.yml", extravars=_vars(props, settings, **extra))
    assert r.ok and r.changed == [] and not marker.exists(), "no change, no restart"
    r = bridge.run_playbook("revert.yml", extravars=_vars(props, {}, **extra))
    assert r.ok, r.reason
    assert not (tmp_path / "app").exists(), "the file and the folders made for it are gone"
    assert marker.exists(), "the restart command runs after the revert too"


def test_bad_names_and_values_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    props = tmp_path / "application.properties"
    props.write_text("a=1\n")
    settings = {
        "thread_pool_max_threads": "many",
        "io_threads": 0,
        "http_compression": "yes",
        "no_such_tunable": 3,
        "evil": "1\n other.key=evil",
    }
    r = bridge.run_playbook("apply.yml", extravars=_vars(props, settings, quarkus_keys={"evil": "app.value"}))
    assert not r.ok
    reason = r.reason or ""
    assert "Apply Quarkus settings" in reason
    assert "thread_pool_max_threads (quarkus.thread-pool.max-threads): must be an integer, got 'many'" in reason
    assert "io_threads (quarkus.http.io-threads): must be between 1 and 1024, got 0" in reason
    assert "http_compression (quarkus.http.enable-compression): must be true or false" in reason
    assert "unknown setting 'no_such_tunable'" in reason
    assert "evil (app.value): holds a line break" in reason
    assert props.read_text() == "a=1\n" and not _saved(props)


@pytest.mark.parametrize(
    "value",
    [
        "1; touch /tmp/knobflow-pwned #",
        "$(touch /tmp/knobflow-pwned)",
        "`touch /tmp/knobflow-pwned`",
        " leading space, trailing \\",
        "a=b:c #!not a comment",
    ],
)
def test_values_that_try_to_break_out_are_written_literally(value: str, tmp_path: Path) -> None:
    """Through the module directly (as the role runs it): one key, holding exactly the value."""
    PWNED.unlink(missing_ok=True)
    entries, errors = M.build({"msg": value}, {"msg": "app.msg"}, "", "")
    assert not errors
    text = M.render("x=1\n", entries)
    assert {k: v for k, v, _ in M.parse(text)} == {"x": "1", "app.msg": value}
    assert not PWNED.exists()


def test_injection_through_the_playbook(tmp_path: Path, java_props: Path | None) -> None:
    PWNED.unlink(missing_ok=True)
    props = tmp_path / "application.properties"
    props.write_text("x=1\n")
    value = "$(touch /tmp/knobflow-pwned); `touch /tmp/knobflow-pwned` = : # \\"
    extra = {"quarkus_keys": {"msg": "app.msg"}, "quarkus_restart_argv": ["/bin/echo", value]}
    r = bridge.run_playbook("apply.yml", extravars=_vars(props, {"msg": value}, **extra))
    assert r.ok, r.reason
    assert load(props, java_props) == {"x": "1", "app.msg": value}
    assert not PWNED.exists()
    # A newline cannot reach the file: the value is refused, and nothing changes.
    r = bridge.run_playbook("apply.yml", extravars=_vars(props, {"msg": "1\n other.key=evil"}, **extra))
    assert not r.ok and "msg (app.msg): holds a line break" in (r.reason or "")
    assert load(props, java_props) == {"x": "1", "app.msg": value}


@pytest.mark.parametrize(
    ("settings", "keys", "message"),
    [
        ({"thread_pool_core_threads": 50, "thread_pool_max_threads": 10}, {}, "thread pool: quarkus.thread-pool"),
        ({"datasource_min_size": 9, "datasource_max_size": 5}, {}, "datasource: quarkus.datasource.jdbc.min-size=9"),
        ({"a": 1}, {"a": "bad key with spaces"}, "is not a Quarkus configuration key"),
        ({"a": "${HOME}"}, {"a": "app.home"}, "property expression"),
        ({"a": 1, "b": 2}, {"a": "app.x", "b": "app.x"}, "sets app.x, which a sets too"),
        ({"a": 64}, {"a": "quarkus.thread-pool.max-threads"}, None),  # a mapped known key keeps its rule
        ({"a": -3}, {"a": "quarkus.thread-pool.max-threads"}, "must be between 1 and 100000"),
        ({"log_level": "debug"}, {}, None),
    ],
)
def test_build_rules(settings: dict[str, Any], keys: dict[str, str], message: str | None) -> None:
    _, errors = M.build(settings, keys, "", "")
    if message is None:
        assert errors == []
    else:
        assert any(message in e for e in errors), errors


def test_named_datasource_and_block_placement() -> None:
    entries, errors = M.build({"datasource_max_size": 8}, {}, "", "orders")
    assert not errors
    assert entries == [('quarkus.datasource."orders".jdbc.max-size', "8")]
    # A block in the middle is replaced where it is; a line after it that sets the same key is reported.
    text = M.render("a=1\n", [("k", "1")]) + "k=2\n"
    again = M.render(text, [("k", "3")])
    assert again.endswith("k=2\n") and "k=3" in again
    assert any("that line wins" in s for s in M.shadowed_by(again, [("k", "3")]))
    # The line before the block must not continue onto it.
    with pytest.raises(ValueError, match="line continuation"):
        M.render("a=1\\\n", [("k", "1")])
    # CRLF files get CRLF lines.
    assert M.render("a=1\r\n", [("k", "1")]).endswith("k=1\r\n# END knobflow managed properties\r\n")


def test_validate_playbook_names_the_tunable_the_role_cannot_apply(tmp_path: Path) -> None:
    base = {
        "quarkus_properties_path": str(tmp_path / "application.properties"),
        "quarkus_keys": {"pool": "quarkus.rest-client.connection-pool-size"},
    }
    good = [
        {"name": "thread_pool_max_threads", "type": "int", "low": 8, "high": 256, "default": 64},
        {"name": "http_compression", "type": "categorical", "choices": [True, False]},
        {"name": "pool", "type": "int", "low": 1, "high": 50},
    ]
    v = {**base, "knobflow": {"layers": {"app": {"role": "quarkus"}}, "validate": ["app"], "tunables": {"app": good}}}
    r = bridge.run_playbook("validate.yml", extravars=v)
    assert r.ok, r.reason
    bad = [*good, {"name": "io_threads", "type": "int", "low": 0, "high": 8}, {"name": "heap_mb", "type": "int"}]
    v["knobflow"]["tunables"] = {"app": bad}
    r = bridge.run_playbook("validate.yml", extravars=v)
    assert not r.ok
    assert "tunable 'io_threads' (quarkus.http.io-threads): value 0 must be between 1 and 1024" in (r.reason or "")
    assert "tunable 'heap_mb': the quarkus role does not know it" in (r.reason or "")
    assert not (tmp_path / "application.properties").exists()
