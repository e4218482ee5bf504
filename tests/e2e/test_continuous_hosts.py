"""Per-host continuous tuning end to end: two hosts of a real inventory (both this machine over the
local connection, each with its own target folder and its own request mix from an inventory
variable), an autoscope learner keyed by the hosts' groups, ``knobflow round`` with real
ansible-runner. What each host runs is checked on that host's target (its config file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow.continuous import ATTR
from knobflow.store import Store
from tests.conftest import REPO, knobflow

pytestmark = pytest.mark.slow

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    reads:
      hosts:
        reader: {mix: read-heavy}
    writes:
      hosts:
        writer: {mix: write-heavy}
"""


def test_each_host_is_tuned_in_its_own_context_on_its_own_target(tmp_path: Path, home: Path) -> None:
    (tmp_path / "fleet.yml").write_text(INVENTORY)
    text = (REPO / "experiments" / "sqlite-demo.yaml").read_text()
    text = text.replace("name: sqlite-demo", "name: test-hosts").replace('- "1"', '- "0.2"')
    text = text.replace("repeats: 3", "repeats: 1")
    text = text.replace("targets/sqlite-demo/", "targets/{{ inventory_hostname }}/")
    text = text.replace('      - "0.2"\n', '      - "0.2"\n      - --mix\n      - "{{ mix }}"\n')
    text = text.replace(
        "tuner:\n  name: auto\n  seed: 42\n",
        "tuner:\n  name: autoscope\n  seed: 42\n  options:\n    height: 1\n"
        "    features: [{name: group, values: [reads, writes]}]\n",
    )
    text += "target: {inventory: fleet.yml, hosts: all}\n"
    text += "mode: continuous\ncontinuous:\n  per_host: true\n  context: {group: group}\n  pause_after: 5\n"
    assert "{{ mix }}" in text and "{{ inventory_hostname }}" in text and "name: autoscope" in text
    f = tmp_path / "hosts.yaml"
    f.write_text(text)

    first = knobflow("round", str(f), home=home, check=True).stdout
    assert "round 0: 2 hosts, one after another" in first, first
    assert "host reader (context group=reads): measured the baseline" in first, first
    assert "host writer (context group=writes): measured the baseline" in first, first
    second = knobflow("round", str(f), home=home, check=True).stdout
    assert "host reader (context group=reads): predicted" in second, second
    assert "host writer (context group=writes): predicted" in second, second

    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    study = store.load("test-hosts")
    state = study.user_attrs[ATTR]
    assert state["rounds"] == 2 and set(state["hosts"]) == {"reader", "writer"}
    trials = store.trials(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.user_attrs.get("reason") for t in trials]
    assert [t.user_attrs["target_host"] for t in trials] == ["reader", "writer", "reader", "writer"]
    assert trials[3].user_attrs["context"] == {"group": "writes"}
    # The request mix comes from each host's inventory variable: the read-heavy host reads far more.
    reads = {
        t.user_attrs["target_host"]: t.user_attrs["metrics"]["reads"] / t.user_attrs["metrics"]["ops"]
        for t in trials[:2]
    }
    assert reads["reader"] > 0.8 and reads["writer"] < 0.2, reads
    for host in ("reader", "writer"):
        hs = state["hosts"][host]
        assert hs["baseline"] > 0 and hs["pending"] is None and hs["done_round"] == 1
        on_target = json.loads((home / "targets" / host / "config.json").read_text())
        assert on_target["batch_size"] == hs["current"]["batch_size"], (host, on_target, hs["current"])
        assert on_target["pragmas"]["journal_mode"] == hs["current"]["journal_mode"]
