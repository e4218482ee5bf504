#!/usr/bin/python
"""Set, verify and revert sysctl keys (/proc/sys), on the host or inside a network namespace."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: os_sysctl
short_description: Apply, verify and revert sysctl keys, optionally inside a network namespace
description:
  - Sets sysctl keys by writing their files under C(/proc/sys), after validating every value; reads
    each key back to verify it. No shell and no C(sysctl) command are involved.
  - Settings are named by a key (C(net.core.somaxconn)), by a tunable name that is the key's path with
    underscores (C(net_core_somaxconn), resolved by walking C(/proc/sys)), or by a name mapped to a key
    in I(keys).
  - With I(netns), the module enters that network namespace (setns on C(/run/netns/NAME)) to read and
    write, and refuses keys that are not per-namespace.
  - On the first change of each key, saves its original value in I(state_file), so that
    C(state=reverted) restores exactly the original values and deletes the file.
  - Supports check mode and diff mode.
options:
  settings:
    description: Values by setting name (a tunable name, a dotted key, or a name of I(keys)).
    type: dict
    default: {}
  keys:
    description: Explicit map from a setting name to a sysctl key (dotted, or a path with slashes).
    type: dict
    default: {}
  netns:
    description: A network namespace name (C(ip netns) style, C(/run/netns/NAME)); empty for the module's own namespace.
    type: str
    default: ""
  state_file:
    description: Where the original values are kept between the first change and the revert.
    type: path
    required: true
  state:
    description: C(present) applies I(settings); C(reverted) restores the originals; C(validated) checks I(tunables).
    type: str
    choices: [present, reverted, validated]
    default: present
  tunables:
    description: For C(state=validated), knobflow's tunable declarations (name, type, low, high, choices, default).
    type: list
    elements: dict
    default: []
author: knobflow maintainers
"""

RETURN = r"""
keys:
  description: Setting name -> the sysctl key it resolved to.
  type: dict
  returned: always
values:
  description: Key -> its value now (as the kernel prints it, whitespace collapsed to one space).
  type: dict
  returned: always
saved:
  description: Key -> the original value kept in the state file (empty once reverted).
  type: dict
  returned: always
"""

import contextlib
import ctypes
import errno
import json
import os
import re
import stat

from ansible.module_utils.basic import AnsibleModule

PROC = "/proc/sys"
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INT_TOKEN = re.compile(r"^[+-]?[0-9]+$")
# Tokens of a value that is not a list of integers (tcp_congestion_control = "cubic",
# default_qdisc = "fq_codel"): letters, digits and a few separators, nothing a shell or the
# kernel's parsers would read specially.
WORD_TOKEN = re.compile(r"^[A-Za-z0-9_.:,+-]+$")


class SysctlError(Exception):
    """A problem with one setting; the message names it."""


# --- namespaces ----------------------------------------------------------------------------------


def _setns(fd):
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _ns_id(path):
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


class Namespace:
    """The network namespace the keys are read and written in.

    ``inside()`` enters it (setns on /run/netns/NAME) and comes back to the module's own namespace
    afterwards; without a name, ``inside()`` stays where the module runs ("host" mode)."""

    def __init__(self, name):
        self.name = name or ""
        self.id = ""
        self._target = self._home = None
        if not self.name:
            return
        if not NETNS_NAME.match(self.name) or self.name in (".", ".."):
            raise SysctlError(f"bad network namespace name {self.name!r}: use letters, digits, '_', '.', '-'")
        path = os.path.join(NETNS_DIR, self.name)
        if not os.path.exists(path):
            raise SysctlError(
                f"network namespace {self.name!r} does not exist ({path}): "
                "create it first (ip netns add, or the netns role)"
            )
        self.id = _ns_id(path)
        if self.id == _ns_id("/proc/self/ns/net"):
            raise SysctlError(
                f"network namespace {self.name!r} is the namespace Ansible runs in: leave os_sysctl_netns empty"
            )
        with contextlib.suppress(OSError):
            if self.id == _ns_id("/proc/1/ns/net"):
                raise SysctlError(f"network namespace {self.name!r} is the root network namespace")
        self._target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        # Fail now, with a clear message, if we may not enter it.
        with self.inside():
            pass

    def where(self):
        return f"network namespace {self.name!r}" if self.name else "the host"

    @contextlib.contextmanager
    def inside(self):
        if not self.name:
            yield
            return
        try:
            _setns(self._target)
        except OSError as exc:
            raise SysctlError(
                f"cannot enter network namespace {self.name!r}: {exc.strerror} (setns needs root: become: true)"
            ) from None
        try:
            yield
        finally:
            _setns(self._home)


