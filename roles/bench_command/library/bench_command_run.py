#!/usr/bin/python
"""Run a benchmark command with warm-up and repeats, parse its metrics, aggregate them."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bench_command_run
short_description: Run a benchmark command and parse its metrics
description:
  - Runs I(argv) (no shell) I(warmup) times, discarding the results, then I(repeats) times.
  - Metrics come from the last line of standard output that is a JSON object of numbers, or,
    when I(regex) is given, from its named groups.
  - Each metric is aggregated over the repeats; the spread (min, max, standard deviation) is returned.
  - Fails, naming the run, when the command exits non-zero, times out, or prints no metrics.
options:
  argv:
    description: The command and its arguments.
    type: list
    elements: str
    required: true
  chdir:
    description: Working directory.
    type: path
  environment:
    description: Extra environment variables for the command.
    type: dict
    default: {}
  warmup:
    description: Runs before the measured ones, results discarded.
    type: int
    default: 1
  repeats:
    description: Measured runs.
    type: int
    default: 3
  aggregate:
    description: How to combine the measured runs.
    type: str
    choices: [median, mean, trimmed_mean, min, max]
    default: median
  timeout:
    description: Seconds one run may take.
    type: int
    default: 600
  regex:
    description: A regular expression with named groups, applied to standard output.
    type: str
  cgroups:
    description:
      - Cgroup directories (one per hierarchy, for example the C(container_resources_cgroup_paths) of the
        container_resources role) that the command runs in. The child process writes its own pid into each
        C(cgroup.procs) before it executes the command, so the command and everything it starts are limited
        from their first instruction. On a real cgroup file system the child checks C(/proc/self/cgroup)
        afterwards.
    type: list
    elements: path
    default: []
author: knobflow maintainers
"""

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule


def tail(text, n=5):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-600:]


def parse(stdout, regex):
    if regex:
        found = {}
        for m in re.finditer(regex, stdout, re.MULTILINE):
            found.update({k: v for k, v in m.groupdict().items() if v is not None})
        out = {}
        for k, v in found.items():
            try:
                out[k] = float(v)
            except ValueError:
                raise ValueError(f"regex group {k!r} matched {v!r}, which is not a number") from None
        return out
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


def _die_with_parent():
    """In the child: get SIGKILL when this module's process dies (Linux), so a killed run leaves no benchmark."""
    os.setsid()
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class CgroupJoinError(Exception):
    """The child could not put itself into the benchmark's cgroups."""


