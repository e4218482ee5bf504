"""Online tuning under drift (issue 4): the real SQLite workload, whose request mix switches from
read-heavy to write-heavy part-way, tuned one round at a time by four peers.

* ``hybrid``: knobflow's continuous mode, :func:`knobflow.continuous.run_round` on
  ``benchmarks/drift/experiment.yaml`` (hybrid solver, its state in a real knobflow store, the
  guardrails on). Round 0 measures the baseline (the defaults); the learner is never told about
  the drift, and its rewards stay relative to the first mix's baseline.
* ``hybrid-rebaseline``: the same, but at the drift round the state's baseline is cleared, so that
  round measures the defaults again under the new mix (knobflow's baseline round) and later
  rewards are relative to it; the learner keeps its state. knobflow has no command for this: it
  stands for an operator who knows when the mix changed, like ``tpe-restart``.
* ``default``: the experiment's defaults, every round.
* ``tpe``: knobflow's ``tpe`` tuner asked and told one trial per round (defaults first), through
  knobflow's own ask/tell (:func:`knobflow.tuners.base.ask`); never told about the drift.
* ``tpe-restart``: the same, restarted (a fresh study, defaults first) at the drift round, as if
  an operator knew when the mix changed.

**What is real, what is injected.** Every measurement runs the workload program
(``python -m knobflow.workloads.sqlite_workload``) in its own process with the round's
configuration file (the JSON the ``sqlite_config`` role writes) and ``--mix`` of the round's phase.
``run_round`` gets an injected ``measure`` and ``apply`` that write that file and start that process
directly instead of running Ansible (ansible-runner costs seconds per round; see
docs/performance.md). Everything else in the round (state, prediction, clamp, reward, guardrails)
is knobflow's.

**Same noise.** In round ``r`` of seed ``s`` every peer runs the workload with the same workload
seed and mix, one peer after the other in an order rotated each round; round 0 (the defaults) is
measured once and shared.

**Regret.** Per phase, the best configuration is estimated afterwards (``--part best``): each
learning peer's best-measured configuration of that phase (per seed), plus a small grid, each
measured ``--repeats`` times under that phase's mix; the best median is the phase's optimum
``v*``. A round's regret is ``1 - value / v*`` (relative, so the two phases weigh alike; a round
measured above ``v*`` by noise gives a negative regret), summed over each phase's rounds.

Results: ``results/rounds.jsonl`` (one line per seed, peer and round), ``results/best.jsonl``
(the estimation's measurements), ``results/summary.md``; the plot with ``--part plot`` to
docs/images/drift.png::

    python -m benchmarks.drift.run --part rounds --seeds 5 --rounds 30 --duration 0.5
    python -m benchmarks.drift.run --part best --repeats 3
    python -m benchmarks.drift.run --part summary
    python -m benchmarks.drift.run --part plot
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from knobflow import continuous, engine, spec
from knobflow.spec import Experiment
from knobflow.tuners import base, registry
from knobflow.tuners.online_adapter import reward

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXPERIMENT = HERE / "experiment.yaml"
RESULTS = HERE / "results"
PLOT = REPO / "docs" / "images" / "drift.png"
PHASES = ("read-heavy", "write-heavy")
PEERS = ("hybrid", "hybrid-rebaseline", "default", "tpe", "tpe-restart")
WORKLOAD_FIELDS = ("batch_size",)  # the rest are pragmas (as roles/sqlite_config writes them)
# A small grid for the per-phase optimum, on top of what the peers found (experiment defaults for
# what a row does not say).
GRID: tuple[dict[str, Any], ...] = (
    {"synchronous": "off", "batch_size": 1000},
    {"synchronous": "off", "cache_size_kib": 65536, "batch_size": 1000},
    {"synchronous": "off", "journal_mode": "memory", "batch_size": 1000},
    {"cache_size_kib": 65536},
    {"cache_size_kib": 262144},
    {"cache_size_kib": 262144, "mmap_size_mib": 512},
    {"synchronous": "off", "cache_size_kib": 262144, "mmap_size_mib": 512, "batch_size": 1000},
    {"journal_mode": "memory", "synchronous": "off", "cache_size_kib": 262144, "batch_size": 1000},
)

# A workload: (configuration, mix, workload seed) -> throughput in operations per second.
Workload = Callable[[dict[str, Any], str, int], float]


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def config_file(config: dict[str, Any]) -> dict[str, Any]:
    """The workload's configuration file for a configuration, as the ``sqlite_config`` role writes it."""
    pragmas = {k: v for k, v in config.items() if k not in WORKLOAD_FIELDS}
    return {"pragmas": pragmas, **{k: config[k] for k in WORKLOAD_FIELDS if k in config}}


