#!/usr/bin/python
"""Write, verify and revert the SQLite workload's configuration file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sqlite_config
short_description: Apply or revert the knobflow SQLite workload's settings
description:
  - Writes the JSON configuration file that C(knobflow.workloads.sqlite_workload) reads
    (SQLite pragmas and the writer's batch size), after validating every setting.
  - On the first change, saves what was there (the file, or the fact that there was none), so
    that C(state=reverted) puts back exactly the original.
  - Verifies the result by reading the file back. Supports check mode and diff mode.
options:
  path:
    description: Path of the configuration file.
    type: path
    required: true
  settings:
    description: Settings by name; see the role README for the names and values.
    type: dict
    default: {}
  state:
    description: C(present) applies I(settings); C(reverted) restores the original.
    type: str
    choices: [present, reverted]
    default: present
author: knobflow maintainers
"""

RETURN = r"""
config:
  description: The configuration now in the file (null after reverting to no file).
  type: dict
  returned: always
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.knobflow_files import change_file, file_diff, read, revert

PRAGMAS = {
    "journal_mode": ("choice", ["delete", "truncate", "persist", "memory", "wal", "off"]),
    "synchronous": ("choice", ["off", "normal", "full", "extra"]),
    "cache_size_kib": ("int", (16, 16 * 1024 * 1024)),
    "mmap_size_mib": ("int", (0, 1024 * 1024)),
    "page_size": ("choice", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]),
    "temp_store": ("choice", ["default", "file", "memory"]),
    "locking_mode": ("choice", ["normal", "exclusive"]),
    "wal_autocheckpoint": ("int", (0, 1000000)),
}
WORKLOAD = {"batch_size": ("int", (1, 100000))}


def _check(value, rule):
    """Return (normalised value, None) or (None, error)."""
    kind, allowed = rule
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be an integer, got {value!r}"
        if not allowed[0] <= value <= allowed[1]:
            return None, f"must be between {allowed[0]} and {allowed[1]}, got {value}"
        return value, None
    if isinstance(value, str) and value.isdigit() and all(isinstance(a, int) for a in allowed):
        value = int(value)
    if isinstance(value, str):
        value = value.lower()
    if value not in allowed:
        return None, "must be one of {}, got {!r}".format(", ".join(map(str, allowed)), value)
    return value, None


def build(settings):
    config = {"pragmas": {}, "batch_size": 1}
    errors = []
    for name, value in sorted(settings.items()):
        rule = PRAGMAS.get(name) or WORKLOAD.get(name)
        if rule is None:
            errors.append(
                "unknown setting {!r} (known: {})".format(name, ", ".join(sorted(list(PRAGMAS) + list(WORKLOAD))))
            )
            continue
        checked, error = _check(value, rule)
        if error:
            errors.append(f"{name}: {error}")
            continue
        if name in WORKLOAD:
            config[name] = checked
        else:
            config["pragmas"][name] = checked
    return config, errors


def as_config(text):
    """The configuration in ``text``, or None when there is none or it is not JSON (a hand-edited file)."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            settings=dict(type="dict", default={}),
            state=dict(type="str", choices=["present", "reverted"], default="present"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    result = dict(changed=False, path=path)

    if module.params["state"] == "reverted":
        changed, before, after = revert(module, path)
        result.update(changed=changed, config=as_config(after), diff=file_diff(path, before, after))
        module.exit_json(**result)

    config, errors = build(module.params["settings"])
    if errors:
        module.fail_json(msg="invalid SQLite settings: " + "; ".join(errors), **result)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    result["config"] = config
    current = read(path)
    if text == current:
        module.exit_json(**result)
    change_file(module, path, text, current, result)  # exits here in check mode
    module.exit_json(**result)


if __name__ == "__main__":
    main()
