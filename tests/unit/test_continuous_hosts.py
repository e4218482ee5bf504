"""Per-host continuous tuning (``continuous.per_host``, ``continuous.context``): each host of the
inventory gets its own baseline, configuration and guardrails within a round, and an autoscope
learner gets each host's context from the inventory (its group or a variable). A fake "apply +
measure" stands for Ansible (it records the host each call targets); the inventory is a real one,
read with Ansible's inventory code. tests/e2e/test_continuous_hosts.py runs it with real Ansible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from knobflow import continuous, spec
from knobflow.ansible import inventory
from knobflow.continuous import Measurement, load_state, run_round
from knobflow.store import Store
from knobflow.tuners.online import from_state
from tests.conftest import knobflow

INVENTORY = """
all:
  vars:
    ansible_connection: local
  children:
    reads:
      hosts:
        r1: {load: 2.5, mix: read-heavy}
    writes:
      hosts:
        w1: {load: 7.0, mix: write-heavy}
      vars:
        owner: team-w
"""

TEXT = """
name: hosts-test
objective: {metric: throughput, direction: maximize}
tunables:
  - {name: batch, layer: stack, type: int, low: 1, high: 1000, log: true, default: 1}
  - {name: ratio, layer: stack, type: float, low: 0.0, high: 1.0, default: 0.5}
layers: {stack: {role: sqlite_config}}
benchmark: {role: bench_command, vars: {bench_command_argv: [echo, '{"throughput": 1}']}}
target: {inventory: hosts.yml, hosts: all}
tuner:
  name: autoscope
  seed: 3
  options:
    height: 1
    features: [{name: group, values: [reads, writes]}]
budget: {trials: 5}
mode: continuous
continuous:
  per_host: true
  context: {group: group}
  pause_after: 2
storage: STORAGE
"""

BASE = {"r1": 100.0, "w1": 50.0}


def _file(tmp_path: Path, text: str = TEXT, inv: str = INVENTORY) -> Path:
    (tmp_path / "hosts.yml").write_text(inv)
    f = tmp_path / "hosts-test.yaml"
    f.write_text(text.replace("STORAGE", f"sqlite:///{tmp_path / 'store.db'}"))
    return f


class Fake:
    """``plan[host]`` gives that host's outcomes in turn: a value, None (failed) or an exception."""

    def __init__(self, plan: dict[str, list[Any]] | None = None):
        self.plan = {h: list(v) for h, v in (plan or {}).items()}
        self.measured: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.applied: list[tuple[str, dict[str, Any]]] = []

    def measure(self, exp: spec.Experiment, config: dict[str, Any], attrs: dict[str, Any]) -> Measurement:
        host = exp.model.target.hosts
        self.measured.append((host, dict(config), dict(attrs)))
        queue = self.plan.get(host) or []
        outcome = queue.pop(0) if queue else BASE[host]
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            return Measurement(len(self.measured), None, reason="the benchmark printed no metrics")
        return Measurement(len(self.measured), float(outcome))

    def apply(self, exp: spec.Experiment, config: dict[str, Any], label: str) -> str | None:
        self.applied.append((exp.model.target.hosts, dict(config)))
        return None

    def round(self, f: Path) -> continuous.RoundReport:
        return run_round(spec.load(f), measure=self.measure, apply=self.apply)


def _state(f: Path) -> continuous.State:
    exp = spec.load(f)
    return load_state(Store(exp.storage_url()).load(exp.name))


def test_the_inventory_gives_hosts_groups_and_variables(tmp_path: Path) -> None:
    _file(tmp_path)
    hosts = inventory.hosts(tmp_path / "hosts.yml", "all")
    assert [(h.name, h.groups) for h in hosts] == [("r1", ("reads",)), ("w1", ("writes",))]
    assert hosts[1].vars["owner"] == "team-w" and hosts[0].vars["mix"] == "read-heavy"
    assert [h.name for h in inventory.hosts(tmp_path / "hosts.yml", "writes")] == ["w1"]
    with pytest.raises(ValueError, match=r"no host of the inventory .* matches target\.hosts 'db'"):
        inventory.hosts(tmp_path / "hosts.yml", "db")