class ProcessWorkload:
    """The real workload: write the configuration file, run the workload program, read its JSON line."""

    def __init__(self, workdir: Path, duration: float, python: str = sys.executable):
        self.workdir, self.duration, self.python = workdir, duration, python
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.calls = 0

    def apply(self, config: dict[str, Any]) -> Path:
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config_file(config), sort_keys=True) + "\n")
        return path

    def __call__(self, config: dict[str, Any], mix: str, seed: int) -> float:
        path = self.apply(config)
        argv = [self.python, "-m", "knobflow.workloads.sqlite_workload", "--config", str(path)]
        argv += ["--db", str(self.workdir / "orders.db"), "--duration", str(self.duration)]
        argv += ["--seed", str(seed), "--mix", mix]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"the workload failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        self.calls += 1
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["throughput_ops"])


def phase_of(round_: int, switch: int) -> str:
    return PHASES[0] if round_ < switch else PHASES[1]


def workload_seed(seed: int, round_: int) -> int:
    return seed * 100_003 + round_


def load_experiment(name: str, seed: int) -> Experiment:
    text = EXPERIMENT.read_text().replace("name: drift-demo", f"name: {name}").replace("seed: 1", f"seed: {seed}")
    return spec.parse(text, source=str(EXPERIMENT), base_dir=HERE)


# The peers: each has ``first(value)`` (round 0's shared measurement of the defaults) and
# ``step(round, measure) -> (config, value, extra)``. --------------------------------------------------
class Hybrid:
    """knobflow's continuous mode: one :func:`~knobflow.continuous.run_round` per round, with the
    measurement injected (it runs the workload process) and its store under ``$KNOBFLOW_HOME``.
    ``rebaseline_at``: at that round the state's baseline is cleared, so that round measures the
    defaults again (:func:`knobflow.continuous.run_round`'s baseline round) and the rewards after it
    are relative to the new mix's baseline; the learner's state is kept."""

    def __init__(
        self,
        exp: Experiment,
        workload: Workload,
        mix: Callable[[], tuple[str, int]],
        rebaseline_at: int | None = None,
    ):
        self.exp, self.workload, self.mix, self.rebaseline_at = exp, workload, mix, rebaseline_at
        self.name = "hybrid" if rebaseline_at is None else "hybrid-rebaseline"
        self.shared: float | None = None
        self.restores: list[dict[str, Any]] = []
        self.round = 0

    def _measure(self, exp: Experiment, config: dict[str, Any], attrs: dict[str, Any]) -> continuous.Measurement:
        if attrs.get("baseline") and self.shared is not None:
            return continuous.Measurement(None, self.shared)
        mix, wseed = self.mix()
        return continuous.Measurement(None, self.workload(config, mix, wseed))

    def _apply(self, exp: Experiment, config: dict[str, Any], label: str) -> str | None:
        self.restores.append(dict(config))  # the guardrail's restore: the next round starts from it
        apply = getattr(self.workload, "apply", None)
        if apply is not None:
            apply(config)
        return None

    def first(self, value: float) -> None:
        self.shared = value
        report = continuous.run_round(self.exp, measure=self._measure, apply=self._apply)
        assert report.action == "baseline" and report.value == value, report
        self.shared, self.round = None, 1

    def step(self) -> tuple[dict[str, Any], float, dict[str, Any]]:
        want = "predicted"
        if self.round == self.rebaseline_at:
            _, study = engine.open_study(self.exp)
            state = continuous.load_state(study)
            state.baseline, want = None, "baseline"
            continuous.save_state(study, state)
        self.round += 1
        report = continuous.run_round(self.exp, measure=self._measure, apply=self._apply)
        if report.action != want or report.value is None or report.config is None:
            raise RuntimeError(f"round {report.round}: {report.action} ({report.failed}, {report.guardrails})")
        if want == "baseline":
            return dict(report.config), report.value, {"rebaseline": True}
        extra = {"clamped": report.clamped, "guardrails": report.guardrails, "hybrid_reward": report.reward}
        return dict(report.config), report.value, extra


class Fixed:
    name = "default"

    def __init__(self, exp: Experiment, workload: Workload, mix: Callable[[], tuple[str, int]]):
        self.defaults, self.workload, self.mix = exp.defaults(), workload, mix

    def first(self, value: float) -> None:
        pass

    def step(self) -> tuple[dict[str, Any], float, dict[str, Any]]:
        mix, wseed = self.mix()
        return dict(self.defaults), self.workload(self.defaults, mix, wseed), {}


