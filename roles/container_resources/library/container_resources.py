#!/usr/bin/python
"""Apply, verify and revert the CPU and memory resources of a container: local cgroups, Docker/Podman, Kubernetes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: container_resources
short_description: Apply or revert CPU and memory limits of a cgroup, a Docker/Podman container or a Kubernetes workload
description:
  - Validates the settings (by their knobflow tunable names, see the role README), then applies them
    with one of four backends.
  - C(cgroup) writes the interface files of a local cgroup (v1 or v2), creating the cgroup if needed, and
    moves a process tree into it. C(docker) and C(podman) run C(docker update) (an argv, no shell) or
    render C(docker run) arguments. C(kubernetes) computes a strategic-merge patch of a container's
    resources; the role applies it with C(kubernetes.core.k8s), or writes it to a file.
  - On the first change, saves what was there in a state file under I(state_dir), so that
    C(state=reverted) puts back exactly the original; then forgets it.
  - Verifies every change by reading the real state back. Supports check mode and diff mode.
options:
  backend:
    description: Where the limits apply.
    type: str
    choices: [cgroup, docker, podman, kubernetes]
    default: cgroup
  state:
    description:
      - C(present) applies I(settings); C(reverted) restores the original.
      - C(validate) checks I(tunables) (knobflow's declared tunables) against the backend and the host.
      - C(verify) (kubernetes) checks that I(k8s_object) holds the applied resources.
      - C(forget) (kubernetes) checks that I(k8s_object) holds the saved original resources, then deletes the
        saved state.
    type: str
    choices: [present, reverted, validate, verify, forget]
    default: present
  settings:
    description: Settings by tunable name (cpu_limit, cpu_request, cpu_shares, cpu_weight, memory_limit_mb,
      memory_request_mb, pids_limit, cpuset_cpus).
    type: dict
    default: {}
  tunables:
    description: For C(state=validate), knobflow's declared tunables (dicts with name, type, low, high, choices,
      default).
    type: list
    elements: dict
    default: []
  state_dir:
    description: Directory of the saved original state.
    type: path
    required: true
  memory_floor_mb:
    description: The smallest accepted memory_limit_mb.
    type: int
    default: 6
  cgroup_root:
    description: Where the cgroup hierarchies are mounted (v1 hierarchies as subdirectories, or a cgroup2 mount).
    type: path
    default: /sys/fs/cgroup
  cgroup_version:
    description: C(auto) detects the version from I(cgroup_root).
    type: str
    choices: [auto, v1, v2]
    default: auto
  cgroup_name:
    description: The cgroup's path below I(cgroup_parent), for example C(knobflow/my-experiment).
    type: str
    default: knobflow/default
  cgroup_parent:
    description: C(/) for each hierarchy's root; C(@self) for the cgroup this module runs in, per hierarchy;
      or a path below the root.
    type: str
    default: /
  cpu_period_us:
    description: CFS period for cpu_limit, in microseconds.
    type: int
    default: 100000
  pid:
    description: A process to move into the cgroup (0 for none).
    type: int
    default: 0
  pidfile:
    description: A file holding the pid of a process to move into the cgroup.
    type: path
  include_descendants:
    description: Move the process's descendants too.
    type: bool
    default: true
  container:
    description: Docker/Podman container name or ID (C(docker_mode=update)).
    type: str
    default: ""
  docker_binary:
    description: The docker or podman command.
    type: str
    default: ""
  docker_mode:
    description: C(update) changes a running container; C(run_args) only returns C(docker run) arguments.
    type: str
    choices: [update, run_args]
    default: update
  allow_irreversible:
    description: Let a docker/podman setting be applied although C(docker update) cannot clear it again
      (the container had no such limit); revert then sets the host's capacity instead.
    type: bool
    default: false
  k8s_kind:
    description: Kind of the Kubernetes workload.
    type: str
    choices: [Deployment, StatefulSet, DaemonSet]
    default: Deployment
  k8s_name:
    description: Name of the workload.
    type: str
    default: ""
  k8s_namespace:
    description: Namespace of the workload.
    type: str
    default: default
  k8s_container:
    description: Name of the container; empty for the workload's only container.
    type: str
    default: ""
  k8s_object:
    description: The workload as the cluster returns it (from C(kubernetes.core.k8s_info)), or a stand-in for it.
    type: dict
    default: {}
  k8s_render_file:
    description: Write the patch to this file (render only; for C(state=reverted) the state is forgotten at once).
    type: path
author: knobflow maintainers
"""

RETURN = r"""
cgroup_paths:
  description: (cgroup) The cgroup directories the benchmark must join, one per hierarchy used.
  type: list
  returned: backend is cgroup
values:
  description: (cgroup) The interface files written and their values; (docker) the inspected fields.
  type: dict
  returned: backend is cgroup or docker
moved:
  description: (cgroup) The pids moved into (or, on revert, out of) the cgroup.
  type: list
  returned: backend is cgroup
argv:
  description: (docker) The update command run (or that would run in check mode).
  type: list
  returned: backend is docker or podman
run_args:
  description: (docker, run_args mode) Arguments for C(docker run).
  type: list
  returned: backend is docker or podman
patch:
  description: (kubernetes) The strategic-merge patch to apply, null when nothing is to change.
  type: dict
  returned: backend is kubernetes
"""

import contextlib
import hashlib
import json
import os
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from ansible.module_utils.basic import AnsibleModule

MIB = 1024 * 1024
ALL_SETTINGS = (
    "cpu_limit",
    "cpu_request",
    "cpu_shares",
    "cpu_weight",
    "memory_limit_mb",
    "memory_request_mb",
    "pids_limit",
    "cpuset_cpus",
)
BACKEND_SETTINGS = {
    "cgroup": ALL_SETTINGS,
    "docker": ALL_SETTINGS,
    "podman": ALL_SETTINGS,
    "kubernetes": ("cpu_limit", "cpu_request", "memory_limit_mb", "memory_request_mb"),
}
SETTING_CONTROLLER = {
    "cpu_limit": "cpu",
    "cpu_request": "cpu",
    "cpu_shares": "cpu",
    "cpu_weight": "cpu",
    "memory_limit_mb": "memory",
    "memory_request_mb": "memory",
    "pids_limit": "pids",
    "cpuset_cpus": "cpuset",
}
CONTROLLER_ORDER = ("cpu", "memory", "pids", "cpuset")
COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,254}$")
CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CPUS_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
DECIMAL_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$|^\.[0-9]+$")


class Fail(Exception):
    """A failure to report with fail_json; the message names the setting or variable."""


# --------------------------------------------------------------------------------------------
# Settings


def _decimal(value):
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"must be a finite number, got {value!r}")
        return Decimal(repr(value))
    if isinstance(value, str) and DECIMAL_RE.fullmatch(value.strip()):
        return Decimal(value.strip())
    raise ValueError(f"must be a number, got {value!r}")


def _integer(value):
    number = _decimal(value) if not isinstance(value, bool) else None
    if number is None or number != number.to_integral_value():
        raise ValueError(f"must be an integer, got {value!r}")
    return int(number)


def parse_cpus(text):
    """'0-2,5' -> [0, 1, 2, 5]; raise ValueError for anything else."""
    text = text.strip()
    if not CPUS_RE.fullmatch(text):
        raise ValueError(f"must be a CPU list such as 0-1,3, got {text!r}")
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        a, b = int(first), int(last or first)
        if a > b or b > 8191:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def format_cpus(cpus):
    parts = []
    cpus = sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def _between(value, low, high, unit=""):
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}{unit}, got {value}")
    return value


