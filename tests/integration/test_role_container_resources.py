"""The container_resources role for real: cgroup v1 on this machine's hierarchies (a process really
throttled, a memory limit really enforced, a benchmark started inside the cgroups), cgroup v2 on a
directory tree standing in for a cgroup2 mount (this machine's cgroup2 mount has no cpu or memory
controller), Docker through a recording fake `docker` first on PATH (no engine runs here), and
Kubernetes patches rendered to files and checked against the Kubernetes schema (no cluster here)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CG = Path("/sys/fs/cgroup")
V1 = ("cpu", "cpuacct", "memory", "pids", "cpuset")
MIB = 1024 * 1024
UNLIMITED = "9223372036854771712"
MARKER = Path("/tmp/knobflow-pwned")
MODULE = REPO / "roles" / "container_resources" / "library" / "container_resources.py"

needs_v1 = pytest.mark.skipif(
    os.geteuid() != 0
    or not (CG / "cpu" / "cpu.cfs_quota_us").exists()
    or not (CG / "memory" / "cgroup.procs").exists(),
    reason="needs root and cgroup v1 cpu and memory hierarchies at /sys/fs/cgroup",
)


# ---------------------------------------------------------------------------------------------
# helpers


def _vars(tmp_path: Path, settings: dict[str, Any], **role_vars: Any) -> dict[str, Any]:
    v: dict[str, Any] = {
        "knobflow": {
            "experiment": "t",
            "trial": 0,
            "home": str(tmp_path / "home"),
            "params": {"res": settings},
            "layers": {"res": {"role": "container_resources"}},
        },
        "container_resources_state_dir": str(tmp_path / "state"),
    }
    v.update(role_vars)
    return v


def _play(playbook: str, tmp_path: Path, settings: dict[str, Any], check: bool = False, **role_vars: Any):
    return bridge.run_playbook(playbook, extravars=_vars(tmp_path, settings, **role_vars), check=check, diff=True)


def _module(tmp_path: Path, **args: Any) -> dict[str, Any]:
    """Run the role's module directly (as Ansible does, with its arguments in a file) and return its result."""
    args.setdefault("state_dir", str(tmp_path / "state"))
    path = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    out = subprocess.run([sys.executable, str(MODULE), str(path)], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def _self_cgroup(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path.strip("/")
    return ""


def _mem_base() -> Path:
    """Our own memory cgroup: the tests create theirs below it (parent '@self'), inside this session's accounting."""
    return CG / "memory" / _self_cgroup("memory")


def _membership(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls or "unified"] = path
    return out


def _snapshot(pids: list[int]) -> dict[str, Any]:
    """The cgroups under the hierarchies the tests touch (our own memory cgroup's subtree for memory), and
    where each process is."""
    dirs = []
    for h in V1:
        base = _mem_base() if h == "memory" else CG / h
        for root, _subdirs, _files in os.walk(base):
            dirs.append(root)
    return {"dirs": sorted(dirs), "members": {pid: _membership(pid) for pid in pids}}


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(pid: int, seconds: float = 2.0) -> float:
    before, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - before) / (time.monotonic() - t0)


def _remove_cgroups(top: str) -> None:
    """Kill the processes in every cgroup called ``top`` (and below) in the hierarchies, then remove them."""
    for h in V1:
        base = _mem_base() if h == "memory" else CG / h
        d = base / top
        if not d.is_dir():
            continue
        for root, _subdirs, _files in os.walk(d):
            for pid in (Path(root) / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        for root, _subdirs, _files in sorted(os.walk(d), key=lambda w: -len(w[0])):
            while True:
                try:
                    os.rmdir(root)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


@pytest.fixture
def cgname() -> Iterator[str]:
    """A unique cgroup name; every cgroup of that name is removed afterwards, its processes killed first."""
    top = f"knobflow-test-{uuid.uuid4().hex[:8]}"
    yield top
    _remove_cgroups(top)


@pytest.fixture
def busy() -> Iterator[tuple[int, int]]:
    """A process tree: a sleeping parent and its busy child. Both are killed afterwards."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    yield parent.pid, child
    for pid in (child, parent.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    parent.wait()


@pytest.fixture(autouse=True)
def no_marker() -> Iterator[None]:
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "a value reached a shell"


# ---------------------------------------------------------------------------------------------
# cgroup v1, for real


@needs_v1
def test_cgroup_v1_process_tree_throttled_idempotent_check_mode_and_exact_revert(
    tmp_path: Path, cgname: str, busy: tuple[int, int]
) -> None:
    parent, child = busy
    name = f"{cgname}/exp"
    before = _snapshot([parent, child])
    role = dict(container_resources_cgroup_name=name, container_resources_cgroup_parent="@self")
    settings = {
        "cpu_limit": 0.2,
        "cpu_request": 0.5,
        "memory_limit_mb": 256,
        "memory_request_mb": 128,
        "pids_limit": 64,
        "cpuset_cpus": "0",
    }

    r = _play("apply.yml", tmp_path, settings, container_resources_pid=parent, **role)
    assert r.ok, r.reason
    assert r.changed
    cpu, mem, pids = CG / "cpu" / name, _mem_base() / name, CG / "pids" / name
    # The real cgroup files.
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cpu / "cpu.shares").read_text().strip() == "512"
    assert (mem / "memory.limit_in_bytes").read_text().strip() == str(256 * MIB)
    assert (mem / "memory.soft_limit_in_bytes").read_text().strip() == str(128 * MIB)
    assert (pids / "pids.max").read_text().strip() == "64"
    assert (CG / "cpuset" / name / "cpuset.cpus").read_text().strip() == "0"
    for pid in (parent, child):
        m = _membership(pid)
        assert m["cpu"] == f"/{name}" and m["pids"] == f"/{name}"
        assert m["memory"] == "/" + str(mem.relative_to(CG / "memory"))
        assert str(pid) in (cpu / "cgroup.procs").read_text().split()
    # The busy child really gets at most about 0.2 CPU (less when the machine is busy), and CFS throttles it.
    share = _cpu_share(child)
    assert 0.01 < share < 0.3, f"busy loop limited to 0.2 CPU used {share:.2f}"
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0 and int(stat["throttled_time"]) > 0, stat

    again = _play("apply.yml", tmp_path, settings, container_resources_pid=parent, **role)
    assert again.ok, again.reason
    assert again.changed == [], "a second apply must change nothing"

    touched = ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"]
    touched += ["memory.limit_in_bytes", "memory.soft_limit_in_bytes", "pids.max"]
    files = {p: p.read_text() for d in (cpu, mem, pids) for p in (d / f for f in touched) if p.exists()}
    assert len(files) == 6
    checked = _play("apply.yml", tmp_path, {"cpu_limit": 1.5, "memory_limit_mb": 512}, check=True, **role)
    assert checked.ok, checked.reason
    assert checked.changed, "check mode reports what it would change"
    assert {p: p.read_text() for p in files} == files, "check mode must not write"

    # A setting left out goes back to the cgroup's original value (the settings replace, not merge).
    fewer = _play("apply.yml", tmp_path, {"cpu_limit": 0.3}, container_resources_pid=parent, **role)
    assert fewer.ok, fewer.reason
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "30000"
    assert (cpu / "cpu.shares").read_text().strip() == "1024"
    assert (mem / "memory.limit_in_bytes").read_text().strip() == UNLIMITED
    assert (pids / "pids.max").read_text().strip() == "max"
    assert (CG / "cpuset" / name / "cpuset.cpus").read_text() == (CG / "cpuset" / "cpuset.cpus").read_text()

    reverted = _play("revert.yml", tmp_path, {}, **role)
    assert reverted.ok, reverted.reason
    assert _snapshot([parent, child]) == before, "revert must remove the cgroups and move the processes back"
    assert not list((tmp_path / "state").iterdir()), "revert forgets the saved state"
    again = _play("revert.yml", tmp_path, {}, **role)
    assert again.ok and again.changed == []


@needs_v1
def test_cgroup_v1_existing_cgroup_values_restored_and_its_own_processes_left(
    tmp_path: Path, cgname: str, busy: tuple[int, int]
) -> None:
    parent, child = busy
    d = CG / "cpu" / cgname
    d.mkdir()
    (d / "cpu.cfs_period_us").write_text("50000")
    (d / "cpu.cfs_quota_us").write_text("25000")
    (d / "cpu.shares").write_text("300")
    resident = subprocess.Popen(["/bin/sleep", "600"])
    try:
        (d / "cgroup.procs").write_text(str(resident.pid))
        original = {f: (d / f).read_text() for f in ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares")}
        role = dict(container_resources_cgroup_name=cgname, container_resources_pidfile=str(tmp_path / "app.pid"))
        (tmp_path / "app.pid").write_text(f"{parent}\n")
        r = _play("apply.yml", tmp_path, {"cpu_limit": 0.25, "cpu_shares": 100}, **role)
        assert r.ok, r.reason
        assert (d / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (d / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert (d / "cpu.shares").read_text().strip() == "100"
        assert _membership(child)["cpu"] == f"/{cgname}"
        r = _play("revert.yml", tmp_path, {}, **role)
        assert r.ok, r.reason
        assert {f: (d / f).read_text() for f in original} == original
        assert d.is_dir(), "a cgroup the role did not create stays"
        assert _membership(parent)["cpu"] == "/" and _membership(child)["cpu"] == "/"
        assert _membership(resident.pid)["cpu"] == f"/{cgname}", "a process the role did not move stays"
    finally:
        resident.kill()
        resident.wait()


def _bench_script(tmp_path: Path) -> Path:
    script = tmp_path / "bench.py"
    script.write_text(
        "import json, os, sys, time\n"
        "name, mode = sys.argv[1], sys.argv[2]\n"
        "lines = open('/proc/self/cgroup').read().splitlines()\n"
        "inside = [l for l in lines if l.split(':')[1] in ('cpu', 'memory')]\n"
        "ok = len(inside) == 2 and all(l.endswith('/' + name) for l in inside)\n"
        "if mode == 'alloc':\n"
        "    block = b'x' * (200 * 1024 * 1024)\n"
        "t0, c0 = time.monotonic(), sum(os.times()[:2])\n"
        "while time.monotonic() - t0 < 1.5:\n"
        "    pass\n"
        "share = (sum(os.times()[:2]) - c0) / (time.monotonic() - t0)\n"
        "print(json.dumps({'in_cgroup': 1 if ok else 0, 'cpu_share': share}))\n"
    )
    return script


@needs_v1
def test_cgroup_v1_benchmark_runs_inside_and_memory_limit_is_enforced(tmp_path: Path, cgname: str) -> None:
    name = f"{cgname}/exp"
    before = _snapshot([])
    script = _bench_script(tmp_path)

    def trial(mode: str):
        v = _vars(
            tmp_path,
            {"cpu_limit": 0.25, "memory_limit_mb": 64},
            container_resources_cgroup_name=name,
            container_resources_cgroup_parent="@self",
            bench_command_argv=["{{ ansible_playbook_python }}", str(script), name, mode],
            bench_command_cgroups="{{ container_resources_cgroup_paths }}",
        )
        v["knobflow"]["benchmark"] = {"role": "bench_command", "warmup": 0, "repeats": 1, "timeout": 60}
        return bridge.run_playbook("trial.yml", extravars=v)

    r = trial("spin")
    assert r.ok, r.reason
    metrics = r.stats["knobflow_metrics"]
    assert metrics["in_cgroup"] == 1, "the benchmark must start inside the cgroups"
    assert 0.01 < metrics["cpu_share"] < 0.35, metrics
    # 200 MiB under a 64 MiB limit: the kernel kills the benchmark; the trial fails and its rescue reverts.
    r = trial("alloc")
    assert not r.ok
    assert "exited with status -9" in (r.reason or ""), r.reason
    assert _snapshot([]) == before, "the failed trial's revert removed the cgroups"


# ---------------------------------------------------------------------------------------------
# cgroup v2: a stand-in directory tree (no cpu/memory controller on this machine's cgroup2 mount)

V2_FILES = {
    "cgroup.procs": "",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
    "memory.max": "max\n",
    "memory.low": "0\n",
    "pids.max": "max\n",
    "cpuset.cpus": "\n",
}


def _fake_v2(root: Path, enabled: str = "cpuset cpu io memory pids\n") -> Path:
    """A tree shaped like a cgroup2 mount with knobflow/exp already there (the kernel, not a plain
    directory, would create a new cgroup's files)."""
    for d, files in (
        (
            root,
            {
                "cgroup.controllers": "cpuset cpu io memory pids\n",
                "cgroup.subtree_control": "cpuset cpu io memory pids\n",
            },
        ),
        (root / "knobflow", {"cgroup.controllers": "cpuset cpu io memory pids\n", "cgroup.subtree_control": enabled}),
        (root / "knobflow" / "exp", {"cgroup.controllers": "cpuset cpu io memory pids\n", **V2_FILES}),
    ):
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
    (root / "cgroup.procs").write_text("1\n")
    return root


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_cgroup_v2_on_a_stand_in_tree(tmp_path: Path) -> None:
    root = _fake_v2(tmp_path / "cgroup2")
    before = _tree(root)
    role = dict(container_resources_cgroup_root=str(root), container_resources_cgroup_name="knobflow/exp")
    settings = {
        "cpu_limit": 0.5,
        "cpu_request": 1,
        "memory_limit_mb": 512,
        "memory_request_mb": 256,
        "pids_limit": 100,
        "cpuset_cpus": "0",
    }
    r = _play("apply.yml", tmp_path, settings, **role)
    assert r.ok, r.reason
    exp = root / "knobflow" / "exp"
    assert (exp / "cpu.max").read_text() == "50000 100000\n"
    assert (exp / "cpu.weight").read_text() == "39\n"  # 1024 shares, Kubernetes' shares-to-weight conversion
    assert (exp / "memory.max").read_text() == f"{512 * MIB}\n"
    assert (exp / "memory.low").read_text() == f"{256 * MIB}\n"
    assert (exp / "pids.max").read_text() == "100\n"
    assert (exp / "cpuset.cpus").read_text() == "0\n"
    assert (root / "knobflow" / "cgroup.subtree_control").read_text() == before[
        "knobflow/cgroup.subtree_control"
    ].decode()

    assert _play("apply.yml", tmp_path, settings, **role).changed == []
    applied = _tree(root)
    c = _play("apply.yml", tmp_path, {"cpu_limit": 2}, check=True, **role)
    assert c.ok and c.changed and _tree(root) == applied

    # A benchmark joining the stand-in writes its pid into cgroup.procs (the real-kernel check is skipped).
    v = _vars(
        tmp_path, settings, bench_command_argv=["/bin/echo", '{"x": 1}'], bench_command_cgroups=[str(exp)], **role
    )
    v["knobflow"]["benchmark"] = {"role": "bench_command", "warmup": 0, "repeats": 1}
    r = bridge.run_playbook("trial.yml", extravars=v)
    assert r.ok, r.reason
    assert (exp / "cgroup.procs").read_text().strip().isdigit()
    (exp / "cgroup.procs").write_text("")

    r = _play("revert.yml", tmp_path, {}, **role)
    assert r.ok, r.reason
    assert _tree(root) == before, "revert must put back every file byte for byte"


def test_cgroup_v2_controllers_enabled_and_disabled_and_a_new_cgroup_without_files_rolled_back(tmp_path: Path) -> None:
    root = _fake_v2(tmp_path / "cgroup2", enabled="\n")
    args = dict(cgroup_root=str(root), cgroup_name="knobflow/exp", settings={"cpu_limit": 1, "memory_limit_mb": 64})
    r = _module(tmp_path, **args)
    assert r["changed"], r
    # The stand-in records the write; a kernel would list "cpu memory" instead.
    assert (root / "knobflow" / "cgroup.subtree_control").read_text() == "+cpu +memory\n"
    r = _module(tmp_path, state="reverted", **{k: v for k, v in args.items() if k != "settings"})
    assert r["changed"], r
    assert (root / "knobflow" / "cgroup.subtree_control").read_text() == "-cpu -memory\n"
    # A new cgroup in a plain directory gets no interface files: the module fails and takes back what it made.
    r = _module(tmp_path, cgroup_root=str(root), cgroup_name="knobflow/new/leaf", settings={"cpu_limit": 1})
    assert r.get("failed"), r
    assert "is not a cgroup file system" in r["msg"] and "(rolled back)" in r["msg"]
    assert not (root / "knobflow" / "new").exists()
    assert not list((tmp_path / "state").glob("*.json"))


@pytest.mark.skipif(
    not (CG / "unified" / "cgroup.controllers").exists(), reason="no cgroup2 mount at /sys/fs/cgroup/unified"
)
def test_cgroup_v2_real_mount_without_the_controller_is_refused(tmp_path: Path) -> None:
    unified = CG / "unified"
    if "cpu" in (unified / "cgroup.controllers").read_text().split():
        pytest.skip("this cgroup2 mount has the cpu controller")
    before = sorted(p.name for p in unified.iterdir())
    role = dict(container_resources_cgroup_root=str(unified), container_resources_cgroup_name="knobflow-v2/exp")
    r = _play("apply.yml", tmp_path, {"cpu_limit": 0.5, "memory_limit_mb": 64}, **role)
    assert not r.ok
    assert "cpu_limit: needs the cpu controller" in (r.reason or "") and "memory_limit_mb" in (r.reason or "")
    assert sorted(p.name for p in unified.iterdir()) == before
    v = _vars(tmp_path, {}, **role)
    v["knobflow"].update(
        validate=["res"], tunables={"res": [{"name": "cpu_limit", "type": "float", "low": 0.1, "high": 1.0}]}
    )
    r = bridge.run_playbook("validate.yml", extravars=v)
    assert not r.ok and "tunable cpu_limit: needs the cpu controller" in (r.reason or ""), r.reason


# ---------------------------------------------------------------------------------------------
# docker: a recording fake first on PATH (no Docker engine runs here)

FAKE_DOCKER = r'''#!/usr/bin/env python3
"""Stand-in for the docker CLI and engine: records argv, answers inspect from a JSON file, applies
update with the engine's rules (a zero value changes nothing; --cpus conflicts with a quota)."""
import json, os, re, sys
from decimal import Decimal

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
state = os.environ["FAKE_DOCKER_STATE"]
db = json.load(open(state))

def size(flag, text):
    m = re.fullmatch(r"(\d+)([bkmg]?)", text.lower())
    if not m:
        sys.exit(f'invalid argument "{text}" for "{flag}" flag: invalid size')
    return int(m.group(1)) * {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]

if args[0] == "inspect":
    name = args[-1]
    if name not in db:
        sys.exit(f"Error: No such container: {name}")
    print(json.dumps([{"Id": "f" * 64, "Name": "/" + name, "HostConfig": db[name]}]))
elif args[0] == "update":
    name, pairs, new = args[-1], args[1:-1], {}
    fields = {"--cpus": "NanoCpus", "--cpu-period": "CpuPeriod", "--cpu-quota": "CpuQuota", "--cpu-shares": "CpuShares",
              "--memory": "Memory", "--memory-swap": "MemorySwap", "--memory-reservation": "MemoryReservation",
              "--pids-limit": "PidsLimit", "--cpuset-cpus": "CpusetCpus"}
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if flag not in fields:
            sys.exit(f"unknown flag: {flag}")
        if flag == "--cpus":
            new["NanoCpus"] = int(Decimal(value) * 10**9)
        elif flag == "--memory-swap" and value == "-1":
            new["MemorySwap"] = -1
        elif flag in ("--memory", "--memory-swap", "--memory-reservation"):
            new[fields[flag]] = size(flag, value)
        elif flag == "--cpuset-cpus":
            new["CpusetCpus"] = value
        else:
            new[fields[flag]] = int(value)
    if name not in db:
        sys.exit(f"Error: No such container: {name}")
    hc = db[name]
    if new.get("NanoCpus", 0) > 0 and (hc["CpuPeriod"] > 0 or hc["CpuQuota"] > 0):
        sys.exit("Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set")
    if (new.get("CpuPeriod", 0) > 0 or new.get("CpuQuota", 0) > 0) and hc["NanoCpus"] > 0:
        sys.exit("Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set")
    if new.get("Memory", 0) and new["Memory"] > hc["MemorySwap"] and not new.get("MemorySwap"):
        sys.exit("Memory limit should be smaller than already set memoryswap limit")
    for field, value in new.items():
        if field == "PidsLimit" or (field == "CpusetCpus" and value) or (field != "CpusetCpus" and value != 0):
            hc[field] = value
    json.dump(db, open(state, "w"))
    print(name)
else:
    sys.exit(f"unexpected: {args}")
'''

LIMITED = {
    "NanoCpus": 2 * 10**9,
    "CpuPeriod": 0,
    "CpuQuota": 0,
    "CpuShares": 512,
    "Memory": 1024 * MIB,
    "MemorySwap": 2048 * MIB,
    "MemoryReservation": 512 * MIB,
    "PidsLimit": 200,
    "CpusetCpus": "0-1",
}
BARE = {k: ("" if k == "CpusetCpus" else 0) for k in LIMITED}


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker"
    exe.write_text(FAKE_DOCKER.replace("/usr/bin/env python3", sys.executable, 1))
    exe.chmod(0o755)
    state, log = tmp_path / "docker.json", tmp_path / "docker.log"
    state.write_text(json.dumps({"web": LIMITED, "bare": BARE}))
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    return {"state": state, "log": log}


def _docker_calls(fake: dict[str, Path], verb: str = "update") -> list[list[str]]:
    return [c for c in map(json.loads, fake["log"].read_text().splitlines()) if c[0] == verb]


def _host(fake: dict[str, Path], name: str) -> dict[str, Any]:
    return json.loads(fake["state"].read_text())[name]


def test_docker_update_idempotent_check_mode_and_exact_revert(tmp_path: Path, fake_docker: dict[str, Path]) -> None:
    role = dict(container_resources_backend="docker", container_resources_container="web")
    settings = {
        "cpu_limit": 0.5,
        "cpu_request": 0.25,
        "memory_limit_mb": 256,
        "memory_request_mb": 128,
        "pids_limit": 100,
    }
    settings["cpuset_cpus"] = "0"
    r = _play("apply.yml", tmp_path, settings, **role)
    assert r.ok, r.reason
    assert _docker_calls(fake_docker) == [
        [
            "update",
            "--cpus",
            "0.5",
            "--cpu-shares",
            "256",
            "--memory",
            str(256 * MIB),
            "--memory-swap",
            str(256 * MIB),
            "--memory-reservation",
            str(128 * MIB),
            "--pids-limit",
            "100",
            "--cpuset-cpus",
            "0",
            "web",
        ]
    ]
    assert _host(fake_docker, "web") == {
        **LIMITED,
        "NanoCpus": 5 * 10**8,
        "CpuShares": 256,
        "Memory": 256 * MIB,
        "MemorySwap": 256 * MIB,
        "MemoryReservation": 128 * MIB,
        "PidsLimit": 100,
        "CpusetCpus": "0",
    }
    assert _play("apply.yml", tmp_path, settings, **role).changed == []
    c = _play("apply.yml", tmp_path, {"cpu_limit": 1}, check=True, **role)
    assert c.ok and c.changed
    assert len(_docker_calls(fake_docker)) == 1, "no update in check mode or when nothing changes"
    r = _play("revert.yml", tmp_path, {}, **role)
    assert r.ok, r.reason
    assert _host(fake_docker, "web") == LIMITED
    assert not list((tmp_path / "state").iterdir())


def test_docker_limits_a_container_had_not(tmp_path: Path, fake_docker: dict[str, Path]) -> None:
    role = dict(container_resources_backend="docker", container_resources_container="bare")
    # CPU through --cpu-period/--cpu-quota, which a quota of -1 clears again (--cpus cannot be cleared).
    r = _play("apply.yml", tmp_path, {"cpu_limit": 0.5, "pids_limit": 50}, **role)
    assert r.ok, r.reason
    assert _docker_calls(fake_docker)[-1] == [
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "50000",
        "--pids-limit",
        "50",
        "bare",
    ]
    assert _play("revert.yml", tmp_path, {}, **role).ok
    assert _docker_calls(fake_docker)[-1] == [
        "update",
        "--cpu-period",
        "100000",
        "--cpu-quota",
        "-1",
        "--pids-limit",
        "-1",
        "bare",
    ]
    assert _host(fake_docker, "bare") == {
        **BARE,
        "CpuPeriod": 100000,
        "CpuQuota": -1,
        "PidsLimit": -1,
    }  # no limit, as before
    # A memory limit docker update cannot clear again is refused unless allowed.
    r = _play("apply.yml", tmp_path, {"memory_limit_mb": 256}, **role)
    assert not r.ok and "memory_limit_mb: docker update cannot remove such a limit" in (r.reason or ""), r.reason
    assert len(_docker_calls(fake_docker)) == 2
    r = _play(
        "apply.yml", tmp_path, {"memory_limit_mb": 256}, container_resources_docker_allow_irreversible=True, **role
    )
    assert r.ok, r.reason
    assert _play("revert.yml", tmp_path, {}, **role).ok
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert _host(fake_docker, "bare")["Memory"] == total and _host(fake_docker, "bare")["MemorySwap"] == -1


def test_docker_run_args_mode(tmp_path: Path, fake_docker: dict[str, Path]) -> None:
    pb = tmp_path / "run-args.yml"
    out = tmp_path / "args.json"
    pb.write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n    - role: container_resources\n"
        "  post_tasks:\n    - name: Save the arguments\n      ansible.builtin.copy:\n"
        f"        dest: {out}\n" + '        content: "{{ container_resources_docker_run_args | to_json }}"\n'
    )
    v = _vars(tmp_path, {}, container_resources_backend="docker", container_resources_docker_mode="run_args")
    v["container_resources_settings"] = {"cpu_limit": 1.25, "memory_limit_mb": 300}
    r = bridge.run_playbook(pb, extravars=v)
    assert r.ok, r.reason
    assert json.loads(out.read_text()) == [
        "--cpus",
        "1.25",
        "--memory",
        str(300 * MIB),
        "--memory-swap",
        str(300 * MIB),
    ]
    assert _docker_calls(fake_docker, "inspect") == [] and _docker_calls(fake_docker) == []


# ---------------------------------------------------------------------------------------------
# kubernetes: patches rendered to files and validated (no cluster here)

QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")  # the apimachinery pattern

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "shop", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "shop"}},
        "template": {
            "metadata": {"labels": {"app": "shop"}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "shop:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
                    {"name": "proxy", "image": "envoy:1", "resources": {"limits": {"cpu": "200m"}}},
                ]
            },
        },
    },
}


