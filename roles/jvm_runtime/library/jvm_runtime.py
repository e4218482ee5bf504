#!/usr/bin/python
"""Write, verify, validate and revert JVM options (HotSpot or OpenJ9) for the runtime layer."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: jvm_runtime
short_description: Apply, validate or revert JVM options for a knobflow runtime layer
description:
  - Maps tunable names (C(gc), C(xmx_mb), C(xx_<FlagName>), ...) to JVM options, checks every value
    (against the JVM's own flag list from C(-XX:+PrintFlagsFinal) when a HotSpot JVM is present,
    cached per JVM binary), proves the JVM starts with them (C(java <options> -version)), and writes
    them to a file: one option per line (a C(java @file) argument file, or a C(jvm.options) file),
    a shell/systemd environment file, or a JSON object of environment variables.
  - On the first change, saves what was there (the file, or the fact that there was none), so that
    C(state=reverted) puts back exactly the original. Verifies by reading the file back and by
    starting the JVM with it. Supports check mode and diff mode.
  - C(state=validate) checks a list of declared tunables (knobflow's C(knobflow_tunables)) before
    any trial, starting the JVM with each tunable's bounds, default and choices.
options:
  state:
    description: C(present) applies I(settings); C(reverted) restores the original; C(validate) checks I(tunables).
    type: str
    choices: [present, reverted, validate]
    default: present
  path:
    description: The file to write. Required for C(present) and C(reverted).
    type: path
  format:
    description: C(jvm_options) (one option per line), C(env) (C(NAME='...')) or C(json) (C({"NAME": "..."})).
    type: str
    choices: [jvm_options, env, json]
    default: jvm_options
  env_var:
    description: The environment variable of the C(env) and C(json) formats.
    type: str
    default: JAVA_TOOL_OPTIONS
  settings:
    description: Tunable name to value; see the role README for the mapping.
    type: dict
    default: {}
  extra_options:
    description: Fixed JVM options written before the tuned ones.
    type: list
    elements: str
    default: []
  vm:
    description: C(hotspot), C(openj9), or C(auto) (ask the JVM; C(hotspot) when there is none).
    type: str
    choices: [auto, hotspot, openj9]
    default: auto
  java:
    description: The java launcher, a name on PATH or a path.
    type: str
    default: java
  cache_dir:
    description: Where the flag lists of JVMs are cached; empty for no cache.
    type: str
    default: ~/.cache/knobflow/jvm_runtime
  start_check:
    description: Start the JVM with the options (C(-version)) before writing them, and with the written file after.
    type: bool
    default: true
  tunables:
    description: For C(state=validate), the declared tunables (dicts with name, type, low, high, choices, default).
    type: list
    elements: dict
    default: []
author: knobflow maintainers
"""

RETURN = r"""
options:
  description: The JVM options the file holds (after C(present)), unlock options and extra options included.
  type: list
  returned: always
vm:
  description: The JVM kind the options were built for (hotspot or openj9).
  type: str
  returned: always
java:
  description: The JVM used for the checks (a path), or null when none was found.
  type: str
  returned: always
"""

import contextlib
import difflib
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.knobflow_files import change_file, file_diff, read, revert

# Characters a value or an extra option may contain: enough for numbers, sizes, names, paths and
# lists, and nothing a shell, an argument file or an environment-variable list would interpret
# (no whitespace, quotes, $, backticks, ;, &, |, <, >, #, parentheses, backslashes or newlines).
SAFE = re.compile(r"^[A-Za-z0-9_.,:/+=@%-]*$")
FLAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JAVA_ENV = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")
HEADER = "# Managed by knobflow (jvm_runtime): restored to the original by its revert.\n"