def test_contexts_from_groups_names_and_variables(tmp_path: Path) -> None:
    _file(tmp_path)
    r1, w1 = inventory.hosts(tmp_path / "hosts.yml", "all")
    features = [
        {"name": "group", "values": ["reads", "writes"]},
        {"name": "mix", "values": ["read-heavy", "write-heavy"]},
        {"name": "load", "values": None, "min": 0, "max": 10},
        {"name": "who", "values": ["r1", "w1"]},
    ]
    sources = {"group": "group", "mix": "var:mix", "load": "var:load", "who": "host"}
    assert inventory.context_of(w1, sources, features) == {
        "group": "writes",
        "mix": "write-heavy",
        "load": 7.0,
        "who": "w1",
    }
    bad = [{"name": "group", "values": ["web", "db"]}]
    with pytest.raises(ValueError, match=r"host 'r1', context feature 'group' \(group\): the host is in none of"):
        inventory.context_of(r1, {"group": "group"}, bad)
    with pytest.raises(ValueError, match="the inventory gives the host no variable 'tier'"):
        inventory.context_of(r1, {"group": "var:tier"}, features)
    with pytest.raises(ValueError, match="'read-heavy' is not a number"):
        inventory.context_of(r1, {"load": "var:mix"}, features)
    with pytest.raises(ValueError, match=r"2\.5 is not one of the feature's values"):
        inventory.context_of(r1, {"mix": "var:load"}, features)


def test_each_host_gets_its_own_baseline_then_its_own_steps(tmp_path: Path) -> None:
    f = _file(tmp_path)
    fake = Fake({"r1": [BASE["r1"], 110.0], "w1": [BASE["w1"], 40.0]})
    r0 = fake.round(f)
    assert r0.action == "per-host" and [h.host for h in r0.hosts] == ["r1", "w1"]
    assert [h.action for h in r0.hosts] == ["baseline", "baseline"]
    assert [(h, a["target_host"]) for h, _, a in fake.measured] == [("r1", "r1"), ("w1", "w1")]  # one host at a time
    r1 = fake.round(f)
    steps = {h.host: h for h in r1.hosts}
    assert steps["r1"].context == {"group": "reads"} and steps["w1"].context == {"group": "writes"}
    # Each reward is against the host's own baseline: +10% on r1, -20% on w1.
    assert steps["r1"].reward == pytest.approx(0.1) and steps["w1"].reward == pytest.approx(-0.2)
    attrs = {h: a for h, _, a in fake.measured[2:]}
    assert attrs["w1"]["context"] == {"group": "writes"} and attrs["w1"]["continuous_round"] == 1
    s = _state(f)
    assert s.hosts["r1"].baseline == 100.0 and s.hosts["w1"].baseline == 50.0 and s.rounds == 2
    assert s.hosts["r1"].current == steps["r1"].config and s.hosts["r1"].bad == 0
    assert s.baseline is None and s.current is None, "per-host state lives in hosts only"
    assert [e["action"] for e in s.log] == ["per-host", "per-host"]
    assert [h["host"] for h in s.log[1]["hosts"]] == ["r1", "w1"] and "predicted" not in s.log[1]["hosts"][0]
    tuner = from_state(s.tuner)
    assert not tuner.get_tuning_requests()  # both rewards reached the learner


