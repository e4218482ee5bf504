#!/usr/bin/python
"""Write, verify and revert knobflow's Open Liberty tuning: a configDropins override file and jvm.options lines."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: liberty_config
short_description: Apply or revert knobflow's Open Liberty / WebSphere Liberty settings
description:
  - Maps knobflow tunable names to Liberty server configuration attributes (C(executor),
    C(httpOptions), C(tcpOptions), C(connectionManager), or any element given in I(attributes))
    and to JVM options, validates every value, and writes
  - the attributes to a file that knobflow owns, C(configDropins/overrides/knobflow.xml) by default,
    which Liberty merges over server.xml (server.xml itself is never edited);
  - the JVM options as one marked block of lines at the end of C(jvm.options), leaving every other
    line as it was.
  - On the first change of each file, saves what was there (the file, or the fact that there was
    none), so that C(state=reverted) puts back exactly the original. Verifies by parsing the XML
    file and reading jvm.options back. Supports check and diff mode.
options:
  server_dir:
    description: The server's configuration directory (C(${server.config.dir}), the one holding server.xml).
    type: path
    required: true
  override_file:
    description: The configuration dropin knobflow owns; default C(<server_dir>/configDropins/overrides/knobflow.xml).
    type: path
  jvm_options_path:
    description: The jvm.options file; default C(<server_dir>/jvm.options).
    type: path
  settings:
    description: Tunable values by tunable name.
    type: dict
    default: {}
  attributes:
    description: More tunable names mapped to configuration attributes, C({name: {element, attribute, id}}).
    type: dict
    default: {}
  jvm_option_templates:
    description: More tunable names mapped to a JVM option template holding C({value}) (or C({sign}) for a boolean).
    type: dict
    default: {}
  http_options_id:
    description: The id of the httpOptions element the http_* tunables set.
    type: str
    default: defaultHttpOptions
  tcp_options_id:
    description: The id of the tcpOptions element the tcp_* tunables set.
    type: str
    default: defaultTCPOptions
  connection_manager_id:
    description: The id of the top-level connectionManager element the pool_* tunables set.
    type: str
    default: ""
  restart_argv:
    description: A command (no shell) run after a file changed (on apply and on revert), to restart the server.
    type: list
    elements: str
    default: []
  tunables:
    description: With C(state=validate), the declared tunables (dicts with name, type, low, high, choices).
    type: list
    elements: dict
    default: []
  state:
    description: C(present) applies I(settings); C(reverted) restores the originals; C(validate) checks I(tunables).
    type: str
    choices: [present, reverted, validate]
    default: present
author: knobflow maintainers
"""

RETURN = r"""
elements:
  description: The configuration knobflow's override file sets, as {"tag" or "tag[id]": {attribute: value}}.
  type: dict
  returned: always
jvm_options:
  description: The JVM option lines in knobflow's block of jvm.options.
  type: list
  returned: always
"""

import os
import re
import xml.etree.ElementTree as ET

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.knobflow_files import file_diff, read, revert, write_file

JVM_BEGIN = "# BEGIN knobflow managed options (role liberty): knobflow rewrites this block and removes it on revert"
JVM_END = "# END knobflow managed options"
JVM_BEGIN_PREFIX = "# BEGIN knobflow managed options"
JVM_END_PREFIX = "# END knobflow managed options"
XML_HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<!-- Written by knobflow (role liberty). Liberty merges this file over server.xml. knobflow rewrites it\n"
    "     on every trial and puts back what was here before (nothing, usually) on revert: do not edit. -->\n"
)