HOTSPOT_GCS = {
    "G1": "UseG1GC",
    "Parallel": "UseParallelGC",
    "Serial": "UseSerialGC",
    "Z": "UseZGC",
    "Shenandoah": "UseShenandoahGC",
    "Epsilon": "UseEpsilonGC",
    "ConcMarkSweep": "UseConcMarkSweepGC",
}
HOTSPOT_GC_ALIASES = {"ZGC": "Z", "CMS": "ConcMarkSweep", "ParallelGC": "Parallel", "G1GC": "G1", "SerialGC": "Serial"}
OPENJ9_GCS = ["gencon", "optthruput", "optavgpause", "balanced", "metronome", "nogc"]

# Named tunables: (kind, option template, HotSpot flag it sets or None, minimum, OpenJ9 template or None).
# kind "mb"/"kb"/"count"/"ms" are integers; the option template gets the integer.
NAMED = {
    "xmx_mb": ("mb", "-Xmx{}m", "MaxHeapSize", 2, "-Xmx{}m"),
    "xms_mb": ("mb", "-Xms{}m", "InitialHeapSize", 1, "-Xms{}m"),
    "xmn_mb": ("mb", "-Xmn{}m", "NewSize", 1, "-Xmn{}m"),
    "xss_kb": ("kb", "-Xss{}k", "ThreadStackSize", 1, "-Xss{}k"),
    "max_metaspace_mb": ("mb", "-XX:MaxMetaspaceSize={}m", "MaxMetaspaceSize", 1, None),
    "metaspace_mb": ("mb", "-XX:MetaspaceSize={}m", "MetaspaceSize", 1, None),
    "max_direct_memory_mb": (
        "mb",
        "-XX:MaxDirectMemorySize={}m",
        "MaxDirectMemorySize",
        0,
        "-XX:MaxDirectMemorySize={}m",
    ),
    "reserved_code_cache_mb": (
        "mb",
        "-XX:ReservedCodeCacheSize={}m",
        "ReservedCodeCacheSize",
        1,
        "-Xcodecachetotal{}m",
    ),
    "gc_threads": ("count", "-XX:ParallelGCThreads={}", "ParallelGCThreads", 1, "-Xgcthreads{}"),
    "conc_gc_threads": ("count", "-XX:ConcGCThreads={}", "ConcGCThreads", 1, None),
    "max_gc_pause_ms": ("ms", "-XX:MaxGCPauseMillis={}", "MaxGCPauseMillis", 1, None),
}
# The order options are written in: gc first, then the named ones as above, then xx_ by name.
NAMED_ORDER = ["gc", *NAMED]
INT_RANGES = {
    "int": (-(2**31), 2**31 - 1),
    "uint": (0, 2**32 - 1),
    "intx": (-(2**63), 2**63 - 1),
    "uintx": (0, 2**64 - 1),
    "uint64_t": (0, 2**64 - 1),
    "size_t": (0, 2**64 - 1),
}
SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
FLAG_LINE = re.compile(r"^\s*(\w+)\s+(\w+)\s+(:?=)\s*(.*?)\s*\{([^}]*)\}\s*(?:\{([^}]*)\})?\s*$")


class Problem(Exception):
    """A setting the role refuses; the message names it."""


# --------------------------------------------------------------------------------------------
# The JVM: its path, its kind and its flag list


def env_without_java_options():
    env = dict(os.environ)
    for name in JAVA_ENV:
        env.pop(name, None)
    env["LC_ALL"] = "C"
    return env


def run_java(argv, env=None, timeout=120):
    """Run a JVM (argv list, no shell); returns (rc, stdout, stderr)."""
    try:
        p = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env if env is not None else env_without_java_options(),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s"
    except OSError as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def find_java(module, java):
    """The JVM's path, or None when there is none (then the checks that need it are skipped)."""
    if "/" in java:
        if not (os.path.isfile(java) and os.access(java, os.X_OK)):
            module.fail_json(msg=f"jvm_runtime_java: {java} is not an executable file")
        return java
    return module.get_bin_path(java, required=False)


