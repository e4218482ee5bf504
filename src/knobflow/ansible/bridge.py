"""Run knobflow's playbooks with ansible-runner and bring the results back.

Every run gets a fresh ``private_data_dir`` (deleted afterwards unless ``keep_artifacts``); the
playbooks folder is the project dir; roles next to the experiment file come before knobflow's own on
the roles path. Metrics come back through ``set_stats`` (``knobflow_metrics``), failures as the
first failed task with its host and message. A ``cancel_callback`` is always passed, so
ansible-runner does not replace the caller's SIGTERM handler (Airflow's, for instance).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from knobflow import _paths


@dataclass
class RunResult:
    status: str  # successful | failed | timeout | canceled
    rc: int
    stats: dict[str, Any] = field(default_factory=dict)  # set_stats data (aggregated)
    reason: str | None = None
    failed_task: str | None = None
    duration_s: float = 0.0
    task_times: dict[str, float] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # "host: task" of every task (or loop item) that changed

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0


def _msg_of(res: dict[str, Any]) -> str:
    msg = res.get("msg") or ""
    if not msg and res.get("stderr"):
        msg = str(res["stderr"]).strip().splitlines()[-1] if str(res["stderr"]).strip() else ""
    if not msg and "results" in res:  # a loop: take the first failing item
        for item in res["results"]:
            if isinstance(item, dict) and item.get("failed"):
                return _msg_of(item)
    return str(msg).strip() or "failed (no message)"


class _Events:
    def __init__(self, log: IO[str] | None, on_line: Callable[[str], None] | None):
        self.log = log
        self.on_line = on_line
        self.stats: dict[str, Any] = {}
        self.reason: str | None = None
        self.failed_task: str | None = None
        self.task_started: dict[str, float] = {}
        self.task_times: dict[str, float] = {}
        self.lock = threading.Lock()
        self.last_line = ""
        self.error_line = ""
        self.changed: list[str] = []

    def __call__(self, event: dict[str, Any]) -> bool:
        stdout = event.get("stdout")
        if stdout:
            if self.log is not None:
                self.log.write(stdout + "\n")
                self.log.flush()
            for line in stdout.splitlines():
                if line.strip():
                    self.last_line = line.strip()
                    if not self.error_line and line.lstrip().startswith(("[ERROR]", "ERROR!")):
                        self.error_line = line.strip()
                    if self.on_line is not None:
                        self.on_line(line)
        name = event.get("event")
        data = event.get("event_data") or {}
        if name == "playbook_on_task_start":
            self.task_started[data.get("task", "")] = time.monotonic()
        elif name in ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"):
            task = data.get("task", "")
            if task in self.task_started:
                self.task_times[task] = self.task_times.get(task, 0.0) + time.monotonic() - self.task_started.pop(task)
        if name == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            with self.lock:
                self.changed.append(f"{data.get('host')}: {data.get('task')}")
        if name in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            with self.lock:
                if self.reason is None:
                    res = data.get("res") or {}
                    what = "unreachable" if name == "runner_on_unreachable" else "failed"
                    self.failed_task = data.get("task")
                    self.reason = f"task '{data.get('task')}' {what} on {data.get('host')}: {_msg_of(res)}"
        elif name == "playbook_on_stats":
            self.stats = dict(data.get("artifact_data") or {})
        return True  # keep the event in the artifacts too


class _DataMap(dict):
    """A mapping written with YAML's ``!unsafe`` tag: Ansible never templates anything inside it."""


class _DataDumper(yaml.SafeDumper):
    pass


# Tag the mapping, not each string: Ansible re-resolves a tagged scalar as if it were unquoted
# (`!unsafe "off"` would load as False), while the scalars inside a tagged mapping keep their quoting.
_DataDumper.add_representer(_DataMap, lambda d, m: d.represent_mapping("!unsafe", dict(m)))


def write_data_vars(path: Path, data: dict[str, Any]) -> Path:
    """Write extra variables whose values are data, not templates: a tunable value such as
    ``{{ lookup('pipe', 'rm -rf ~') }}`` (from an imported row, an API client, a categorical choice)
    then reaches roles as that literal text."""
    doc = {key: _DataMap(value) if isinstance(value, dict) else value for key, value in data.items()}
    path.write_text(yaml.dump(doc, Dumper=_DataDumper, sort_keys=False, allow_unicode=True))
    return path


def kill_tagged(tag: str) -> int:
    """SIGKILL every process on this machine whose environment carries ``KNOBFLOW_RUN_TAG=tag``.

    ansible-runner kills ansible-playbook on a timeout, but modules already running (a benchmark,
    say) outlive it. Processes on remote hosts are out of reach here.
    """
    import psutil

    needle = f"KNOBFLOW_RUN_TAG={tag}".encode()
    killed = 0
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                if needle not in fh.read():
                    continue
            proc.kill()
            killed += 1
        except (OSError, psutil.Error):
            continue
    return killed


