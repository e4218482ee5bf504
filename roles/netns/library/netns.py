#!/usr/bin/python
"""Create or delete a named network namespace (ip netns), with lo up and an optional veth pair."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: netns
short_description: Create or delete a named network namespace for an experiment
description:
  - C(state=present) creates the network namespace I(name) (C(ip netns add), C(/run/netns/NAME)) if it
    does not exist, brings its loopback interface up, and, with I(veth), links it to the host by a veth
    pair with an address on each end. Idempotent; check mode and diff mode supported.
  - C(state=absent) deletes it (and the veth pair).
  - Every command is run with an argument list (no shell).
options:
  name:
    description: The namespace's name (letters, digits, C(_), C(.), C(-); at most 64 characters).
    type: str
    required: true
  state:
    description: C(present) or C(absent).
    type: str
    choices: [present, absent]
    default: present
  veth:
    description: Also create a veth pair between the host and the namespace.
    type: bool
    default: false
  veth_host:
    description: The host end's interface name (at most 15 characters); default C(kf-) and the start of I(name).
    type: str
    default: ""
  veth_peer:
    description: The namespace end's interface name.
    type: str
    default: veth0
  host_address:
    description: Address with prefix length for the host end (empty for none).
    type: str
    default: ""
  peer_address:
    description: Address with prefix length for the namespace end (empty for none).
    type: str
    default: ""
author: knobflow maintainers
"""

RETURN = r"""
path:
  description: The namespace's file, /run/netns/NAME.
  type: str
  returned: always
pids:
  description: With state=absent, processes that were still in the namespace (it lives on until they exit).
  type: list
  returned: when state is absent
"""

import ipaddress
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule

NETNS_DIR = "/run/netns"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


class Ip:
    def __init__(self, module):
        self.module = module
        self.bin = module.get_bin_path("ip", required=True)
        self.commands = []

    def run(self, *args, check=True):
        argv = [self.bin, *args]
        rc, out, err = self.module.run_command(argv)
        if check and rc != 0:
            self.module.fail_json(msg="{} failed ({}): {}".format(" ".join(argv), rc, (err or out).strip()))
        return rc, out

    def change(self, *args):
        """A command that changes something: recorded, and not run in check mode."""
        self.commands.append(" ".join(["ip", *args]))
        if not self.module.check_mode:
            self.run(*args)

    def links(self, netns=None):
        """{ifname: link} of the host, or of a namespace."""
        args = ["-n", netns] if netns else []
        _, out = self.run(*args, "-j", "-d", "link", "show")
        return {link["ifname"]: link for link in json.loads(out or "[]")}

    def addresses(self, ifname, netns=None):
        args = ["-n", netns] if netns else []
        rc, out = self.run(*args, "-j", "addr", "show", "dev", ifname, check=False)
        if rc != 0:
            return set()
        found = set()
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                found.add(ipaddress.ip_interface("{}/{}".format(a["local"], a["prefixlen"])))
        return found


def is_up(link):
    return "UP" in link.get("flags", [])


def parse_address(module, label, text):
    if not text:
        return None
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        module.fail_json(msg=f"{label}: {text!r} is not an address with a prefix length, like 198.18.0.1/30")


def present(module, ip, p, path, result):
    exists = os.path.exists(path)
    if not exists:
        ip.change("netns", "add", p["name"])
    links = ip.links(p["name"]) if exists else {}
    if not is_up(links.get("lo", {})):
        ip.change("-n", p["name"], "link", "set", "lo", "up")
    if p["veth"]:
        host, peer = p["veth_host"], p["veth_peer"]
        host_links = ip.links()
        if peer not in links:
            if host in host_links:
                module.fail_json(
                    msg=f"interface {host} already exists on the host but is not linked to namespace {p['name']}: "
                    "choose another netns_veth_host, or delete it"
                )
            ip.change("link", "add", host, "type", "veth", "peer", "name", peer, "netns", p["name"])
        elif host not in host_links or host_links[host].get("linkinfo", {}).get("info_kind") != "veth":
            module.fail_json(msg=f"namespace {p['name']} has {peer}, but the host has no veth {host} linked to it")
        for label, netns, ifname in (("host_address", None, host), ("peer_address", p["name"], peer)):
            want = parse_address(module, label, p[label])
            if want is not None and want not in ip.addresses(ifname, netns):
                ip.change(*(["-n", netns] if netns else []), "addr", "add", str(want), "dev", ifname)
        if not is_up(host_links.get(host, {})):
            ip.change("link", "set", host, "up")
        if not is_up(links.get(peer, {})):
            ip.change("-n", p["name"], "link", "set", peer, "up")
    if module.check_mode or not ip.commands:
        return
    # Verify the real state.
    links = ip.links(p["name"])
    if not os.path.exists(path) or not is_up(links.get("lo", {})):
        module.fail_json(msg=f"verification failed: namespace {p['name']} missing or its lo is not up")
    if p["veth"] and p["veth_peer"] not in links:
        module.fail_json(msg=f"verification failed: {p['veth_peer']} is not in namespace {p['name']}")


def absent(module, ip, p, path, result):
    result["pids"] = []
    if not os.path.exists(path):
        return
    _, out = ip.run("netns", "pids", p["name"], check=False)
    result["pids"] = [int(x) for x in out.split() if x.isdigit()]
    if result["pids"]:
        module.warn(
            "processes still run in namespace {}: {}; it lives on until they exit".format(
                p["name"], ", ".join(map(str, result["pids"]))
            )
        )
    if p["veth"] and p["veth_host"] in ip.links():
        # With a process still inside, deleting the name would leave the pair: delete it first.
        ip.change("link", "del", p["veth_host"])
    ip.change("netns", "del", p["name"])
    if not module.check_mode and os.path.exists(path):
        module.fail_json(msg=f"verification failed: {path} still exists")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            veth=dict(type="bool", default=False),
            veth_host=dict(type="str", default=""),
            veth_peer=dict(type="str", default="veth0"),
            host_address=dict(type="str", default=""),
            peer_address=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = dict(module.params)
    if not NAME.match(p["name"]):
        module.fail_json(msg=f"bad namespace name {p['name']!r}: letters, digits, '_', '.', '-', at most 64")
    if p["veth"]:
        p["veth_host"] = p["veth_host"] or ("kf-" + p["name"])[:15]
        for label in ("veth_host", "veth_peer"):
            if not IFNAME.match(p[label]):
                module.fail_json(msg=f"bad {label} {p[label]!r}: an interface name of 1 to 15 letters, digits, '_.-'")
        if p["veth_host"] == p["veth_peer"]:
            module.fail_json(msg="veth_host and veth_peer must differ")
    path = os.path.join(NETNS_DIR, p["name"])
    ip = Ip(module)
    result = dict(changed=False, name=p["name"], path=path)
    if p["state"] == "present":
        present(module, ip, p, path, result)
    else:
        absent(module, ip, p, path, result)
    if ip.commands:
        result["changed"] = True
        result["commands"] = ip.commands
        result["diff"] = dict(before="", after="".join(c + "\n" for c in ip.commands))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