class Tpe:
    """knobflow's ``tpe`` tuner through knobflow's ask/tell, trial 0 the defaults (as ``knobflow
    run`` does); ``restart_at``: a fresh study at that round (its first trial the defaults again)."""

    def __init__(
        self,
        exp: Experiment,
        workload: Workload,
        mix: Callable[[], tuple[str, int]],
        seed: int,
        restart_at: int | None,
    ):
        self.exp, self.workload, self.mix, self.seed, self.restart_at = exp, workload, mix, seed, restart_at
        self.name = "tpe" if restart_at is None else "tpe-restart"
        self.space = exp.space()
        self.round = 0
        self._fresh()

    def _fresh(self) -> None:
        self.tuner = registry.create("tpe", seed=self.seed)
        self.study = optuna.create_study(direction="maximize")
        self.study.enqueue_trial(self.exp.defaults())

    def first(self, value: float) -> None:
        trial = base.ask(self.tuner, self.study, self.space, seed=self.seed)
        base.tell(self.study, trial.number, TrialState.COMPLETE, value)
        self.round = 1

    def step(self) -> tuple[dict[str, Any], float, dict[str, Any]]:
        if self.restart_at is not None and self.round == self.restart_at:
            self._fresh()
        trial = base.ask(self.tuner, self.study, self.space, seed=self.seed)
        config = self.space.complete(dict(trial.params))
        mix, wseed = self.mix()
        value = self.workload(config, mix, wseed)
        base.tell(self.study, trial.number, TrialState.COMPLETE, value)
        self.round += 1
        return config, value, {}


def run_seed(
    seed: int, rounds: int, switch: int, workload: Workload, home: Path, peers: Iterable[str] = PEERS
) -> list[dict[str, Any]]:
    """``rounds`` rounds (round 0 the defaults) of every peer on one seed; the mix switches to the
    second phase at round ``switch``. Returns one record per peer and round."""
    _quiet()
    os.environ["KNOBFLOW_HOME"] = str(home)  # the hybrid's store: $KNOBFLOW_HOME/knobflow.db
    now: dict[str, Any] = {}

    def mix() -> tuple[str, int]:
        return now["mix"], now["wseed"]

    exp = load_experiment(f"drift-s{seed}", seed)
    made: dict[str, Any] = {
        "hybrid": lambda: Hybrid(exp, workload, mix),
        "hybrid-rebaseline": lambda: Hybrid(load_experiment(f"drift-s{seed}-rebaseline", seed), workload, mix, switch),
        "default": lambda: Fixed(exp, workload, mix),
        "tpe": lambda: Tpe(exp, workload, mix, seed, None),
        "tpe-restart": lambda: Tpe(exp, workload, mix, seed, switch),
    }
    order = [p for p in PEERS if p in set(peers)]
    runners = {p: made[p]() for p in order}
    out: list[dict[str, Any]] = []
    now.update(mix=phase_of(0, switch), wseed=workload_seed(seed, 0))
    defaults = exp.defaults()
    baseline = workload(defaults, now["mix"], now["wseed"])
    for p in order:
        runners[p].first(baseline)
        out.append(_record(seed, p, 0, now["mix"], defaults, baseline, baseline, exp.maximize, {}))
    for r in range(1, rounds):
        now.update(mix=phase_of(r, switch), wseed=workload_seed(seed, r))
        k = r % len(order)
        for p in order[k:] + order[:k]:  # rotated, so no peer always runs first after a switch
            config, value, extra = runners[p].step()
            out.append(_record(seed, p, r, now["mix"], config, value, baseline, exp.maximize, extra))
    out.sort(key=lambda rec: (PEERS.index(rec["peer"]), rec["round"]))
    return out