def test_a_bad_host_is_restored_alone_and_pauses_the_experiment(tmp_path: Path) -> None:
    f = _file(tmp_path)
    fake = Fake({"r1": [100.0, 105.0, 104.0], "w1": [50.0, 10.0, None]})
    fake.round(f)
    r1 = fake.round(f)
    w1 = next(h for h in r1.hosts if h.host == "w1")
    assert any("restored the last good configuration" in g for g in w1.guardrails)
    assert fake.applied == [("w1", spec.load(f).defaults())], "only w1 is restored, on w1"
    s = _state(f)
    assert s.hosts["w1"].bad == 1 and s.hosts["r1"].bad == 0 and not s.paused
    r2 = fake.round(f)  # w1's benchmark fails: its second bad round in a row
    assert r2.paused and s.hosts["r1"].current is not None
    s = _state(f)
    assert s.paused and s.pause_reason == "2 consecutive bad rounds on w1 (pause_after 2)"
    assert fake.round(f).action == "paused"
    assert continuous.resume(Store(spec.load(f).storage_url()), "hosts-test")
    s = _state(f)
    assert not s.paused and s.hosts["w1"].bad == 0


def test_a_round_dying_on_the_second_host_continues_there(tmp_path: Path) -> None:
    f = _file(tmp_path)
    fake = Fake({"r1": [100.0, 120.0, 121.0], "w1": [50.0, RuntimeError("killed"), 55.0, 56.0]})
    fake.round(f)
    with pytest.raises(RuntimeError, match="killed"):
        fake.round(f)
    s = _state(f)
    assert s.rounds == 1 and s.hosts["r1"].done_round == 1 and s.hosts["r1"].pending is None
    pending = s.hosts["w1"].pending
    assert pending is not None and pending["round"] == 1
    again = fake.round(f)  # round 1 again: r1 is not measured twice, w1 re-applies its prediction
    assert [(h.host, h.action) for h in again.hosts] == [("r1", "done"), ("w1", "re-applied")]
    assert fake.measured[-1][0] == "w1" and fake.measured[-1][1] == pending["config"]
    s = _state(f)
    assert s.rounds == 2 and s.hosts["w1"].pending is None and not from_state(s.tuner).get_tuning_requests()
    nxt = fake.round(f)
    assert [(h.host, h.action) for h in nxt.hosts] == [("r1", "predicted"), ("w1", "predicted")]


def test_a_host_without_a_context_stops_the_round_before_anything_runs(tmp_path: Path) -> None:
    inv = INVENTORY.replace(
        "        w1: {load: 7.0, mix: write-heavy}",
        "        w1: {load: 7.0, mix: write-heavy}\n    other:\n      hosts:\n        o1: {}",
    )
    f = _file(tmp_path, inv=inv)
    fake = Fake()
    with pytest.raises(
        ValueError, match=r"host 'o1', context feature 'group' \(group\): the host is in none of the groups"
    ):
        fake.round(f)
    assert fake.measured == []
    proc = knobflow("round", str(f), home=tmp_path / "home")
    assert proc.returncode == 2 and "knobflow round: hosts-test: host 'o1'" in proc.stderr, proc.stderr


def test_per_host_without_contexts_shares_one_learner(tmp_path: Path) -> None:
    text = TEXT.replace("name: autoscope", "name: hybrid").replace(
        "  options:\n    height: 1\n    features: [{name: group, values: [reads, writes]}]\n", ""
    )
    text = text.replace("  context: {group: group}\n", "")
    f = _file(tmp_path, text)
    fake = Fake({"r1": [100.0, 101.0], "w1": [50.0, 51.0]})
    fake.round(f)
    r = fake.round(f)
    assert [h.context for h in r.hosts] == [None, None] and all(h.action == "predicted" for h in r.hosts)
    assert _state(f).hosts["w1"].baseline == 50.0


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ("  per_host: true\n", "", "continuous.context", "per-host contexts need per_host: true"),
        ("name: autoscope", "name: bluefin", "continuous.context", "contexts are for tuner autoscope, not 'bluefin'"),
        ("context: {group: group}", "context: {grp: group}", "continuous.context.grp", "not a feature of"),
        ("context: {group: group}", "context: {group: rack}", "continuous.context.group", "'rack' is not a source"),
        ("context: {group: group}", "context: {}", "continuous.context", "give each feature's source"),
        (
            "features: [{name: group, values: [reads, writes]}]",
            "features: [{name: group, values: [reads, writes]}, {name: load, values: null, min: 0, max: 10}]",
            "continuous.context",
            "feature 'load' has no source",
        ),
        (
            "context: {group: group}",
            "context: {group: group, load: host}",
            "continuous.context.load",
            "not a feature of",
        ),
        (
            "    height: 1\n",
            "    height: 1\n    context: {group: reads}\n",
            "tuner.options.context",
            "each host's context comes from the inventory",
        ),
    ],
)
def test_bad_context_settings_name_the_field(tmp_path: Path, old: str, new: str, field: str, message: str) -> None:
    assert old in TEXT
    f = _file(tmp_path, TEXT.replace(old, new))
    with pytest.raises(spec.SpecError) as err:
        spec.load(f)
    assert f"{field}: " in str(err.value) and message in str(err.value), str(err.value)