# Rules: ("int", low, high, also_allowed), ("duration_s", low, high) written as Ns, ("bool",), ("choice", [...]).
# Element placeholders: "executor" (a singleton), "httpOptions", "tcpOptions", "connectionManager" (with ids).
XML_TABLE = {
    "executor_core_threads": ("executor", "coreThreads", ("int", 1, 100000, (-1,))),
    "executor_max_threads": ("executor", "maxThreads", ("int", 4, 100000, (-1,))),
    "executor_keep_alive_s": ("executor", "keepAlive", ("duration_s", 1, 86400)),
    "executor_rejected_work_policy": ("executor", "rejectedWorkPolicy", ("choice", ["ABORT", "CALLER_RUNS"])),
    "http_max_keep_alive_requests": ("httpOptions", "maxKeepAliveRequests", ("int", 1, 1000000000, (-1,))),
    "http_keep_alive_enabled": ("httpOptions", "keepAliveEnabled", ("bool",)),
    "http_persist_timeout_s": ("httpOptions", "persistTimeout", ("duration_s", 0, 86400)),
    "http_read_timeout_s": ("httpOptions", "readTimeout", ("duration_s", 0, 86400)),
    "http_write_timeout_s": ("httpOptions", "writeTimeout", ("duration_s", 0, 86400)),
    "tcp_max_open_connections": ("tcpOptions", "maxOpenConnections", ("int", 1, 1280000, ())),
    "tcp_inactivity_timeout_s": ("tcpOptions", "inactivityTimeout", ("duration_s", 0, 86400)),
    "tcp_so_reuse_addr": ("tcpOptions", "soReuseAddr", ("bool",)),
    "pool_max_size": ("connectionManager", "maxPoolSize", ("int", 0, 100000, ())),
    "pool_min_size": ("connectionManager", "minPoolSize", ("int", 0, 100000, ())),
    "pool_connection_timeout_s": ("connectionManager", "connectionTimeout", ("duration_s", 0, 3600)),
    "pool_max_idle_time_s": ("connectionManager", "maxIdleTime", ("duration_s", 0, 86400)),
    "pool_aged_timeout_s": ("connectionManager", "agedTimeout", ("duration_s", 0, 604800)),
    "pool_reap_time_s": ("connectionManager", "reapTime", ("duration_s", 0, 86400)),
    "pool_purge_policy": (
        "connectionManager",
        "purgePolicy",
        ("choice", ["EntirePool", "FailingConnectionOnly", "ValidateAllConnections"]),
    ),
    "pool_connections_per_thread_local": ("connectionManager", "numConnectionsPerThreadLocal", ("int", 0, 1000, ())),
}
# (element, attribute) -> rule, for tunables mapped with `attributes` to an attribute the table knows.
XML_RULES = {(e, a): rule for e, a, rule in XML_TABLE.values()}

