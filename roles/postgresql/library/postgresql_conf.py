#!/usr/bin/python
"""Apply, verify and revert PostgreSQL server settings through a knobflow include file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postgresql_conf
short_description: Apply or revert PostgreSQL settings in an included configuration file
description:
  - Validates every setting against the running server's C(pg_settings) (name, type, range, enum
    values, units), refuses settings that are not durability-safe unless I(allow_unsafe), writes them
    to I(include_file) next to the server's C(postgresql.conf), adds one C(include_if_exists) line to
    C(postgresql.conf), then reloads the server, or restarts it when a changed setting has the
    C(postmaster) context, and verifies that the server runs with the values.
  - On the first change, saves C(postgresql.conf) and the include file (or the fact there was none), so
    that C(state=reverted) puts both back exactly and reloads or restarts the server again.
  - C(state=validate) checks a list of knobflow tunables (names, ranges, choices) against the server.
  - Connects with C(psql) (argument vector, no shell) as a superuser. Supports check mode and diff mode.
options:
  settings:
    description: Settings by tunable name (see the role README for the name mapping).
    type: dict
    default: {}
  tunables:
    description: For C(state=validate), knobflow's declared tunables (name, type, low, high, choices, default).
    type: list
    elements: dict
    default: []
  state:
    description: C(present) applies I(settings); C(reverted) restores the original; C(validate) checks I(tunables).
    type: str
    choices: [present, reverted, validate]
    default: present
  host:
    description: Socket directory or host name; empty to read it from I(datadir)/postmaster.pid.
    type: str
    default: ""
  port:
    description: Port; 0 to read it from I(datadir)/postmaster.pid.
    type: int
    default: 0
  datadir:
    description: The data directory, used to find the port and socket directory when they are not given.
    type: path
  user:
    description: Database superuser to connect as.
    type: str
    default: postgres
  database:
    description: Database to connect to.
    type: str
    default: postgres
  bindir:
    description: Directory holding psql and pg_ctl.
    type: path
    default: /usr/lib/postgresql/15/bin
  os_user:
    description: OS user that runs pg_ctl when running as root; empty for the data directory's owner.
    type: str
    default: ""
  restart_command:
    description: Command (argv) that restarts the server; empty for C(pg_ctl restart -m fast).
    type: list
    elements: str
    default: []
  log_file:
    description: Server log file for C(pg_ctl restart -l); empty for C(<data_directory>/server.log).
    type: path
  include_file:
    description: Name of the include file, in the directory of C(postgresql.conf).
    type: str
    default: knobflow.conf
  allow_unsafe:
    description: Allow settings that give up durability (fsync off, synchronous_commit off...).
    type: bool
    default: false
  timeout:
    description: Seconds to wait for a restart, and for a reload to take effect.
    type: int
    default: 120
author: knobflow maintainers
"""

RETURN = r"""
settings:
  description: The PostgreSQL settings written, name to value as in the file.
  type: dict
  returned: state=present
action:
  description: none, files, reload or restart (what was done, or would be in check mode).
  type: str
  returned: always
show:
  description: SHOW value of each setting after the change.
  type: dict
  returned: when the server was reached
"""

import json
import os
import pwd
import re
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

