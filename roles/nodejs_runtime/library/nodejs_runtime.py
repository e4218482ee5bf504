#!/usr/bin/python
"""Write, verify, validate and revert Node.js runtime settings (NODE_OPTIONS, UV_THREADPOOL_SIZE)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nodejs_runtime
short_description: Apply, validate or revert Node.js runtime settings for a knobflow runtime layer
description:
  - Maps tunable names (C(max_old_space_size_mb), C(uv_threadpool_size), C(v8_<flag>), C(node_<option>))
    to C(NODE_OPTIONS) entries and C(UV_THREADPOOL_SIZE), checks every value (against C(node --v8-options)
    and C(node --help) when Node.js is present), proves Node starts with them, and writes them to
    an environment file (C(NAME='value') lines) or a JSON object of environment variables.
  - On the first change, saves what was there (the file, or the fact that there was none), so that
    C(state=reverted) puts back exactly the original. Verifies by reading the file back and by
    starting Node with the file's variables. Supports check mode and diff mode.
  - C(state=validate) checks the declared tunables (knobflow's C(knobflow_tunables)) before any trial.
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
    description: C(env) (C(NAME='value') lines) or C(json) (C({"NAME": "value"})).
    type: str
    choices: [env, json]
    default: env
  settings:
    description: Tunable name to value; see the role README for the mapping.
    type: dict
    default: {}
  extra_options:
    description: Fixed NODE_OPTIONS entries written before the tuned ones.
    type: list
    elements: str
    default: []
  node:
    description: The node binary, a name on PATH or a path.
    type: str
    default: node
  start_check:
    description: Start Node with the settings before writing them, and with the written file after.
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
environment:
  description: The variables the file holds (after C(present)).
  type: dict
  returned: always
node:
  description: The node binary used for the checks, or null when none was found.
  type: str
  returned: always
"""

import json
import math
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.knobflow_files import change_file, file_diff, read, revert

SAFE = re.compile(r"^[A-Za-z0-9_.,:/+=@%-]*$")
HEADER = "# Managed by knobflow (nodejs_runtime): restored to the original by its revert.\n"
NAMED = {
    # name: (NODE_OPTIONS option, minimum)
    "max_old_space_size_mb": ("--max-old-space-size", 1),
    "max_semi_space_size_mb": ("--max-semi-space-size", 1),
}
UV = "uv_threadpool_size"
UV_MAX = 1024  # libuv's own limit (larger values are silently clamped: refused here instead)
ORDER = [*NAMED, UV]
V8_INT = {"int": (-(2**31), 2**31 - 1), "uint": (0, 2**32 - 1), "uint64": (0, 2**64 - 1), "size_t": (0, 2**64 - 1)}
V8_LINE = re.compile(r"^\s+--([a-z0-9-]+) \(")
V8_TYPE = re.compile(r"^\s+type: (\S+)\s+default:")
HELP_LINE = re.compile(r"^\s+(?:-\w, )?(--[a-z0-9-]+)(=\S*)?")
ENV_KEYS = ("NODE_OPTIONS", "UV_THREADPOOL_SIZE")


class Problem(Exception):
    """A setting the role refuses; the message names it."""


def clean_env():
    env = dict(os.environ)
    for key in ENV_KEYS:
        env.pop(key, None)
    env["LC_ALL"] = "C"
    return env


def run(argv, env=None, timeout=60):
    try:
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env or clean_env(), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s"
    except OSError as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def tail(text, n=3):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-500:]


def describe_node(module, node):
    """(version, {v8 flag: type}, {node option: takes a value}) of the node binary."""
    rc, out, err = run([node, "--version"])
    if rc != 0:
        module.fail_json(msg=f"{node} does not start (--version exited {rc}): {tail(err)}")
    version = out.strip()
    rc, out, err = run([node, "--v8-options"])
    if rc != 0:
        module.fail_json(msg=f"cannot read the V8 flags of {node}: {tail(err)}")
    v8, name = {}, None
    for line in out.splitlines():
        m = V8_LINE.match(line)
        if m:
            name = m.group(1)
            continue
        t = V8_TYPE.match(line)
        if t and name:
            v8[name] = t.group(1)
            name = None
    rc, out, err = run([node, "--help"])
    options = {}
    for line in out.splitlines():
        m = HELP_LINE.match(line)
        if m:
            options[m.group(1)[2:]] = bool(m.group(2))
    return version, v8, options