def _strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic merge as the API server does it for these fields: maps merge, null deletes, containers by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k == "containers":
                merged = [copy.deepcopy(c) for c in out.get(k, [])]
                for c in v:
                    i = next((n for n, b in enumerate(merged) if b["name"] == c["name"]), None)
                    if i is None:
                        merged.append(c)
                    else:
                        merged[i] = _strategic_merge(merged[i], c)
                out[k] = merged
            else:
                out[k] = _strategic_merge(out.get(k), v)
        return {k: v for k, v in out.items() if v != {} or k not in ("limits", "requests", "resources")}
    return copy.deepcopy(patch)


def _valid(obj: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, "1.37", strict=True)


def test_kubernetes_collection_is_installed() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "module", "--json", "kubernetes.core.k8s"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "strategic-merge" in out.stdout, out.stderr[-2000:]


def test_kubernetes_patch_rendered_validated_idempotent_and_revert_patch(tmp_path: Path) -> None:
    role = dict(
        container_resources_backend="kubernetes",
        container_resources_k8s_render_only=True,
        container_resources_k8s_name="shop",
        container_resources_k8s_container="app",
        container_resources_k8s_object=DEPLOYMENT,
    )
    settings = {"cpu_limit": 1.5, "cpu_request": 0.5, "memory_limit_mb": 512, "memory_request_mb": 256}
    r = _play("apply.yml", tmp_path, settings, **role)
    assert r.ok, r.reason
    patch_file = tmp_path / "state" / "k8s-default-deployment-shop.patch.json"
    patch = json.loads(patch_file.read_text())
    assert patch == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "resources": {
                                "limits": {"cpu": "1500m", "memory": "512Mi"},
                                "requests": {"cpu": "500m", "memory": "256Mi"},
                            },
                        }
                    ]
                }
            }
        },
    }
    resources = patch["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert all(QUANTITY.match(q) for section in resources.values() for q in section.values())
    applied = _strategic_merge(DEPLOYMENT, patch)
    _valid(applied)
    assert (
        applied["spec"]["template"]["spec"]["containers"][1] == DEPLOYMENT["spec"]["template"]["spec"]["containers"][1]
    )

    # Against the patched object (what the cluster would now return), a second apply changes nothing.
    assert _play("apply.yml", tmp_path, settings, **{**role, "container_resources_k8s_object": applied}).changed == []
    saved = {p: p.read_bytes() for p in (tmp_path / "state").iterdir()}
    c = _play(
        "apply.yml", tmp_path, {"cpu_limit": 3}, check=True, **{**role, "container_resources_k8s_object": applied}
    )
    assert c.ok and c.changed
    assert {p: p.read_bytes() for p in (tmp_path / "state").iterdir()} == saved, "check mode writes nothing"

    r = _play("revert.yml", tmp_path, {}, **role)
    assert r.ok, r.reason
    revert = json.loads((tmp_path / "state" / "k8s-default-deployment-shop.revert.json").read_text())
    assert revert["spec"]["template"]["spec"]["containers"] == [
        {
            "name": "app",
            "resources": {"limits": {"cpu": None, "memory": None}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        }
    ]
    restored = _strategic_merge(applied, revert)
    _valid(restored)
    assert restored == DEPLOYMENT
    assert not list((tmp_path / "state").glob("k8s-*-app.json")), "revert forgets the saved state"


def test_kubernetes_rejects_what_the_api_would(tmp_path: Path) -> None:
    base = dict(backend="kubernetes", k8s_name="shop", k8s_object=DEPLOYMENT, k8s_render_file=str(tmp_path / "p.json"))
    r = _module(tmp_path, settings={"cpu_limit": 0.5, "cpu_request": 1}, k8s_container="app", **base)
    assert r.get("failed") and "cpu_request: must not exceed cpu_limit" in r["msg"]
    r = _module(tmp_path, settings={"pids_limit": 10}, k8s_container="app", **base)
    assert r.get("failed") and "unknown setting 'pids_limit' for the kubernetes backend" in r["msg"]
    r = _module(tmp_path, settings={"cpu_limit": 1}, **base)
    assert r.get("failed") and "has 2 containers (app, proxy); name one" in r["msg"]
    assert not (tmp_path / "p.json").exists()


# ---------------------------------------------------------------------------------------------
# validate.yml


@pytest.mark.parametrize(
    ("backend", "tunable", "message"),
    [
        (
            "cgroup",
            {"name": "cpu_limit", "type": "float", "low": 0, "high": 2},
            "tunable 'cpu_limit': low must be between 0.01",
        ),
        (
            "cgroup",
            {"name": "memory_limit_mb", "type": "int", "low": 2, "high": 64},
            "tunable 'memory_limit_mb': low must be between 6",
        ),
        (
            "cgroup",
            {"name": "cpu_quota", "type": "int", "low": 1, "high": 2},
            "tunable 'cpu_quota': unknown to container_resources",
        ),
        (
            "cgroup",
            {"name": "cpuset_cpus", "type": "categorical", "choices": ["0", "0-63"]},
            "choices[1] '0-63' names CPUs",
        ),
        ("kubernetes", {"name": "pids_limit", "type": "int", "low": 10, "high": 100}, "tunable 'pids_limit': unknown"),
        ("cgroup", None, None),
    ],
)
def test_validate_names_the_tunable(
    tmp_path: Path, backend: str, tunable: dict[str, Any] | None, message: str | None
) -> None:
    good = [
        {"name": "cpu_limit", "type": "float", "low": 0.1, "high": 2.0, "default": 1.0},
        {"name": "memory_limit_mb", "type": "int", "low": 64, "high": 4096, "log": True},
        {"name": "cpu_request", "type": "float", "low": 0.1, "high": 1.0},
    ]
    v = _vars(tmp_path, {}, container_resources_backend=backend)
    v["knobflow"].update(validate=["res"], tunables={"res": good + ([tunable] if tunable else [])})
    r = bridge.run_playbook("validate.yml", extravars=v)
    if message is None:
        assert r.ok, r.reason
    else:
        assert not r.ok and message in (r.reason or ""), r.reason


# ---------------------------------------------------------------------------------------------
# shell metacharacters never reach a shell


EVIL = [
    "x; touch /tmp/knobflow-pwned",
    "$(touch /tmp/knobflow-pwned)",
    "`touch /tmp/knobflow-pwned`",
    "a\ntouch /tmp/knobflow-pwned",
]


@pytest.mark.parametrize("evil", EVIL)
def test_metacharacters_are_rejected_naming_the_variable(
    tmp_path: Path, evil: str, fake_docker: dict[str, Path]
) -> None:
    cases = [
        (dict(cgroup_name=f"knobflow/{evil}", settings={"cpu_limit": 1}), "container_resources_cgroup_name"),
        (dict(cgroup_name="k", cgroup_parent=evil, settings={"cpu_limit": 1}), "container_resources_cgroup_parent"),
        (dict(cgroup_name="k", settings={"cpuset_cpus": evil}), "cpuset_cpus: must be a CPU list"),
        (dict(cgroup_name="k", settings={"memory_limit_mb": evil}), "memory_limit_mb: must be a number"),
        (dict(cgroup_name="k", settings={"cpu_limit": evil}), "cpu_limit: must be a number"),
        (dict(backend="docker", container=evil, settings={"cpu_limit": 1}), "container_resources_container"),
        (dict(backend="docker", docker_binary=evil, container="web", settings={}), "container_resources_docker_binary"),
        (
            dict(backend="kubernetes", k8s_name=evil, k8s_render_file=str(tmp_path / "p.json")),
            "container_resources_k8s_name",
        ),
        (dict(backend="kubernetes", k8s_name="shop", k8s_namespace=evil), "container_resources_k8s_namespace"),
        (
            dict(backend="kubernetes", k8s_name="shop", k8s_container=evil, k8s_object=DEPLOYMENT),
            "container_resources_k8s_container",
        ),
    ]
    pidfile = tmp_path / "evil.pid"
    pidfile.write_text(evil)
    cases.append((dict(cgroup_name="k", pidfile=str(pidfile), settings={"cpu_limit": 1}), "does not hold a pid"))
    for args, message in cases:
        r = _module(tmp_path, cgroup_root=str(_fake_v2(tmp_path / "cg")), **args)
        assert r.get("failed") and message in r["msg"], (args, r)
    assert _docker_calls(fake_docker) == [] and _docker_calls(fake_docker, "inspect") == []
    assert not (tmp_path / "cg" / "k").exists()


def test_metacharacters_through_the_playbooks(tmp_path: Path) -> None:
    evil = EVIL[0]
    r = _play("apply.yml", tmp_path, {"cpu_limit": 0.5}, container_resources_cgroup_name=evil)
    assert not r.ok and "container_resources_cgroup_name" in (r.reason or "")
    r = _play("apply.yml", tmp_path, {"cpuset_cpus": evil})
    assert not r.ok and "cpuset_cpus: must be a CPU list" in (r.reason or "")
    v = _vars(tmp_path, {}, bench_command_argv=["/bin/echo", '{"x": 1}'], bench_command_cgroups=[f"/tmp/{evil}"])
    v["knobflow"]["benchmark"] = {"role": "bench_command", "warmup": 0, "repeats": 1}
    r = bridge.run_playbook("trial.yml", extravars=v)
    assert not r.ok and "not a cgroup directory" in (r.reason or "")
