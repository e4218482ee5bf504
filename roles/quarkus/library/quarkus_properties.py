#!/usr/bin/python
"""Write, verify and revert knobflow's block of Quarkus settings in an application.properties file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: quarkus_properties
short_description: Apply or revert knobflow's Quarkus settings in an application.properties file
description:
  - Maps knobflow tunable names to Quarkus configuration keys (a built-in table, plus I(keys) for
    any other key), validates every value, and writes them as one marked block at the end of the
    file, escaped in the .properties syntax. Everything outside the block is left byte for byte.
  - On the first change, saves what was there (the file, or the fact that there was none), so that
    C(state=reverted) puts back exactly the original.
  - Verifies by parsing the file back as Java's Properties.load does. Supports check and diff mode.
  - C(state=validate) checks a list of declared tunables (knobflow's validate step) without writing.
options:
  path:
    description: The application.properties file.
    type: path
    required: true
  settings:
    description: Tunable values by tunable name.
    type: dict
    default: {}
  keys:
    description: Extra tunable names mapped to real Quarkus keys, for keys outside the built-in table.
    type: dict
    default: {}
  profile:
    description: Write every key for this configuration profile only (C(%profile.key)); empty for all profiles.
    type: str
    default: ""
  datasource:
    description: The named datasource the datasource_* tunables configure; empty for the default one.
    type: str
    default: ""
  restart_argv:
    description: A command (no shell) run after the file changed, to restart the application.
    type: list
    elements: str
    default: []
  tunables:
    description: With C(state=validate), the declared tunables (dicts with name, type, low, high, choices).
    type: list
    elements: dict
    default: []
  state:
    description: C(present) applies I(settings); C(reverted) restores the original; C(validate) checks I(tunables).
    type: str
    choices: [present, reverted, validate]
    default: present
author: knobflow maintainers
"""