GC_CHOICES = {
    "G1": "-XX:+UseG1GC",
    "Parallel": "-XX:+UseParallelGC",
    "Serial": "-XX:+UseSerialGC",
    "Z": "-XX:+UseZGC",
    "Shenandoah": "-XX:+UseShenandoahGC",
    "gencon": "-Xgcpolicy:gencon",
    "balanced": "-Xgcpolicy:balanced",
    "optthruput": "-Xgcpolicy:optthruput",
    "optavgpause": "-Xgcpolicy:optavgpause",
    "metronome": "-Xgcpolicy:metronome",
}
# tunable name -> (template, rule); {value} is replaced by the checked value.
JVM_TABLE = {
    "jvm_heap_max_mb": ("-Xmx{value}m", ("int", 16, 4194304, ())),
    "jvm_heap_min_mb": ("-Xms{value}m", ("int", 1, 4194304, ())),
    "jvm_heap_young_mb": ("-Xmn{value}m", ("int", 1, 4194304, ())),
    "jvm_thread_stack_kb": ("-Xss{value}k", ("int", 128, 1048576, ())),
    "jvm_metaspace_max_mb": ("-XX:MaxMetaspaceSize={value}m", ("int", 16, 1048576, ())),
    "jvm_max_gc_pause_ms": ("-XX:MaxGCPauseMillis={value}", ("int", 1, 1000000, ())),
    "jvm_parallel_gc_threads": ("-XX:ParallelGCThreads={value}", ("int", 1, 1024, ())),
    "jvm_conc_gc_threads": ("-XX:ConcGCThreads={value}", ("int", 1, 1024, ())),
    "jvm_active_processor_count": ("-XX:ActiveProcessorCount={value}", ("int", 1, 4096, ())),
    "jvm_max_ram_percentage": ("-XX:MaxRAMPercentage={value}", ("float", 1.0, 100.0)),
    "jvm_tiered_compilation": ("-XX:{sign}TieredCompilation", ("bool",)),
    "jvm_gc": ("{value}", ("gc",)),
}

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
XML_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
ID_RE = re.compile(r"^[A-Za-z0-9_.\-/\[\]]+$")
# What one JVM option line may hold: Liberty's launch script reads jvm.options with a shell.
SAFE_OPTION_RE = re.compile(r"^-[A-Za-z0-9_.:+=,/@%-]+$")
SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:+=,/@%-]+$")
BAD_XML_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
GC_SELECTOR_RE = re.compile(
    r"^-XX:\+Use(G1|Parallel|ParallelOld|Serial|Z|Shenandoah|ConcMarkSweep|Epsilon)GC$|^-Xgcpolicy:"
)


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
    if kind in ("int", "duration_s"):
        number = _as_int(value)
        if number is None:
            return None, f"must be an integer, got {value!r}"
        also = rule[3] if kind == "int" else ()
        if not (rule[1] <= number <= rule[2] or number in also):
            extra = "".join(f" or {a}" for a in also)
            return None, f"must be between {rule[1]} and {rule[2]}{extra}, got {number}"
        return (f"{number}s" if kind == "duration_s" else str(number)), None
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
    if kind == "gc":
        if value not in GC_CHOICES:
            return None, "must be one of {}, got {!r}".format(", ".join(GC_CHOICES), value)
        return GC_CHOICES[value], None
    choices = rule[1]
    for c in choices:
        if isinstance(value, str) and value.lower() == c.lower():
            return c, None
    return None, "must be one of {}, got {!r}".format(", ".join(choices), value)


def check_free_xml(value):
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, (int, float)):
        return str(value), None
    if not isinstance(value, str):
        return None, f"must be a string, number or boolean, got {type(value).__name__}"
    if value == "":
        return None, "is empty (leave the tunable out to keep Liberty's default)"
    if BAD_XML_RE.search(value):
        return None, "holds a line break or another control character"
    if "${" in value:
        return None, "holds '${', which Liberty would expand as a variable; knobflow writes literal values"
    return value, None


def check_free_jvm(value):
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, (int, float)):
        return str(value), None
    if not isinstance(value, str) or not SAFE_VALUE_RE.match(value):
        return None, f"{value!r} is not a safe JVM option value (letters, digits and _.:+=,/@%- only)"
    return value, None


# --- building ----------------------------------------------------------------------------------


def element_key(tag, ident):
    return f"{tag}[{ident}]" if ident else tag