HEADER = (
    "# Managed by knobflow's postgresql role: the settings of the current configuration.\n"
    "# Its revert deletes this file and the include line it added to postgresql.conf. Do not edit.\n"
)
MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
TIME_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60000, "h": 3600000, "d": 86400000}
# Tunable-name suffix -> unit (the name without the suffix is the PostgreSQL setting).
SUFFIXES = {
    "b": "B",
    "kb": "kB",
    "mb": "MB",
    "gb": "GB",
    "tb": "TB",
    "us": "us",
    "ms": "ms",
    "s": "s",
    "min": "min",
    "h": "h",
    "d": "d",
}
VALUE_WITH_UNIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(B|kB|MB|GB|TB|us|ms|s|min|h|d)?\s*$")
TRUE = {"on", "true", "yes", "1"}
FALSE = {"off", "false", "no", "0"}
FORBIDDEN = {
    "port": "it is how clients reach the server (the cluster's address, not a tunable)",
    "listen_addresses": "it is how clients reach the server (the cluster's address, not a tunable)",
    "unix_socket_directories": "it is how clients reach the server (the cluster's address, not a tunable)",
    "unix_socket_group": "it is how clients reach the server (the cluster's address, not a tunable)",
    "unix_socket_permissions": "it is how clients reach the server (the cluster's address, not a tunable)",
    "data_directory": "it is where the cluster's files are",
    "config_file": "it is where the cluster's files are",
    "hba_file": "it is where the cluster's files are",
    "ident_file": "it is where the cluster's files are",
    "external_pid_file": "it is where the cluster's files are",
    "archive_command": "the server would run it as a shell command",
    "restore_command": "the server would run it as a shell command",
    "archive_cleanup_command": "the server would run it as a shell command",
    "recovery_end_command": "the server would run it as a shell command",
    "ssl_passphrase_command": "the server would run it as a shell command",
    "archive_library": "the server would load it as a library",
    "shared_preload_libraries": "the server would load it as a library",
    "local_preload_libraries": "the server would load it as a library",
    "session_preload_libraries": "the server would load it as a library",
    "dynamic_library_path": "the server would load libraries from it",
}
# setting -> (unsafe value, why); refused unless allow_unsafe.
UNSAFE = {
    "fsync": ("off", "a crash can corrupt the database"),
    "full_page_writes": ("off", "a crash can leave torn pages that recovery cannot repair"),
    "synchronous_commit": ("off", "a crash loses the last committed transactions"),
    "data_sync_retry": ("on", "a failed fsync can be retried over lost data"),
    "zero_damaged_pages": ("on", "damaged pages are silently emptied"),
    "ignore_checksum_failure": ("on", "corrupt pages are read as good"),
    "ignore_invalid_pages": ("on", "recovery goes on over invalid pages"),
    "ignore_system_indexes": ("on", "it is a recovery aid, not a tuning setting"),
    "allow_system_table_mods": ("on", "it allows changing the system catalogs"),
}
# Enum values that the server shows under another name.
ENUM_ALIASES = {("wal_compression", "on"): "pglz"}
UNSAFE_PATH = re.compile(r"[\"'$`\\\x00-\x1f\x7f]")
INCLUDE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.conf$")
CANNOT_APPLY = "setting could not be applied"


class SettingError(Exception):
    pass


def base_unit(unit):
    """('memory', bytes) or ('time', ms) of a pg_settings unit such as 8kB, kB, MB, ms, s, min."""
    if not unit:
        return None, None
    m = re.match(r"^(\d*)(B|kB|MB|GB|TB|us|ms|s|min|h|d)$", unit)
    if not m:
        return None, None
    factor = int(m.group(1) or 1)
    if m.group(2) in MEMORY_UNITS:
        return "memory", factor * MEMORY_UNITS[m.group(2)]
    return "time", factor * TIME_UNITS[m.group(2)]


def unit_kind(unit):
    return "memory" if unit in MEMORY_UNITS else "time"


def unit_size(unit):
    return MEMORY_UNITS[unit] if unit in MEMORY_UNITS else TIME_UNITS[unit]


def fmt_number(v):
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def quote(text):
    """A single-quoted value in postgresql.conf syntax."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def map_name(name, catalog):
    """(PostgreSQL setting, unit from the name's suffix or None), or raise SettingError."""
    lower = name.lower()
    if lower in catalog:
        return lower, None
    base, sep, suffix = lower.rpartition("_")
    if sep and suffix in SUFFIXES and base in catalog:
        unit = SUFFIXES[suffix]
        kind, _ = base_unit(catalog[base]["unit"])
        if kind is None:
            raise SettingError(f"{base} has no unit, so the suffix _{suffix} does not apply; use the name {base}")
        if kind != unit_kind(unit):
            raise SettingError(
                f"{base} is a {kind} setting (unit {catalog[base]['unit']}), but the suffix _{suffix} is a "
                f"{unit_kind(unit)} unit"
            )
        return base, unit
    raise SettingError("unknown setting (not in this server's pg_settings, with or without a unit suffix)")


def convert(pg_name, row, value, name_unit, allow_unsafe):
    """Validate one value; return (text for the file, expected pg_settings.setting)."""
    if pg_name in FORBIDDEN:
        raise SettingError(f"knobflow does not set {pg_name}: {FORBIDDEN[pg_name]}")
    if row["context"] == "internal":
        raise SettingError(f"{pg_name} is read-only (context internal)")
    vartype = row["vartype"]
    if vartype == "bool":
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, (int, str)) and str(value).strip().lower() in TRUE | FALSE:
            text = "on" if str(value).strip().lower() in TRUE else "off"
        else:
            raise SettingError(f"must be a boolean (on/off), got {value!r}")
        expected = text
    elif vartype in ("integer", "real"):
        text, expected = convert_number(pg_name, row, value, name_unit)
    elif vartype == "enum":
        if name_unit:
            raise SettingError("an enum setting takes no unit suffix")
        if isinstance(value, bool):
            value = "on" if value else "off"
        if not isinstance(value, (str, int)) or isinstance(value, float):
            raise SettingError(f"must be one of {', '.join(row['enumvals'])}, got {value!r}")
        allowed = {v.lower(): v for v in row["enumvals"] or []}
        if str(value).lower() not in allowed:
            raise SettingError(f"must be one of {', '.join(row['enumvals'])}, got {value!r}")
        text = allowed[str(value).lower()]
        expected = ENUM_ALIASES.get((pg_name, text), text)
    else:  # string
        if name_unit:
            raise SettingError("a string setting takes no unit suffix")
        if not isinstance(value, str):
            raise SettingError(f"must be a string, got {value!r}")
        if re.search(r"[\x00-\x1f\x7f]", value):
            raise SettingError("a value with a newline or another control character cannot be written safely")
        text = value
        expected = value
    unsafe = UNSAFE.get(pg_name)
    if unsafe and expected == unsafe[0] and not allow_unsafe:
        raise SettingError(
            f"{pg_name} = {unsafe[0]} is not durability-safe ({unsafe[1]}); set postgresql_allow_unsafe: true "
            "to allow it"
        )
    return text, expected