def _stat_key(path):
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def jvm_key(java):
    """A key that changes when the JVM binary or its libjvm changes."""
    real = os.path.realpath(java)
    parts = [_stat_key(real)]
    home = os.path.dirname(os.path.dirname(real))
    for lib in (
        "lib/server/libjvm.so",
        "lib/amd64/server/libjvm.so",
        "jre/lib/amd64/server/libjvm.so",
        "lib/default/libj9vm29.so",
        "lib/compressedrefs/libj9vm29.so",
    ):
        candidate = os.path.join(home, lib)
        if os.path.exists(candidate):
            parts.append(_stat_key(candidate))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def parse_flags(text):
    """PrintFlagsFinal output -> {name: {"type", "value", "category", "origin"}}."""
    flags = {}
    for line in text.splitlines():
        m = FLAG_LINE.match(line)
        if not m:
            continue
        ftype, name, assign, value, category, origin = m.groups()
        if origin is None:  # JDK 8: ":=" marks a value changed from the default
            origin = "command line" if assign == ":=" else "default"
        flags[name] = {"type": ftype, "value": value, "category": category.strip(), "origin": origin.strip()}
    return flags


def describe_jvm(module, java, cache_dir):
    """(vm kind, version line, flags or None) of the JVM, from the cache when it has this binary."""
    key = jvm_key(java)
    cache = os.path.join(os.path.expanduser(cache_dir), key + ".json") if cache_dir else None
    if cache and os.path.exists(cache):
        with contextlib.suppress(OSError, ValueError):
            with open(cache) as f:
                data = json.load(f)
            if data.get("java") == os.path.realpath(java):
                return data["vm"], data["version"], data["flags"]
    rc, out, err = run_java([java, "-version"])
    if rc != 0:
        module.fail_json(msg=f"the JVM {java} does not start (java -version exited {rc}): {tail(err or out)}")
    version = (err or out).strip().splitlines()[0] if (err or out).strip() else ""
    vm = "openj9" if "OpenJ9" in (err + out) else "hotspot"
    flags = None
    if vm == "hotspot":
        rc, out, err = run_java(
            [
                java,
                "-XX:+UnlockExperimentalVMOptions",
                "-XX:+UnlockDiagnosticVMOptions",
                "-XX:+PrintFlagsFinal",
                "-version",
            ]
        )
        if rc != 0:
            module.fail_json(msg=f"cannot read the flag list of {java} (-XX:+PrintFlagsFinal exited {rc}): {tail(err)}")
        flags = parse_flags(out)
        if not flags:
            module.fail_json(msg=f"cannot read the flag list of {java}: -XX:+PrintFlagsFinal printed no flags")
    if cache:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache), prefix=".flags-")
            with os.fdopen(fd, "w") as f:
                json.dump({"java": os.path.realpath(java), "vm": vm, "version": version, "flags": flags}, f)
            os.replace(tmp, cache)
    return vm, version, flags


def tail(text, n=4):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Error: Could not create", "Error: A fatal exception"))]
    return " | ".join(lines[-n:])[-500:]


# --------------------------------------------------------------------------------------------
# Settings -> options