# --- keys ----------------------------------------------------------------------------------------


def key_parts(key):
    """The path components of a key, read as sysctl(8) does: dotted (net.ipv4.conf.eth0/1.rp_filter,
    where a '/' stands for a dot inside a component) or, when a '/' comes before any dot, a path
    (net/ipv4/conf/eth0.1/rp_filter)."""
    key = key.strip()
    first_dot, first_slash = key.find("."), key.find("/")
    if first_slash != -1 and (first_dot == -1 or first_slash < first_dot):
        parts = key.strip("/").split("/")
    else:
        parts = [p.replace("/", ".") for p in key.split(".")]
    if not key or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise SysctlError(f"bad sysctl key {key!r}")
    return parts


def key_name(parts):
    """Display form, as sysctl(8) prints it: dots between components, and a dot inside a component as '/'."""
    return ".".join(p.replace(".", "/") for p in parts)


def key_path(parts):
    return os.path.join(PROC, *parts)


def find_by_name(name):
    """The keys whose path, with '_' between components, is ``name``: net_ipv4_tcp_fin_timeout ->
    net/ipv4/tcp_fin_timeout. Walks /proc/sys guided by the name's prefixes (in the current namespace)."""
    found = []

    def walk(directory, rest, parts):
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            return
        for entry in entries:
            path = os.path.join(directory, entry)
            if entry == rest and os.path.isfile(path):
                found.append([*parts, entry])
            elif rest.startswith(entry + "_") and os.path.isdir(path) and not os.path.islink(path):
                walk(path, rest[len(entry) + 1 :], [*parts, entry])

    walk(PROC, name, [])
    return found


def resolve(name, explicit):
    """Key path components for a setting name (inside the target namespace)."""
    if name in explicit:
        key = explicit[name]
        if not isinstance(key, str):
            raise SysctlError(f"os_sysctl_keys maps {name!r} to {key!r}, which is not a string")
        parts = key_parts(key)
        if not os.path.isfile(key_path(parts)):
            raise SysctlError(f"setting {name!r}: unknown sysctl key {key_name(parts)} (from os_sysctl_keys)")
        return parts
    if "." in name or "/" in name:
        parts = key_parts(name)
        if not os.path.isfile(key_path(parts)):
            raise SysctlError(f"unknown sysctl key {key_name(parts)}")
        return parts
    found = find_by_name(name)
    if not found:
        raise SysctlError(
            f"unknown sysctl setting {name!r}: no key under {PROC} matches it (name a key as its path with '_' "
            "between components, like net_core_somaxconn, or map it in os_sysctl_keys)"
        )
    if len(found) > 1:
        raise SysctlError(
            f"ambiguous sysctl setting {name!r}: it matches {' and '.join(key_name(p) for p in found)}; "
            "map it to one key in os_sysctl_keys"
        )
    return found[0]


# --- values --------------------------------------------------------------------------------------


def read_value(parts):
    with open(key_path(parts), "rb") as f:
        return f.read().decode("utf-8", "replace")


def tokens(text):
    return text.split()


def is_numeric(tok):
    return bool(tok) and all(INT_TOKEN.match(t) for t in tok)