def run_playbook(
    playbook: str | Path,
    *,
    inventory: str | Path | None = None,
    extravars: dict[str, Any] | None = None,
    roles_path: list[Path] | None = None,
    limit: str | None = None,
    timeout: int | None = None,
    log_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    keep_artifacts: bool = False,
    check: bool = False,
    diff: bool = False,
    run_tag: str | None = None,
) -> RunResult:
    """Run one playbook and return its status, set_stats data, failure reason and changed tasks.

    The ``knobflow`` extra variable (a trial's parameters, the layers, the benchmark settings) is
    passed as data that Ansible never templates; the other extra variables (the experiment's
    ``vars``, which may use Jinja on purpose) are passed as they are.

    ``run_tag`` marks every process of the run (``KNOBFLOW_RUN_TAG`` in their environment; a fresh
    one when None): a caller that records it can stop what a killed run left behind with
    :func:`kill_tagged`.

    ``check`` runs it in Ansible's check mode (``--check``: roles report what they would change
    and change nothing); ``diff`` adds ``--diff`` (the roles' before/after text goes to the log).
    """
    import ansible_runner

    playbook = Path(playbook)
    if not playbook.is_absolute():
        playbook = _paths.playbooks_dir() / playbook
    roles = [str(p) for p in (roles_path or [_paths.roles_dir()])]
    envvars = {
        "ANSIBLE_ROLES_PATH": os.pathsep.join(roles),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_SYSTEM_WARNINGS": "False",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        # ansible-runner turns host key checking off unless told otherwise; keep Ansible's own
        # default (on), so that an SSH target with an unknown or changed key is refused.
        "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"),
    }
    # Use the ansible-playbook next to this Python: a venv need not be activated.
    bindir = str(Path(sys.executable).parent)
    if (Path(bindir) / "ansible-playbook").exists() and bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    # Every process of this run (ansible-playbook, its workers, modules run locally, the benchmark)
    # inherits this marker, so that a run killed for its time limit leaves nothing behind.
    run_tag = run_tag or uuid.uuid4().hex
    envvars["KNOBFLOW_RUN_TAG"] = run_tag
    private = Path(tempfile.mkdtemp(prefix="knobflow-runner-"))
    log: IO[str] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a")
    events = _Events(log, on_line)
    started = time.monotonic()
    extravars = dict(extravars or {})
    flags = [flag for flag, on in (("--check", check), ("--diff", diff)) if on]
    if "knobflow" in extravars:
        data = write_data_vars(private / "knobflow-data.yml", {"knobflow": extravars.pop("knobflow")})
        flags += ["-e", shlex.quote(f"@{data}")]
    try:
        r = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(playbook.parent),
            playbook=str(playbook),
            inventory=str(inventory or _paths.default_inventory()),
            extravars=extravars,
            envvars=envvars,
            limit=limit,
            timeout=timeout,
            quiet=True,
            event_handler=events,
            cancel_callback=cancel or (lambda: False),
            rotate_artifacts=1,
            cmdline=" ".join(flags) or None,
        )
        status, rc = str(r.status), int(r.rc if r.rc is not None else -1)
    except Exception as exc:  # ansible-runner raised before or while starting the playbook
        status, rc = "failed", -1
        events.reason = events.reason or f"ansible-runner could not run {playbook.name}: {exc}"
        kill_tagged(run_tag)
    except BaseException:
        # The caller is being stopped (Airflow raises AirflowTaskTerminated, a BaseException, on
        # SIGTERM; Ctrl-C raises KeyboardInterrupt): stop the run with it.
        kill_tagged(run_tag)
        raise
    finally:
        if log is not None:
            log.close()
        if not keep_artifacts:
            shutil.rmtree(private, ignore_errors=True)
    if status in ("timeout", "canceled"):
        kill_tagged(run_tag)
    duration = time.monotonic() - started
    reason = events.reason
    if status == "timeout":
        reason = f"timed out after {timeout} s" + (f" (in task '{events.failed_task}')" if events.failed_task else "")
    elif status == "canceled":
        reason = "canceled"
    elif status != "successful" and reason is None:
        reason = f"{playbook.name} exited with status {rc}: {events.error_line or events.last_line or 'no output'}"
    return RunResult(
        status=status,
        rc=rc,
        stats=events.stats,
        reason=reason,
        failed_task=events.failed_task,
        duration_s=duration,
        task_times=events.task_times,
        changed=events.changed,
    )