def as_int(value, what):
    if isinstance(value, bool):
        raise Problem(f"{what} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise Problem(f"{what} must be an integer, got {value!r}")


def as_bool(value, what):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise Problem(f"{what} is a bool flag: give true or false, got {value!r}")


def safe(value, what):
    text = value if isinstance(value, str) else str(value)
    if not SAFE.fullmatch(text):
        raise Problem(
            f"{what}: {value!r} has characters the role does not write (whitespace, quotes, newlines or shell "
            "metacharacters); allowed: letters, digits and _ . , : / + = @ % -"
        )
    return text


def v8_option(name, flag, value, v8):
    if v8 is None:
        if isinstance(value, bool):
            return f"--{flag}" if value else f"--no-{flag}"
        if isinstance(value, float) and not math.isfinite(value):
            raise Problem(f"{name} must be a finite number, got {value!r}")
        if value is None or isinstance(value, (list, dict)):
            raise Problem(f"{name}: a flag takes a bool, a number or a string, got {value!r}")
        return f"--{flag}={safe(value, name)}"
    kind = v8.get(flag)
    if kind is None:
        raise Problem(f"{name}: this node's V8 has no flag --{flag} (see node --v8-options)")
    if kind in ("bool", "maybe_bool"):
        return f"--{flag}" if as_bool(value, f"{name}: --{flag}") else f"--no-{flag}"
    if kind in V8_INT:
        number = as_int(value, f"{name}: --{flag} ({kind})")
        low, high = V8_INT[kind]
        if not low <= number <= high:
            raise Problem(f"{name}: --{flag} ({kind}) must be between {low} and {high}, got {number}")
        return f"--{flag}={number}"
    if kind == "float":
        if isinstance(value, bool):
            raise Problem(f"{name}: --{flag} (float) must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise Problem(f"{name}: --{flag} (float) must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise Problem(f"{name}: --{flag} (float) must be a finite number, got {value!r}")
        return f"--{flag}={number!r}"
    if not isinstance(value, str):
        raise Problem(f"{name}: --{flag} ({kind}) takes a string, got {value!r}")
    return f"--{flag}={safe(value, name)}"


def node_option(name, option, value, options):
    takes_value = None if options is None else options.get(option)
    if options is not None and option not in options:
        raise Problem(f"{name}: node has no option --{option} (see node --help)")
    if takes_value is False or (takes_value is None and isinstance(value, bool)):
        return f"--{option}" if as_bool(value, f"{name}: --{option}") else None
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise Problem(f"{name}: --{option} takes a value, got {value!r}")
    return f"--{option}={safe(value, name)}"


def build(settings, v8, options):
    """settings -> ({env var: value}, {tunable: option}, errors)."""
    errors, by_name, uv = [], {}, None
    for name in sorted(settings, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        value = settings[name]
        try:
            if name in NAMED:
                option, minimum = NAMED[name]
                number = as_int(value, name)
                if number < minimum:
                    raise Problem(f"{name} must be at least {minimum}, got {number}")
                by_name[name] = f"{option}={number}"
            elif name == UV:
                number = as_int(value, name)
                if not 1 <= number <= UV_MAX:
                    raise Problem(f"{name} must be between 1 and {UV_MAX} (libuv's limit), got {number}")
                uv = str(number)
            elif name.startswith("v8_") and re.fullmatch(r"[a-z0-9_]+", name[3:]):
                by_name[name] = v8_option(name, name[3:].replace("_", "-"), value, v8)
            elif name.startswith("node_") and re.fullmatch(r"[a-z0-9_]+", name[5:]):
                option = node_option(name, name[5:].replace("_", "-"), value, options)
                if option:
                    by_name[name] = option
            else:
                raise Problem(
                    f"unknown tunable {name!r} (known: {', '.join(ORDER)}, v8_<flag> for a V8 flag, "
                    "node_<option> for a node option; lower case, _ for -)"
                )
        except Problem as exc:
            errors.append(str(exc))
    return by_name, uv, errors


def environment(extra, by_name, uv):
    env = {"NODE_OPTIONS": " ".join([*extra, *by_name.values()])}
    if uv is not None:
        env["UV_THREADPOOL_SIZE"] = uv
    return env


def render(env, fmt):
    if fmt == "json":
        return json.dumps(env, sort_keys=True) + "\n"
    return HEADER + "".join(f"{k}='{env[k]}'\n" for k in ENV_KEYS if k in env)


def parse(text, fmt):
    if fmt == "json":
        return json.loads(text)
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Z_]+)='([^']*)'", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


PROBE = (
    "const v8=require('v8');console.log(JSON.stringify({heap_size_limit:v8.getHeapStatistics().heap_size_limit,"
    "NODE_OPTIONS:process.env.NODE_OPTIONS,UV_THREADPOOL_SIZE:process.env.UV_THREADPOOL_SIZE}))"
)


def start(node, env_vars):
    env = clean_env()
    env.update(env_vars)
    return run([node, "-e", PROBE], env=env)


def refusal(err, by_name, uv):
    message = tail(err)
    for name, option in by_name.items():
        if option.split("=")[0] in err or option in err:
            return f"{name}: node refuses {option}: {message}"
    if uv is not None and "UV_THREADPOOL_SIZE" in err:
        return f"{UV}: node refuses UV_THREADPOOL_SIZE={uv}: {message}"
    return f"node refuses these settings: {message}"


def candidate_values(t):
    if t.get("type") == "categorical":
        return [(v, "choice") for v in t.get("choices") or []]
    if t.get("type") == "bool":
        return [(True, "value"), (False, "value")]
    out = []
    for label in ("low", "high", "default"):
        v = t.get(label)
        if v is not None and all(v != seen for seen, _ in out):
            out.append((v, label))
    return out