def _record(
    seed: int,
    peer: str,
    round_: int,
    mix: str,
    config: dict[str, Any],
    value: float,
    baseline: float,
    maximize: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    rel = reward(value, baseline, maximize, feasible=True)
    return {
        "seed": seed,
        "peer": peer,
        "round": round_,
        "mix": mix,
        "value": value,
        "reward": rel,
        "config": config,
        **extra,
    }


# Regret ----------------------------------------------------------------------------------------------
def cumulative_regret(records: Iterable[dict[str, Any]], best: dict[str, float]) -> dict[str, float]:
    """Sum over rounds of ``1 - value / best[mix]``, per mix (phase)."""
    out: dict[str, float] = defaultdict(float)
    for rec in records:
        out[rec["mix"]] += 1.0 - rec["value"] / best[rec["mix"]]
    return dict(out)


def candidates(records: Iterable[dict[str, Any]], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Configurations for the per-phase optimum: each learning peer's best-measured configuration of
    each phase and seed, the defaults and the grid; without duplicates."""
    best: dict[tuple[int, str, str], dict[str, Any]] = {}
    for rec in records:
        if rec["peer"] == "default":
            continue
        key = (rec["seed"], rec["peer"], rec["mix"])
        if key not in best or rec["value"] > best[key]["value"]:
            best[key] = rec
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for config in [defaults, *({**defaults, **g} for g in GRID), *(b["config"] for b in best.values())]:
        text = json.dumps(config, sort_keys=True)
        if text not in seen:
            seen.add(text)
            out.append(dict(config))
    return out


def estimate_best(
    configs: list[dict[str, Any]], workload: Workload, repeats: int, seed: int = 999
) -> list[dict[str, Any]]:
    """Measure every configuration ``repeats`` times under each phase's mix (interleaved)."""
    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        for mix in PHASES:
            for i, config in enumerate(configs):
                value = workload(config, mix, workload_seed(seed, rep * 1000 + i))
                rows.append({"candidate": i, "mix": mix, "repeat": rep, "value": value, "config": config})
    return rows


def best_per_phase(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mix: the candidate with the best median (``value``, ``config``, and every candidate's median)."""
    med: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    configs: dict[int, dict[str, Any]] = {}
    for row in rows:
        med[row["mix"]][row["candidate"]].append(row["value"])
        configs[row["candidate"]] = row["config"]
    out: dict[str, dict[str, Any]] = {}
    for mix, by in med.items():
        medians = {i: statistics.median(v) for i, v in by.items()}
        i = max(medians, key=lambda j: medians[j])
        out[mix] = {"candidate": i, "value": medians[i], "config": configs[i], "medians": medians}
    return out


# Summary and plot ------------------------------------------------------------------------------------
def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(records: list[dict[str, Any]], best: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    vstar = {m: best[m]["value"] for m in PHASES}
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        by[(rec["peer"], rec["seed"])].append(rec)
    peers = [p for p in PEERS if any(k[0] == p for k in by)]
    seeds = sorted({k[1] for k in by})
    lines = [
        "# Online tuning under drift: results",
        "",
        f"{meta.get('rounds')} rounds per seed (round 0: the defaults), the mix switches from "
        f"{PHASES[0]} to {PHASES[1]} at round {meta.get('switch')}; {len(seeds)} seeds; "
        f"workload {meta.get('duration')} s per measurement. Regret per round: 1 - value / v*, "
        "v* the phase's best median (below). Cumulative regret per phase, median over seeds "
        "[min, max]:",
        "",
        f"| peer | {PHASES[0]} (rounds 0-{meta.get('switch', 0) - 1}) | {PHASES[1]} (rounds "
        f"{meta.get('switch')}-{meta.get('rounds', 0) - 1}) | total | last 10 rounds of each phase, "
        "median throughput / v* |",
        "|---|---|---|---|---|",
    ]
    for p in peers:
        per_seed = [cumulative_regret(by[(p, s)], vstar) for s in seeds]
        cells = []
        for m in PHASES:
            vals = [c.get(m, 0.0) for c in per_seed]
            cells.append(f"{statistics.median(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]")
        totals = [sum(c.values()) for c in per_seed]
        cells.append(f"{statistics.median(totals):.2f} [{min(totals):.2f}, {max(totals):.2f}]")
        tails = []
        for m in PHASES:
            last = [r for s in seeds for r in sorted(by[(p, s)], key=lambda x: x["round"]) if r["mix"] == m]
            rounds_m = sorted({r["round"] for r in last})[-10:]
            tails.append(statistics.median(r["value"] / vstar[m] for r in last if r["round"] in rounds_m))
        cells.append(" / ".join(f"{t:.2f}" for t in tails))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    for p in [p for p in peers if p.startswith("hybrid")]:
        recs = [r for s in seeds for r in by[(p, s)] if "hybrid_reward" in r]
        parts = []
        for m in PHASES:
            rm = [r for r in recs if r["mix"] == m]
            if rm:
                sat = sum(r["hybrid_reward"] >= 1.0 for r in rm) / len(rm)
                low = sum(r["hybrid_reward"] <= -1.0 for r in rm) / len(rm)
                restored = sum(any("restored" in g for g in r.get("guardrails", [])) for r in rm) / len(rm)
                parts.append(
                    f"{m}: reward clipped at +1 in {sat:.0%} of the rounds, at -1 in {low:.0%}, "
                    f"the last good configuration restored after {restored:.0%}"
                )
        lines += ["", f"`{p}`, the rewards its learner got (all seeds): " + "; ".join(parts) + "."]
    lines += ["", "The per-phase optimum v* (median of the estimation's repeats):", ""]
    lines += ["| phase | v* (ops/s) | configuration | the same configuration in the other phase |", "|---|---|---|---|"]
    for m in PHASES:
        other = PHASES[1 - PHASES.index(m)]
        i = best[m]["candidate"]
        cross = best[other]["medians"].get(i)
        ratio = "" if cross is None else f"{cross:.0f} ops/s = {cross / vstar[other]:.2f} v* of {other}"
        lines.append(f"| {m} | {vstar[m]:.0f} | `{json.dumps(best[m]['config'], sort_keys=True)}` | {ratio} |")
    d = meta.get("defaults_medians", {})
    if d:
        lines += [
            "",
            "The defaults measure "
            + ", ".join(f"{d[m]:.0f} ops/s ({d[m] / vstar[m]:.2f} v*) {m}" for m in PHASES)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], best: dict[str, dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit(
            "matplotlib is not installed, so no plot was drawn: .venv/bin/pip install -c constraints.txt matplotlib"
        )
    vstar = {m: best[m]["value"] for m in PHASES}
    switch = meta["switch"]
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    regret: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for rec in records:
        by[rec["peer"]][rec["round"]].append(rec["value"] / vstar[rec["mix"]])
        regret[rec["peer"]][rec["seed"]][rec["round"]] = 1.0 - rec["value"] / vstar[rec["mix"]]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for p in [p for p in PEERS if p in by]:
        rounds = sorted(by[p])
        med = {r: statistics.median(by[p][r]) for r in rounds}
        smooth = []
        for r in rounds:  # a 5-round moving mean that does not cross the drift
            window = [med[q] for q in range(r - 2, r + 3) if q in med and (q < switch) == (r < switch)]
            smooth.append(sum(window) / len(window))
        ax1.plot(rounds, smooth, label=p, lw=1.4)
        cums = []
        for seed_rounds in regret[p].values():
            acc, c = 0.0, []
            for r in rounds:
                acc += seed_rounds[r]
                c.append(acc)
            cums.append(c)
        ax2.plot(rounds, [statistics.median(col) for col in zip(*cums, strict=True)], label=p, lw=1.4)
    for ax in (ax1, ax2):
        ax.axvline(meta["switch"] - 0.5, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("throughput / phase optimum v*\n(median over seeds, 5-round mean)")
    ax1.set_title(f"SQLite workload, mix {PHASES[0]} then {PHASES[1]} (dashed line: the drift)")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.set_ylabel("cumulative regret\n(median over seeds)")
    ax2.set_xlabel("round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# CLI -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("rounds", "best", "summary", "plot", "all"), default="all")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30, help="rounds per phase")
    ap.add_argument("--duration", type=float, default=0.5, help="seconds of workload per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per candidate in the optimum's estimation")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot", type=Path, default=PLOT)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rounds_path, best_path, meta_path = args.out / "rounds.jsonl", args.out / "best.jsonl", args.out / "meta.json"
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    with tempfile.TemporaryDirectory(prefix="knobflow-drift-") as tmp:
        workload = ProcessWorkload(Path(tmp) / "target", args.duration)
        if args.part in ("rounds", "all"):
            meta = {"rounds": 2 * args.rounds, "switch": args.rounds, "duration": args.duration, "peers": peers}
            meta_path.write_text(json.dumps(meta, indent=1) + "\n")
            rounds_path.write_text("")
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                t0 = time.monotonic()
                recs = run_seed(seed, 2 * args.rounds, args.rounds, workload, Path(tmp) / f"home-{seed}", peers)
                with rounds_path.open("a") as f:
                    for rec in recs:
                        f.write(json.dumps(rec, sort_keys=True) + "\n")
                print(f"seed {seed}: {len(recs)} records in {time.monotonic() - t0:.0f} s", flush=True)
        meta = json.loads(meta_path.read_text())
        records = _read(rounds_path)
        exp = load_experiment("drift-demo", 1)
        if args.part in ("best", "all"):
            configs = candidates(records, exp.defaults())
            print(f"estimating the per-phase optimum: {len(configs)} configurations x {args.repeats}", flush=True)
            rows = estimate_best(configs, workload, args.repeats)
            best_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    if args.part in ("summary", "plot", "all"):
        rows = _read(best_path)
        best = best_per_phase(rows)
        meta["defaults_medians"] = {m: best[m]["medians"][0] for m in PHASES}  # candidate 0: the defaults
        if args.part in ("summary", "all"):
            text = summary(records, best, meta)
            (args.out / "summary.md").write_text(text)
            print(text)
        if args.part in ("plot", "all"):
            plot(records, best, meta, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
