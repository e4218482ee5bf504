"""Online tuning under drift, all of it real: the SQLite workload running as a service whose request
mix switches part-way, tuned by ``knobflow round`` (real ansible-runner, the ``sqlite_config`` role
applying each configuration, the ``observe_metrics`` role reading the service's Prometheus endpoint
for a window) once per round, with the hybrid solver of ``benchmarks/drift/experiment.yaml``.

benchmarks/drift/run.py compares the peers (hybrid, default, TPE, restarted TPE) over 5 seeds with
the measurement injected; this script checks that the same thing works end to end on a live
service, for one seed: nothing is injected, and each round costs what a real round costs.

* The service (``python -m knobflow.workloads.sqlite_service``) runs for the whole run, reloads its
  configuration file whenever a round's apply changes it, and re-reads its mix from a file, which
  this script switches from ``read-heavy`` to ``write-heavy`` after ``--rounds`` rounds.
* Each round is ``knobflow round FILE --json`` in a subprocess, against a private KNOBFLOW_HOME.
* The reference: after the rounds, the defaults are written to the service's configuration file
  and observed for ``--reference-windows`` windows under each mix (the same observation code, the
  role's module, called directly), giving the fixed default's throughput per phase.

Results: ``results/live.jsonl`` (one line per round), ``results/live-summary.md``, and with
matplotlib the plot ``docs/images/drift-live.png``::

    python -m benchmarks.drift.live --rounds 20 --window 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.drift.run import EXPERIMENT, PHASES, REPO, RESULTS, config_file
from knobflow import spec

PLOT = REPO / "docs" / "images" / "drift-live.png"
BIN = Path(sys.executable).parent
METRICS = {
    "throughput_ops": {"source": "knobflow_sqlite_operations_total", "kind": "counter"},
    "read_p99_ms": {"source": 'knobflow_sqlite_read_latency_ms{quantile="0.99"}', "aggregate": "max"},
    "config_generation": {"source": "knobflow_sqlite_config_generation", "aggregate": "last"},
}


def observe_module() -> Any:
    path = REPO / "roles" / "observe_metrics" / "library" / "observe_metrics_sample.py"
    module_spec = importlib.util.spec_from_file_location("observe_metrics_sample", path)
    assert module_spec is not None and module_spec.loader is not None
    mod = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mod)
    return mod


def experiment_text(url: str, settle: float, window: float, interval: float) -> str:
    """The drift experiment with the live service's observation as its benchmark."""
    text = EXPERIMENT.read_text().replace("name: drift-demo", "name: drift-live")
    head, _, rest = text.partition("benchmark:\n")
    _, _, tail = rest.partition("\ntuner:\n")
    observe = {
        "role": "observe_metrics",
        "warmup": 0,
        "repeats": 1,
        "timeout": int(settle + window + 60),
        "vars": {
            "observe_metrics_url": url,
            "observe_metrics_settle": settle,
            "observe_metrics_window": window,
            "observe_metrics_interval": interval,
            "observe_metrics_metrics": METRICS,
        },
    }
    return head + "benchmark: " + json.dumps(observe) + "\n\ntuner:\n" + tail