RETURN = r"""
properties:
  description: The keys and values knobflow manages in the file now ({} after a revert).
  type: dict
  returned: always
shadowed:
  description: Lines outside knobflow's block that set one of its keys (or a profile variant).
  type: list
  returned: always
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.knobflow_files import file_diff, read, revert, write_file

BEGIN = "# BEGIN knobflow managed properties (role quarkus): knobflow rewrites this block and removes it on revert"
END = "# END knobflow managed properties"
BEGIN_PREFIX = "# BEGIN knobflow managed properties"
END_PREFIX = "# END knobflow managed properties"

DS = "quarkus.datasource.jdbc."  # completed with the datasource name when one is given

# tunable name -> (real key, rule). Rules: ("int", low, high), ("float", low, high), ("bool",),
# ("seconds", low, high) written as a number of seconds, ("mib", low, high) written as NM,
# ("kib", low, high) written as NK, ("choice", [values]).
TABLE = {
    "thread_pool_core_threads": ("quarkus.thread-pool.core-threads", ("int", 0, 100000)),
    "thread_pool_max_threads": ("quarkus.thread-pool.max-threads", ("int", 1, 100000)),
    "thread_pool_queue_size": ("quarkus.thread-pool.queue-size", ("int", 1, 100000000)),
    "thread_pool_growth_resistance": ("quarkus.thread-pool.growth-resistance", ("float", 0.0, 1.0)),
    "thread_pool_keep_alive_time_s": ("quarkus.thread-pool.keep-alive-time", ("seconds", 1, 86400)),
    "thread_pool_prefill": ("quarkus.thread-pool.prefill", ("bool",)),
    "datasource_min_size": (DS + "min-size", ("int", 0, 10000)),
    "datasource_max_size": (DS + "max-size", ("int", 1, 10000)),
    "datasource_initial_size": (DS + "initial-size", ("int", 0, 10000)),
    "datasource_acquisition_timeout_s": (DS + "acquisition-timeout", ("seconds", 1, 3600)),
    "datasource_idle_removal_interval_s": (DS + "idle-removal-interval", ("seconds", 1, 86400)),
    "datasource_max_lifetime_s": (DS + "max-lifetime", ("seconds", 0, 604800)),
    "datasource_background_validation_interval_s": (DS + "background-validation-interval", ("seconds", 0, 86400)),
    "event_loops_pool_size": ("quarkus.vertx.event-loops-pool-size", ("int", 1, 1024)),
    "vertx_worker_pool_size": ("quarkus.vertx.worker-pool-size", ("int", 1, 100000)),
    "io_threads": ("quarkus.http.io-threads", ("int", 1, 1024)),
    "http_max_connections": ("quarkus.http.limits.max-connections", ("int", 1, 10000000)),
    "http_max_body_size_mb": ("quarkus.http.limits.max-body-size", ("mib", 1, 1048576)),
    "http_max_header_size_kb": ("quarkus.http.limits.max-header-size", ("kib", 1, 1048576)),
    "http_max_chunk_size_kb": ("quarkus.http.limits.max-chunk-size", ("kib", 1, 1048576)),
    "http_idle_timeout_s": ("quarkus.http.idle-timeout", ("seconds", 1, 86400)),
    "http_read_timeout_s": ("quarkus.http.read-timeout", ("seconds", 1, 86400)),
    "http_accept_backlog": ("quarkus.http.accept-backlog", ("int", -1, 1000000)),
    "http_compression": ("quarkus.http.enable-compression", ("bool",)),
    "http_compression_level": ("quarkus.http.compression-level", ("int", 1, 9)),
    "http2": ("quarkus.http.http2", ("bool",)),
    "http_so_reuse_port": ("quarkus.http.so-reuse-port", ("bool",)),
    "http_tcp_quick_ack": ("quarkus.http.tcp-quick-ack", ("bool",)),
    "http_tcp_cork": ("quarkus.http.tcp-cork", ("bool",)),
    "http_tcp_fast_open": ("quarkus.http.tcp-fast-open", ("bool",)),
    "hibernate_fetch_batch_size": ("quarkus.hibernate-orm.fetch.batch-size", ("int", -1, 100000)),
    "hibernate_jdbc_statement_batch_size": ("quarkus.hibernate-orm.jdbc.statement-batch-size", ("int", 0, 100000)),
    "hibernate_jdbc_statement_fetch_size": ("quarkus.hibernate-orm.jdbc.statement-fetch-size", ("int", 0, 1000000)),
    "log_level": ("quarkus.log.level", ("choice", ["OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "ALL"])),
}
# The rule of a real key, for tunables mapped with `keys` to a key the table knows.
RULES = {key: rule for key, rule in TABLE.values()}

KEY_RE = re.compile(r'^(%[A-Za-z0-9_-]+\.)?[A-Za-z0-9_-]+(\.([A-Za-z0-9_\-\[\]*]+|"[A-Za-z0-9_.\-/]+"))*$')
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROFILE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
DATASOURCE_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def strip_profile(key):
    return re.sub(r"^%[A-Za-z0-9_-]+\.", "", key)


def rule_key(key):
    """The table's form of a real key: without a profile, for the default datasource."""
    key = strip_profile(key)
    return re.sub(r'^quarkus\.datasource\."[^"]*"\.jdbc\.', DS, key)


# --- Java .properties syntax -------------------------------------------------------------------


