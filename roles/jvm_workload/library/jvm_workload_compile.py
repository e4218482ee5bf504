#!/usr/bin/python
"""Compile Java sources with javac into a classes folder, again only when the sources or javac changed."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: jvm_workload_compile
short_description: Compile a Java workload with javac, idempotently
description:
  - Compiles I(sources) with C(javac -d) into I(dest), through a temporary folder that replaces
    I(dest) only when the compilation succeeded.
  - Records the SHA-256 of every source, the javac version and the options in
    C(<dest>/.knobflow-build.json); a later run with the same sources and javac compiles nothing
    and reports no change. Supports check mode.
options:
  sources:
    description: The .java files, on the managed host.
    type: list
    elements: path
    required: true
  dest:
    description: The classes folder.
    type: path
    required: true
  javac:
    description: The javac to use, a name on PATH or a path.
    type: str
    default: javac
  release:
    description: C(javac --release N) (the oldest JVM the classes must run on); 0 for javac's own.
    type: int
    default: 0
author: knobflow maintainers
"""

RETURN = r"""
classes:
  description: The class files in I(dest), relative to it.
  type: list
  returned: always
javac_version:
  description: What C(javac -version) printed.
  type: str
  returned: when javac was found
"""

import hashlib
import json
import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

STAMP = ".knobflow-build.json"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def class_files(folder):
    out = []
    for root, _, files in os.walk(folder):
        out.extend(os.path.relpath(os.path.join(root, f), folder) for f in files if f.endswith(".class"))
    return sorted(out)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sources=dict(type="list", elements="path", required=True),
            dest=dict(type="path", required=True),
            javac=dict(type="str", default="javac"),
            release=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    dest = p["dest"]
    result = dict(changed=False, dest=dest, classes=class_files(dest) if os.path.isdir(dest) else [])
    javac = p["javac"] if "/" in p["javac"] else module.get_bin_path(p["javac"], required=False)
    if not javac or not os.access(javac, os.X_OK):
        module.fail_json(
            msg=f"javac not found ({p['javac']}): install a JDK (Debian: openjdk-17-jdk-headless)", **result
        )
    rc, out, err = module.run_command([javac, "-version"])
    result["javac_version"] = (out + err).strip()
    if rc != 0:
        module.fail_json(msg=f"{javac} -version exited {rc}: {result['javac_version']}", **result)

    missing = [s for s in p["sources"] if not os.path.isfile(s)]
    if missing and not module.check_mode:
        module.fail_json(msg="no such source file: " + ", ".join(missing), **result)
    wanted = {
        "sources": {s: sha256(s) for s in p["sources"] if os.path.isfile(s)},
        "javac": os.path.realpath(javac),
        "javac_version": result["javac_version"],
        "release": p["release"],
    }
    try:
        with open(os.path.join(dest, STAMP)) as f:
            built = json.load(f)
    except (OSError, ValueError):
        built = None
    if not missing and built == wanted and result["classes"]:
        module.exit_json(**result)
    result["changed"] = True
    if module.check_mode:
        module.exit_json(**result)

    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".knobflow-classes-", dir=parent)
    try:
        argv = [javac, "-encoding", "UTF-8", "-d", tmp]
        if p["release"]:
            argv += ["--release", str(p["release"])]
        rc, out, err = module.run_command([*argv, *p["sources"]])
        if rc != 0:
            module.fail_json(msg=f"javac exited {rc}: {(err or out).strip()[-1500:]}", **result)
        with open(os.path.join(tmp, STAMP), "w") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)
        os.chmod(tmp, 0o755)
        if os.path.isdir(dest):
            old = dest + ".knobflow-old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["classes"] = class_files(dest)
    if not result["classes"]:
        module.fail_json(msg=f"javac produced no class file in {dest}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