def same(a, b):
    """Two values are the same when their tokens are (integers compared as numbers)."""
    ta, tb = tokens(a), tokens(b)
    if is_numeric(ta) and is_numeric(tb):
        return [int(t) for t in ta] == [int(t) for t in tb]
    return ta == tb


def value_tokens(value):
    """The tokens of a setting's value (an int, a bool, a string "a b c", or a list), or SysctlError."""
    if isinstance(value, bool):
        return ["1" if value else "0"]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, float):
        if value.is_integer():
            return [str(int(value))]
        raise SysctlError(f"must be an integer, got {value!r}")
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                raise SysctlError(f"must be a value or a flat list of values, got {value!r}")
            out += value_tokens(item)
        if not out:
            raise SysctlError("is an empty list")
        return out
    if isinstance(value, str):
        if any((ord(c) < 32 and c not in " \t") or ord(c) == 127 for c in value):
            raise SysctlError(f"contains a control character (newline, ...): {value!r}")
        if not value.split():
            raise SysctlError("is empty")
        return value.split()
    raise SysctlError(f"has an unsupported type {type(value).__name__}: {value!r}")


def check_value(value, current):
    """The text to write for ``value`` on a key whose current value is ``current``."""
    want = value_tokens(value)
    have = tokens(current)
    if is_numeric(have):
        bad = [t for t in want if not INT_TOKEN.match(t)]
        if bad:
            raise SysctlError(f"must be {_shape(have)}, got {_show(value)}")
        if len(want) != len(have):
            raise SysctlError(f"must be {_shape(have)}, got {len(want)} value(s): {_show(value)}")
        return " ".join(str(int(t)) for t in want)
    bad = [t for t in want if not WORD_TOKEN.match(t)]
    if bad:
        raise SysctlError(f"has characters a sysctl value does not take: {_show(value)}")
    return " ".join(want)


def _shape(have):
    if len(have) == 1:
        return "an integer"
    return f"{len(have)} integers separated by spaces, like '{' '.join(have)}'"


def _show(value):
    return repr(" ".join(value_tokens(value)) if isinstance(value, (list, tuple)) else value)


def write_value(parts, text):
    """Write one key; the kernel's refusal becomes a SysctlError naming the key and the errno."""
    try:
        fd = os.open(key_path(parts), os.O_WRONLY)
    except OSError as exc:
        raise SysctlError(f"{key_name(parts)}: cannot open for writing: {exc.strerror}") from None
    try:
        os.write(fd, (text + "\n").encode())
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        hint = " (out of range or malformed)" if exc.errno == errno.EINVAL else ""
        raise SysctlError(f"{key_name(parts)}: the kernel refused {text!r}: {name} {exc.strerror}{hint}") from None
    finally:
        os.close(fd)


# --- per-namespace checks ------------------------------------------------------------------------