def validate(tunables, v8, options, node, extra):
    errors, defaults, checked = [], {}, []
    for t in tunables:
        name = t["name"]
        values = candidate_values(t)
        if not values:
            errors.append(f"tunable {name}: no value to check (no default, bounds or choices)")
            continue
        bad = False
        for value, label in values:
            for e in build({name: value}, v8, options)[2]:
                e = e.removeprefix(f"{name}: ")
                if not any(e in seen for seen in errors):
                    errors.append(f"tunable {name} ({label} {value!r}): {e}")
                bad = True
        if not bad:
            checked.append((name, values))
            if t.get("default") is not None:
                defaults[name] = t["default"]
    if node is None or not checked:
        return errors
    by_name, uv, _ = build(defaults, v8, options)
    rc, _, err = start(node, environment(extra, by_name, uv))
    if rc != 0:
        return [*errors, f"the defaults together: {refusal(err, by_name, uv)}"]
    trials = []
    for name, values in checked:
        for value, label in values:
            settings = dict(defaults)
            settings[name] = value
            by_name, uv, _ = build(settings, v8, options)
            trials.append((name, label, value, by_name, uv))

    def one(item):
        return item, start(node, environment(extra, item[3], item[4]))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for (name, label, value, by_name, uv), (rc, _, err) in pool.map(one, trials):
            if rc != 0:
                message = refusal(err, {name: by_name[name]} if name in by_name else by_name, uv)
                errors.append(f"tunable {name} ({label} {value!r}): {message.removeprefix(name + ': ')}")
    return errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "reverted", "validate"], default="present"),
            path=dict(type="path"),
            format=dict(type="str", choices=["env", "json"], default="env"),
            settings=dict(type="dict", default={}),
            extra_options=dict(type="list", elements="str", default=[]),
            node=dict(type="str", default="node"),
            start_check=dict(type="bool", default=True),
            tunables=dict(type="list", elements="dict", default=[]),
        ),
        required_if=[("state", "present", ["path"]), ("state", "reverted", ["path"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] == "reverted":
        changed, before, after = revert(module, p["path"])
        module.exit_json(changed=changed, path=p["path"], environment={}, diff=file_diff(p["path"], before, after))
    for option in p["extra_options"]:
        if not option.startswith("-") or len(option) < 2 or not SAFE.fullmatch(option):
            module.fail_json(
                msg=f"nodejs_runtime_extra_options: {option!r} is not an option the role writes (it must start with "
                "'-' and hold only letters, digits and _ . , : / + = @ % -)"
            )
    node = p["node"]
    if "/" in node:
        if not (os.path.isfile(node) and os.access(node, os.X_OK)):
            module.fail_json(msg=f"nodejs_runtime_node: {node} is not an executable file")
    else:
        node = module.get_bin_path(node, required=False)
    version, v8, options = None, None, None
    if node is not None:
        version, v8, options = describe_node(module, node)
    else:
        module.warn(f"no '{p['node']}' on this host: settings are checked without node's flag lists")
    result = dict(changed=False, node=node, node_version=version)

    if p["state"] == "validate":
        for t in p["tunables"]:
            if not isinstance(t.get("name"), str):
                module.fail_json(msg=f"a tunable without a name: {t!r}", **result)
        errors = validate(p["tunables"], v8, options, node if p["start_check"] else None, p["extra_options"])
        result["checked"] = [t["name"] for t in p["tunables"]]
        if errors:
            module.fail_json(msg="node refuses runtime tunables: " + "; ".join(errors), **result)
        module.exit_json(**result)

    path = p["path"]
    by_name, uv, errors = build(p["settings"], v8, options)
    if errors:
        module.fail_json(msg="invalid Node.js settings: " + "; ".join(errors), **result)
    env = environment(p["extra_options"], by_name, uv)
    text = render(env, p["format"])
    result.update(path=path, environment=env)
    current = read(path)
    if text == current:
        module.exit_json(**result)
    if node is not None and p["start_check"]:
        rc, _, err = start(node, env)
        if rc != 0:
            module.fail_json(msg="invalid Node.js settings: " + refusal(err, by_name, uv), **result)
    change_file(module, path, text, current, result)  # exits here in check mode
    if node is not None and p["start_check"]:
        written = parse(read(path), p["format"])
        rc, out, err = start(node, written)
        if rc != 0:
            module.fail_json(msg=f"verification failed: node does not start with {path}: {tail(err)}", **result)
        seen = json.loads(out.strip().splitlines()[-1])
        for key in ENV_KEYS:
            if written.get(key) is not None and seen.get(key) != written.get(key):
                module.fail_json(
                    msg=f"verification failed: node saw {key}={seen.get(key)!r}, the file has {written.get(key)!r}",
                    **result,
                )
        if "max_old_space_size_mb" in p["settings"]:
            wanted = as_int(p["settings"]["max_old_space_size_mb"], "max_old_space_size_mb") * 1024 * 1024
            if seen["heap_size_limit"] < wanted:
                module.fail_json(
                    msg=f"verification failed: node's heap_size_limit is {seen['heap_size_limit']} bytes, below "
                    f"max_old_space_size_mb ({wanted} bytes)",
                    **result,
                )
        result["heap_size_limit"] = seen["heap_size_limit"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