def escape(text, is_key):
    """``text`` in the .properties syntax: backslashes, separators, leading spaces and non-ASCII escaped."""
    out = []
    for i, ch in enumerate(text):
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " and (is_key or i == 0):
            out.append("\\ ")
        elif is_key and ch in "=:#!":
            out.append("\\" + ch)
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:  # a surrogate pair, as Java strings hold it
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _unescape(raw):
    out = []
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt == "u" and i + 6 <= n:
            try:
                out.append(chr(int(raw[i + 2 : i + 6], 16)))
                i += 6
                continue
            except ValueError:
                pass
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(nxt, nxt))
        i += 2
    # join surrogate pairs the way Java strings do
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def logical_lines(text):
    """(first line number, logical line) pairs, as java.util.Properties.load reads them."""
    natural = re.split(r"\r\n|\r|\n", text)
    if natural and natural[-1] == "":
        natural.pop()
    i = 0
    while i < len(natural):
        start = i
        line = natural[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        parts = []
        while True:
            trailing = len(line) - len(line.rstrip("\\"))
            if trailing % 2 == 1:
                parts.append(line[:-1])
                if i >= len(natural):
                    break
                line = natural[i].lstrip(" \t\f")
                i += 1
                continue
            parts.append(line)
            break
        yield start + 1, "".join(parts)


def split_entry(line):
    """(raw key, raw value) of a logical line."""
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "=: \t\f":
            break
        i += 1
    key = line[:i]
    j = i
    while j < n and line[j] in " \t\f":
        j += 1
    if j < n and line[j] in "=:":
        j += 1
        while j < n and line[j] in " \t\f":
            j += 1
    return key, line[j:]


def parse(text):
    """[(key, value, line number)] in file order."""
    out = []
    for lineno, line in logical_lines(text):
        key, value = split_entry(line)
        out.append((_unescape(key), _unescape(value), lineno))
    return out


# --- the block ---------------------------------------------------------------------------------


def newline_of(text):
    return "\r\n" if "\r\n" in text else "\n"


def lines_of(text):
    """The lines of ``text`` with their line breaks (only CR, LF and CRLF break lines, as in Java)."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)


def split_block(text):
    """(text before the block, block lines, text after the block); the block is None when absent."""
    lines = lines_of(text)
    begin = [i for i, line in enumerate(lines) if line.strip().startswith(BEGIN_PREFIX)]
    end = [i for i, line in enumerate(lines) if line.strip().startswith(END_PREFIX)]
    if not begin and not end:
        return text, None, ""
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise ValueError("the file has broken knobflow markers (a BEGIN/END line missing or repeated); fix it by hand")
    b, e = begin[0], end[0]
    return "".join(lines[:b]), lines[b : e + 1], "".join(lines[e + 1 :])


def ends_in_continuation(text):
    stripped = text.rstrip("\r\n")
    if stripped == text and text:  # no final line break
        stripped = text
    last = re.split(r"\r\n|\r|\n", stripped)[-1] if stripped else ""
    if last.lstrip(" \t\f")[:1] in ("#", "!"):
        return False
    return (len(last) - len(last.rstrip("\\"))) % 2 == 1


def render(current, entries):
    """The file's new text: ``current`` with knobflow's block replaced by ``entries`` (or removed)."""
    before, _, after = split_block(current or "")
    if not entries:
        return before + after
    nl = newline_of(current or "")
    if before and not before.endswith(("\n", "\r")):
        before += nl
    if ends_in_continuation(before):
        raise ValueError(
            "the line before knobflow's block ends with a line continuation (\\): it would swallow the block"
        )
    body = "".join(f"{escape(k, True)}={escape(v, False)}{nl}" for k, v in entries)
    return before + BEGIN + nl + body + END + nl + after


# --- values ------------------------------------------------------------------------------------


def _as_int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def check(value, rule):
    """(text to write, None) or (None, error)."""
    kind = rule[0]
    if kind in ("int", "seconds", "mib", "kib"):
        number = _as_int(value)
        if number is None:
            return None, f"must be an integer, got {value!r}"
        if not rule[1] <= number <= rule[2]:
            return None, f"must be between {rule[1]} and {rule[2]}, got {number}"
        suffix = {"int": "", "seconds": "", "mib": "M", "kib": "K"}[kind]
        return f"{number}{suffix}", None
    if kind == "float":
        if isinstance(value, bool):
            return None, f"must be a number, got {value!r}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"must be a number, got {value!r}"
        if not rule[1] <= number <= rule[2]:
            return None, f"must be between {rule[1]} and {rule[2]}, got {number}"
        return repr(number), None
    if kind == "bool":
        if isinstance(value, bool):
            return ("true" if value else "false"), None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower(), None
        return None, f"must be true or false, got {value!r}"
    # choice
    text = str(value).upper() if isinstance(value, str) else None
    if text not in rule[1]:
        return None, "must be one of {}, got {!r}".format(", ".join(rule[1]), value)
    return text, None


def check_free(value):
    """A value for a key the table does not know: any scalar that the file can hold literally."""
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, (int, float)):
        return str(value), None
    if not isinstance(value, str):
        return None, f"must be a string, number or boolean, got {type(value).__name__}"
    if value == "":
        return None, "is empty (leave the tunable out to keep Quarkus's default)"
    if CONTROL_RE.search(value):
        return None, "holds a line break or another control character, which a .properties value cannot hold safely"
    if "${" in value:
        return None, "holds '${', which Quarkus would expand as a property expression; knobflow writes literal values"
    return value, None


def build(settings, keys, profile, datasource):
    """([(key, value)] in a stable order, errors)."""
    errors = []
    prefix = f"%{profile}." if profile else ""
    ds = f'quarkus.datasource."{datasource}".jdbc.' if datasource else DS
    entries = {}
    owners = {}
    for name, real in sorted(keys.items()):
        if not NAME_RE.match(str(name)):
            errors.append(f"quarkus_keys: {name!r} is not a tunable name ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(real, str) or not KEY_RE.match(real):
            errors.append(f"quarkus_keys: {name}: {real!r} is not a Quarkus configuration key")
    for name, value in sorted(settings.items()):
        if name in keys:
            key = keys[name]
            if not isinstance(key, str) or not KEY_RE.match(key):
                continue  # reported above
        elif name in TABLE:
            key = TABLE[name][0]
            if key.startswith(DS):
                key = ds + key[len(DS) :]
        else:
            errors.append(
                "unknown setting {!r}: not in the built-in table and not in quarkus_keys (known: {})".format(
                    name, ", ".join(sorted(TABLE))
                )
            )
            continue
        rule = RULES.get(rule_key(key))
        text, error = check(value, rule) if rule else check_free(value)
        if error:
            errors.append(f"{name} ({key}): {error}")
            continue
        full = key if key.startswith("%") else prefix + key
        if full in owners:
            errors.append(f"{name}: sets {full}, which {owners[full]} sets too")
            continue
        owners[full] = name
        entries[full] = text
    # relations between the settings given together
    by_rule = {rule_key(k): int(v.rstrip("MK")) for k, v in entries.items() if re.fullmatch(r"-?\d+[MK]?", v)}

    def relation(low, high, text):
        if low in by_rule and high in by_rule and by_rule[low] > by_rule[high]:
            errors.append(f"{text}: {low}={by_rule[low]} is more than {high}={by_rule[high]}")

    relation("quarkus.thread-pool.core-threads", "quarkus.thread-pool.max-threads", "thread pool")
    relation(DS + "min-size", DS + "max-size", "datasource")
    relation(DS + "initial-size", DS + "max-size", "datasource")
    relation(DS + "min-size", DS + "initial-size", "datasource")
    return sorted(entries.items()), errors


def shadowed_by(text, entries):
    """Lines outside the block that set a managed key (or a profile variant of it), and what they do."""
    before, block, after = split_block(text)
    first_after = len(lines_of(before)) + len(block or [])
    managed = {k for k, _ in entries}
    plain = {strip_profile(k) for k in managed}
    out = []
    for part, offset, later in ((before, 0, False), (after, first_after, True)):
        for key, _value, lineno in parse(part):
            where = f"line {lineno + offset}"
            if key in managed:
                what = "set again after knobflow's block: that line wins" if later else "knobflow's later block wins"
                out.append(f"{key} on {where}: {what}")
            elif key.startswith("%") and strip_profile(key) in plain and key not in managed:
                profile = key[1:].split(".", 1)[0]
                out.append(f"{key} on {where}: overrides knobflow's value when profile {profile} is active")
    return out


# --- restart, managed keys (the file: module_utils/knobflow_files) -----------------------------


def run_restart(module, argv):
    rc, out, err = module.run_command(argv)
    if rc != 0:
        tail = " | ".join((err or out or "no output").strip().splitlines()[-3:])
        module.fail_json(msg=f"restart command {argv[0]} exited with status {rc}: {tail}", rc=rc)


def managed_now(text):
    if text is None:
        return {}
    try:
        _, block, _ = split_block(text)
    except ValueError:
        return {}
    return {k: v for k, v, _ in parse("".join(block))} if block else {}


# --- validate ----------------------------------------------------------------------------------


def validate_tunables(tunables, keys):
    errors = []
    for t in tunables:
        name = t.get("name")
        if name in keys:
            key = keys[name]
        elif name in TABLE:
            key = TABLE[name][0]
        else:
            errors.append(f"tunable {name!r}: the quarkus role does not know it (add it to quarkus_keys)")
            continue
        rule = RULES.get(rule_key(key))
        samples = []
        if t.get("choices"):
            samples = list(t["choices"])
        else:
            samples = [v for v in (t.get("low"), t.get("high"), t.get("default")) if v is not None]
        for v in samples:
            _, error = check(v, rule) if rule else check_free(v)
            if error:
                errors.append(f"tunable {name!r} ({key}): value {v!r} {error}")
    return errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            settings=dict(type="dict", default={}),
            keys=dict(type="dict", default={}),
            profile=dict(type="str", default=""),
            datasource=dict(type="str", default=""),
            restart_argv=dict(type="list", elements="str", default=[]),
            tunables=dict(type="list", elements="dict", default=[]),
            state=dict(type="str", choices=["present", "reverted", "validate"], default="present"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"]
    result = dict(changed=False, path=path, properties={}, shadowed=[])
    if p["profile"] and not PROFILE_RE.match(p["profile"]):
        module.fail_json(msg=f"quarkus_profile: {p['profile']!r} is not a profile name ([A-Za-z0-9_-]+)", **result)
    if p["datasource"] and not DATASOURCE_RE.match(p["datasource"]):
        module.fail_json(msg=f"quarkus_datasource: {p['datasource']!r} is not a datasource name", **result)

    if p["state"] == "validate":
        errors = validate_tunables(p["tunables"], p["keys"])
        if errors:
            module.fail_json(msg="quarkus tunables the role cannot apply: " + "; ".join(errors), **result)
        module.exit_json(**result)

    if p["state"] == "reverted":
        changed, before, after = revert(module, path)
        result.update(changed=changed, properties=managed_now(after))
        if changed:
            result["diff"] = file_diff(path, before, after)
            if p["restart_argv"] and not module.check_mode:
                run_restart(module, p["restart_argv"])
        module.exit_json(**result)

    entries, errors = build(p["settings"], p["keys"], p["profile"], p["datasource"])
    if errors:
        module.fail_json(msg="invalid Quarkus settings: " + "; ".join(errors), **result)
    current = read(path)
    try:
        text = render(current, entries)
        result["shadowed"] = shadowed_by(text, entries)
    except ValueError as exc:
        module.fail_json(msg=f"{path}: {exc}", **result)
    result["properties"] = dict(entries)
    for line in result["shadowed"]:
        if "that line wins" in line:
            module.fail_json(msg=f"{path}: {line}; move knobflow's block to the end of the file", **result)
        module.warn(f"{path}: {line}")
    if current is None and not entries:
        module.exit_json(**result)  # nothing to write, and no file to create
    if text == current:
        module.exit_json(**result)
    result["changed"] = True
    result["diff"] = file_diff(path, current, text)
    if module.check_mode:
        module.exit_json(**result)
    write_file(path, text, current)
    written = read(path)
    effective = {}
    for key, value, _ in parse(written or ""):
        effective[key] = value
    wrong = [k for k, v in entries if effective.get(k) != v]
    if written != text or wrong:
        module.fail_json(
            msg="verification failed: {} does not hold what was written ({})".format(path, ", ".join(wrong) or "text"),
            **result,
        )
    if p["restart_argv"]:
        run_restart(module, p["restart_argv"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