def convert_number(pg_name, row, value, name_unit):
    integer = row["vartype"] == "integer"
    kind, base = base_unit(row["unit"])
    given_unit = name_unit
    if isinstance(value, bool):
        raise SettingError(f"must be a number, got {value!r}")
    if isinstance(value, str):
        m = VALUE_WITH_UNIT.match(value)
        if not m:
            raise SettingError(f"must be a number{' with an optional unit' if kind else ''}, got {value!r}")
        if m.group(2):
            if name_unit:
                raise SettingError(f"the name already gives the unit {name_unit}; give a plain number, got {value!r}")
            if kind is None:
                raise SettingError(f"{pg_name} takes no unit, got {value!r}")
            if unit_kind(m.group(2)) != kind:
                raise SettingError(f"{pg_name} is a {kind} setting, got the {unit_kind(m.group(2))} unit {m.group(2)}")
            given_unit = m.group(2)
        value = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    if not isinstance(value, (int, float)) or (isinstance(value, float) and value != value):
        raise SettingError(f"must be a number, got {value!r}")
    # No unit (or a negative special value such as -1): the setting's own unit, as PostgreSQL reads it.
    in_base = value * unit_size(given_unit) / base if given_unit and value >= 0 else value
    if integer:
        if isinstance(in_base, float) and not in_base.is_integer():
            if not (given_unit and value >= 0):
                raise SettingError(f"must be an integer, got {value!r}")
            # As PostgreSQL does: a value with a unit is rounded to the nearest whole number of the
            # setting's unit (wal_buffers = '300kB' is 38 blocks of 8kB).
            in_base = round(in_base)
        in_base = int(in_base)
    low, high = float(row["min"]), float(row["max"])
    if not low <= in_base <= high:
        unit = f" {row['unit']}" if row["unit"] else ""
        given = f"{fmt_number(value)}{given_unit or ''}"
        raise SettingError(f"{given} is out of range: {pg_name} takes {row['min']} to {row['max']}{unit}")
    text = f"{fmt_number(value)}{given_unit}" if given_unit and value >= 0 else fmt_number(in_base)
    return text, fmt_number(in_base)


def same_setting(row, expected):
    current = row["setting"]
    if row["vartype"] in ("integer", "real"):
        try:
            cur, exp = float(current), float(expected)
        except ValueError:
            return False
        if abs(cur - exp) <= 1e-9 * max(1.0, abs(exp)):
            return True
        # pg_settings shows a real with C's %g, six significant digits, while the server runs with
        # the value as written (random_page_cost = 5.18312729 shows as 5.18313).
        return row["vartype"] == "real" and current == f"{exp:g}"
    if row["vartype"] == "enum":
        return current.lower() == expected.lower()
    if row["vartype"] == "string":
        # The server may normalise a string setting's case and spacing (DateStyle 'iso,mdy' -> 'ISO, MDY').
        return current == expected or re.sub(r"\s+", "", current).lower() == re.sub(r"\s+", "", expected).lower()
    return current == expected


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def replace_file(path, data, like):
    """Write data to path atomically, with the owner and mode of the stat result like."""
    tmp = path + ".knobflow-tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, like.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(tmp, like.st_uid, like.st_gid)
    os.replace(tmp, path)