def check_setting(name, value, floor_mb):
    """The normalised value of one setting; ValueError (without the name) when it is not acceptable."""
    if name == "cpu_limit":
        return _between(_decimal(value), Decimal("0.01"), Decimal(4096), " cores")
    if name == "cpu_request":
        return _between(_decimal(value), Decimal("0.002"), Decimal(256), " cores")
    if name == "cpu_shares":
        return _between(_integer(value), 2, 262144)
    if name == "cpu_weight":
        return _between(_integer(value), 1, 10000)
    if name == "memory_limit_mb":
        return _between(_integer(value), floor_mb, 1 << 30, " MiB")
    if name == "memory_request_mb":
        return _between(_integer(value), 0, 1 << 30, " MiB")
    if name == "pids_limit":
        return _between(_integer(value), 1, 4194304)
    if name == "cpuset_cpus":
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"must be a CPU list such as 0-1,3, got {value!r}")
        return format_cpus(parse_cpus(value))
    raise KeyError(name)


def check_settings(settings, backend, floor_mb):
    known = BACKEND_SETTINGS[backend]
    out, errors = {}, []
    for name in sorted(settings):
        if name not in known:
            errors.append(
                "unknown setting {!r} for the {} backend (known: {})".format(name, backend, ", ".join(sorted(known)))
            )
            continue
        try:
            out[name] = check_setting(name, settings[name], floor_mb)
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
    weights = [n for n in ("cpu_request", "cpu_shares", "cpu_weight") if n in out]
    if len(weights) > 1:
        errors.append("{}: give only one of cpu_request, cpu_shares, cpu_weight".format(", ".join(weights)))
    if "memory_request_mb" in out and "memory_limit_mb" in out and out["memory_request_mb"] > out["memory_limit_mb"]:
        errors.append(
            "memory_request_mb: must not exceed memory_limit_mb ({} > {})".format(
                out["memory_request_mb"], out["memory_limit_mb"]
            )
        )
    if (
        backend == "kubernetes"
        and "cpu_request" in out
        and "cpu_limit" in out
        and out["cpu_request"] > out["cpu_limit"]
    ):
        errors.append("cpu_request: must not exceed cpu_limit ({} > {})".format(out["cpu_request"], out["cpu_limit"]))
    if errors:
        raise Fail("invalid container resource settings: " + "; ".join(errors))
    return out


def _round(value):
    return int(Decimal(value).to_integral_value(rounding=ROUND_HALF_UP))


def shares_of(s):
    """cpu.shares (v1 weight) for the settings, None when no CPU weight is set (1 core = 1024 shares)."""
    if "cpu_shares" in s:
        return s["cpu_shares"]
    if "cpu_request" in s:
        return max(2, min(262144, _round(s["cpu_request"] * 1024)))
    if "cpu_weight" in s:
        return 2 + ((s["cpu_weight"] - 1) * 262142) // 9999
    return None


def weight_of(s):
    """cpu.weight (v2) for the settings: cpu_weight as given, else Kubernetes' conversion from shares."""
    if "cpu_weight" in s:
        return s["cpu_weight"]
    shares = shares_of(s)
    return None if shares is None else 1 + ((shares - 2) * 9999) // 262142


def online_cpus():
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpus(f.read())
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


def host_memory_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise Fail("cannot read MemTotal from /proc/meminfo")


# --------------------------------------------------------------------------------------------
# State files


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise Fail(f"saved state {path} is not JSON ({exc}); remove it after checking the target by hand") from None


def write_json(path, data):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = path + ".knobflow-tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


# --------------------------------------------------------------------------------------------
# cgroup files and processes


def read_value(path):
    with open(path) as f:
        return f.read()


def write_value(path, data):
    """One write(2) of ``data`` (a trailing newline is added unless there is one), as `echo data > path` does."""
    if not data.endswith("\n"):
        data += "\n"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def norm(fname, value):
    """A value read from or written to a cgroup file, comparable."""
    value = value.strip()
    if fname == "cpuset.cpus":
        return tuple(parse_cpus(value)) if value else ()
    if fname in ("cpu.max", "cgroup.subtree_control"):
        return tuple(value.split())
    return value


def proc_cgroups(pid):
    """{frozenset of controllers (empty for v2): path} of a process, from /proc/<pid>/cgroup."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                out[frozenset(c for c in parts[1].split(",") if c)] = parts[2]
    return out


def proc_start(pid):
    """Start time of a process (field 22 of /proc/<pid>/stat), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]