def test_a_numeric_feature_takes_a_variable(tmp_path: Path) -> None:
    text = TEXT.replace(
        "features: [{name: group, values: [reads, writes]}]", "features: [{name: load, values: null, min: 0, max: 10}]"
    )
    with pytest.raises(spec.SpecError, match="feature 'load' is numeric: its source must be var:NAME"):
        spec.load(_file(tmp_path, text.replace("context: {group: group}", "context: {load: group}")))
    f = _file(tmp_path, text.replace("context: {group: group}", "context: {load: 'var:load'}"))
    fake = Fake()
    fake.round(f)
    r = fake.round(f)
    assert [h.context for h in r.hosts] == [{"load": 2.5}, {"load": 7.0}]


def test_separating_weights_are_the_hand_set_routing_of_property_13() -> None:
    from knobflow.tuners.online_adapter import separating_weights
    from tests.unit.test_online_autoscope import HAND_WEIGHTS, JOBS

    assert separating_weights([{"name": "jobtype", "values": list(JOBS)}], 3) == [
        [float(x) for x in row] for row in HAND_WEIGHTS
    ]
    # The first categorical feature is the one split; numeric features before it shift its columns.
    w = separating_weights([{"name": "load", "values": None}, {"name": "g", "values": ["a", "b", "c"]}], 2)
    assert w == [[0.0, 1.0, 1.0, -1.0], [0.0, 1.0, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    assert separating_weights([{"name": "g", "values": list("abcde")}], 2) is None  # 5 values, 4 leaves
    assert separating_weights([{"name": "load", "values": None}], 2) is None


def test_two_groups_with_opposite_optima_are_tuned_apart(tmp_path: Path) -> None:
    """r1's throughput grows with ratio, w1's falls: each group's configuration goes its own way."""

    class Opposite(Fake):
        def measure(self, exp: spec.Experiment, config: dict[str, Any], attrs: dict[str, Any]) -> Measurement:
            host, r = exp.model.target.hosts, config["ratio"]
            return Measurement(1, BASE[host] * (1 + (0.5 if host == "r1" else -0.5) * (r - 0.5)))

    text = TEXT.replace("pause_after: 2", "pause_after: 100").replace(
        "height: 1", "height: 1\n    leaf_algorithm_args: {eta: 0.05}"
    )
    for seed in (0, 1):
        d = tmp_path / str(seed)
        d.mkdir()
        f = _file(d, text.replace("seed: 3", f"seed: {seed}"))
        fake = Opposite()
        for _ in range(50):
            fake.round(f)
        s = _state(f)
        assert s.hosts["r1"].current["ratio"] > 0.7 and s.hosts["w1"].current["ratio"] < 0.3, (seed, s.hosts)
        tuner = from_state(s.tuner)
        assert tuner.leaf_of({"group": "reads"}) != tuner.leaf_of({"group": "writes"})
