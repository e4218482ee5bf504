"""The PostgreSQL roles for real: postgresql_cluster (set-up), postgresql (layer), bench_pgbench (benchmark).

One private PostgreSQL 15 cluster for the module, made by the postgresql_cluster role through
playbooks/setup.yml and removed by its `remove` tasks through playbooks/teardown.yml, even when a
test fails. Every test leaves the cluster as it found it (reverted).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import REPO

pytestmark = pytest.mark.slow

BIN = Path("/usr/lib/postgresql/15/bin")
MARKER = Path("/tmp/knobflow-pwned")
if not (BIN / "initdb").exists():
    pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql-15)", allow_module_level=True)


@dataclass
class Cluster:
    base: Path
    datadir: Path
    socket_dir: Path
    port: int

    def sql(self, query: str, database: str = "postgres") -> str:
        conn = ["-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", database]
        out = subprocess.run(
            [str(BIN / "psql"), "-XAtq", *conn, "-c", query],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    def show(self, *names: str) -> dict[str, str]:
        return {n: self.sql(f"SHOW {n}") for n in names}

    def pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])

    def files(self) -> dict[str, bytes]:
        """The configuration files (and knobflow's state files) of the data directory."""
        return {
            p.name: p.read_bytes()
            for p in sorted(self.datadir.iterdir())
            if p.is_file() and (p.name.endswith(".conf") or "knobflow" in p.name)
        }

    def vars(self, settings: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "knobflow": {
                "experiment": "pg-test",
                "trial": 0,
                "layers": {"stack": {"role": "postgresql"}},
                "params": {"stack": settings or {}},
            },
            "postgresql_cluster_datadir": str(self.datadir),
            **extra,
        }


def _setup_vars(datadir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "knobflow": {"setup": [{"role": "postgresql_cluster"}]},
        "postgresql_cluster_datadir": str(datadir),
        "postgresql_cluster_pgbench_scale": 2,
        **extra,
    }


def _teardown_vars(datadir: Path, tasks_from: str) -> dict[str, Any]:
    return {
        "knobflow": {"teardown": [{"role": "postgresql_cluster", "tasks_from": tasks_from}]},
        "postgresql_cluster_datadir": str(datadir),
    }


def _kill_leftover(datadir: Path) -> None:
    """Last resort when the remove playbook failed: stop the postmaster by signal."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # /tmp/pytest-of-root is 0700: the cluster's OS user (knobflow-pg when root) could not reach a
    # data directory there. A directory of our own under /tmp, searchable by others, instead.
    base = Path(tempfile.mkdtemp(prefix="kfpg-", dir="/tmp"))
    base.chmod(0o711)
    datadir = base / "pgdata"
    try:
        r = bridge.run_playbook("setup.yml", extravars=_setup_vars(datadir))
        assert r.ok, r.reason
        conf = (datadir / "knobflow-cluster.conf").read_text()
        port = int(next(line.split("=")[1] for line in conf.splitlines() if line.startswith("port =")))
        yield Cluster(base, datadir, base / "socket", port)
    finally:
        r = bridge.run_playbook("teardown.yml", extravars=_teardown_vars(datadir, "remove"))
        if not r.ok:
            _kill_leftover(datadir)
        shutil.rmtree(base, ignore_errors=True)
        assert r.ok, r.reason


@pytest.fixture
def reverted(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, reverted after the test whatever happens (a failed test must not leak settings)."""
    MARKER.unlink(missing_ok=True)
    try:
        yield cluster
    finally:
        if any(cluster.datadir.glob("*.knobflow-*")):
            bridge.run_playbook("revert.yml", extravars=cluster.vars())
        MARKER.unlink(missing_ok=True)


def _cases(tmp_path: Path, role: str, cases: list[dict[str, Any]], extravars: dict[str, Any]) -> list[str]:
    """Include role once per case (a dict of its variables) in ONE playbook run: each failure message, or "ok".

    A case's variables are include_role vars, below extra variables: vary none of those.
    """
    import json

    tasks: list[dict[str, Any]] = [
        {
            "name": f"Case {i}",
            "block": [
                {"ansible.builtin.include_role": {"name": role}, "vars": case},
                {"ansible.builtin.set_fact": {"results": "{{ results + ['ok'] }}"}},
            ],
            "rescue": [{"ansible.builtin.set_fact": {"results": "{{ results + [ansible_failed_result.msg] }}"}}],
        }
        for i, case in enumerate(cases)
    ]
    tasks.append({"ansible.builtin.set_stats": {"data": {"results": "{{ results }}"}, "per_host": False}})
    play = [{"name": "Cases", "hosts": "all", "gather_facts": False, "vars": {"results": []}, "tasks": tasks}]
    playbook = tmp_path / "cases.yml"
    playbook.write_text(json.dumps(play))
    r = bridge.run_playbook(playbook, extravars=extravars)
    assert r.ok, r.reason
    results = r.stats["results"]
    assert len(results) == len(cases)
    return [str(m) for m in results]


def _apply(c: Cluster, settings: dict[str, Any], check: bool = False, **extra: Any) -> bridge.RunResult:
    return bridge.run_playbook("apply.yml", extravars=c.vars(settings, **extra), check=check, diff=check)


# ---------------------------------------------------------------------------------------------
# postgresql_cluster


def test_cluster_is_private_idempotent_and_restartable(cluster: Cluster) -> None:
    assert cluster.port != 5432
    assert cluster.sql("SHOW listen_addresses") == "127.0.0.1"
    assert cluster.sql("SHOW unix_socket_directories") == str(cluster.socket_dir)
    assert cluster.sql("SHOW fsync") == "on" and cluster.sql("SHOW synchronous_commit") == "on"
    assert cluster.sql("SELECT count(*) FROM pgbench_branches", database="pgbench") == "2"
    status = Path(f"/proc/{cluster.pid()}/status").read_text()
    uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
    if os.geteuid() == 0:
        import pwd

        assert pwd.getpwuid(uid).pw_name == "knobflow-pg", "the server must not run as root"
    assert oct(cluster.socket_dir.stat().st_mode & 0o777) == "0o700"

    again = bridge.run_playbook("setup.yml", extravars=_setup_vars(cluster.datadir))
    assert again.ok, again.reason
    assert again.changed == [], "a second set-up must change nothing"

    stop = bridge.run_playbook("teardown.yml", extravars=_teardown_vars(cluster.datadir, "stop"))
    assert stop.ok, stop.reason
    assert not (cluster.datadir / "postmaster.pid").exists()
    started = bridge.run_playbook("setup.yml", extravars=_setup_vars(cluster.datadir))
    assert started.ok, started.reason
    assert started.changed == ["localhost: Create, start and load the PostgreSQL cluster"]
    assert cluster.sql("SELECT count(*) FROM pgbench_accounts", database="pgbench") == "200000", "no reload of data"

    # Another port asked for: the cluster's address is rewritten and the server restarted on it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    moved = bridge.run_playbook("setup.yml", extravars=_setup_vars(cluster.datadir, postgresql_cluster_port=free))
    assert moved.ok, moved.reason
    old_port, cluster.port = cluster.port, free
    try:
        assert cluster.sql("SHOW port") == str(free)
    finally:
        restore = _setup_vars(cluster.datadir, postgresql_cluster_port=old_port)
        back = bridge.run_playbook("setup.yml", extravars=restore)
        cluster.port = old_port
    assert back.ok, back.reason
    assert cluster.sql("SHOW port") == str(old_port)


def test_cluster_refuses_bad_parameters(cluster: Cluster, tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    other = str(cluster.base / "other" / "pgdata")
    cases = [
        ({"postgresql_cluster_port": 5432}, "5432 is the port of the machine's own PostgreSQL server"),
        ({"postgresql_cluster_datadir": "/tmp/kfpg-$(touch /tmp/knobflow-pwned)/pgdata"}, "choose a plainer path"),
        ({"postgresql_cluster_database": "x; touch /tmp/knobflow-pwned"}, "must be a plain identifier"),
    ]
    if os.geteuid() == 0:
        private = cluster.base / "private"
        private.mkdir(mode=0o700, exist_ok=True)
        cases.append(
            ({"postgresql_cluster_datadir": str(private / "x" / "pgdata")}, f"knobflow-pg cannot reach {private} ")
        )
    got = _cases(tmp_path, "postgresql_cluster", [{"postgresql_cluster_datadir": other, **v} for v, _ in cases], {})
    for (_, message), msg in zip(cases, got, strict=True):
        assert message in msg, msg
    assert not MARKER.exists()
    assert not (cluster.base / "other").exists()
    assert not (cluster.base / "private" / "x").exists(), "nothing is created for a user that cannot reach it"


# ---------------------------------------------------------------------------------------------
# postgresql (layer role)

NAMES = ("shared_buffers", "work_mem", "checkpoint_timeout", "random_page_cost", "wal_compression")


def test_apply_restart_idempotence_check_mode_and_exact_revert(reverted: Cluster) -> None:
    c = reverted
    original_files = c.files()
    original_show = c.show(*NAMES)
    pid = c.pid()

    # A sighup setting alone: a reload, no restart.
    r = _apply(c, {"checkpoint_timeout_s": 420})
    assert r.ok, r.reason
    assert c.show("checkpoint_timeout") == {"checkpoint_timeout": "7min"}
    assert c.pid() == pid, "a sighup setting must not restart the server"

    # With a postmaster setting: a restart.
    settings = {
        "shared_buffers_mb": 160,
        "work_mem_kb": 6144,
        "checkpoint_timeout_s": 420,
        "random_page_cost": 1.5,
        "wal_compression": "lz4",
    }
    r = _apply(c, settings)
    assert r.ok, r.reason
    assert r.changed == ["localhost: Apply PostgreSQL settings"]
    assert c.show(*NAMES) == {
        "shared_buffers": "160MB",
        "work_mem": "6MB",
        "checkpoint_timeout": "7min",
        "random_page_cost": "1.5",
        "wal_compression": "lz4",
    }
    assert c.pid() != pid, "shared_buffers needs a restart"
    pid = c.pid()
    include = (c.datadir / "knobflow.conf").read_text()
    assert "shared_buffers = '160MB'\n" in include and "work_mem = '6144kB'\n" in include
    conf = (c.datadir / "postgresql.conf").read_bytes()
    assert conf.count(b"include_if_exists = 'knobflow.conf'") == 1

    again = _apply(c, settings)
    assert again.ok, again.reason
    assert again.changed == [], "a second apply of the same settings must change nothing"
    assert c.pid() == pid

    applied_files = c.files()
    check = _apply(c, {"shared_buffers_mb": 192, "work_mem_kb": 2048}, check=True)
    assert check.ok, check.reason
    assert check.changed == ["localhost: Apply PostgreSQL settings"], "check mode reports the change"
    assert c.files() == applied_files, "check mode must write nothing"
    assert c.show("shared_buffers", "work_mem") == {"shared_buffers": "160MB", "work_mem": "6MB"}
    assert c.pid() == pid, "check mode must not restart"

    check_revert = bridge.run_playbook("revert.yml", extravars=c.vars(), check=True)
    assert check_revert.ok and check_revert.changed
    assert c.files() == applied_files and c.pid() == pid

    r = bridge.run_playbook("revert.yml", extravars=c.vars())
    assert r.ok, r.reason
    assert c.files() == original_files, "postgresql.conf byte for byte, no include file, no state left"
    assert not (c.datadir / "knobflow.conf").exists()
    assert c.show(*NAMES) == original_show
    assert c.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert bridge.run_playbook("revert.yml", extravars=c.vars()).changed == [], "a second revert changes nothing"


def test_revert_keeps_the_first_original_over_several_applies(reverted: Cluster) -> None:
    c = reverted
    original_files = c.files()
    assert _apply(c, {"work_mem_kb": 8192, "effective_io_concurrency": 10}).ok
    # A value with a unit is rounded to the setting's unit, as PostgreSQL does: 1500 ms is 2 s.
    assert _apply(c, {"work_mem": "16MB", "autovacuum_naptime_ms": 1500}).ok
    assert c.show("work_mem", "effective_io_concurrency", "autovacuum_naptime") == {
        "work_mem": "16MB",
        "effective_io_concurrency": "1",
        "autovacuum_naptime": "2s",
    }
    assert bridge.run_playbook("revert.yml", extravars=c.vars()).ok
    assert c.files() == original_files
    assert c.show("work_mem", "autovacuum_naptime") == {"work_mem": "4MB", "autovacuum_naptime": "1min"}


INVALID = [
    ({"shared_bufers_mb": 256}, "shared_bufers_mb: unknown setting"),
    ({"work_mem_kb": 10}, "work_mem_kb: 10kB is out of range: work_mem takes 64 to 2147483647 kB"),
    ({"max_connections": 0}, "max_connections: 0 is out of range"),
    ({"wal_compression": "bogus"}, "wal_compression: must be one of"),
    ({"random_page_cost": "fast"}, "random_page_cost: must be a number"),
    ({"shared_buffers_kb": 64}, "shared_buffers_kb: 64kB is out of range: shared_buffers takes 16 to 1073741823 8kB"),
    ({"work_mem_s": 5}, "work_mem_s: work_mem is a memory setting"),
    ({"port": 5433}, "port: knobflow does not set port"),
    ({"archive_command": "true"}, "archive_command: knobflow does not set archive_command"),
    ({"fsync": False}, "fsync: fsync = off is not durability-safe"),
    ({"synchronous_commit": "off"}, "synchronous_commit = off is not durability-safe"),
    ({"full_page_writes": "off"}, "full_page_writes = off is not durability-safe"),
    # Shell metacharacters: rejected, never near a shell.
    ({"work_mem_kb": "1; touch /tmp/knobflow-pwned #"}, "work_mem_kb: must be a number"),
    ({"wal_compression": "lz4$(touch /tmp/knobflow-pwned)"}, "wal_compression: must be one of"),
    ({"log_line_prefix": "%m\ninclude '/tmp/knobflow-pwned'"}, "log_line_prefix: a value with a newline"),
    ({"work_mem; touch /tmp/knobflow-pwned": 1}, "a setting name must match"),
    ({"shared_buffers": "`touch /tmp/knobflow-pwned`"}, "shared_buffers: must be a number"),
]


def test_invalid_unsafe_or_shelly_settings_fail_with_the_setting_named_and_change_nothing(
    reverted: Cluster, tmp_path: Path
) -> None:
    c = reverted
    before, show, pid = c.files(), c.show(*NAMES), c.pid()
    cases = [{"postgresql_settings": {"work_mem_kb": 8192, **settings}} for settings, _ in INVALID]
    got = _cases(tmp_path, "postgresql", cases, c.vars())
    for (settings, message), msg in zip(INVALID, got, strict=True):
        assert message in msg, (settings, msg)
        assert msg.startswith("invalid PostgreSQL settings: ")
    assert c.files() == before and c.show(*NAMES) == show and c.pid() == pid
    assert not MARKER.exists()


def test_a_failed_restart_puts_the_previous_configuration_back(reverted: Cluster) -> None:
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory = 1: the kernel would map 100 GB of shared memory")
    c = reverted
    assert _apply(c, {"work_mem_kb": 8192}).ok
    applied = c.files()
    # Valid for pg_settings, impossible for this machine: the server cannot map 100 GB of shared memory.
    r = _apply(c, {"work_mem_kb": 8192, "shared_buffers_gb": 100})
    assert not r.ok
    assert "the server did not restart with the new settings (shared_buffers)" in (r.reason or ""), r.reason
    assert "the previous configuration is back" in (r.reason or "")
    assert c.files() == applied
    assert c.show("shared_buffers", "work_mem") == {"shared_buffers": "128MB", "work_mem": "8MB"}


def test_real_settings_with_many_digits_apply_and_are_idempotent(reverted: Cluster) -> None:
    """A tuner's floats have 16 digits; pg_settings shows reals with 6 (%g). That is not a mismatch."""
    c = reverted
    original = c.show("random_page_cost", "checkpoint_completion_target", "bgwriter_lru_multiplier")
    settings = {
        "random_page_cost": 5.18312729321689,
        "checkpoint_completion_target": 0.8284080425777567,
        "bgwriter_lru_multiplier": 0.4538130713472821,
    }
    r = _apply(c, settings)
    assert r.ok, r.reason
    assert c.show(*settings) == {
        "random_page_cost": "5.18313",
        "checkpoint_completion_target": "0.828408",
        "bgwriter_lru_multiplier": "0.453813",
    }
    assert _apply(c, settings).changed == [], "the same floats again: nothing to change"
    assert bridge.run_playbook("revert.yml", extravars=c.vars()).ok
    assert c.show(*settings) == original


def _pg_ctl_restart(c: Cluster) -> None:
    owner = c.datadir.stat()
    subprocess.run(
        [str(BIN / "pg_ctl"), "restart", "-D", str(c.datadir), "-m", "fast", "-w", "-l", str(c.datadir / "server.log")],
        cwd="/",
        user=owner.st_uid,
        group=owner.st_gid,
        extra_groups=[],
        start_new_session=True,
        capture_output=True,
        timeout=120,
        check=True,
    )


def test_a_restart_that_runs_other_settings_is_undone_by_restarting(reverted: Cluster) -> None:
    """The server restarts but runs another value (ALTER SYSTEM's postgresql.auto.conf wins over the
    include file): the files are put back and the server restarted, so it does not keep running
    with the rest of the rejected settings (wal_buffers here)."""
    c = reverted
    assert _apply(c, {"work_mem_kb": 8192}).ok
    applied, before_show = c.files(), c.show("shared_buffers", "wal_buffers", "work_mem")
    c.sql("ALTER SYSTEM SET shared_buffers = '200MB'")
    try:
        r = _apply(c, {"work_mem_kb": 8192, "shared_buffers_mb": 160, "wal_buffers_kb": 8192})
        assert not r.ok
        reason = r.reason or ""
        assert "shared_buffers_mb: the server runs with 200MB (from " in reason, reason
        assert "postgresql.auto.conf" in reason, reason
        assert "the previous configuration is back" in reason and "did not start again" not in reason, reason
        assert {k: v for k, v in c.files().items() if k != "postgresql.auto.conf"} == {
            k: v for k, v in applied.items() if k != "postgresql.auto.conf"
        }
        # Restarted with the files put back: wal_buffers is not the rejected 8MB (a postmaster setting
        # only a restart changes) but its default again, 1/32 of the 200MB postgresql.auto.conf sets.
        assert c.show("shared_buffers", "wal_buffers", "work_mem") == {
            **before_show,
            "shared_buffers": "200MB",
            "wal_buffers": "6400kB",
        }
    finally:
        c.sql("ALTER SYSTEM RESET shared_buffers")
        _pg_ctl_restart(c)
    assert c.files() == applied
    assert c.show("shared_buffers", "wal_buffers", "work_mem") == before_show


def test_unsafe_settings_are_allowed_when_asked(reverted: Cluster) -> None:
    c = reverted
    r = _apply(c, {"synchronous_commit": "off"}, postgresql_allow_unsafe=True)
    assert r.ok, r.reason
    assert c.sql("SHOW synchronous_commit") == "off"
    assert bridge.run_playbook("revert.yml", extravars=c.vars()).ok
    assert c.sql("SHOW synchronous_commit") == "on"


SHELLY = "`touch /tmp/knobflow-pwned` $(touch /tmp/knobflow-pwned); touch /tmp/knobflow-pwned # it's \\ %m"


def test_shell_metacharacters_in_a_string_setting_are_stored_literally(reverted: Cluster) -> None:
    c = reverted
    r = _apply(c, {"log_line_prefix": SHELLY})
    assert r.ok, r.reason
    assert c.sql("SHOW log_line_prefix") == SHELLY
    time.sleep(0.5)
    assert not MARKER.exists()


def test_validate_checks_tunables_against_the_server(reverted: Cluster) -> None:
    c = reverted

    def validate(tunables: list[dict[str, Any]]) -> bridge.RunResult:
        v = c.vars()
        v["knobflow"].update(validate=["stack"], tunables={"stack": tunables})
        return bridge.run_playbook("validate.yml", extravars=v)

    good = [
        {"name": "shared_buffers_mb", "type": "int", "low": 32, "high": 4096, "default": 128},
        {"name": "checkpoint_completion_target", "type": "float", "low": 0.5, "high": 0.99, "default": 0.9},
        {"name": "wal_compression", "type": "categorical", "choices": ["off", "pglz", "lz4"], "default": "off"},
        {"name": "wal_buffers_kb", "type": "int", "low": 64, "high": 65536, "default": 4096},
    ]
    r = validate(good)
    assert r.ok, r.reason
    r = validate([*good, {"name": "work_mem_kb", "type": "int", "low": 1, "high": 65536, "default": 4096}])
    assert not r.ok and "tunable 'work_mem_kb': low 1: 1kB is out of range" in (r.reason or ""), r.reason
    r = validate([{"name": "fsync", "type": "bool", "default": True}])
    assert not r.ok and "tunable 'fsync'" in (r.reason or "") and "durability-safe" in (r.reason or "")
    r = validate([{"name": "nosuch_mb", "type": "int", "low": 1, "high": 2, "default": 1}])
    assert not r.ok and "tunable 'nosuch_mb': unknown setting" in (r.reason or "")


# ---------------------------------------------------------------------------------------------
# bench_pgbench


def _bench_vars(c: Cluster, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    v = c.vars(settings, bench_pgbench_duration=2, bench_pgbench_clients=2, **extra)
    v["knobflow"]["benchmark"] = {"role": "bench_pgbench", "warmup": 0, "repeats": 2, "timeout": 60}
    return v


@pytest.mark.parametrize("builtin", ["tpcb-like", "select-only"])
def test_trial_with_pgbench_reports_sane_metrics(reverted: Cluster, builtin: str) -> None:
    c = reverted
    r = bridge.run_playbook("trial.yml", extravars=_bench_vars(c, {"work_mem_kb": 8192}, bench_pgbench_builtin=builtin))
    assert r.ok, r.reason
    m = r.stats["knobflow_metrics"]
    assert m["tps"] > 10
    assert m["failed_tx"] == 0
    assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"] <= m["latency_max_ms"]
    assert m["latency_avg_ms"] > 0 and m["transactions"] > 20
    assert m["logged_tx"] == m["transactions"]
    assert len(r.stats["knobflow_benchmark"]["runs"]) == 2
    assert r.stats["knobflow_benchmark"]["aggregate"] == "median"
    assert c.sql("SHOW work_mem") == "8MB"


def test_failing_benchmark_reverts_the_layer(reverted: Cluster) -> None:
    c = reverted
    before = c.files()
    r = bridge.run_playbook(
        "trial.yml", extravars=_bench_vars(c, {"work_mem_kb": 8192}, bench_pgbench_database="nosuchdb")
    )
    assert not r.ok
    assert "Run the benchmark command" in (r.reason or "") and "nosuchdb" in (r.reason or ""), r.reason
    assert c.files() == before and c.sql("SHOW work_mem") == "4MB"


def _wrapper() -> Any:
    path = REPO / "roles" / "bench_pgbench" / "files" / "pgbench_metrics.py"
    spec = importlib.util.spec_from_file_location("pgbench_metrics", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wrapper_percentiles_from_a_transaction_log(tmp_path: Path) -> None:
    w = _wrapper()
    (tmp_path / "tx.123").write_text("".join(f"0 {i} {1000 * (i + 1)} 0 1700000000 {i}\n" for i in range(100)))
    (tmp_path / "tx.123.1").write_text("1 0 failed 0 1700000000 5\n1 1 skipped 0 1700000000 6\n")
    latencies, failed, skipped = w.read_logs(str(tmp_path / "tx"))
    assert (len(latencies), failed, skipped) == (100, 1, 1)
    assert w.percentile(latencies, 0.5) == pytest.approx(50.5)
    assert w.percentile(latencies, 0.99) == pytest.approx(99.01)
    assert w.percentile([3.0], 0.95) == 3.0
    out = (
        "number of failed transactions: 0 (0.000%)\nlatency average = 1.5 ms\n"
        "tps = 1234.5 (without initial connection time)\n"
    )
    assert w.parse_stdout(out) == {"failed_tx": 0.0, "latency_avg_ms": 1.5, "tps": 1234.5}