def build(p):
    """({element key: {attribute: value}}, {element key: (tag, id)}, [jvm option lines], errors)."""
    errors = []
    ids = {
        "executor": "",
        "httpOptions": p["http_options_id"],
        "tcpOptions": p["tcp_options_id"],
        "connectionManager": p["connection_manager_id"],
    }
    for what, ident in (("liberty_http_options_id", ids["httpOptions"]), ("liberty_tcp_options_id", ids["tcpOptions"])):
        if not ID_RE.match(ident or ""):
            errors.append(f"{what}: {ident!r} is not a configuration id")
    if ids["connectionManager"] and not ID_RE.match(ids["connectionManager"]):
        errors.append(f"liberty_connection_manager_id: {ids['connectionManager']!r} is not a configuration id")
    attributes = p["attributes"] or {}
    templates = p["jvm_option_templates"] or {}
    for name, target in sorted(attributes.items()):
        if not NAME_RE.match(str(name)):
            errors.append(f"liberty_attributes: {name!r} is not a tunable name")
        if not isinstance(target, dict) or set(target) - {"element", "attribute", "id"}:
            errors.append(f"liberty_attributes: {name}: give {{element, attribute, id}} (id optional)")
            continue
        if not XML_NAME_RE.match(str(target.get("element", ""))):
            errors.append(f"liberty_attributes: {name}: element {target.get('element')!r} is not an XML element name")
        if not XML_NAME_RE.match(str(target.get("attribute", ""))) or target.get("attribute") == "id":
            errors.append(f"liberty_attributes: {name}: attribute {target.get('attribute')!r} is not usable")
        if target.get("id") not in (None, "") and not ID_RE.match(str(target["id"])):
            errors.append(f"liberty_attributes: {name}: id {target['id']!r} is not a configuration id")
    for name, template in sorted(templates.items()):
        if not NAME_RE.match(str(name)):
            errors.append(f"liberty_jvm_option_templates: {name!r} is not a tunable name")
        probe = str(template).replace("{value}", "1").replace("{sign}", "+")
        if not isinstance(template, str) or ("{value}" not in template and "{sign}" not in template):
            errors.append(f"liberty_jvm_option_templates: {name}: the template must hold {{value}} or {{sign}}")
        elif not SAFE_OPTION_RE.match(probe):
            errors.append(f"liberty_jvm_option_templates: {name}: {template!r} is not a safe JVM option template")
    if errors:
        return {}, {}, [], errors

    elements = {}
    where = {}
    owners = {}
    jvm = []
    for name, value in sorted((p["settings"] or {}).items()):
        if name in attributes:
            t = attributes[name]
            tag, attr, ident = t["element"], t["attribute"], str(t.get("id") or "")
            rule = XML_RULES.get((tag, attr))
            text, error = check(value, rule) if rule else check_free_xml(value)
        elif name in templates:
            template = templates[name]
            if "{sign}" in template:
                text, error = check(value, ("bool",))
                option = template.replace("{sign}", "+" if text == "true" else "-") if text else None
            else:
                text, error = check_free_jvm(value)
                option = template.replace("{value}", text) if text is not None else None
            if error:
                errors.append(f"{name} (JVM option): {error}")
            elif not SAFE_OPTION_RE.match(option):
                errors.append(f"{name} (JVM option): {option!r} is not a safe JVM option")
            else:
                jvm.append(option)
            continue
        elif name in XML_TABLE:
            tag, attr, rule = XML_TABLE[name]
            ident = ids[tag]
            if tag == "connectionManager" and not ident:
                errors.append(
                    f"{name}: set liberty_connection_manager_id to the id of the connectionManager "
                    "your dataSource uses (connectionManagerRef)"
                )
                continue
            text, error = check(value, rule)
        elif name in JVM_TABLE:
            template, rule = JVM_TABLE[name]
            text, error = check(value, rule)
            if error:
                errors.append(f"{name} (JVM option): {error}")
                continue
            if "{sign}" in template:
                jvm.append(template.replace("{sign}", "+" if text == "true" else "-"))
            else:
                jvm.append(template.replace("{value}", text))
            continue
        else:
            known = sorted(list(XML_TABLE) + list(JVM_TABLE))
            errors.append(
                "unknown setting {!r}: not in the built-in tables, liberty_attributes or "
                "liberty_jvm_option_templates (known: {})".format(name, ", ".join(known))
            )
            continue
        if error:
            errors.append(f"{name} ({element_key(tag, ident)}/@{attr}): {error}")
            continue
        key = element_key(tag, ident)
        if (key, attr) in owners:
            errors.append(f"{name}: sets {key}/@{attr}, which {owners[(key, attr)]} sets too")
            continue
        owners[(key, attr)] = name
        elements.setdefault(key, {})[attr] = text
        where[key] = (tag, ident)

    def relation(key, low, high, what):
        attrs = elements.get(key, {})
        try:
            lo, hi = int(attrs[low]), int(attrs[high])
        except (KeyError, ValueError):
            return
        if hi > 0 and lo > hi:
            errors.append(f"{what}: {low}={lo} is more than {high}={hi}")

    relation("executor", "coreThreads", "maxThreads", "executor")
    if ids["connectionManager"]:
        relation(element_key("connectionManager", ids["connectionManager"]), "minPoolSize", "maxPoolSize", "pool")
    heap = {o[:4]: int(o[4:-1]) for o in jvm if o[:4] in ("-Xmx", "-Xms") and o[4:-1].isdigit()}
    if "-Xms" in heap and "-Xmx" in heap and heap["-Xms"] > heap["-Xmx"]:
        errors.append(f"jvm heap: -Xms{heap['-Xms']}m is more than -Xmx{heap['-Xmx']}m")
    if sum(1 for o in jvm if GC_SELECTOR_RE.match(o)) > 1:
        errors.append("more than one tunable selects a garbage collector")
    return elements, where, jvm, errors