def writable(path):
    try:
        return bool(os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def check_key(ns, parts, in_ns_exists, in_ns_writable):
    """Refuse a key that cannot be set (and restored) in the target: called outside the namespace."""
    name = key_name(parts)
    if ns.name:
        if parts[0] != "net":
            raise SysctlError(
                f"{name} is not per network namespace: outside net.* every sysctl is global, and setting it from "
                f"{ns.where()} would change the host"
            )
        root_exists = os.path.isfile(key_path(parts))
        if not in_ns_exists and root_exists:
            raise SysctlError(f"{name} is global: the kernel shows it only in the root network namespace")
        if in_ns_exists and not in_ns_writable and root_exists and writable(key_path(parts)):
            raise SysctlError(
                f"{name} is global: the kernel makes it read-only inside {ns.where()} (it shares the host's value)"
            )
    if not in_ns_writable:
        raise SysctlError(f"{name} is read-only")


# --- the module ----------------------------------------------------------------------------------


class Sysctl:
    def __init__(self, module):
        self.module = module
        self.ns = Namespace(module.params["netns"])

    # Everything that touches /proc/sys of the target runs through here.
    def resolve_all(self, names):
        """{setting name: parts}, or a list of errors naming the settings."""
        explicit = self.module.params["keys"]
        resolved, errors, seen = {}, [], {}
        with self.ns.inside():
            info = {}
            unknown = {}
            for name in names:
                try:
                    parts = resolve(str(name), explicit)
                except SysctlError as exc:
                    unknown[name] = str(exc)
                    continue
                key = key_name(parts)
                if key in seen:
                    errors.append(f"settings {seen[key]!r} and {name!r} both set {key}")
                    continue
                seen[key] = name
                path = key_path(parts)
                info[name] = (parts, os.path.isfile(path), writable(path))
        for name, message in unknown.items():
            # Unknown inside the namespace, known on the host: a global key the kernel hides there.
            if self.ns.name and "unknown sysctl" in message:
                with contextlib.suppress(SysctlError):
                    parts = resolve(str(name), explicit)
                    message = f"{key_name(parts)} is global: the kernel shows it only in the root network namespace"
                    if key_name(parts) != name:
                        message = f"setting {name!r}: {message}"
            errors.append(message)
        for name, (parts, exists, can_write) in info.items():
            try:
                check_key(self.ns, parts, exists, can_write)
            except SysctlError as exc:
                errors.append(f"setting {name!r}: {exc}" if key_name(parts) != name else str(exc))
                continue
            resolved[name] = parts
        return resolved, errors

    def read_all(self, keys):
        """{key: text} read in the target; a key that cannot be read is a SysctlError."""
        out = {}
        with self.ns.inside():
            for key, parts in keys.items():
                try:
                    out[key] = " ".join(tokens(read_value(parts)))
                except OSError as exc:
                    raise SysctlError(f"{key}: cannot read it back: {exc.strerror}") from None
        return out

    def root_values(self, keys):
        """The values of ``keys`` in the module's own namespace (only in namespace mode)."""
        if not self.ns.name:
            return {}
        out = {}
        for key, parts in keys.items():
            with contextlib.suppress(OSError):
                out[key] = read_value(parts)
        return out

    def write_all(self, changes, before):
        """Write {key: (parts, text)} in order, verify each by reading it back, and check that the host
        did not change. On any failure put back what this call wrote (to ``before``) and raise."""
        root_before = self.root_values({k: p for k, (p, _) in changes.items()})
        written = []
        try:
            with self.ns.inside():
                for key, (parts, text) in changes.items():
                    written.append(key)
                    write_value(parts, text)
                    try:
                        now = " ".join(tokens(read_value(parts)))
                    except OSError as exc:
                        raise SysctlError(f"{key}: cannot read it back: {exc.strerror}") from None
                    if not same(now, text):
                        raise SysctlError(f"verification failed: {key} holds {now!r} after writing {text!r}")
            root_after = self.root_values({k: changes[k][0] for k in written})
            leaked = [k for k, v in root_after.items() if v != root_before.get(k)]
            if leaked:
                for key in leaked:  # put the host's value back at once
                    with contextlib.suppress(OSError, SysctlError):
                        write_value(changes[key][0], root_before[key].strip())
                raise SysctlError(
                    f"{', '.join(leaked)} is global: writing it inside {self.ns.where()} changed the host's value "
                    "(put back); it cannot be tuned per namespace"
                )
        except SysctlError:
            with self.ns.inside():
                for key in reversed(written):
                    with contextlib.suppress(OSError, SysctlError):
                        write_value(changes[key][0], before[key])
            raise


def load_state(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        raise SysctlError(f"state file {path} is not JSON: remove it if nothing is to be reverted") from None
    if not isinstance(data, dict) or not isinstance(data.get("original"), list):
        raise SysctlError(f"state file {path} is not an os_sysctl state file")
    return data


def save_state(path, data):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def remove_state(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def diff_text(values):
    return "".join(f"{k} = {v}\n" for k, v in values.items())


def apply(mod, sc, result):
    settings = mod.params["settings"]
    path = mod.params["state_file"]
    state = load_state(path)
    if state is not None and state.get("netns", "") != sc.ns.name:
        raise SysctlError(
            f"state file {path} belongs to network namespace {state.get('netns')!r}, not {sc.ns.name!r}: "
            "use one state file per namespace"
        )
    if state is not None and state.get("netns_id", "") != sc.ns.id:
        result["warnings"].append(
            f"{sc.ns.where()} was recreated since {path} was written; the saved values of the old one were dropped"
        )
        state = None
    original = dict((k, v) for k, v in (state or {}).get("original", []))

    resolved, errors = sc.resolve_all(list(settings))
    keys = {key_name(p): p for p in resolved.values()}
    result["keys"] = {n: key_name(p) for n, p in resolved.items()}
    current = {}
    if keys:
        current = sc.read_all(keys)
    wanted = {}
    for name, parts in resolved.items():
        key = key_name(parts)
        try:
            wanted[key] = check_value(settings[name], current[key])
        except SysctlError as exc:
            errors.append(f"{key}{'' if key == name else f' (setting {name!r})'}: {exc}")
    if errors:
        raise SysctlError("invalid sysctl settings: " + "; ".join(errors))

    # Keys changed by an earlier apply and not set now go back to their original value: the target
    # holds the originals plus exactly the given settings.
    restore = {}
    with sc.ns.inside():
        for key in original:
            if key not in wanted:
                parts = key_parts(key)
                if os.path.isfile(key_path(parts)):
                    restore[key] = parts
    current.update(sc.read_all(restore) if restore else {})
    for key in restore:
        keys[key] = restore[key]
        wanted[key] = " ".join(tokens(original[key]))

    changes = {k: (keys[k], t) for k, t in wanted.items() if not same(current[k], t)}
    result["values"] = {k: current[k] for k in wanted}
    result["saved"] = dict(original)
    if not changes:
        return
    result["changed"] = True
    result["diff"] = dict(
        before_header=sc.ns.where(),
        after_header=sc.ns.where(),
        before=diff_text({k: current[k] for k in changes}),
        after=diff_text({k: t for k, (_, t) in changes.items()}),
    )
    if mod.check_mode:
        result["values"].update({k: t for k, (_, t) in changes.items()})
        return
    new_original = dict(original)
    for key in changes:
        new_original.setdefault(key, current[key])
    previous_state = state
    if new_original != original or state is None:
        save_state(path, dict(version=1, netns=sc.ns.name, netns_id=sc.ns.id, original=list(new_original.items())))
    try:
        sc.write_all(changes, current)
    except SysctlError:
        # Nothing was left changed: forget the originals this run added.
        if previous_state is None:
            remove_state(path)
        elif new_original != original:
            save_state(path, previous_state)
        raise
    result["values"] = sc.read_all({k: keys[k] for k in wanted})
    result["saved"] = new_original


def revert(mod, sc_factory, result):
    path = mod.params["state_file"]
    state = load_state(path)
    if state is None:
        result["msg"] = f"nothing to revert: no state file {path}"
        return
    name = state.get("netns", "")
    if name != (mod.params["netns"] or ""):
        raise SysctlError(f"state file {path} belongs to network namespace {name!r}, not {mod.params['netns']!r}")
    if name and not os.path.exists(os.path.join(NETNS_DIR, name)):
        result["warnings"].append(f"network namespace {name!r} no longer exists: its saved values were dropped")
        if not mod.check_mode:
            remove_state(path)
        return
    sc = sc_factory()
    if sc.ns.id != state.get("netns_id", ""):
        result["warnings"].append(
            f"{sc.ns.where()} was recreated since {path} was written: the saved values were dropped"
        )
        if not mod.check_mode:
            remove_state(path)
        return
    original = dict((k, v) for k, v in state["original"])
    keys, missing = {}, []
    with sc.ns.inside():
        for key in original:
            parts = key_parts(key)
            if os.path.isfile(key_path(parts)):
                keys[key] = parts
            else:
                missing.append(key)
    if missing:
        result["warnings"].append(f"no longer present, not restored: {', '.join(missing)}")
    current = sc.read_all(keys) if keys else {}
    back = {k: " ".join(tokens(original[k])) for k in keys}
    changes = {k: (keys[k], back[k]) for k in reversed(list(keys)) if not same(current[k], back[k])}
    result["values"] = dict(current)
    result["saved"] = {}
    if changes:
        result["changed"] = True
        result["diff"] = dict(
            before_header=sc.ns.where(),
            after_header=sc.ns.where(),
            before=diff_text({k: current[k] for k in changes}),
            after=diff_text({k: t for k, (_, t) in changes.items()}),
        )
    if mod.check_mode:
        result["values"].update(back)
        result["saved"] = original
        return
    if changes:
        sc.write_all(changes, current)
    remove_state(path)
    result["values"] = sc.read_all(keys) if keys else {}


def validate(mod, sc, result):
    """Check knobflow's tunable declarations against the real target, naming the tunable that fails."""
    tunables = mod.params["tunables"]
    names = [t.get("name") for t in tunables]
    resolved, errors = sc.resolve_all([n for n in names if isinstance(n, str)])
    result["keys"] = {n: key_name(p) for n, p in resolved.items()}
    keys = {key_name(p): p for p in resolved.values()}
    current = sc.read_all(keys) if keys else {}
    probes = {}
    for t in tunables:
        name = t.get("name")
        if name not in resolved:
            continue
        key = key_name(resolved[name])
        kind = t.get("type")
        values = []
        if kind == "categorical":
            values = list(t.get("choices") or [])
        elif kind == "bool":
            values = [False, True]
        else:
            values = [t[f] for f in ("low", "high") if t.get(f) is not None]
        if "default" in t and t["default"] is not None:
            values.append(t["default"])
        if kind == "float" and is_numeric(tokens(current[key])):
            errors.append(f"tunable {name!r}: {key} takes integers; declare the tunable as int, not float")
            continue
        texts = []
        for v in values:
            try:
                texts.append(check_value(v, current[key]))
            except SysctlError as exc:
                errors.append(f"tunable {name!r} ({key}): value {v!r} {exc}")
        probes[name] = (key, texts)
    if errors:
        raise SysctlError("tunables the target does not accept: " + "; ".join(errors))
    # In a namespace, ask the kernel itself: write each bound and choice, then put the value back.
    if sc.ns.name and not mod.check_mode:
        for name, (key, texts) in probes.items():
            for text in dict.fromkeys(texts):
                if same(text, current[key]):
                    continue
                try:
                    sc.write_all({key: (keys[key], text)}, current)
                except SysctlError as exc:
                    errors.append(f"tunable {name!r}: {exc}")
                    continue
                sc.write_all({key: (keys[key], current[key])}, {key: text})
        if errors:
            raise SysctlError("tunables the target does not accept: " + "; ".join(errors))
    result["values"] = current


def main():
    module = AnsibleModule(
        argument_spec=dict(
            settings=dict(type="dict", default={}),
            keys=dict(type="dict", default={}),
            netns=dict(type="str", default=""),
            state_file=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "reverted", "validated"], default="present"),
            tunables=dict(type="list", elements="dict", default=[]),
        ),
        supports_check_mode=True,
    )
    netns = module.params["netns"] or ""
    result = dict(changed=False, netns=netns, state_file=module.params["state_file"], keys={}, values={}, saved={})
    result["warnings"] = []
    try:
        if module.params["state"] == "reverted":
            revert(module, lambda: Sysctl(module), result)
        elif module.params["state"] == "validated":
            validate(module, Sysctl(module), result)
        else:
            apply(module, Sysctl(module), result)
    except SysctlError as exc:
        # Every failure puts back what the run wrote: nothing changed.
        result["changed"] = False
        result.pop("diff", None)
        warnings = result.pop("warnings")
        for w in warnings:
            module.warn(w)
        module.fail_json(msg=str(exc), **result)
    for w in result.pop("warnings"):
        module.warn(w)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