def as_int(value, what, allow_suffix=False):
    """An integer from an int, an integral float, or a string of digits (with k/m/g/t when allowed)."""
    if isinstance(value, bool):
        raise Problem(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise Problem(f"{what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"(-?\d+)([kKmMgGtT]?)", value.strip())
        if m and (allow_suffix or not m.group(2)):
            return int(m.group(1)) * SUFFIX[m.group(2).lower()]
    raise Problem(f"{what} must be an integer, got {value!r}")


def as_bool(value, what):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise Problem(f"{what} is a bool flag: give true or false, got {value!r}")


def safe_text(value, what):
    text = value if isinstance(value, str) else str(value)
    if not SAFE.fullmatch(text):
        raise Problem(
            f"{what}: {value!r} has characters the role does not write (whitespace, quotes, newlines or shell "
            "metacharacters); allowed: letters, digits and _ . , : / + = @ % -"
        )
    return text


def suggest(name, known):
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return f" (did you mean {lowered[name.lower()]}? flag names are case-sensitive)"
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.75)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def xx_option(name, flag, value, flags, vm):
    """The -XX option for flag ``flag`` and the unlock option it needs ("" for none)."""
    what = name
    if not FLAG_NAME.fullmatch(flag):
        raise Problem(f"{name}: {flag!r} is not a JVM flag name")
    if flags is None:  # no flag list (no JVM, or OpenJ9): the value's type decides
        if isinstance(value, bool):
            return ("-XX:+" if value else "-XX:-") + flag, ""
        if isinstance(value, float) and not math.isfinite(value):
            raise Problem(f"{what} must be a finite number, got {value!r}")
        if value is None or isinstance(value, (list, dict)):
            raise Problem(f"{what}: a flag takes a bool, a number or a string, got {value!r}")
        return f"-XX:{flag}={safe_text(value, what)}", ""
    info = flags.get(flag)
    if info is None:
        raise Problem(f"{name}: this JVM has no flag -XX:{flag}{suggest(flag, flags)}")
    ftype, category = info["type"], info["category"].lower()
    unlock = ""
    if "experimental" in category:
        unlock = "-XX:+UnlockExperimentalVMOptions"
    elif "diagnostic" in category:
        unlock = "-XX:+UnlockDiagnosticVMOptions"
    if ftype == "bool":
        return ("-XX:+" if as_bool(value, f"{what}: -XX:{flag}") else "-XX:-") + flag, unlock
    if ftype in INT_RANGES:
        number = as_int(value, f"{what}: -XX:{flag} ({ftype})", allow_suffix=True)
        low, high = INT_RANGES[ftype]
        if not low <= number <= high:
            raise Problem(f"{what}: -XX:{flag} ({ftype}) must be between {low} and {high}, got {value!r}")
        return f"-XX:{flag}={safe_text(value, what).strip() if isinstance(value, str) else number}", unlock
    if ftype == "double":
        if isinstance(value, bool):
            raise Problem(f"{what}: -XX:{flag} (double) must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise Problem(f"{what}: -XX:{flag} (double) must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise Problem(f"{what}: -XX:{flag} (double) must be a finite number, got {value!r}")
        return f"-XX:{flag}={number!r}", unlock
    if ftype in ("ccstr", "ccstrlist"):
        if not isinstance(value, str):
            raise Problem(f"{what}: -XX:{flag} ({ftype}) takes a string, got {value!r}")
        return f"-XX:{flag}={safe_text(value, what)}", unlock
    raise Problem(f"{what}: -XX:{flag} has a type the role does not handle ({ftype})")


def gc_option(value, vm, flags):
    if not isinstance(value, str):
        raise Problem(f"gc must be a collector name, got {value!r}")
    if vm == "openj9":
        policy = value.strip().lower()
        if policy not in OPENJ9_GCS:
            raise Problem(f"gc: {value!r} is not an OpenJ9 -Xgcpolicy (one of {', '.join(OPENJ9_GCS)})")
        return f"-Xgcpolicy:{policy}", "", None
    lowered = {k.lower(): k for k in [*HOTSPOT_GCS, *HOTSPOT_GC_ALIASES]}
    canonical = lowered.get(value.strip().lower())
    if canonical is None:
        raise Problem(f"gc: {value!r} is not a HotSpot collector (one of {', '.join(HOTSPOT_GCS)})")
    canonical = HOTSPOT_GC_ALIASES.get(canonical, canonical)
    flag = HOTSPOT_GCS[canonical]
    if flags is not None and flag not in flags:
        raise Problem(
            f"gc: {canonical}: this JVM has no -XX:+{flag} (its collectors: {', '.join(available_gcs(flags))})"
        )
    unlock = ""
    if flags is not None and "experimental" in flags[flag]["category"].lower():
        unlock = "-XX:+UnlockExperimentalVMOptions"
    return f"-XX:+{flag}", unlock, flag


def available_gcs(flags):
    return [name for name, flag in HOTSPOT_GCS.items() if flag in flags]


def build(settings, vm, flags):
    """settings -> (unlock options, tuned options in their fixed order, {tunable: option},
    {HotSpot flag: tunable that sets it}, errors naming the tunables)."""
    errors = []
    unlocks = []
    by_name = {}
    set_flags = {}  # HotSpot flag -> the tunable that sets it (verification, duplicates)

    def claim(flag, name):
        other = set_flags.get(flag)
        if other is not None:
            raise Problem(f"{name} and {other} both set {flag}: keep one")
        set_flags[flag] = name

    for name in sorted(settings, key=lambda n: (NAMED_ORDER.index(n) if n in NAMED_ORDER else len(NAMED_ORDER), n)):
        value = settings[name]
        try:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise Problem(f"{name!r} is not a tunable name")
            if name == "gc":
                option, unlock, flag = gc_option(value, vm, flags)
                if flag:
                    claim(flag, name)
            elif name in NAMED:
                kind, template, flag, minimum, j9 = NAMED[name]
                if vm == "openj9":
                    if j9 is None:
                        raise Problem(f"{name} has no OpenJ9 equivalent")
                    template = j9
                number = as_int(value, name)
                if number < minimum:
                    raise Problem(f"{name} must be at least {minimum}, got {number}")
                unit = {"mb": 1024**2, "kb": 1024}.get(kind, 1)
                if flags is not None and vm == "hotspot":
                    info = flags.get(flag)
                    if info is None:
                        raise Problem(f"{name}: this JVM has no flag {flag}")
                    low, high = INT_RANGES.get(info["type"], (-(2**63), 2**63 - 1))
                    if not low <= number * unit <= high:
                        raise Problem(f"{name}: {number} is out of the range of {flag} ({info['type']})")
                option, unlock = template.format(number), ""
                if vm == "hotspot":
                    claim(flag, name)
            elif name.startswith("xx_"):
                flag = name[3:]
                option, unlock = xx_option(name, flag, value, flags, vm)
                if vm == "hotspot":
                    if flag in HOTSPOT_GCS.values() and "gc" in settings:
                        raise Problem(f"{name} and gc both choose the collector: keep gc")
                    claim(flag, name)
            else:
                raise Problem(
                    f"unknown tunable {name!r} (known: {', '.join(NAMED_ORDER)}, or xx_<FlagName> for -XX:FlagName)"
                )
        except Problem as exc:
            errors.append(str(exc))
            continue
        if unlock and unlock not in unlocks:
            unlocks.append(unlock)
        by_name[name] = option
    heap = not errors and "xms_mb" in settings and "xmx_mb" in settings
    if heap and as_int(settings["xms_mb"], "xms_mb") > as_int(settings["xmx_mb"], "xmx_mb"):
        errors.append(
            f"xms_mb ({settings['xms_mb']}) is larger than xmx_mb ({settings['xmx_mb']}): the JVM refuses that"
        )
    order = sorted(by_name, key=lambda n: (NAMED_ORDER.index(n) if n in NAMED_ORDER else len(NAMED_ORDER), n))
    unlock_first = [u for u in ("-XX:+UnlockExperimentalVMOptions", "-XX:+UnlockDiagnosticVMOptions") if u in unlocks]
    return unlock_first, [by_name[n] for n in order], {n: by_name[n] for n in order}, set_flags, errors


def all_options(extra, unlocks, tuned):
    out = []
    for option in [*unlocks, *extra, *tuned]:
        if option not in out or option not in unlocks:
            out.append(option)
    return out


def render(options, fmt, env_var):
    if fmt == "jvm_options":
        return HEADER + "".join(option + "\n" for option in options)
    value = " ".join(options)
    if fmt == "json":
        return json.dumps({env_var: value}, sort_keys=True) + "\n"
    # env: one NAME='value' line, for `. FILE` in a POSIX shell and systemd's EnvironmentFile=.
    return HEADER + f"{env_var}='{value}'\n"


# Words of the JVM's startup errors that point at a named tunable whose flag the message does not name.
REFUSAL_HINTS = {
    "stack size": "xss_kb",
    "maximum heap": "xmx_mb",
    "initial heap": "xms_mb",
    "new size": "xmn_mb",
    "metaspace": "max_metaspace_mb",
    "code cache": "reserved_code_cache_mb",
}


def explain_refusal(stderr, by_name):
    """The JVM's complaint, with the tunable it is about when the message names its option or flag."""
    message = tail(stderr)
    for name, option in by_name.items():
        flags = {re.sub(r"^-XX:[+-]?", "", option).split("=")[0]}
        if name in NAMED:
            flags.add(NAMED[name][2])
        if option in stderr or any(
            re.search(rf"(?<![A-Za-z0-9_]){re.escape(f)}(?![A-Za-z0-9_])", stderr) for f in flags
        ):
            return name, message
    lowered = stderr.lower()
    for words, name in REFUSAL_HINTS.items():
        if words in lowered and name in by_name:
            return name, message
    return None, message


def check_start(java, options, by_name, vm):
    """None when the JVM starts with the options (-version); else an error, naming the tunable when
    the JVM's message names its option."""
    strict = ["-XX:-IgnoreUnrecognizedXXColonOptions"] if vm == "openj9" else []
    rc, out, err = run_java([java, *strict, *options, "-version"])
    if rc == 0:
        return None
    name, message = explain_refusal(err + out, by_name)
    if name:
        return f"{name}: the JVM refuses {by_name[name]}: {message}"
    return f"the JVM refuses these options ({' '.join(options)}): {message}"


def value_from_file(text, fmt, env_var):
    """The environment variable's value as the written file gives it (env and json formats)."""
    if fmt == "json":
        return json.loads(text).get(env_var)
    for line in text.splitlines():
        m = re.fullmatch(re.escape(env_var) + r"='([^']*)'", line)
        if m:
            return m.group(1)
    return None


def verify_with_jvm(java, path, text, fmt, env_var, set_flags):
    """Start the JVM the way the file's consumer does (java @FILE, or the variable from the file)
    and check that every flag the role set came from there (not the default or ergonomics)."""
    env = env_without_java_options()
    if fmt == "jvm_options":
        argv = [java, "@" + path]
    elif env_var in JAVA_ENV:
        value = value_from_file(text, fmt, env_var)
        if value is None:
            return f"{path} has no {env_var}"
        env[env_var] = value
        argv = [java]
    else:
        return None  # a variable only a wrapper script reads (JAVA_OPTS...): the JVM alone cannot show it
    rc, out, err = run_java([*argv, "-XX:+PrintFlagsFinal", "-version"], env=env)
    if rc != 0:
        return f"the JVM does not start with the written file: {tail(err)}"
    seen = parse_flags(out)
    missed = [
        f"{flag} ({name})"
        for flag, name in set_flags.items()
        if flag in seen and seen[flag]["origin"] in ("default", "ergonomic")
    ]
    if missed:
        return "the JVM started with the written file did not take " + ", ".join(missed)
    return None


# --------------------------------------------------------------------------------------------
# Validation of declared tunables


def candidate_values(t):
    kind = t.get("type")
    if kind == "categorical":
        return [(v, "choice") for v in t.get("choices") or []]
    if kind == "bool":
        return [(True, "value"), (False, "value")]
    out = []
    for label in ("low", "high", "default"):
        v = t.get(label)
        if v is not None and all(v != seen for seen, _ in out):
            out.append((v, label))
    if t.get("default") is not None and not any(lbl == "default" for _, lbl in out):
        out.append((t["default"], "default"))
    return out


def start_context(name, value, defaults):
    """The settings one value is tried with: the other tunables at their defaults, and a heap
    that fits (-Xms above the default -Xmx, or -Xmx below the default -Xms, is refused alone)."""
    settings = dict(defaults)
    settings[name] = value
    if name == "xms_mb" and "xmx_mb" in settings:
        settings["xmx_mb"] = max(as_int(settings["xmx_mb"], "xmx_mb"), as_int(value, name))
    if name == "xmx_mb" and "xms_mb" in settings:
        settings["xms_mb"] = min(as_int(settings["xms_mb"], "xms_mb"), as_int(value, name))
    context = []
    if name == "xms_mb" and "xmx_mb" not in settings:
        context = [f"-Xmx{max(2, as_int(value, name))}m"]
    return settings, context


def validate_tunables(module, tunables, vm, flags, java, extra):
    """Check every declared value statically, then start the JVM with each (the others at their defaults)."""
    errors, warnings, starts = [], [], []
    defaults = {}
    checked = []
    for t in tunables:
        name = t.get("name")
        values = candidate_values(t)
        if not values:
            errors.append(f"tunable {name}: no value to check (no default, bounds or choices)")
            continue
        if name.startswith("xx_") and flags is not None and vm == "hotspot":
            info = flags.get(name[3:])
            kind = t.get("type")
            if info is not None and info["type"] == "bool" and kind in ("int", "float"):
                errors.append(
                    f"tunable {name}: -XX:{name[3:]} is a bool flag, but the tunable is {kind} (use type: bool)"
                )
                continue
            if info is not None and info["type"] in INT_RANGES and kind in ("bool", "float"):
                errors.append(
                    f"tunable {name}: -XX:{name[3:]} is an integer flag ({info['type']}), but the tunable is {kind}"
                )
                continue
        bad = False
        for value, label in values:
            for e in build({name: value}, vm, flags)[4]:
                e = e.removeprefix(f"{name}: ")
                if not any(e in seen for seen in errors):
                    errors.append(f"tunable {name} ({label} {value!r}): {e}")
                bad = True
        if not bad:
            checked.append((name, values))
            if t.get("default") is not None:
                defaults[name] = t["default"]
    # The values that passed are tried on the JVM too, so one run reports every problem.
    if java is None or not checked:
        return errors, warnings, 0
    strict = ["-XX:-IgnoreUnrecognizedXXColonOptions"] if vm == "openj9" else []
    unlocks, tuned, by_name, _, errs = build(defaults, vm, flags)
    if errs:
        return [*errors, *(f"the defaults together: {e}" for e in errs)], warnings, 0
    rc, out, err = run_java([java, *strict, *all_options(extra, unlocks, tuned), "-version"])
    if rc != 0:
        errors.append(f"the defaults together ({' '.join(tuned)}): the JVM refuses them: {tail(err + out)}")
        return errors, warnings, 1
    for name, values in checked:
        for value, label in values:
            if defaults.get(name, object()) == value and label != "default":
                continue
            settings, context = start_context(name, value, defaults)
            unlocks, tuned, by_name, _, errs = build(settings, vm, flags)
            if errs:
                errors.extend(f"tunable {name} ({label} {value!r}, the others at their defaults): {e}" for e in errs)
                continue
            starts.append((name, label, value, all_options(extra, unlocks, [*context, *tuned]), by_name))

    def one(item):
        return item, run_java([java, *strict, *item[3], "-version"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        for (name, label, value, options, by_name), (rc, out, err) in pool.map(one, starts):
            if rc != 0:
                _, message = explain_refusal(err + out, by_name)
                errors.append(
                    f"tunable {name} ({label} {value!r}): the JVM refuses {by_name.get(name, '?')} "
                    f"(started with {' '.join(options)}): {message}"
                )
            else:
                for line in (err or "").splitlines():
                    note = f"{name} {label} {value!r}: {line.strip()}"
                    if "warning" in line.lower() and note not in warnings:
                        warnings.append(note)
    return errors, warnings, len(starts) + 1


# --------------------------------------------------------------------------------------------


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "reverted", "validate"], default="present"),
            path=dict(type="path"),
            format=dict(type="str", choices=["jvm_options", "env", "json"], default="jvm_options"),
            env_var=dict(type="str", default="JAVA_TOOL_OPTIONS"),
            settings=dict(type="dict", default={}),
            extra_options=dict(type="list", elements="str", default=[]),
            vm=dict(type="str", choices=["auto", "hotspot", "openj9"], default="auto"),
            java=dict(type="str", default="java"),
            cache_dir=dict(type="str", default="~/.cache/knobflow/jvm_runtime"),
            start_check=dict(type="bool", default=True),
            tunables=dict(type="list", elements="dict", default=[]),
        ),
        required_if=[("state", "present", ["path"]), ("state", "reverted", ["path"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] == "reverted":
        changed, before, after = revert(module, p["path"])
        module.exit_json(changed=changed, path=p["path"], options=[], diff=file_diff(p["path"], before, after))

    if not ENV_NAME.fullmatch(p["env_var"]):
        module.fail_json(msg=f"jvm_runtime_env_var: {p['env_var']!r} is not an environment variable name")
    extra = []
    for option in p["extra_options"]:
        if not option.startswith("-") or not SAFE.fullmatch(option) or len(option) < 2:
            module.fail_json(
                msg=f"jvm_runtime_extra_options: {option!r} is not an option the role writes (it must start with '-' "
                "and hold only letters, digits and _ . , : / + = @ % -)"
            )
        extra.append(option)

    java = find_java(module, p["java"])
    vm, version, flags = (p["vm"] if p["vm"] != "auto" else "hotspot"), None, None
    if java is not None:
        detected, version, flags = describe_jvm(module, java, p["cache_dir"])
        vm = detected if p["vm"] == "auto" else p["vm"]
        if vm != "hotspot":
            flags = None
    else:
        module.warn(f"no JVM '{p['java']}' on this host: settings are checked without the JVM's flag list")
    result = dict(changed=False, vm=vm, java=java, java_version=version)

    if p["state"] == "validate":
        tunables = p["tunables"]
        for t in tunables:
            if not isinstance(t.get("name"), str):
                module.fail_json(msg=f"a tunable without a name: {t!r}", **result)
        errors, warnings, started = validate_tunables(
            module, tunables, vm, flags, java if p["start_check"] else None, extra
        )
        for w in warnings:
            module.warn(w)
        result.update(checked=[t["name"] for t in tunables], jvm_starts=started)
        if errors:
            module.fail_json(msg="the JVM refuses runtime tunables: " + "; ".join(errors), **result)
        module.exit_json(**result)

    path = p["path"]
    unlocks, tuned, by_name, set_flags, errors = build(p["settings"], vm, flags)
    if errors:
        module.fail_json(msg="invalid JVM settings: " + "; ".join(errors), **result)
    options = all_options(extra, unlocks, tuned)
    result["options"] = options
    text = render(options, p["format"], p["env_var"])
    current = read(path)
    result["path"] = path
    if text == current:
        module.exit_json(**result)
    if java is not None and p["start_check"]:
        problem = check_start(java, options, by_name, vm)
        if problem:
            module.fail_json(msg="invalid JVM settings: " + problem, **result)
    change_file(module, path, text, current, result)  # exits here in check mode
    if java is not None and p["start_check"] and vm == "hotspot":
        problem = verify_with_jvm(java, path, text, p["format"], p["env_var"], set_flags)
        if problem:
            module.fail_json(msg=f"verification failed: {problem}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