def xml_attr(value):
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def render_xml(elements, where):
    if not elements:
        return None
    lines = [XML_HEADER, '<server description="knobflow tuning overrides">\n']
    for key in sorted(elements):
        tag, ident = where[key]
        attrs = ([("id", ident)] if ident else []) + sorted(elements[key].items())
        text = " ".join(f'{a}="{xml_attr(v)}"' for a, v in attrs)
        lines.append(f"    <{tag} {text}/>\n")
    lines.append("</server>\n")
    return "".join(lines)


def parse_xml(text):
    """{element key: {attribute: value}} of an override file, as an XML parser reads it."""
    root = ET.fromstring(text.encode("utf-8"))
    if root.tag != "server":
        raise ValueError(f"the root element is <{root.tag}>, not <server>")
    out = {}
    for child in root:
        attrs = dict(child.attrib)
        ident = attrs.pop("id", "")
        out[element_key(child.tag, ident)] = attrs
    return out


# --- jvm.options -------------------------------------------------------------------------------


def lines_of(text):
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)


def split_block(text):
    lines = lines_of(text)
    begin = [i for i, line in enumerate(lines) if line.strip().startswith(JVM_BEGIN_PREFIX)]
    end = [i for i, line in enumerate(lines) if line.strip().startswith(JVM_END_PREFIX)]
    if not begin and not end:
        return text, None, ""
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise ValueError("broken knobflow markers (a BEGIN/END line missing or repeated); fix the file by hand")
    b, e = begin[0], end[0]
    return "".join(lines[:b]), lines[b : e + 1], "".join(lines[e + 1 :])


def render_jvm(current, options):
    before, _, after = split_block(current or "")
    if not options:
        return before + after
    nl = "\r\n" if "\r\n" in (current or "") else "\n"
    if before and not before.endswith(("\n", "\r")):
        before += nl
    return before + JVM_BEGIN + nl + "".join(o + nl for o in options) + JVM_END + nl + after


def option_identity(option):
    if GC_SELECTOR_RE.match(option):
        return "garbage collector"
    for prefix in ("-Xmx", "-Xms", "-Xmn", "-Xss"):
        if option.startswith(prefix):
            return prefix
    m = re.match(r"^-XX:[+-]?([A-Za-z0-9_]+)", option)
    if m:
        return "-XX:" + m.group(1)
    m = re.match(r"^-D([^=]+)", option)
    if m:
        return "-D" + m.group(1)
    return option.split("=", 1)[0]