def start_service(home: Path, mix_file: Path) -> tuple[subprocess.Popen[str], str]:
    target = home / "targets" / "drift-demo"
    target.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "knobflow.workloads.sqlite_service", "--config", str(target / "config.json")]
    argv += ["--db", str(target / "orders.db"), "--port", "0", "--epoch", "0.2", "--mix-file", str(mix_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready and proc.stdout is not None else ""
    if "serving http://" not in line:
        proc.kill()
        raise RuntimeError(f"the service did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split("serving ")[1].strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="knobflow-drift-live-"))
    mix_file = home / "mix"
    mix_file.write_text(PHASES[0])
    service, url = start_service(home, mix_file)
    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    exp_file = home / "drift-live.yaml"
    exp_file.write_text(experiment_text(url, args.settle, args.window, args.interval))
    records: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    out = (args.out / "live.jsonl").open("w")
    try:
        for n in range(2 * args.rounds + 1):  # round 0: the baseline, then rounds per phase
            phase = PHASES[0] if n <= args.rounds else PHASES[1]
            mix_file.write_text(phase)
            started = time.monotonic()
            proc = subprocess.run(
                [str(BIN / "knobflow"), "round", str(exp_file), "--json"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"round {n}: knobflow round exited {proc.returncode}: {proc.stderr[-2000:]}")
            report = json.loads(proc.stdout)
            rec = {
                "round": report["round"],
                "phase": phase,
                "action": report["action"],
                "config": report["config"],
                "value": report["value"],
                "reward": report["reward"],
                "failed": report["failed"],
                "guardrails": report["guardrails"],
                "seconds": round(time.monotonic() - started, 2),
            }
            records.append(rec)
            out.write(json.dumps(rec) + "\n")
            out.flush()
            print(
                f"round {n:3d} {phase:11s} {report['action']:10s} value {report['value'] or 0:9.0f} "
                f"reward {report['reward'] if report['reward'] is not None else float('nan'):+.3f} "
                f"({rec['seconds']:.1f} s){' ' + '; '.join(report['guardrails']) if report['guardrails'] else ''}",
                flush=True,
            )
        reference = measure_defaults(home, url, mix_file, args)
    finally:
        out.close()
        service.terminate()
        service.wait(timeout=60)
    summary = summarise(records, reference, args)
    (args.out / "live-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "live-summary.md").write_text(markdown(summary) + "\n")
    return summary


def measure_defaults(home: Path, url: str, mix_file: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """The fixed default's throughput under each mix: the defaults written where the role writes
    them, then observed with the role's own module."""
    mod = observe_module()
    defaults = spec.load(EXPERIMENT).defaults()
    path = home / "targets" / "drift-demo" / "config.json"
    out: dict[str, list[float]] = {}
    for phase in PHASES:
        mix_file.write_text(phase)
        out[phase] = []
        for _ in range(args.reference_windows):
            # Written again before each window, as a round's apply does when the configuration
            # changes: the service reloads (a fresh database), so each window starts where a round's does.
            path.write_text(json.dumps(config_file(defaults), sort_keys=True) + " " * len(out[phase]))
            params = dict(url=url, argv=None, headers={}, format="auto", metrics=METRICS, settle=args.settle)
            params.update(window=args.window, interval=args.interval, warmup=0, repeats=1)
            params.update(aggregate="median", timeout=10.0)
            out[phase].append(mod.run(params)["runs"][0]["throughput_ops"])
        print(f"default under {phase}: {', '.join(f'{v:.0f}' for v in out[phase])} ops/s", flush=True)
    return out


def summarise(
    records: list[dict[str, Any]], reference: dict[str, list[float]], args: argparse.Namespace
) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for phase in PHASES:
        rows = [r for r in records if r["phase"] == phase and r["action"] != "baseline"]
        values = [r["value"] for r in rows if r["value"] is not None]
        default = statistics.median(reference[phase])
        last = values[-5:]
        phases[phase] = {
            "rounds": len(rows),
            "default_ops": default,
            "median_ops": statistics.median(values) if values else None,
            "last5_median_ops": statistics.median(last) if last else None,
            "last5_vs_default": statistics.median(last) / default if last else None,
            "rounds_above_default": sum(v > default for v in values),
            "restores": sum(any("restored" in g for g in r["guardrails"]) for r in rows),
            "failed": sum(r["failed"] is not None for r in rows),
        }
    return {
        "rounds_per_phase": args.rounds,
        "window_s": args.window,
        "settle_s": args.settle,
        "median_round_s": statistics.median(r["seconds"] for r in records),
        "phases": phases,
        "reference": reference,
    }


def markdown(s: dict[str, Any]) -> str:
    lines = [
        f"Live drift run: {s['rounds_per_phase']} rounds per phase, windows of {s['window_s']:g} s after "
        f"{s['settle_s']:g} s of settling; a round took {s['median_round_s']:.1f} s (median).",
        "",
        "| phase | rounds | default ops/s | median ops/s | last 5 rounds, median | last 5 / default "
        "| rounds above default | restores | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, p in s["phases"].items():
        lines.append(
            f"| {phase} | {p['rounds']} | {p['default_ops']:.0f} | {p['median_ops']:.0f} | {p['last5_median_ops']:.0f} "
            f"| {p['last5_vs_default']:.2f}x | {p['rounds_above_default']} | {p['restores']} | {p['failed']} |"
        )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot was drawn: .venv/bin/pip install -c constraints.txt matplotlib")
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [r["round"] for r in records if r["value"] is not None]
    ys = [r["value"] for r in records if r["value"] is not None]
    ax.plot(xs, ys, "o-", ms=3, label="hybrid (knobflow round, real Ansible)")
    restores = [r for r in records if any("restored" in g for g in r["guardrails"])]
    ax.plot([r["round"] for r in restores], [r["value"] for r in restores], "rx", label="reward floor: restored")
    n = summary["rounds_per_phase"]
    for phase, (lo, hi) in zip(PHASES, ((0, n + 0.5), (n + 0.5, 2 * n)), strict=True):
        ax.hlines(summary["phases"][phase]["default_ops"], lo, hi, colors="gray", linestyles="--")
    ax.axvline(n + 0.5, color="k", lw=0.8)
    ax.text(n + 0.7, ax.get_ylim()[1] * 0.95, "read-heavy -> write-heavy", va="top", fontsize=8)
    ax.plot([], [], "--", color="gray", label="fixed default")
    ax.set_xlabel("round")
    ax.set_ylabel("throughput (ops/s, observed)")
    ax.set_title("Continuous tuning of a live SQLite service under drift")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per phase (after round 0, the baseline)")
    parser.add_argument("--window", type=float, default=4.0, help="seconds each round observes the service")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between applying and observing")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two samples of a window")
    parser.add_argument("--reference-windows", type=int, default=5, help="windows of the defaults per phase")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (benchmarks/drift/results)")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where to draw the plot (docs/images/drift-live.png)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="draw the plot from the results folder's live.jsonl")
    args = parser.parse_args(argv)
    if args.plot_only:
        summary = json.loads((args.out / "live-summary.json").read_text())
    else:
        summary = run(args)
        print(markdown(summary))
    records = [json.loads(line) for line in (args.out / "live.jsonl").read_text().splitlines()]
    if not args.no_plot:
        plot(records, summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