def proc_table():
    """{pid: ppid} of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        table[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    return table


def descendants(pid, table):
    children = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cgroup_members(directory):
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


# Defaults of a new cgroup's interface files, for check mode when the cgroup does not exist yet.
NEW_DEFAULTS = {
    "v1": {
        "cpu.cfs_quota_us": "-1",
        "cpu.cfs_period_us": "100000",
        "cpu.shares": "1024",
        "memory.limit_in_bytes": "9223372036854771712",
        "memory.soft_limit_in_bytes": "9223372036854771712",
        "pids.max": "max",
    },
    "v2": {
        "cpu.max": "max 100000",
        "cpu.weight": "100",
        "memory.max": "max",
        "memory.low": "0",
        "pids.max": "max",
        "cpuset.cpus": "",
    },
}
FILE_SETTING = {
    "cpu.cfs_quota_us": "cpu_limit",
    "cpu.cfs_period_us": "cpu_limit",
    "cpu.max": "cpu_limit",
    "cpu.shares": "cpu_request",
    "cpu.weight": "cpu_request",
    "memory.limit_in_bytes": "memory_limit_mb",
    "memory.max": "memory_limit_mb",
    "memory.soft_limit_in_bytes": "memory_request_mb",
    "memory.low": "memory_request_mb",
    "pids.max": "pids_limit",
    "cpuset.cpus": "cpuset_cpus",
}


def cgroup_targets(version, s, period):
    """{(controller, file): value} that the settings ask for."""
    t = {}
    if "cpu_limit" in s:
        quota = max(1000, _round(s["cpu_limit"] * period))
        if version == "v1":
            t[("cpu", "cpu.cfs_period_us")] = str(period)
            t[("cpu", "cpu.cfs_quota_us")] = str(quota)
        else:
            t[("cpu", "cpu.max")] = f"{quota} {period}"
    if shares_of(s) is not None:
        if version == "v1":
            t[("cpu", "cpu.shares")] = str(shares_of(s))
        else:
            t[("cpu", "cpu.weight")] = str(weight_of(s))
    if "memory_limit_mb" in s:
        t[("memory", "memory.limit_in_bytes" if version == "v1" else "memory.max")] = str(s["memory_limit_mb"] * MIB)
    if "memory_request_mb" in s:
        name = "memory.soft_limit_in_bytes" if version == "v1" else "memory.low"
        t[("memory", name)] = str(s["memory_request_mb"] * MIB)
    if "pids_limit" in s:
        t[("pids", "pids.max")] = str(s["pids_limit"])
    if "cpuset_cpus" in s:
        t[("cpuset", "cpuset.cpus")] = s["cpuset_cpus"]
    return t


class Cgroups:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.p = p
        self.root = p["cgroup_root"].rstrip("/") or "/"
        self.period = p["cpu_period_us"]
        if not 1000 <= self.period <= 1000000:
            raise Fail(f"container_resources_cpu_period_us: must be between 1000 and 1000000, got {self.period}")
        self.name = self._relpath(p["cgroup_name"], "container_resources_cgroup_name", allow_empty=False)
        parent = p["cgroup_parent"]
        self.parent = parent if parent == "@self" else self._relpath(parent, "container_resources_cgroup_parent")
        self.version = self._detect(p["cgroup_version"])
        key = json.dumps([self.root, parent, p["cgroup_name"]])
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        self.state_path = os.path.join(p["state_dir"], f"cgroup-{slug(p['cgroup_name'])}-{digest}.json")

    @staticmethod
    def _relpath(text, variable, allow_empty=True):
        parts = [c for c in text.split("/") if c]
        if not parts and not allow_empty:
            raise Fail(f"{variable}: must not be empty")
        for c in parts:
            if not COMPONENT_RE.fullmatch(c):
                raise Fail(
                    f"{variable}: {text!r} has the path component {c!r}; use letters, digits and _ . : @ -"
                    " (not starting with . or -)"
                )
        return "/".join(parts)

    def _detect(self, forced):
        if not os.path.isdir(self.root):
            raise Fail(f"container_resources_cgroup_root: {self.root} is not a directory")
        is_v2 = os.path.exists(os.path.join(self.root, "cgroup.controllers"))
        if forced == "v2" or (forced == "auto" and is_v2):
            if not is_v2:
                raise Fail(f"container_resources_cgroup_version: v2 forced, but {self.root} has no cgroup.controllers")
            return "v2"
        if any(os.path.isdir(os.path.join(self.root, c)) for c in CONTROLLER_ORDER):
            return "v1"
        raise Fail(f"container_resources_cgroup_root: no cgroup v1 hierarchy or cgroup2 mount at {self.root}")

    # hierarchies ------------------------------------------------------------------------------

    def available(self):
        """The controllers this host offers for the chosen version."""
        if self.version == "v2":
            return set(read_value(os.path.join(self.root, "cgroup.controllers")).split())
        return {c for c in CONTROLLER_ORDER if os.path.isfile(os.path.join(self.root, c, "cgroup.procs"))}

    def check_controllers(self, names_by_controller):
        have = self.available()
        errors = []
        for controller, names in names_by_controller.items():
            if controller not in have:
                where = (
                    f"the cgroup v2 mount {self.root} does not offer it (cgroup.controllers: "
                    f"{' '.join(sorted(have)) or 'none'})"
                    if self.version == "v2"
                    else f"there is no cgroup v1 hierarchy {self.root}/{controller}"
                )
                errors.append(f"{', '.join(sorted(names))}: needs the {controller} controller, but {where}")
        if errors:
            raise Fail("; ".join(errors))

    def hierarchies(self, controllers):
        """[{mount, ctrls, key, parent_rel, leaf_rel, leaf}] for the controllers, in CONTROLLER_ORDER."""
        out = {}
        for c in CONTROLLER_ORDER:
            if c not in controllers:
                continue
            if self.version == "v2":
                mount, ctrls = os.path.realpath(self.root), frozenset()
            else:
                mount = os.path.realpath(os.path.join(self.root, c))
                ctrls = frozenset(os.path.basename(mount).split(","))
            if mount in out:
                out[mount]["controllers"].append(c)
                continue
            if self.parent == "@self":
                mine = proc_cgroups("self")
                parent_rel = next((p for k, p in mine.items() if k == ctrls or (ctrls and k & ctrls)), "/")
                parent_rel = parent_rel.strip("/")
            else:
                parent_rel = self.parent
            leaf_rel = "/".join(x for x in (parent_rel, self.name) if x)
            out[mount] = dict(
                mount=mount,
                ctrls=ctrls,
                controllers=[c],
                parent_rel=parent_rel,
                leaf_rel=leaf_rel,
                leaf=os.path.join(mount, leaf_rel),
            )
        return list(out.values())

    @staticmethod
    def membership(pid, h):
        """The cgroup (relative to the mount, no leading /) of a process in hierarchy h; None when gone."""
        try:
            groups = proc_cgroups(pid)
        except OSError:
            return None
        ctrls = frozenset(h["ctrls"])
        for k, path in groups.items():
            if k == ctrls or (ctrls and k & ctrls):
                return path.strip("/")
        return None

    # present ------------------------------------------------------------------------------------

    def target_pids(self):
        p = self.p
        pid = p["pid"]
        if p["pidfile"]:
            try:
                text = read_value(p["pidfile"]).strip()
            except OSError as exc:
                raise Fail(f"container_resources_pidfile: cannot read {p['pidfile']}: {exc.strerror}") from None
            if not text.isdigit():
                raise Fail(f"container_resources_pidfile: {p['pidfile']} does not hold a pid: {text[:40]!r}")
            pid = int(text)
        if not pid:
            return []
        if pid < 2:
            raise Fail(f"container_resources_pid: refusing to move pid {pid}")
        if proc_start(pid) is None:
            raise Fail(f"container_resources_pid: no process {pid}")
        pids = [pid]
        if p["include_descendants"]:
            pids += descendants(pid, proc_table())
        return pids

    def present(self, settings):
        state = read_json(self.state_path) or {}
        targets = cgroup_targets(self.version, settings, self.period)
        needed = {}
        for name in settings:
            needed.setdefault(SETTING_CONTROLLER[name], set()).add(name)
        self.check_controllers(needed)
        controllers = set(needed) | set(state.get("controllers", []))
        hs = self.hierarchies(controllers)
        pids = self.target_pids()
        if pids and not hs:
            raise Fail("container_resources_pid: no settings, so no cgroup to move the process into")
        check = self.module.check_mode
        changed = False
        before, after = [], []
        values = {}
        saved = {h["mount"]: h for h in state.get("hierarchies", [])}
        new_state = dict(state)
        new_state.update(
            backend="cgroup",
            cgroup_version=self.version,
            controllers=sorted(controllers),
            hierarchies=[saved.get(h["mount"], {}) for h in hs],
        )
        new_state.setdefault("processes", {})
        new_state.setdefault("enabled", {})
        # Plan: directories to create, controllers to enable (v2), values to write, processes to move.
        plans = []
        for i, h in enumerate(hs):
            rec = new_state["hierarchies"][i]
            rec.setdefault("mount", h["mount"])
            rec.setdefault("leaf", h["leaf"])
            rec.setdefault("parent", os.path.join(h["mount"], h["parent_rel"]) if h["parent_rel"] else h["mount"])
            rec.setdefault("created", [])
            rec.setdefault("originals", {})
            rec["ctrls"] = sorted(h["ctrls"])
            rec["controllers"] = sorted(set(rec.get("controllers", [])) | set(h["controllers"]))
            if rec["leaf"] != h["leaf"]:
                raise Fail(
                    f"container_resources_cgroup_parent: the saved state {self.state_path} is for {rec['leaf']}, "
                    f"not {h['leaf']}; revert first"
                )
            missing = []
            path = h["mount"]
            for part in h["leaf_rel"].split("/"):
                path = os.path.join(path, part)
                if not os.path.isdir(path):
                    missing.append(path)
            exists = not missing
            files = {f: v for (c, f), v in targets.items() if c in h["controllers"]}
            desired = {}
            for fname in set(files) | set(rec["originals"]):
                desired[fname] = files.get(fname, rec["originals"].get(fname))
            current = {}
            for fname in desired:
                fpath = os.path.join(h["leaf"], fname)
                if exists:
                    if not os.path.exists(fpath):
                        raise Fail(self._missing_file(fname, h))
                    current[fname] = read_value(fpath)
                else:
                    current[fname] = self._new_default(fname, h)
            writes = {f: v for f, v in desired.items() if norm(f, current[f]) != norm(f, v)}
            enable = self._enable_plan(h, missing) if self.version == "v2" else []
            plans.append(
                dict(h=h, rec=rec, missing=missing, desired=desired, current=current, writes=writes, enable=enable)
            )
            for fname in sorted(desired):
                values[os.path.join(h["leaf"], fname)] = desired[fname].strip()
            for d in missing:
                before.append(f"{d}: absent")
                after.append(f"{d}: created")
            for directory, ctrls in enable:
                before.append(f"{directory}/cgroup.subtree_control: without {' '.join(ctrls)}")
                after.append(f"{directory}/cgroup.subtree_control: +{' +'.join(ctrls)}")
            for fname in sorted(writes):
                before.append(f"{h['leaf']}/{fname}: {current[fname].strip()}")
                after.append(f"{h['leaf']}/{fname}: {writes[fname].strip()}")
            if missing or writes or enable:
                changed = True
        # Processes
        moves = []
        for pid in pids:
            start = proc_start(pid)
            for plan in plans:
                h = plan["h"]
                where = self.membership(pid, h)
                if where is None or where == h["leaf_rel"]:
                    continue
                moves.append((pid, plan, where))
                rec = new_state["processes"].get(str(pid))
                if rec is None or rec.get("start") != start:
                    rec = new_state["processes"][str(pid)] = {"start": start, "origins": {}}
                rec["origins"].setdefault(h["mount"], where)
                before.append(f"pid {pid}: {h['mount']}/{where}")
                after.append(f"pid {pid}: {h['leaf']}")
        if moves:
            changed = True
        result = dict(
            changed=changed,
            cgroup_version=self.version,
            cgroup_paths=[h["leaf"] for h in hs],
            values=values,
            moved=sorted({pid for pid, _p, _w in moves}),
            state_file=self.state_path,
        )
        if changed:
            result["diff"] = dict(before="\n".join(before) + "\n", after="\n".join(after) + "\n")
        if check or not changed:
            return result
        # Save what is there before the first change: directories to create and controllers to enable
        # are recorded before they exist; original values just before they are written.
        for plan in plans:
            plan["rec"]["created"] = plan["rec"]["created"] + [
                d for d in plan["missing"] if d not in plan["rec"]["created"]
            ]
            for directory, ctrls in plan["enable"]:
                if directory not in plan["missing"]:
                    done = new_state["enabled"].setdefault(directory, [])
                    done.extend(c for c in ctrls if c not in done)
        write_json(self.state_path, new_state)
        try:
            for plan in plans:
                self._create(plan)
                h, rec = plan["h"], plan["rec"]
                if plan["missing"]:
                    # A new cgroup: its defaults are the originals that a dropped setting goes back to.
                    for fname in plan["desired"]:
                        fpath = os.path.join(h["leaf"], fname)
                        if not os.path.exists(fpath):
                            raise Fail(self._missing_file(fname, h))
                        plan["current"][fname] = read_value(fpath)
                    plan["writes"] = {
                        f: v for f, v in plan["desired"].items() if norm(f, plan["current"][f]) != norm(f, v)
                    }
                for fname in plan["desired"]:
                    rec["originals"].setdefault(fname, plan["current"][fname])
                write_json(self.state_path, new_state)
                self._write_values(h, plan["writes"], plan["desired"])
            for pid, plan, _where in moves:
                self._move(pid, plan["h"]["leaf"], "container_resources_pid")
            for pid, plan, _where in moves:
                now = self.membership(pid, plan["h"])
                if now is not None and now != plan["h"]["leaf_rel"]:
                    raise Fail(f"verification failed: pid {pid} is in {now}, not in {plan['h']['leaf']}")
        except (Fail, OSError) as exc:
            # Leave nothing half-done: put back what the saved state records, then report.
            message = str(exc) if isinstance(exc, Fail) else f"{exc.filename}: {exc.strerror}"
            try:
                self.reverted()
            except (Fail, OSError) as again:
                raise Fail(f"{message} (rolling back failed too: {again}; run the revert tasks)") from None
            raise Fail(f"{message} (rolled back)") from None
        return result

    def _new_default(self, fname, h):
        if fname == "cpuset.cpus" and self.version == "v1":
            parent = h["mount"]
            return read_value(os.path.join(parent, "cpuset.cpus"))
        return NEW_DEFAULTS[self.version][fname]

    def _missing_file(self, fname, h):
        setting = FILE_SETTING.get(fname, fname)
        if self.version == "v2":
            return (
                f"{setting}: {h['leaf']}/{fname} does not exist: the controller is not enabled for this cgroup "
                f"(is {self.root} a cgroup2 mount, with the controller in cgroup.subtree_control of the parents?)"
            )
        return f"{setting}: {h['leaf']}/{fname} does not exist"

    def _enable_plan(self, h, missing):
        """v2: [(directory, [controllers])] to enable in cgroup.subtree_control, from the root to the leaf's parent."""
        ctrls = sorted(set(h["controllers"]))
        out = []
        path = h["mount"]
        parts = h["leaf_rel"].split("/")
        for part in [None, *parts[:-1]]:
            if part is not None:
                path = os.path.join(path, part)
            if path in missing:
                out.append((path, ctrls))
                continue
            have = {c.lstrip("+") for c in read_value(os.path.join(path, "cgroup.subtree_control")).split()}
            lacking = [c for c in ctrls if c not in have]
            if lacking:
                out.append((path, lacking))
        return out

    def _create(self, plan):
        """Create the missing directories from the top down; v2: enable the controllers on the way."""
        h = plan["h"]
        enable = dict(plan["enable"])
        missing = set(plan["missing"])
        chain = [h["mount"]]
        for part in h["leaf_rel"].split("/"):
            chain.append(os.path.join(chain[-1], part))
        try:
            for d in chain:
                if d in missing:
                    os.mkdir(d, 0o755)
                    if not os.path.exists(os.path.join(d, "cgroup.procs")):
                        raise Fail(
                            f"container_resources_cgroup_root: created {d}, but it has no cgroup.procs: {self.root} "
                            "is not a cgroup file system (in a stand-in tree, create the cgroup beforehand)"
                        )
                    if self.version == "v1" and "cpuset" in h["controllers"]:
                        # A new cpuset cgroup has no CPUs or memory nodes: start from its parent's.
                        for fname in ("cpuset.cpus", "cpuset.mems"):
                            value = read_value(os.path.join(os.path.dirname(d), fname))
                            write_value(os.path.join(d, fname), value)
                if d in enable and d != h["leaf"]:
                    self._enable(d, enable[d])
        except OSError as exc:
            raise Fail(f"container_resources_cgroup_name: cannot create {h['leaf']}: {exc}") from None

    @staticmethod
    def _enable(directory, ctrls):
        path = os.path.join(directory, "cgroup.subtree_control")
        write_value(path, " ".join("+" + c for c in ctrls))
        have = {c.lstrip("+") for c in read_value(path).split()}
        if not set(ctrls) <= have:
            raise Fail(f"verification failed: {path} does not enable {' '.join(ctrls)}")

    def _write_values(self, h, writes, desired):
        order = []
        if "cpu.cfs_period_us" in writes:
            # The quota must fit the period at every step: lift it, change the period, set it.
            order = [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", desired["cpu.cfs_period_us"])]
            order.append(("cpu.cfs_quota_us", desired["cpu.cfs_quota_us"]))
            order += [(f, v) for f, v in sorted(writes.items()) if not f.startswith("cpu.cfs_")]
        else:
            order = sorted(writes.items())
        for fname, value in order:
            path = os.path.join(h["leaf"], fname)
            try:
                write_value(path, value)
            except OSError as exc:
                raise Fail(
                    f"{FILE_SETTING.get(fname, fname)}: writing {value.strip()!r} to {path} failed: {exc.strerror}"
                ) from None
        for fname, value in desired.items():
            path = os.path.join(h["leaf"], fname)
            got = read_value(path)
            if norm(fname, got) != norm(fname, value):
                raise Fail(
                    f"verification failed: {path} holds {got.strip()!r}, not {value.strip()!r} "
                    f"({FILE_SETTING.get(fname, fname)})"
                )

    @staticmethod
    def _move(pid, directory, variable):
        try:
            write_value(os.path.join(directory, "cgroup.procs"), str(pid))
        except ProcessLookupError:
            return False
        except OSError as exc:
            raise Fail(f"{variable}: cannot move pid {pid} into {directory}: {exc.strerror}") from None
        return True

    # reverted -----------------------------------------------------------------------------------

    def reverted(self):
        state = read_json(self.state_path)
        result = dict(changed=False, cgroup_version=self.version, cgroup_paths=[], moved=[], state_file=self.state_path)
        if state is None:
            return result
        check = self.module.check_mode
        before, after, moved, restored = [], [], [], {}
        procs = state.get("processes", {})
        table = None
        plans = []
        for rec in state.get("hierarchies", []):
            h = dict(mount=rec["mount"], ctrls=rec.get("ctrls", []), leaf=rec["leaf"])
            h["leaf_rel"] = os.path.relpath(rec["leaf"], rec["mount"])
            created = rec.get("created", [])
            exists = os.path.isdir(rec["leaf"])
            members = cgroup_members(rec["leaf"]) if exists else []
            moves = []
            for pid in members:
                origin = None
                saved = procs.get(str(pid))
                if saved and saved.get("start") == proc_start(pid):
                    origin = saved["origins"].get(rec["mount"])
                if origin is None:
                    if table is None:
                        table = proc_table()
                    ancestor = table.get(pid)
                    while ancestor and origin is None:
                        saved = procs.get(str(ancestor))
                        if saved and saved.get("start") == proc_start(ancestor):
                            origin = saved["origins"].get(rec["mount"])
                        ancestor = table.get(ancestor)
                if origin is None:
                    if rec["leaf"] not in created:
                        continue  # a process of a cgroup the role did not create, not moved in by it
                    origin = os.path.relpath(rec["parent"], rec["mount"])
                target = os.path.normpath(os.path.join(rec["mount"], origin.strip("/")))
                while not os.path.isdir(target) and target != rec["mount"]:
                    target = os.path.dirname(target)
                moves.append((pid, target))
                before.append(f"pid {pid}: {rec['leaf']}")
                after.append(f"pid {pid}: {target}")
            writes = {}
            if exists and rec["leaf"] not in created:
                for fname, original in rec.get("originals", {}).items():
                    path = os.path.join(rec["leaf"], fname)
                    current = read_value(path)
                    if current != original:
                        writes[fname] = original
                        before.append(f"{path}: {current.strip()}")
                        after.append(f"{path}: {original.strip()}")
            removals = [d for d in reversed(created) if os.path.isdir(d)]
            for d in removals:
                before.append(f"{d}: present")
                after.append(f"{d}: removed")
            plans.append(dict(h=h, rec=rec, moves=moves, writes=writes, removals=removals))
        disable = []
        for directory, ctrls in state.get("enabled", {}).items():
            path = os.path.join(directory, "cgroup.subtree_control")
            if os.path.exists(path):
                have = {c.lstrip("+") for c in read_value(path).split()}
                back = [c for c in ctrls if c in have]
                if back:
                    disable.append((directory, back))
                    before.append(f"{path}: {' '.join(sorted(have))}")
                    after.append(f"{path}: -{' -'.join(back)}")
        result["changed"] = bool(before)
        result["moved"] = sorted({pid for plan in plans for pid, _t in plan["moves"]})
        if before:
            result["diff"] = dict(before="\n".join(before) + "\n", after="\n".join(after) + "\n")
        if check:
            return result
        for plan in plans:
            for pid, target in plan["moves"]:
                if self._move(pid, target, "revert"):
                    moved.append(pid)
        for plan in plans:
            rec, writes = plan["rec"], plan["writes"]
            if writes:
                self._restore_values(rec["leaf"], writes, rec.get("originals", {}))
            for d in plan["removals"]:
                try:
                    os.rmdir(d)
                except OSError as exc:
                    left = cgroup_members(d)
                    raise Fail(
                        f"revert: cannot remove {d}: {exc.strerror}"
                        + (f" (processes still in it: {left})" if left else "")
                    ) from None
        for directory, ctrls in sorted(disable, key=lambda x: -len(x[0])):
            path = os.path.join(directory, "cgroup.subtree_control")
            try:
                write_value(path, " ".join("-" + c for c in ctrls))
            except OSError as exc:
                raise Fail(f"revert: cannot disable {' '.join(ctrls)} in {path}: {exc.strerror}") from None
        # Verify: directories gone, values back, processes back.
        for plan in plans:
            rec = plan["rec"]
            for d in plan["removals"]:
                if os.path.isdir(d):
                    raise Fail(f"verification failed: {d} still exists")
            for fname in plan["writes"]:
                path = os.path.join(rec["leaf"], fname)
                original = rec["originals"][fname]
                if norm(fname, read_value(path)) != norm(fname, original):
                    raise Fail(
                        f"verification failed: {path} holds {read_value(path).strip()!r}, not {original.strip()!r}"
                    )
            for pid, target in plan["moves"]:
                now = self.membership(pid, plan["h"])
                want = "" if target == rec["mount"] else os.path.relpath(target, rec["mount"])
                if now is not None and now != want:
                    raise Fail(f"verification failed: pid {pid} is in {now}, not back in {target}")
            restored.update({os.path.join(rec["leaf"], f): v.strip() for f, v in plan["writes"].items()})
        remove(self.state_path)
        result["values"] = restored
        return result

    @staticmethod
    def _restore_values(leaf, writes, originals):
        order = sorted(writes.items())
        if "cpu.cfs_period_us" in writes:
            order = [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", originals["cpu.cfs_period_us"])]
            order.append(("cpu.cfs_quota_us", originals.get("cpu.cfs_quota_us", "-1")))
            order += [(f, v) for f, v in sorted(writes.items()) if not f.startswith("cpu.cfs_")]
        for fname, value in order:
            path = os.path.join(leaf, fname)
            try:
                write_value(path, value)
            except OSError as exc:
                raise Fail(f"revert: writing {value.strip()!r} to {path} failed: {exc.strerror}") from None

    # validate -----------------------------------------------------------------------------------

    def validate_controllers(self, names):
        needed = {}
        for name in names:
            if name in SETTING_CONTROLLER:
                needed.setdefault(SETTING_CONTROLLER[name], set()).add(name)
        self.check_controllers(needed)


# --------------------------------------------------------------------------------------------
# Docker / Podman

DOCKER_FIELDS = ("NanoCpus", "CpuPeriod", "CpuQuota", "CpuShares", "Memory", "MemorySwap", "MemoryReservation")
DOCKER_FIELDS += ("PidsLimit", "CpusetCpus")


def cpus_text(value):
    text = format(Decimal(value).quantize(Decimal("1e-9")).normalize(), "f")
    return text


class Docker:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.p = p
        self.binary = p["docker_binary"] or p["backend"]
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", self.binary):
            raise Fail(f"container_resources_docker_binary: {self.binary!r} is not a command name or path")
        self.container = p["container"]
        if p["docker_mode"] == "update" and not CONTAINER_RE.fullmatch(self.container or ""):
            raise Fail(
                f"container_resources_container: {self.container!r} is not a container name or ID "
                "(letters, digits, _ . -, not starting with - or .)"
            )
        self.state_path = os.path.join(p["state_dir"], f"{p['backend']}-{slug(self.container or 'run')}.json")

    def run(self, argv):
        path = self.module.get_bin_path(self.binary) if "/" not in self.binary else self.binary
        if not path:
            raise Fail(f"container_resources_docker_binary: {self.binary} not found on {os.uname()[1]}")
        rc, out, err = self.module.run_command([path, *argv[1:]])
        if rc != 0:
            raise Fail(f"{' '.join(argv[:2])} failed (status {rc}): {(err or out).strip()[-500:]}")
        return out

    def inspect(self):
        out = self.run([self.binary, "inspect", "--type", "container", self.container])
        try:
            data = json.loads(out)
            host = data[0]["HostConfig"]
        except (ValueError, LookupError, TypeError):
            raise Fail(f"{self.binary} inspect {self.container}: unexpected output {out[:200]!r}") from None
        fields = {f: host.get(f) for f in DOCKER_FIELDS}
        for f in DOCKER_FIELDS:
            if f == "CpusetCpus":
                fields[f] = fields[f] or ""
            else:
                fields[f] = int(fields[f] or 0)
        return fields

    @staticmethod
    def wanted(s, use_quota, period):
        """{field: value} that the settings ask for."""
        w = {}
        if "cpu_limit" in s:
            if use_quota:
                w["CpuPeriod"] = period
                w["CpuQuota"] = max(1000, _round(s["cpu_limit"] * period))
            else:
                w["NanoCpus"] = int(Decimal(cpus_text(s["cpu_limit"])) * 10**9)
        if shares_of(s) is not None:
            w["CpuShares"] = shares_of(s)
        if "memory_limit_mb" in s:
            w["Memory"] = s["memory_limit_mb"] * MIB
            w["MemorySwap"] = s["memory_limit_mb"] * MIB  # no swap beyond the limit
        if "memory_request_mb" in s:
            w["MemoryReservation"] = s["memory_request_mb"] * MIB
        if "pids_limit" in s:
            w["PidsLimit"] = s["pids_limit"]
        if "cpuset_cpus" in s:
            w["CpusetCpus"] = s["cpuset_cpus"]
        return w

    @staticmethod
    def flags(values):
        """docker update/run flags for {field: value}."""
        f = []
        if "NanoCpus" in values:
            f += ["--cpus", cpus_text(Decimal(values["NanoCpus"]) / 10**9)]
        if "CpuPeriod" in values or "CpuQuota" in values:
            if "CpuPeriod" in values:
                f += ["--cpu-period", str(values["CpuPeriod"])]
            if "CpuQuota" in values:
                f += ["--cpu-quota", str(values["CpuQuota"])]
        if "CpuShares" in values:
            f += ["--cpu-shares", str(values["CpuShares"])]
        if "Memory" in values:
            f += ["--memory", str(values["Memory"])]
        if "MemorySwap" in values:
            f += ["--memory-swap", str(values["MemorySwap"])]
        if "MemoryReservation" in values:
            f += ["--memory-reservation", str(values["MemoryReservation"])]
        if "PidsLimit" in values:
            f += ["--pids-limit", str(values["PidsLimit"])]
        if "CpusetCpus" in values:
            f += ["--cpuset-cpus", values["CpusetCpus"]]
        return f

    @staticmethod
    def same(field, a, b):
        """Whether two values of a field have the same effect (0, -1 and the kernel's default are alike)."""
        if field == "CpusetCpus":
            return (tuple(parse_cpus(a)) if a else ()) == (tuple(parse_cpus(b)) if b else ())
        if field in ("PidsLimit", "CpuQuota", "MemorySwap"):
            return max(a or 0, 0) == max(b or 0, 0)
        if field == "CpuShares":
            return (a or 1024) == (b or 1024)
        if field == "CpuPeriod":
            return (a or 100000) == (b or 100000)
        return a == b

    def changes(self, current, desired):
        """The fields of ``desired`` to pass to docker update; memory goes with swap, the quota with the period."""
        changes = {f: v for f, v in desired.items() if not self.same(f, current[f], v)}
        for pair in (("Memory", "MemorySwap"), ("CpuPeriod", "CpuQuota")):
            if any(f in changes for f in pair):
                changes.update({f: desired[f] for f in pair if f in desired})
        return changes

    def restore_values(self, originals, fields):
        """{field: value} that puts back the original of each field; (values, irreversible fields)."""
        out, irreversible = {}, []
        for field in fields:
            o = originals[field]
            if field == "NanoCpus" and o == 0:
                irreversible.append(field)
                out[field] = len(online_cpus()) * 10**9
            elif field in ("Memory", "MemoryReservation") and o == 0:
                irreversible.append(field)
                out[field] = host_memory_bytes()
            elif field == "MemorySwap":
                out[field] = o if o != 0 else -1
            elif field == "CpuShares" and o == 0:
                out[field] = 1024
            elif field == "PidsLimit" and o <= 0:
                out[field] = -1
            elif field == "CpusetCpus" and not o:
                out[field] = format_cpus(online_cpus())
            elif field == "CpuQuota" and o <= 0:
                out[field] = -1
            elif field == "CpuPeriod" and o <= 0:
                out[field] = 100000
            else:
                out[field] = o
        if "Memory" in out and "MemorySwap" not in out:
            out["MemorySwap"] = originals.get("MemorySwap") or -1
        return out, irreversible

    def present(self, settings):
        p = self.p
        if p["docker_mode"] == "run_args":
            args = self.flags(self.wanted(settings, False, p["cpu_period_us"]))
            return dict(changed=False, run_args=args, argv=[])
        state = read_json(self.state_path)
        current = self.inspect()
        originals = (state or {}).get("originals", current)
        # --cpus (NanoCpus) only where the container already has it: it cannot be cleared again, and it
        # conflicts with a period or quota; otherwise --cpu-period/--cpu-quota (cleared with quota -1).
        use_quota = current["NanoCpus"] == 0 and originals["NanoCpus"] == 0
        period = originals["CpuPeriod"] if originals["CpuPeriod"] > 0 else p["cpu_period_us"]
        wanted = self.wanted(settings, use_quota, period)
        touched = set((state or {}).get("touched", [])) | set(wanted)
        restore, _ = self.restore_values(originals, sorted(touched - set(wanted)))
        _, would_be_irreversible = self.restore_values(originals, sorted(wanted))
        if would_be_irreversible and not p["allow_irreversible"]:
            names = {"NanoCpus": "cpu_limit", "Memory": "memory_limit_mb", "MemoryReservation": "memory_request_mb"}
            bad = ", ".join(sorted(names[f] for f in would_be_irreversible))
            raise Fail(
                f"{bad}: {self.binary} update cannot remove such a limit again, and container {self.container} "
                "has none, so revert could not restore it; start the container with a limit, or set"
                " container_resources_docker_allow_irreversible: true (revert then sets the host's capacity)"
            )
        desired = dict(restore)
        desired.update(wanted)
        changes = self.changes(current, desired)
        argv = [self.binary, "update", *self.flags(changes), self.container] if changes else []
        result = dict(changed=bool(changes), argv=argv, run_args=[], values=current, state_file=self.state_path)
        if changes:
            result["diff"] = dict(
                before="".join(f"{f}: {current[f]}\n" for f in sorted(changes)),
                after="".join(f"{f}: {changes[f]}\n" for f in sorted(changes)),
            )
        if not changes or self.module.check_mode:
            return result
        new_state = state or dict(backend=p["backend"], container=self.container, originals=current)
        new_state["touched"] = sorted(touched)
        write_json(self.state_path, new_state)
        self.run(argv)
        after = self.inspect()
        wrong = [f"{f} is {after[f]}, not {v}" for f, v in desired.items() if not self.same(f, after[f], v)]
        if wrong:
            raise Fail(f"verification failed: {self.container}: " + "; ".join(wrong))
        result["values"] = after
        return result

    def reverted(self):
        if self.p["docker_mode"] == "run_args":
            return dict(changed=False, argv=[], run_args=[])
        state = read_json(self.state_path)
        if state is None:
            return dict(changed=False, argv=[], run_args=[], state_file=self.state_path)
        current = self.inspect()
        restore, irreversible = self.restore_values(state["originals"], state.get("touched", []))
        changes = self.changes(current, restore)
        argv = [self.binary, "update", *self.flags(changes), self.container] if changes else []
        result = dict(changed=bool(changes), argv=argv, run_args=[], values=current, state_file=self.state_path)
        if irreversible:
            self.module.warn(
                f"container {self.container} had no {', '.join(irreversible)} limit, which {self.binary} update "
                "cannot clear: revert set the host's capacity instead"
            )
        if changes:
            result["diff"] = dict(
                before="".join(f"{f}: {current[f]}\n" for f in sorted(changes)),
                after="".join(f"{f}: {changes[f]}\n" for f in sorted(changes)),
            )
        if self.module.check_mode:
            return result
        if changes:
            self.run(argv)
            after = self.inspect()
            wrong = [f"{f} is {after[f]}, not {v}" for f, v in restore.items() if not self.same(f, after[f], v)]
            if wrong:
                raise Fail(f"verification failed: {self.container}: " + "; ".join(wrong))
            result["values"] = after
        remove(self.state_path)
        return result


# --------------------------------------------------------------------------------------------
# Kubernetes

QUANTITY_RE = re.compile(
    r"^([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?$"
)
SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
K8S_KEYS = {
    "cpu_limit": ("limits", "cpu"),
    "cpu_request": ("requests", "cpu"),
    "memory_limit_mb": ("limits", "memory"),
    "memory_request_mb": ("requests", "memory"),
}


def parse_quantity(text):
    """A Kubernetes quantity ('500m', '512Mi', '1e3', 2) as a Decimal; ValueError when it is not one."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return Decimal(repr(text))
    m = QUANTITY_RE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    sign, number, suffix, exponent = m.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from None
    value = value * (Decimal(10) ** int(exponent) if exponent else SUFFIX[suffix or ""])
    return -value if sign == "-" else value


def cpu_quantity(cores):
    milli = _round(cores * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


class Kubernetes:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.p = p
        if not DNS_SUBDOMAIN_RE.fullmatch(p["k8s_name"] or "") or len(p["k8s_name"]) > 253:
            raise Fail(f"container_resources_k8s_name: {p['k8s_name']!r} is not a Kubernetes object name")
        if not DNS_LABEL_RE.fullmatch(p["k8s_namespace"] or ""):
            raise Fail(f"container_resources_k8s_namespace: {p['k8s_namespace']!r} is not a Kubernetes namespace")
        if p["k8s_container"] and not DNS_LABEL_RE.fullmatch(p["k8s_container"]):
            raise Fail(f"container_resources_k8s_container: {p['k8s_container']!r} is not a container name")
        self.kind = p["k8s_kind"]
        ident = f"k8s-{p['k8s_namespace']}-{self.kind.lower()}-{p['k8s_name']}-{p['k8s_container'] or 'only'}"
        self.state_path = os.path.join(p["state_dir"], ident + ".json")

    def container(self, obj):
        """(name, resources) of the container in the live object."""
        p = self.p
        if obj:
            if obj.get("kind") not in (None, self.kind):
                raise Fail(f"container_resources_k8s_kind: the object is a {obj.get('kind')}, not a {self.kind}")
            containers = ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
            names = [c.get("name") for c in containers]
            if p["k8s_container"]:
                if p["k8s_container"] not in names:
                    raise Fail(
                        f"container_resources_k8s_container: {self.kind} {p['k8s_name']} has no container "
                        f"{p['k8s_container']!r} (containers: {', '.join(map(str, names)) or 'none'})"
                    )
                name = p["k8s_container"]
            elif len(names) == 1:
                name = names[0]
            else:
                raise Fail(
                    f"container_resources_k8s_container: {self.kind} {p['k8s_name']} has "
                    f"{len(names)} containers ({', '.join(map(str, names))}); name one"
                )
            found = next(c for c in containers if c.get("name") == name)
            return name, found.get("resources") or {}
        if self.module.params["k8s_render_file"] is None:
            raise Fail(
                f"{self.kind} {p['k8s_namespace']}/{p['k8s_name']} not found in the cluster "
                "(kubernetes.core.k8s_info returned nothing)"
            )
        if not p["k8s_container"]:
            raise Fail("container_resources_k8s_container: name the container (no live object to find it in)")
        return p["k8s_container"], {}

    @staticmethod
    def live(resources):
        """{'limits.cpu': Decimal or None, ...} of a container's resources."""
        out = {}
        for section in ("limits", "requests"):
            for res in ("cpu", "memory"):
                raw = (resources.get(section) or {}).get(res)
                try:
                    out[f"{section}.{res}"] = None if raw is None else parse_quantity(raw)
                except ValueError as exc:
                    raise Fail(f"the live object has a bad quantity in resources.{section}.{res}: {exc}") from None
        return out

    @staticmethod
    def wanted(s):
        w = {}
        if "cpu_limit" in s:
            w["limits.cpu"] = cpu_quantity(s["cpu_limit"])
        if "cpu_request" in s:
            w["requests.cpu"] = cpu_quantity(s["cpu_request"])
        if "memory_limit_mb" in s:
            w["limits.memory"] = f"{s['memory_limit_mb']}Mi"
        if "memory_request_mb" in s:
            w["requests.memory"] = f"{s['memory_request_mb']}Mi"
        return w

    @staticmethod
    def expected(desired):
        """{key: Decimal or None}: the quantities the pod template must hold (None: absent)."""
        return {k: (None if v is None else parse_quantity(v)) for k, v in desired.items()}

    def patch(self, name, desired):
        resources = {}
        for key, value in sorted(desired.items()):
            section, res = key.split(".")
            resources.setdefault(section, {})[res] = value
        return {
            "apiVersion": "apps/v1",
            "kind": self.kind,
            "metadata": {"name": self.p["k8s_name"], "namespace": self.p["k8s_namespace"]},
            "spec": {"template": {"spec": {"containers": [{"name": name, "resources": resources}]}}},
        }

    def desired(self, settings, state):
        wanted = self.wanted(settings)
        originals = (state or {}).get("originals", {})
        desired = {k: originals.get(k) for k in originals if k not in wanted}
        desired.update(wanted)
        return desired

    def differs(self, live, desired):
        exp = self.expected(desired)
        return sorted(k for k, v in exp.items() if live.get(k) != v)

    def render(self, patch):
        path = self.p["k8s_render_file"]
        text = json.dumps(patch, indent=2, sort_keys=True) + "\n"
        if os.path.exists(path) and read_value(path) == text:
            return
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def present(self, settings):
        state = read_json(self.state_path)
        name, resources = self.container(self.p["k8s_object"])
        live = self.live(resources)
        desired = self.desired(settings, state)
        differs = self.differs(live, desired)
        patch = self.patch(name, desired) if desired else None
        result = dict(changed=bool(differs), patch=patch if differs else None, state_file=self.state_path)
        if differs:
            result["diff"] = dict(
                before="".join(f"{k}: {resources.get(k.split('.')[0], {}).get(k.split('.')[1])}\n" for k in differs),
                after="".join(f"{k}: {desired.get(k)}\n" for k in differs),
            )
        if self.module.check_mode:
            return result
        if differs:
            new_state = state or dict(backend="kubernetes", container=name, originals={})
            for key in desired:
                section, res = key.split(".")
                new_state["originals"].setdefault(key, (resources.get(section) or {}).get(res))
            write_json(self.state_path, new_state)
        if self.p["k8s_render_file"] and patch is not None:
            result["patch"] = patch
            self.render(patch)
            result["patch_file"] = self.p["k8s_render_file"]
        return result

    def verify(self, settings):
        state = read_json(self.state_path)
        _name, resources = self.container(self.p["k8s_object"])
        desired = self.desired(settings, state)
        differs = self.differs(self.live(resources), desired)
        if differs:
            raise Fail(
                "verification failed: the workload's resources differ in "
                + ", ".join(f"{k} ({(resources.get(k.split('.')[0]) or {}).get(k.split('.')[1])!r})" for k in differs)
            )
        return dict(changed=False)

    def reverted(self):
        state = read_json(self.state_path)
        if state is None:
            return dict(changed=False, patch=None, state_file=self.state_path)
        originals = state["originals"]
        render = self.p["k8s_render_file"]
        if render:
            name, live = state["container"], {}
        else:
            name, resources = self.container(self.p["k8s_object"])
            live = self.live(resources)
        differs = self.differs(live, originals) if not render else sorted(originals)
        patch = self.patch(name, originals)
        result = dict(changed=bool(differs), patch=patch if differs else None, state_file=self.state_path)
        if differs:
            result["diff"] = dict(before="", after="".join(f"{k}: {originals[k]}\n" for k in differs))
        if self.module.check_mode:
            return result
        if render:
            self.render(patch)
            result["patch"] = patch
            result["patch_file"] = render
            remove(self.state_path)
        return result

    def forget(self):
        state = read_json(self.state_path)
        if state is None:
            return dict(changed=False)
        if self.p["k8s_object"]:
            _name, resources = self.container(self.p["k8s_object"])
            differs = self.differs(self.live(resources), state["originals"])
            if differs:
                raise Fail(
                    "verification failed: after the revert, the workload's resources differ in " + ", ".join(differs)
                )
        if not self.module.check_mode:
            remove(self.state_path)
        return dict(changed=True)


# --------------------------------------------------------------------------------------------
# validate


def validate(module):
    p = module.params
    backend = p["backend"]
    errors, names = [], []
    for t in p["tunables"]:
        name = t.get("name")
        if name not in BACKEND_SETTINGS[backend]:
            errors.append(
                "tunable {!r}: unknown to container_resources with the {} backend (known: {})".format(
                    name, backend, ", ".join(BACKEND_SETTINGS[backend])
                )
            )
            continue
        names.append(name)
        ttype = t.get("type")
        if name == "cpuset_cpus" and ttype not in (None, "categorical"):
            errors.append(f"tunable 'cpuset_cpus': must be categorical (CPU lists as choices), not {ttype}")
            continue
        if (
            name in ("cpu_shares", "cpu_weight", "memory_limit_mb", "memory_request_mb", "pids_limit")
            and ttype == "float"
        ):
            errors.append(f"tunable {name!r}: must be int or categorical, not float")
            continue
        values = [(k, t.get(k)) for k in ("low", "high", "default") if t.get(k) is not None]
        values += [(f"choices[{i}]", c) for i, c in enumerate(t.get("choices") or [])]
        for key, value in values:
            try:
                checked = check_setting(name, value, p["memory_floor_mb"])
            except ValueError as exc:
                errors.append(f"tunable {name!r}: {key} {exc}")
                continue
            if name == "cpuset_cpus" and backend != "kubernetes":
                extra = sorted(set(parse_cpus(checked)) - set(online_cpus()))
                if extra:
                    errors.append(
                        f"tunable 'cpuset_cpus': {key} {value!r} names CPUs {format_cpus(extra)} that this host "
                        f"does not have (online: {format_cpus(online_cpus())})"
                    )
    weights = [n for n in names if n in ("cpu_request", "cpu_shares", "cpu_weight")]
    if len(weights) > 1:
        errors.append("tunables {}: declare only one of cpu_request, cpu_shares, cpu_weight".format(", ".join(weights)))
    if not errors and backend == "cgroup":
        cgroups = Cgroups(module)  # a bad container_resources_cgroup_* variable fails as it is
        try:
            cgroups.validate_controllers(names)
        except Fail as exc:
            errors.append(f"tunable {exc}")
    if not errors and backend in ("docker", "podman") and p["docker_mode"] == "update":
        binary = p["docker_binary"] or backend
        if not module.get_bin_path(binary) and not os.access(binary, os.X_OK):
            errors.append(f"container_resources_docker_binary: {binary} not found on {os.uname()[1]}")
    if errors:
        raise Fail("container resource tunables rejected: " + "; ".join(errors))
    return dict(changed=False, tunables=names)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", choices=["cgroup", "docker", "podman", "kubernetes"], default="cgroup"),
            state=dict(type="str", choices=["present", "reverted", "validate", "verify", "forget"], default="present"),
            settings=dict(type="dict", default={}),
            tunables=dict(type="list", elements="dict", default=[]),
            state_dir=dict(type="path", required=True),
            memory_floor_mb=dict(type="int", default=6),
            cgroup_root=dict(type="path", default="/sys/fs/cgroup"),
            cgroup_version=dict(type="str", choices=["auto", "v1", "v2"], default="auto"),
            cgroup_name=dict(type="str", default="knobflow/default"),
            cgroup_parent=dict(type="str", default="/"),
            cpu_period_us=dict(type="int", default=100000),
            pid=dict(type="int", default=0),
            pidfile=dict(type="path"),
            include_descendants=dict(type="bool", default=True),
            container=dict(type="str", default=""),
            docker_binary=dict(type="str", default=""),
            docker_mode=dict(type="str", choices=["update", "run_args"], default="update"),
            allow_irreversible=dict(type="bool", default=False),
            k8s_kind=dict(type="str", choices=["Deployment", "StatefulSet", "DaemonSet"], default="Deployment"),
            k8s_name=dict(type="str", default=""),
            k8s_namespace=dict(type="str", default="default"),
            k8s_container=dict(type="str", default=""),
            k8s_object=dict(type="dict", default={}),
            k8s_render_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    backend, state = p["backend"], p["state"]
    try:
        if p["memory_floor_mb"] < 1:
            raise Fail("container_resources_memory_limit_floor_mb: must be at least 1")
        if state == "validate":
            module.exit_json(**validate(module))
        settings = (
            check_settings(p["settings"], backend, p["memory_floor_mb"]) if state in ("present", "verify") else {}
        )
        if backend == "cgroup":
            if state not in ("present", "reverted"):
                raise Fail(f"state {state} is for the kubernetes backend")
            cg = Cgroups(module)
            result = cg.present(settings) if state == "present" else cg.reverted()
        elif backend in ("docker", "podman"):
            if state not in ("present", "reverted"):
                raise Fail(f"state {state} is for the kubernetes backend")
            dk = Docker(module)
            result = dk.present(settings) if state == "present" else dk.reverted()
        else:
            k8s = Kubernetes(module)
            if state == "present":
                result = k8s.present(settings)
            elif state == "verify":
                result = k8s.verify(settings)
            elif state == "reverted":
                result = k8s.reverted()
            else:
                result = k8s.forget()
    except Fail as exc:
        module.fail_json(msg=str(exc))
    result["backend"] = backend
    module.exit_json(**result)


if __name__ == "__main__":
    main()