def jvm_conflicts(text, options):
    """(warnings, errors) for option lines outside knobflow's block that set what the block sets."""
    before, block, after = split_block(text)
    first_after = len(lines_of(before)) + len(block or [])
    mine = {option_identity(o): o for o in options}
    warnings, errors = [], []
    for part, offset, later in ((before, 0, False), (after, first_after, True)):
        for n, line in enumerate(lines_of(part), 1):
            opt = line.strip()
            if not opt or opt.startswith("#"):
                continue
            ident = option_identity(opt)
            if ident not in mine or (opt == mine[ident] and not later):
                continue
            where = f"line {n + offset} ({opt})"
            if ident == "garbage collector":
                errors.append(f"{where} selects a garbage collector too; the JVM refuses two (remove one)")
            elif later:
                errors.append(f"{where} comes after knobflow's block and wins over {mine[ident]}")
            else:
                warnings.append(f"{where}: knobflow's later {mine[ident]} wins")
    return warnings, errors


# --- restart, server.xml hints (the files: module_utils/knobflow_files) ------------------------


def run_restart(module, argv, result):
    rc, out, err = module.run_command(argv)
    if rc != 0:
        tail = " | ".join((err or out or "no output").strip().splitlines()[-3:])
        module.fail_json(msg=f"restart command {argv[0]} exited with status {rc}: {tail}", rc=rc, **result)


def server_xml_warnings(server_dir, elements, where):
    """Hints when server.xml does not reference the elements knobflow's file overrides."""
    try:
        root = ET.parse(os.path.join(server_dir, "server.xml")).getroot()
    except (ET.ParseError, OSError) as exc:
        return [f"server.xml could not be parsed ({exc}); the override file is written anyway"]
    out = []
    present = {(e.tag, e.get("id", "")) for e in root.iter()}
    for key in elements:
        tag, ident = where[key]
        if tag == "httpOptions":
            refs = {e.get("httpOptionsRef") for e in root.iter("httpEndpoint") if e.get("httpOptionsRef")}
            if refs and ident not in refs:
                out.append(f"server.xml's httpEndpoint uses httpOptionsRef {sorted(refs)}, not {ident}")
        elif tag == "tcpOptions":
            refs = {e.get("tcpOptionsRef") for e in root.iter("httpEndpoint") if e.get("tcpOptionsRef")}
            if refs and ident not in refs:
                out.append(f"server.xml's httpEndpoint uses tcpOptionsRef {sorted(refs)}, not {ident}")
        elif tag == "connectionManager" and (tag, ident) not in present:
            out.append(f"no <connectionManager id={ident!r}> in server.xml (fine if an included file has it)")
    return out


# --- validate ----------------------------------------------------------------------------------


