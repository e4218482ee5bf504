"""The hosts of an experiment's inventory, read with Ansible's own inventory code, and the
per-host contexts of a continuous experiment (``continuous.per_host``, ``continuous.context``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMPLICIT_GROUPS = ("all", "ungrouped")


@dataclass(frozen=True)
class Host:
    name: str
    groups: tuple[str, ...]  # the groups it belongs to (parents included), without all and ungrouped
    vars: dict[str, Any]  # its variables as the inventory writes them (host and group variables; not templated)


def hosts(inventory: str | Path, pattern: str) -> list[Host]:
    """The hosts that ``pattern`` (an Ansible host pattern, as ``--limit`` takes) selects in
    ``inventory``, in the inventory's order. Raises ValueError when there is none."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inv = InventoryManager(loader=loader, sources=[str(inventory)])
    variables = VariableManager(loader=loader, inventory=inv)
    out = []
    for h in inv.get_hosts(pattern):
        groups = tuple(g.name for g in h.get_groups() if g.name not in IMPLICIT_GROUPS)
        out.append(Host(h.name, groups, dict(variables.get_vars(host=h, include_hostvars=False))))
    if not out:
        raise ValueError(f"no host of the inventory {inventory} matches target.hosts {pattern!r}")
    return out


def context_of(host: Host, sources: dict[str, str], features: list[dict[str, Any]]) -> dict[str, Any]:
    """The autoscope context of ``host``: for each feature, its value from ``sources`` (``group``,
    ``host`` or ``var:NAME``). Raises ValueError naming the host, the feature and what is wrong."""
    by_name = {f["name"]: f for f in features}
    out: dict[str, Any] = {}
    for name, source in sources.items():
        values = by_name[name].get("values")
        where = f"host {host.name!r}, context feature {name!r} ({source})"
        if source == "group":
            found = [g for g in values or [] if g in host.groups]
            if len(found) != 1:
                what = f"is in none of the groups {values}" if not found else f"is in several of them: {found}"
                raise ValueError(f"{where}: the host {what} (its groups: {', '.join(host.groups) or 'none'})")
            out[name] = found[0]
            continue
        if source == "host":
            value: Any = host.name
        else:
            var = source.split(":", 1)[1]
            if var not in host.vars:
                raise ValueError(f"{where}: the inventory gives the host no variable {var!r}")
            value = host.vars[var]
            if isinstance(value, str) and "{{" in value:
                raise ValueError(f"{where}: {value!r} is a template; give the value itself")
        if values is None:  # a numeric feature
            if isinstance(value, bool):
                raise ValueError(f"{where}: {value!r} is not a number")
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {value!r} is not a number") from None
        else:
            if str(value) not in values:
                raise ValueError(f"{where}: {value!r} is not one of the feature's values {values}")
            out[name] = str(value)
    return out