def cgroup_expectations(paths):
    """[(path, fstype, mount options, path inside the hierarchy)] of the paths on a real cgroup file system.

    A path on another file system (a stand-in directory) is written to but not checked.
    """
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
                mounts.append((fields[1].replace("\\040", " "), fields[2], set(fields[3].split(","))))
    out = []
    for path in paths:
        real = os.path.realpath(path)
        inside = [m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")]
        if inside:
            mount, fstype, options = max(inside, key=lambda m: len(m[0]))
            out.append((path, fstype, options, "/" if real == mount else "/" + os.path.relpath(real, mount)))
    return out


def _join_cgroups(paths, expected, err_fd):
    """In the child: write our pid into each cgroup.procs, then check /proc/self/cgroup; report through err_fd."""
    try:
        for path in paths:
            target = os.path.join(path, "cgroup.procs")
            try:
                fd = os.open(target, os.O_WRONLY)
                try:
                    os.write(fd, f"{os.getpid()}\n".encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                raise OSError(exc.errno, f"writing its pid to {target}: {exc.strerror}") from None
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
        for path, fstype, options, inside in expected:
            for _id, controllers, where in lines:
                names = set(filter(None, controllers.split(",")))
                if (fstype == "cgroup2" and not names) or (fstype == "cgroup" and names & options):
                    if where.rstrip("/") != inside.rstrip("/"):
                        raise OSError(0, f"still in {where} after joining {path}")
                    break
    except OSError as exc:
        os.write(err_fd, (exc.strerror or str(exc)).encode())
        raise


def run_command(argv, chdir, env, timeout, cgroups=()):
    """Run argv in its own process group; on timeout kill the whole group (grandchildren included).

    With ``cgroups``, the child joins them before it executes argv (CgroupJoinError when it cannot).
    """
    if not cgroups:
        return _run(argv, chdir, env, timeout, _die_with_parent)
    expected = cgroup_expectations(cgroups)
    err_r, err_w = os.pipe()

    def setup():
        _die_with_parent()
        _join_cgroups(cgroups, expected, err_w)

    try:
        return _run(argv, chdir, env, timeout, setup)
    except subprocess.SubprocessError as exc:
        if isinstance(exc, subprocess.TimeoutExpired):
            raise
        os.close(err_w)
        err_w = -1
        raise CgroupJoinError(os.read(err_r, 4096).decode(errors="replace") or str(exc)) from None
    finally:
        if err_w >= 0:
            os.close(err_w)
        os.close(err_r)


def _run(argv, chdir, env, timeout, preexec):
    proc = subprocess.Popen(
        argv, cwd=chdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def combine(values, how):
    if how == "mean":
        return statistics.fmean(values)
    if how == "trimmed_mean":
        # Drop the highest and lowest tenth (at least one each once there are 3 runs or more).
        ordered = sorted(values)
        cut = max(1, len(ordered) // 10) if len(ordered) >= 3 else 0
        return statistics.fmean(ordered[cut : len(ordered) - cut])
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return statistics.median(values)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            argv=dict(type="list", elements="str", required=True),
            chdir=dict(type="path"),
            environment=dict(type="dict", default={}),
            warmup=dict(type="int", default=1),
            repeats=dict(type="int", default=3),
            aggregate=dict(type="str", choices=["median", "mean", "trimmed_mean", "min", "max"], default="median"),
            timeout=dict(type="int", default=600),
            regex=dict(type="str"),
            cgroups=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=False,
    )
    p = module.params
    if not p["argv"]:
        module.fail_json(msg="argv is empty: give the benchmark command as a list")
    if p["repeats"] < 1 or p["warmup"] < 0:
        module.fail_json(msg="repeats must be >= 1 and warmup >= 0")
    if p["chdir"] and not os.path.isdir(p["chdir"]):
        module.fail_json(msg="chdir {} is not a directory on {}".format(p["chdir"], os.uname()[1]))
    for path in p["cgroups"]:
        if not os.path.isabs(path) or not os.path.isfile(os.path.join(path, "cgroup.procs")):
            module.fail_json(msg=f"bench_command_cgroups: {path} is not a cgroup directory (no cgroup.procs)")
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in p["environment"].items()})
    total = p["warmup"] + p["repeats"]
    runs = []
    for i in range(total):
        if i < p["warmup"]:
            label = f"warm-up run {i + 1} of {p['warmup']}"
        else:
            label = f"run {i - p['warmup'] + 1} of {p['repeats']}"
        started = time.monotonic()
        try:
            proc = run_command(p["argv"], p["chdir"], env, p["timeout"], p["cgroups"])
        except CgroupJoinError as exc:
            module.fail_json(msg=f"cannot start the benchmark command in its cgroups ({label}): {exc}")
        except subprocess.TimeoutExpired:
            module.fail_json(msg=f"benchmark command timed out after {p['timeout']} s ({label})")
        except OSError as exc:
            module.fail_json(msg="cannot start the benchmark command {}: {}".format(p["argv"][0], exc.strerror or exc))
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            output = tail(proc.stderr) or tail(proc.stdout) or "no output"
            module.fail_json(
                msg=f"benchmark command exited with status {proc.returncode} ({label}): {output}", rc=proc.returncode
            )
        try:
            metrics = parse(proc.stdout, p["regex"])
        except ValueError as exc:
            module.fail_json(msg=f"benchmark output has a bad metric ({label}): {exc}")
        if not metrics:
            how = (
                "no match for regex {!r}".format(p["regex"]) if p["regex"] else "no line with a JSON object of numbers"
            )
            module.fail_json(
                msg="benchmark printed no metrics ({}): {}; stdout ends: {}".format(
                    label, how, tail(proc.stdout) or "(empty)"
                )
            )
        if i >= p["warmup"]:
            metrics.setdefault("benchmark_seconds", elapsed)
            runs.append(metrics)
    names = sorted(set.intersection(*(set(r) for r in runs)))  # benchmark_seconds at least
    aggregated = {n: combine([r[n] for r in runs], p["aggregate"]) for n in names}
    spread = {}
    for n in names:
        vals = [r[n] for r in runs]
        spread[n] = dict(min=min(vals), max=max(vals), stdev=statistics.stdev(vals) if len(vals) > 1 else 0.0)
    module.exit_json(changed=False, metrics=aggregated, runs=runs, spread=spread, aggregate=p["aggregate"])


if __name__ == "__main__":
    main()