def parse_ours(data):
    """{setting: value text} of an include file written by this module, None for another file."""
    if data is None:
        return {}
    text = data.decode("utf-8", "replace")
    if not text.startswith(HEADER):
        return None
    out = {}
    for line in text[len(HEADER) :].splitlines():
        m = re.match(r"^([a-z_0-9.]+) = (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def tail(text, n=5):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-800:]


class Server:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.bindir = p["bindir"]
        self.host, self.port = p["host"], p["port"]
        self.include_name = p["include_file"]
        if not INCLUDE_NAME.match(self.include_name):
            module.fail_json(msg=f"include_file: {self.include_name!r} must be a plain file name ending in .conf")
        self.block = (
            "# Added by knobflow's postgresql role (its revert removes these lines).\n"
            f"include_if_exists = '{self.include_name}'\n"
        )
        if not self.host or not self.port:
            self.discover()

    def fail(self, msg, **kw):
        self.module.fail_json(msg=msg, **kw)

    def discover(self):
        datadir = self.module.params["datadir"]
        if not datadir:
            self.fail("give the server's host (socket directory) and port, or its data directory (datadir)")
        pid_file = os.path.join(datadir, "postmaster.pid")
        try:
            with open(pid_file) as f:
                lines = f.read().splitlines()
        except OSError:
            self.fail(
                f"the server is not running: no {pid_file} (start it first, e.g. with the postgresql_cluster role)"
            )
        if len(lines) < 5:
            self.fail(f"{pid_file} is incomplete; the server is starting or stopping")
        self.port = self.port or int(lines[3])
        self.host = self.host or (lines[4].strip() or "127.0.0.1")

    def psql(self, sql, check=True):
        p = self.module.params
        argv = [
            os.path.join(self.bindir, "psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            p["user"],
            "-d",
            p["database"],
            "-c",
            sql,
        ]
        env = {"PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "knobflow", "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        for key in ("PGPASSFILE", "PGPASSWORD", "PGSSLMODE", "HOME"):
            if key in os.environ:
                env[key] = os.environ[key]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            if check:
                self.fail(f"cannot run psql: {exc}")
            return None
        if proc.returncode != 0:
            if check:
                self.fail(
                    f"cannot query the server at {self.host} port {self.port} as {p['user']}: "
                    + (tail(proc.stderr) or f"psql exited with status {proc.returncode}")
                )
            return None
        return proc.stdout.strip()

    def info(self, check=True):
        out = self.psql(
            "SELECT json_build_object("
            "'config_file', current_setting('config_file'), "
            "'data_directory', current_setting('data_directory'), "
            "'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
            "'settings', (SELECT json_object_agg(name, json_build_object("
            "'setting', setting, 'unit', unit, 'vartype', vartype, 'context', context, "
            "'min', min_val, 'max', max_val, 'enumvals', enumvals, 'sourcefile', sourcefile, "
            "'sourceline', sourceline, 'pending_restart', pending_restart, 'show', current_setting(name))) "
            "FROM pg_settings))",
            check=check,
        )
        if out is None:
            return None
        info = json.loads(out)
        if not info["superuser"]:
            self.fail(f"{self.module.params['user']} is not a superuser; the postgresql role needs one")
        return info

    def file_errors(self, include_path):
        out = self.psql(
            "SELECT coalesce(json_agg(json_build_object('file', sourcefile, 'line', sourceline, 'name', name, "
            f"'error', error)), '[]') FROM pg_file_settings WHERE error IS NOT NULL AND error <> '{CANNOT_APPLY}'"
        )
        return [e for e in json.loads(out) if e["file"] in (include_path, None) or e["name"] is None]

    def reload(self):
        self.psql("SELECT pg_reload_conf()")

    def restart(self, info):
        p = self.module.params
        data_directory = info["data_directory"]
        log_file = p["log_file"] or os.path.join(data_directory, "server.log")
        if p["restart_command"]:
            argv = list(p["restart_command"])
        else:
            for label, path in (("data directory", data_directory), ("log_file", log_file)):
                if UNSAFE_PATH.search(path):
                    self.fail(f"the {label} {path!r} holds characters that pg_ctl would hand to a shell")
            argv = [
                os.path.join(self.bindir, "pg_ctl"),
                "restart",
                "-D",
                data_directory,
                "-m",
                "fast",
                "-w",
                "-t",
                str(p["timeout"]),
                "-l",
                log_file,
            ]
        kwargs = {}
        if os.geteuid() == 0 and not p["restart_command"]:
            if p["os_user"]:
                try:
                    entry = pwd.getpwnam(p["os_user"])
                except KeyError:
                    self.fail(f"os_user: no OS user {p['os_user']!r}")
            else:
                entry = pwd.getpwuid(os.stat(data_directory).st_uid)
            if entry.pw_uid == 0:
                self.fail(f"{data_directory} belongs to root; set os_user to the user that runs the server")
            kwargs = dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        try:
            proc = subprocess.run(
                argv,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=p["timeout"] + 60,
                start_new_session=True,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            return False, f"the restart command timed out after {p['timeout'] + 60} s"
        except OSError as exc:
            return False, f"cannot run {argv[0]}: {exc.strerror or exc}"
        if proc.returncode != 0:
            log = ""
            try:
                with open(log_file, errors="replace") as f:
                    log = tail(f.read()[-20000:], 6)
            except OSError:
                pass
            return False, f"{tail(proc.stderr) or tail(proc.stdout) or 'status ' + str(proc.returncode)}; log: {log}"
        return True, ""

    def start_after_failure(self, info):
        """Start the server again after a failed restart (with the configuration put back)."""
        p = self.module.params
        if p["restart_command"]:
            return self.restart(info)
        data_directory = info["data_directory"]
        log_file = p["log_file"] or os.path.join(data_directory, "server.log")
        kwargs = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(p["os_user"]) if p["os_user"] else pwd.getpwuid(os.stat(data_directory).st_uid)
            kwargs = dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        proc = subprocess.run(
            [os.path.join(self.bindir, "pg_ctl"), "start", "-D", data_directory, "-w", "-l", log_file],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=p["timeout"] + 60,
            start_new_session=True,
            check=False,
            **kwargs,
        )
        return proc.returncode == 0, tail(proc.stderr)


def build(settings, catalog, allow_unsafe):
    """({setting: (file text, expected setting, tunable name)}, [errors naming the tunable])."""
    entries, errors = {}, []
    for name in sorted(settings, key=str):
        value = settings[name]
        try:
            if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise SettingError("a setting name must match ^[A-Za-z_][A-Za-z0-9_]*$")
            pg_name, unit = map_name(name, catalog)
            if pg_name in entries:
                raise SettingError(f"sets {pg_name}, which {entries[pg_name][2]!r} sets too")
            text, expected = convert(pg_name, catalog[pg_name], value, unit, allow_unsafe)
        except SettingError as exc:
            errors.append(f"{name}: {exc}")
            continue
        entries[pg_name] = (text, expected, name)
    return entries, errors


def render(entries):
    lines = [f"{pg} = {quote(text)}" for pg, (text, _e, _n) in sorted(entries.items())]
    return (HEADER + "".join(line + "\n" for line in lines)).encode()


def with_block(conf, block):
    sep = b"" if conf.endswith(b"\n") or not conf else b"\n"
    return conf + sep + b"\n" + block.encode()


def without_block(conf, block):
    lines = block.encode().splitlines(keepends=True)
    out = [line for line in conf.splitlines(keepends=True) if line not in lines]
    return b"".join(out)


def has_include(conf, block):
    include = block.splitlines()[-1].encode()
    return include in (conf or b"").splitlines()


def pending(info, names):
    """Settings among names that do not match yet: {name: reason}."""
    return {n: "pending restart" for n in names if info["settings"][n]["pending_restart"]}


def mismatches(info, entries):
    """Settings of entries the server does not run with yet: {setting: why}."""
    out = {}
    for pg, (_text, expected, _n) in entries.items():
        row = info["settings"][pg]
        if row["pending_restart"]:
            out[pg] = "changed in the file, waiting for a restart"
        elif not same_setting(row, expected):
            source = row["sourcefile"] or "the server's default"
            out[pg] = f"the server runs with {row['show']} (from {source}), not {expected}"
    return out


def leftovers(info, names, include_path):
    return {
        n: f"still {info['settings'][n]['show']} from {include_path}"
        for n in names
        if n in info["settings"] and info["settings"][n]["sourcefile"] == include_path
    }


def wait_for(server, check, timeout):
    deadline = time.monotonic() + timeout
    while True:
        info = server.info()
        bad = check(info)
        if not bad or time.monotonic() > deadline:
            return info, bad
        time.sleep(0.2)


def state_paths(conf_dir, include_name, conf_file):
    include_path = os.path.join(conf_dir, include_name)
    return dict(
        include=include_path,
        include_orig=include_path + ".knobflow-orig",
        include_absent=include_path + ".knobflow-absent",
        conf_orig=conf_file + ".knobflow-orig",
        before=include_path + ".knobflow-before.json",
    )


def apply(module, server):
    p = module.params
    info = server.info()
    conf_file = info["config_file"]
    conf_dir = os.path.dirname(conf_file)
    paths = state_paths(conf_dir, server.include_name, conf_file)
    include_path = paths["include"]
    entries, errors = build(p["settings"], info["settings"], p["allow_unsafe"])
    if errors:
        module.fail_json(msg="invalid PostgreSQL settings: " + "; ".join(errors), changed=False)
    cur_include = read_bytes(include_path)
    ours = parse_ours(cur_include)
    saved = os.path.exists(paths["include_orig"]) or os.path.exists(paths["include_absent"])
    if ours is None and not saved:
        ours = {}  # someone else's file of that name: saved on the first change, then replaced
    cur_conf = read_bytes(conf_file)
    if cur_conf is None:
        module.fail_json(msg=f"cannot read {conf_file}")
    new_include = render(entries)
    new_conf = cur_conf if has_include(cur_conf, server.block) else with_block(cur_conf, server.block)
    files_change = new_include != cur_include or new_conf != cur_conf
    removed = set(ours or {}) - set(entries)
    # What the server must pick up: values it does not run with yet, and values it still takes from
    # the include file that the new file drops. A value already in force needs no reload or restart
    # (the baseline writes PostgreSQL's defaults).
    to_apply = set(mismatches(info, entries)) | set(leftovers(info, removed, include_path))
    restart = any(info["settings"][pg]["context"] == "postmaster" for pg in to_apply if pg in info["settings"])
    action = "restart" if restart else "reload" if to_apply else "files" if files_change else "none"
    written = {pg: text for pg, (text, _e, _n) in entries.items()}
    result = dict(
        changed=action != "none",
        action=action,
        settings=written,
        include_file=include_path,
        config_file=conf_file,
        needs_restart=sorted(pg for pg in to_apply if info["settings"].get(pg, {}).get("context") == "postmaster"),
    )
    if files_change:
        result["diff"] = [
            dict(
                before_header=include_path,
                after_header=include_path,
                before=(cur_include or b"").decode("utf-8", "replace"),
                after=new_include.decode(),
            ),
            dict(
                before_header=conf_file,
                after_header=conf_file,
                before=cur_conf.decode("utf-8", "replace")[-400:],
                after=new_conf.decode("utf-8", "replace")[-400:],
            ),
        ]
    if action == "none" or module.check_mode:
        result["show"] = {pg: info["settings"][pg]["show"] for pg in entries}
        module.exit_json(**result)

    conf_stat = os.stat(conf_file)
    # State this run creates or changes, undone when the change fails.
    created = []
    before_prev = read_bytes(paths["before"])

    def undo_state():
        for path in created:
            if os.path.exists(path):
                os.remove(path)
        if before_prev is None:
            if os.path.exists(paths["before"]):
                os.remove(paths["before"])
        else:
            replace_file(paths["before"], before_prev, conf_stat)

    if files_change:
        # First change: save what was there.
        if not os.path.exists(paths["conf_orig"]):
            replace_file(paths["conf_orig"], cur_conf, conf_stat)
            created.append(paths["conf_orig"])
        if not saved:
            if cur_include is None:
                replace_file(paths["include_absent"], b"", conf_stat)
                created.append(paths["include_absent"])
            else:
                replace_file(paths["include_orig"], cur_include, os.stat(include_path))
                created.append(paths["include_orig"])
        before = {}
        try:
            with open(paths["before"]) as f:
                before = json.load(f)
        except (OSError, ValueError):
            pass
        for pg in entries:
            row = info["settings"][pg]
            if pg not in before and row["sourcefile"] != include_path:
                before[pg] = {"setting": row["setting"], "show": row["show"]}
        replace_file(paths["before"], json.dumps(before, indent=1, sort_keys=True).encode() + b"\n", conf_stat)
        replace_file(include_path, new_include, conf_stat)
        if new_conf != cur_conf:
            replace_file(conf_file, new_conf, conf_stat)
        if read_bytes(include_path) != new_include or read_bytes(conf_file) != new_conf:
            module.fail_json(msg=f"verification failed: {include_path} or {conf_file} does not hold what was written")
        problems = server.file_errors(include_path)
        if problems:
            restore(cur_conf, cur_include, conf_file, include_path, conf_stat)
            undo_state()
            module.fail_json(
                msg="the server rejects the new configuration (files put back): "
                + "; ".join(f"{e['name'] or 'line ' + str(e['line'])}: {e['error']}" for e in problems)
            )

    def put_back(why, running):
        restore(cur_conf, cur_include, conf_file, include_path, conf_stat)
        undo_state()
        if restart:
            # A server that came up with settings it was not asked for is restarted with the files
            # put back; one that did not come up is started.
            ok, _ = server.restart(info) if running else server.start_after_failure(info)
            why += "; the previous configuration is back" + ("" if ok else ", but the server did not start again")
        else:
            server.reload()
        module.fail_json(msg=why, changed=True, action=action)

    if restart:
        ok, why = server.restart(info)
        if not ok:
            put_back(f"the server did not restart with the new settings ({', '.join(sorted(to_apply))}): {why}", False)
    elif to_apply:
        server.reload()
    info, bad = wait_for(
        server,
        lambda i: {**mismatches(i, entries), **leftovers(i, removed, include_path)},
        p["timeout"] if not restart else 10,
    )
    if bad:
        put_back(
            "the server does not run with the settings after the "
            + action
            + ": "
            + "; ".join(f"{entries[n][2] if n in entries else n}: {why}" for n, why in sorted(bad.items())),
            True,
        )
    result["show"] = {pg: info["settings"][pg]["show"] for pg in entries}
    module.exit_json(**result)


def restore(conf, include, conf_file, include_path, conf_stat):
    replace_file(conf_file, conf, conf_stat)
    if include is None:
        if os.path.exists(include_path):
            os.remove(include_path)
    else:
        replace_file(include_path, include, conf_stat)


def revert(module, server):
    p = module.params
    info = server.info(check=False)
    if info is not None:
        conf_file = info["config_file"]
    elif p["datadir"]:
        conf_file = os.path.join(p["datadir"], "postgresql.conf")
    else:
        module.fail_json(msg="cannot reach the server to find its postgresql.conf, and no datadir is given")
    paths = state_paths(os.path.dirname(conf_file), server.include_name, conf_file)
    include_path = paths["include"]
    cur_conf = read_bytes(conf_file)
    cur_include = read_bytes(include_path)
    ours = parse_ours(cur_include) or {}
    saved_conf = read_bytes(paths["conf_orig"])
    saved_include = read_bytes(paths["include_orig"])
    include_absent = os.path.exists(paths["include_absent"])
    result = dict(changed=False, action="none", config_file=conf_file, include_file=include_path)
    warnings = []
    if saved_conf is None and saved_include is None and not include_absent:
        if cur_conf is not None and has_include(cur_conf, server.block):
            warnings.append(f"{conf_file} includes {server.include_name} but knobflow saved no original; left as is")
        module.exit_json(warnings=warnings, **result)
    new_conf = cur_conf
    if saved_conf is not None and cur_conf is not None:
        if without_block(cur_conf, server.block).rstrip(b"\n") == saved_conf.rstrip(b"\n"):
            new_conf = saved_conf
        else:
            new_conf = without_block(cur_conf, server.block)
            warnings.append(
                f"{conf_file} was changed since knobflow's first apply; removed only knobflow's include lines"
            )
    new_include = None if include_absent else saved_include
    names = set(ours)
    before = {}
    try:
        with open(paths["before"]) as f:
            before = json.load(f)
    except (OSError, ValueError):
        pass
    restart = info is not None and any(
        info["settings"].get(n, {}).get("context") == "postmaster"
        and (info["settings"][n]["sourcefile"] == include_path or info["settings"][n]["pending_restart"])
        for n in names
    )
    to_apply = info is not None and any(info["settings"].get(n, {}).get("sourcefile") == include_path for n in names)
    files_change = new_conf != cur_conf or new_include != cur_include
    action = "restart" if restart else "reload" if to_apply else "files" if files_change else "none"
    result.update(changed=True, action=action)  # the saved state is deleted at least
    result["diff"] = [
        dict(
            before_header=include_path,
            after_header=include_path,
            before=(cur_include or b"").decode("utf-8", "replace"),
            after=(new_include or b"").decode("utf-8", "replace"),
        ),
        dict(
            before_header=conf_file,
            after_header=conf_file,
            before=(cur_conf or b"").decode("utf-8", "replace")[-400:],
            after=(new_conf or b"").decode("utf-8", "replace")[-400:],
        ),
    ]
    if info is None:
        warnings.append(f"the server is not running at {server.host} port {server.port}: restored the files only")
    if module.check_mode:
        module.exit_json(warnings=warnings, **result)
    conf_stat = os.stat(conf_file)
    if new_conf != cur_conf:
        replace_file(conf_file, new_conf, conf_stat)
    if new_include is None:
        if cur_include is not None:
            os.remove(include_path)
    elif new_include != cur_include:
        replace_file(include_path, new_include, os.stat(paths["include_orig"]))
    if read_bytes(conf_file) != new_conf or read_bytes(include_path) != new_include:
        module.fail_json(msg=f"verification failed: {conf_file} or {include_path} is not as restored")
    for key in ("conf_orig", "include_orig", "include_absent", "before"):
        if os.path.exists(paths[key]):
            os.remove(paths[key])
    if info is not None:
        if restart:
            ok, why = server.restart(info)
            if not ok:
                module.fail_json(msg=f"the files are restored, but the server did not restart: {why}", **result)
        elif to_apply:
            server.reload()
        if to_apply or restart:
            info, bad = wait_for(
                server,
                lambda i: {**pending(i, names & set(i["settings"])), **leftovers(i, names, include_path)},
                p["timeout"] if not restart else 10,
            )
            if bad:
                module.fail_json(
                    msg="the server still runs with knobflow's settings after the revert: "
                    + "; ".join(f"{n}: {why}" for n, why in sorted(bad.items())),
                    **result,
                )
        not_back = {
            n: f"now {info['settings'][n]['show']}, before {b['show']}"
            for n, b in before.items()
            if n in info["settings"] and not same_setting(info["settings"][n], b["setting"])
        }
        if not_back:
            warnings.append(
                "settings not back to their values before knobflow (changed elsewhere since?): "
                + "; ".join(f"{n}: {w}" for n, w in sorted(not_back.items()))
            )
        result["show"] = {n: info["settings"][n]["show"] for n in names if n in info["settings"]}
    module.exit_json(warnings=warnings, **result)


def validate(module, server):
    p = module.params
    info = server.info()
    catalog = info["settings"]
    errors = []
    for t in p["tunables"]:
        name = t.get("name")
        try:
            if not isinstance(name, str):
                raise SettingError("has no name")
            pg_name, unit = map_name(name, catalog)
            row = catalog[pg_name]
            kind = t.get("type")
            if kind in ("int", "float") and row["vartype"] not in ("integer", "real"):
                raise SettingError(f"is {kind}, but {pg_name} is a {row['vartype']} setting")
            if kind == "float" and row["vartype"] == "integer" and not unit:
                raise SettingError(f"is float, but {pg_name} takes integers")
            if kind == "bool" and row["vartype"] not in ("bool", "enum"):
                raise SettingError(f"is bool, but {pg_name} is a {row['vartype']} setting")
            values = []
            for key in ("low", "high", "default"):
                if t.get(key) is not None:
                    values.append((key, t[key]))
            if kind == "bool":
                values += [("choice", True), ("choice", False)]
            for i, c in enumerate(t.get("choices") or []):
                values.append((f"choices[{i}]", c))
            for key, value in values:
                try:
                    convert(pg_name, row, value, unit, p["allow_unsafe"])
                except SettingError as exc:
                    raise SettingError(f"{key} {value!r}: {exc}") from None
        except SettingError as exc:
            errors.append(f"tunable {name!r}: {exc}")
    if errors:
        module.fail_json(msg="tunables the server does not accept: " + "; ".join(errors))
    module.exit_json(changed=False, checked=len(p["tunables"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            settings=dict(type="dict", default={}),
            tunables=dict(type="list", elements="dict", default=[]),
            state=dict(type="str", choices=["present", "reverted", "validate"], default="present"),
            host=dict(type="str", default=""),
            port=dict(type="int", default=0),
            datadir=dict(type="path"),
            user=dict(type="str", default="postgres"),
            database=dict(type="str", default="postgres"),
            bindir=dict(type="path", default="/usr/lib/postgresql/15/bin"),
            os_user=dict(type="str", default=""),
            restart_command=dict(type="list", elements="str", default=[]),
            log_file=dict(type="path"),
            include_file=dict(type="str", default="knobflow.conf"),
            allow_unsafe=dict(type="bool", default=False),
            timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    server = Server(module)
    state = module.params["state"]
    if state == "present":
        apply(module, server)
    elif state == "reverted":
        revert(module, server)
    else:
        validate(module, server)


if __name__ == "__main__":
    main()
