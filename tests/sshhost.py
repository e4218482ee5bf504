"""A real SSH host for tests: Debian's ``sshd`` inside a network namespace of this machine.

``ssh_host(workdir)`` is a context manager that

* creates a network namespace ``knobflow-ssh-N`` and a veth pair: ``10.200.N.1/24`` on this side,
  ``10.200.N.2/24`` inside (N is the first index whose subnet and namespace are free, so several
  hosts can run at once, from several test processes);
* generates the host key, a client key pair, ``authorized_keys`` and a ``known_hosts`` file in
  ``workdir`` (host key checking stays on: the client knows the host's real key);
* starts ``sshd -D`` in the namespace with its own ``sshd_config`` (own port, ``PidFile`` and log
  in ``workdir``, root login by key only, ``UsePAM no``, ``StrictModes no`` because ``workdir`` is
  under the world-writable ``/tmp``, ``internal-sftp``) and waits until it accepts connections;
* on exit, even after a failure: closes Ansible's SSH master connections, kills every process in
  the namespace (sshd, its sessions, anything a trial left running there) by pid, deletes the veth
  pair and the namespace.

The namespace has its own network only: it shares this machine's filesystem, users and processes'
view of files. A playbook run over SSH against it writes to the same disk as a local run, so give
each host its own target paths (a host variable in the inventory, ``target_dir`` below).

``SSHHost.host_vars()`` gives the inventory variables to reach it; ``write_inventory()`` writes a
one-host inventory. Needs root, ``ip`` (iproute2), ``ssh``/``ssh-keygen`` (openssh-client) and
``sshd`` (openssh-server). ``require()`` skips the calling test when one is missing, or fails it when
``KNOBFLOW_REQUIRE_SSHD=1`` (as CI sets it).

Example::

    with ssh_host(tmp_path / "ssh") as host:
        inv = host.write_inventory(tmp_path / "hosts.yml", hostvars={"target_dir": str(tmp_path / "t")})
        bridge.run_playbook("trial.yml", inventory=inv, extravars=...)
        assert host.accepted_logins()
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SSHD_PACKAGE = "openssh-server"
REQUIRE_ENV = "KNOBFLOW_REQUIRE_SSHD"
NETNS_PREFIX = "knobflow-ssh-"
SUBNET = "10.200.{}."
_STATE_DIR = Path("/run/knobflow-sshhost")  # owner pid of each namespace, to clean up after a killed run
_LOCK = Path("/run/lock/knobflow-sshhost.lock") if Path("/run/lock").is_dir() else Path("/tmp/knobflow-sshhost.lock")


def sshd_path() -> str | None:
    """The sshd binary (absolute: sshd re-executes itself by its path), or None."""
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return None


def missing() -> str | None:
    """Why an SSH test host cannot be started on this machine, or None when it can."""
    if sshd_path() is None:
        return f"sshd not found: install Debian's {SSHD_PACKAGE} package (apt-get install -y {SSHD_PACKAGE})"
    for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found: install Debian's {package} package (apt-get install -y {package})"
    if os.geteuid() != 0:
        return "an SSH test host needs root (it creates a network namespace and runs sshd)"
    return None


def require() -> None:
    """Skip the calling test when no SSH host can run here; fail it instead when KNOBFLOW_REQUIRE_SSHD=1."""
    import pytest

    reason = missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so the SSH tests must run)", pytrace=False)
    pytest.skip(f"{reason} (set {REQUIRE_ENV}=1 to make this a failure)")


@dataclass
class SSHHost:
    """One running test host. Paths are on this machine (the namespace shares its filesystem)."""

    name: str  # suggested inventory name
    netns: str
    address: str  # the namespace's address, where sshd listens
    gateway: str  # this machine's address on the veth pair (the client side)
    port: int
    user: str
    dir: Path
    key: Path  # the client's private key
    known_hosts: Path
    log: Path  # sshd's log (-E)
    python: str
    control_dir: Path  # Ansible's ControlPath folder for this host (short: sockets have a path limit)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def ssh_options(self) -> list[str]:
        return [
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ]

    def host_vars(self, *, pipelining: bool = True) -> dict[str, Any]:
        """Ansible inventory variables that reach this host over SSH (and only over SSH)."""
        return {
            "ansible_connection": "ssh",
            "ansible_host": self.address,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": shlex.join(self.ssh_options()),
            # ansible-runner (so knobflow) sets ANSIBLE_HOST_KEY_CHECKING=False unless the environment
            # sets it; this variable overrides that, and the options above check against known_hosts.
            "ansible_host_key_checking": True,
            "ansible_python_interpreter": self.python,
            "ansible_control_path_dir": str(self.control_dir),
            "ansible_pipelining": pipelining,
        }

    def write_inventory(
        self,
        path: Path,
        *,
        hostname: str | None = None,
        hostvars: dict[str, Any] | None = None,
        group: str = "ssh_hosts",
        pipelining: bool = True,
    ) -> Path:
        """Write a YAML inventory with this host alone (in ``group``) and return its path."""
        host = {**self.host_vars(pipelining=pipelining), **(hostvars or {})}
        inv = {"all": {"children": {group: {"hosts": {hostname or self.name: host}}}}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def ssh(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command on the host over SSH (argv quoted for the remote shell)."""
        cmd = ["ssh", *self.ssh_options(), "-i", str(self.key), "-p", str(self.port), f"{self.user}@{self.address}"]
        return subprocess.run([*cmd, "--", shlex.join(argv)], capture_output=True, text=True, timeout=timeout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def accepted_logins(self) -> list[str]:
        """sshd's ``Accepted publickey for USER from GATEWAY`` lines so far."""
        return [line for line in self.log_text().splitlines() if "Accepted publickey for " in line]

    def netns_id(self) -> str:
        """The namespace as ``readlink /proc/PID/ns/net`` shows it for a process inside: ``net:[INODE]``."""
        return f"net:[{os.stat(f'/run/netns/{self.netns}').st_ino}]"

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split() if p.isdigit()]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_all(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_netns(netns: str, veth: str | None = None) -> None:
    """Kill what runs in ``netns``, then delete the host side of its veth pair and the namespace."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    _kill_all([int(p) for p in out.stdout.split() if p.isdigit()])
    if veth is not None:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    with contextlib.suppress(FileNotFoundError):
        (_STATE_DIR / netns).unlink()


def _allocate(owner: int) -> int:
    """Pick a free index N (subnet 10.200.N.0/24, namespace knobflow-ssh-N) and reserve it.

    Called under the lock. Namespaces of ours whose owner process is gone (a test run killed before
    its clean-up) are deleted first."""
    _STATE_DIR.mkdir(parents=True, exist_ok=True)
    namespaces = {line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()}
    for ns in sorted(n for n in namespaces if n.startswith(NETNS_PREFIX)):
        marker = _STATE_DIR / ns
        try:
            pid = int(marker.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            continue  # not ours to judge
        if not _pid_alive(pid):
            idx = ns[len(NETNS_PREFIX) :]
            _delete_netns(ns, f"kfssh{idx}h")
            namespaces.discard(ns)
    addrs = _run("ip", "-o", "-4", "addr", "show").stdout
    for n in range(256):
        if f"{NETNS_PREFIX}{n}" in namespaces or re.search(rf"\binet {re.escape(SUBNET.format(n))}", addrs):
            continue
        (_STATE_DIR / f"{NETNS_PREFIX}{n}").write_text(f"{owner}\n")
        return n
    raise RuntimeError("no free 10.200.N.0/24 subnet for an SSH test host")


def _die_with_parent() -> None:
    # sshd is killed when the test process dies without cleaning up (PR_SET_PDEATHSIG = 1).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _keygen(path: Path, comment: str) -> str:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return path.with_name(path.name + ".pub").read_text().strip()


def _wait_listening(host: SSHHost, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert host.process is not None
        if host.process.poll() is not None:
            raise RuntimeError(f"sshd exited with status {host.process.returncode}:\n{host.log_text()}")
        try:
            with socket.create_connection((host.address, host.port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not accept connections on {host.address}:{host.port}:\n{host.log_text()}")
        time.sleep(0.1)


def sshd_config(host: SSHHost, host_key: Path, authorized_keys: Path) -> str:
    return "\n".join(
        [
            f"Port {host.port}",
            f"ListenAddress {host.address}",
            f"HostKey {host_key}",
            f"PidFile {host.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            f"AllowUsers {host.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # workdir is under /tmp (world-writable): StrictModes would refuse authorized_keys there.
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            # Room for parallel trials: each ansible-playbook run opens its own master connection.
            "MaxStartups 64:30:128",
            "MaxSessions 64",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "AllowTcpForwarding no",
            "",
        ]
    )


@contextlib.contextmanager
def ssh_host(
    workdir: Path,
    *,
    name: str = "ssh-target",
    port: int = 2222,
    python: str | None = None,
    start_timeout: float = 15.0,
) -> Iterator[SSHHost]:
    """Run an SSH test host for the ``with`` block (see the module's docstring)."""
    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    sshd = sshd_path()
    assert sshd is not None
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    user = "root"
    control_dir = Path(tempfile.mkdtemp(prefix="kfssh-cp-"))
    netns = veth_host = None
    host: SSHHost | None = None
    try:
        _LOCK.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            idx = _allocate(os.getpid())
            netns = f"{NETNS_PREFIX}{idx}"
            veth_host, veth_ns = f"kfssh{idx}h", f"kfssh{idx}n"
            subnet = SUBNET.format(idx)
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns)
            _run("ip", "link", "set", veth_ns, "netns", netns)
            _run("ip", "addr", "add", f"{subnet}1/24", "dev", veth_host)
            _run("ip", "link", "set", veth_host, "up")
            _run("ip", "-n", netns, "addr", "add", f"{subnet}2/24", "dev", veth_ns)
            _run("ip", "-n", netns, "link", "set", veth_ns, "up")
            _run("ip", "-n", netns, "link", "set", "lo", "up")
        host = SSHHost(
            name=name,
            netns=netns,
            address=f"{subnet}2",
            gateway=f"{subnet}1",
            port=port,
            user=user,
            dir=workdir,
            key=workdir / "id_ed25519",
            known_hosts=workdir / "known_hosts",
            log=workdir / "sshd.log",
            python=python or sys.executable,
            control_dir=control_dir,
        )
        host_key = workdir / "ssh_host_ed25519_key"
        for stale in (host_key, host.key):
            for p in (stale, stale.with_name(stale.name + ".pub")):
                p.unlink(missing_ok=True)
        host_pub = _keygen(host_key, f"knobflow-test-host@{netns}")
        client_pub = _keygen(host.key, "knobflow-test-client")
        authorized_keys = workdir / "authorized_keys"
        authorized_keys.write_text(client_pub + "\n")
        key_type, key_b64 = host_pub.split()[:2]
        host.known_hosts.write_text(f"[{host.address}]:{port} {key_type} {key_b64}\n")
        config = workdir / "sshd_config"
        config.write_text(sshd_config(host, host_key, authorized_keys))
        # Debian's sshd needs its privilege separation directory (the service creates it at boot).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        _run(sshd, "-t", "-f", str(config))
        host.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sshd, "-D", "-f", str(config), "-E", str(host.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        _wait_listening(host, start_timeout)
        yield host
    finally:
        # Ansible's ControlPersist masters (ssh processes on this side) would linger for 60 s.
        for sock in list(control_dir.iterdir()) if control_dir.exists() else []:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "knobflow-ssh-host"],
                capture_output=True,
                timeout=10,
            )
        shutil.rmtree(control_dir, ignore_errors=True)
        if host is not None and host.process is not None and host.process.poll() is None:
            host.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.process.wait(5)
            if host.process.poll() is None:
                host.process.kill()
                host.process.wait(5)
        if netns is not None:
            _delete_netns(netns, veth_host)