def validate_tunables(tunables, attributes, templates):
    errors = []
    for t in tunables:
        name = t.get("name")
        if name in attributes:
            target = attributes[name] if isinstance(attributes[name], dict) else {}
            rule = XML_RULES.get((target.get("element"), target.get("attribute")))
            checker = (lambda v, r=rule: check(v, r)) if rule else check_free_xml
        elif name in templates:
            checker = check_free_jvm if "{value}" in str(templates[name]) else (lambda v: check(v, ("bool",)))
        elif name in XML_TABLE:
            rule = XML_TABLE[name][2]
            checker = lambda v, r=rule: check(v, r)  # noqa: E731
        elif name in JVM_TABLE:
            rule = JVM_TABLE[name][1]
            checker = lambda v, r=rule: check(v, r)  # noqa: E731
        else:
            errors.append(f"tunable {name!r}: the liberty role does not know it")
            continue
        samples = list(t["choices"]) if t.get("choices") else [t.get(k) for k in ("low", "high", "default")]
        for v in samples:
            if v is None:
                continue
            _, error = checker(v)
            if error:
                errors.append(f"tunable {name!r}: value {v!r} {error}")
    return errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            server_dir=dict(type="path", required=True),
            override_file=dict(type="path"),
            jvm_options_path=dict(type="path"),
            settings=dict(type="dict", default={}),
            attributes=dict(type="dict", default={}),
            jvm_option_templates=dict(type="dict", default={}),
            http_options_id=dict(type="str", default="defaultHttpOptions"),
            tcp_options_id=dict(type="str", default="defaultTCPOptions"),
            connection_manager_id=dict(type="str", default=""),
            restart_argv=dict(type="list", elements="str", default=[]),
            tunables=dict(type="list", elements="dict", default=[]),
            state=dict(type="str", choices=["present", "reverted", "validate"], default="present"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    server_dir = p["server_dir"]
    xml_path = p["override_file"] or os.path.join(server_dir, "configDropins", "overrides", "knobflow.xml")
    jvm_path = p["jvm_options_path"] or os.path.join(server_dir, "jvm.options")
    result = dict(changed=False, override_file=xml_path, jvm_options_path=jvm_path, elements={}, jvm_options=[])

    if p["state"] == "validate":
        errors = validate_tunables(p["tunables"], p["attributes"] or {}, p["jvm_option_templates"] or {})
        if errors:
            module.fail_json(msg="liberty tunables the role cannot apply: " + "; ".join(errors), **result)
        module.exit_json(**result)

    if p["state"] == "reverted":
        diffs = []
        for path in (xml_path, jvm_path):
            changed, before, after = revert(module, path)
            if changed:
                result["changed"] = True
                diffs.append(file_diff(path, before, after))
        if diffs:
            result["diff"] = diffs
        if result["changed"] and p["restart_argv"] and not module.check_mode:
            run_restart(module, p["restart_argv"], result)
        module.exit_json(**result)

    if not os.path.isfile(os.path.join(server_dir, "server.xml")):
        module.fail_json(
            msg=f"liberty_server_dir: {server_dir} has no server.xml: not a Liberty server configuration directory",
            **result,
        )
    elements, where, jvm, errors = build(p)
    if errors:
        module.fail_json(msg="invalid Liberty settings: " + "; ".join(errors), **result)
    result["elements"] = elements
    result["jvm_options"] = jvm
    for w in server_xml_warnings(server_dir, elements, where):
        module.warn(w)

    xml_now = read(xml_path)
    xml_new = render_xml(elements, where)
    jvm_now = read(jvm_path)
    try:
        jvm_new = render_jvm(jvm_now, jvm) if (jvm or jvm_now is not None) else None
        if jvm_new is not None:
            warnings, conflicts = jvm_conflicts(jvm_new, jvm)
            if conflicts:
                module.fail_json(msg=f"{jvm_path}: " + "; ".join(conflicts), **result)
            for w in warnings:
                module.warn(f"{jvm_path}: {w}")
    except ValueError as exc:
        module.fail_json(msg=f"{jvm_path}: {exc}", **result)
    if jvm_now is None and not jvm:
        jvm_new = None  # no options and no file: create none

    changes = [(path, now, new) for path, now, new in ((xml_path, xml_now, xml_new), (jvm_path, jvm_now, jvm_new))]
    changes = [c for c in changes if c[1] != c[2]]
    if not changes:
        module.exit_json(**result)
    result["changed"] = True
    result["diff"] = [file_diff(path, now, new) for path, now, new in changes]
    if module.check_mode:
        module.exit_json(**result)
    for path, now, new in changes:
        write_file(path, new, now)
    # Verify by reading back: the XML as a parser sees it, jvm.options line by line.
    problems = []
    if xml_new is not None:
        try:
            if parse_xml(read(xml_path) or "") != elements:
                problems.append(f"{xml_path} does not parse to the settings written")
        except (ET.ParseError, ValueError) as exc:
            problems.append(f"{xml_path} is not well-formed XML: {exc}")
    elif os.path.exists(xml_path):
        problems.append(f"{xml_path} is still there")
    if jvm_new is not None:
        back = read(jvm_path)
        _, block, _ = split_block(back or "")
        if back != jvm_new or [line.strip() for line in (block or [])[1:-1]] != jvm:
            problems.append(f"{jvm_path} does not hold the options written")
    if problems:
        module.fail_json(msg="verification failed: " + "; ".join(problems), **result)
    if p["restart_argv"]:
        run_restart(module, p["restart_argv"], result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
