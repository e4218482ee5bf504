"""Per-trial overhead of `knobflow run`, against a bare `ansible-playbook` run of the same playbook.

Usage (from the repository root, after `make venv`):

    .venv/bin/python benchmarks/overhead/run.py [--trials 10] [--bare 10] [--sleep-trials 4]

What it measures, all in one process tree and one run:

1. bare: `ansible-playbook -i inventories/local playbooks/trial.yml -e @vars.json`, the very playbook a
   knobflow trial runs, with the same extra variables (the SQLite layer applied for real, and a
   zero-length benchmark: `/bin/echo '{"noop": 1}'`). Half of the runs before knobflow, half after.
2. knobflow: `knobflow run` of an experiment with that layer and that zero-length benchmark. The
   per-trial time is the steady-state cycle, from one trial's start to the next one's, read from the
   trials' timestamps in the store: it includes the tuner, the playbook run, the tell, and Airflow
   starting the next mapped task instance. Airflow's one-off start-up is reported separately.
3. A benchmark that sleeps 5 s: per trial, wall time minus benchmark time, split into the tuner
   (ask), Ansible (playbook run minus the benchmark command) and Airflow plus bookkeeping (the rest
   of the cycle: task start, tell, XCom).

Results go to stdout (Markdown) and benchmarks/overhead/results/overhead.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "src"))

EXPERIMENT = """
name: {name}
objective: {{metric: {metric}, direction: maximize}}
tunables:
  - {{name: journal_mode, layer: stack, type: categorical, choices: [delete, wal, memory], default: delete}}
  - {{name: batch_size, layer: stack, type: int, low: 1, high: 1000, log: true, default: 1}}
layers:
  stack:
    role: sqlite_config
    vars:
      sqlite_config_path: "{{{{ knobflow.home }}}}/targets/overhead/config.json"
benchmark:
  role: bench_command
  warmup: 0
  repeats: 1
  vars:
    bench_command_argv: {argv}
tuner: {{name: tpe, seed: 1}}
budget: {{trials: {trials}}}
"""


def _write_experiment(d: Path, name: str, metric: str, argv: list[str], trials: int) -> Path:
    f = d / f"{name}.yaml"
    f.write_text(EXPERIMENT.format(name=name, metric=metric, argv=json.dumps(argv), trials=trials))
    return f


def _bare_runs(exp_file: Path, n: int, home: Path) -> list[float]:
    from knobflow import engine, spec

    exp = spec.load(exp_file)
    extravars = engine._extravars(exp, 0, exp.defaults())
    vars_file = home / "bare-vars.json"
    vars_file.write_text(json.dumps(extravars))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    cmd = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(REPO / "inventories" / "local"),
        str(REPO / "playbooks" / "trial.yml"),
        "-e",
        f"@{vars_file}",
    ]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"bare ansible-playbook failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return times


def _knobflow_run(exp_file: Path, home: Path) -> tuple[float, list[dict[str, Any]]]:
    from knobflow.store import Store

    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "knobflow"), "run", str(exp_file)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"knobflow run failed:\n{proc.stdout}\n{proc.stderr}")
    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    trials = []
    for t in store.trials(store.load(exp_file.stem)):
        a = t.user_attrs
        trials.append(
            {
                "number": t.number,
                "started": a["started"],
                "ask_s": a["timings"]["ask_s"],
                "playbook_s": a["timings"]["playbook_s"],
                "benchmark_s": float(a["metrics"].get("benchmark_seconds", 0.0)),
            }
        )
    trials.sort(key=lambda r: r["started"])
    return wall, trials


def _cycles(trials: list[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    for cur, nxt in itertools.pairwise(trials):
        cycle = nxt["started"] - cur["started"]
        tuner = nxt["ask_s"]
        ansible = cur["playbook_s"] - cur["benchmark_s"]
        out.append(
            {
                "cycle_s": cycle,
                "benchmark_s": cur["benchmark_s"],
                "overhead_s": cycle - cur["benchmark_s"],
                "tuner_s": tuner,
                "ansible_s": ansible,
                "airflow_s": cycle - cur["playbook_s"] - tuner,
            }
        )
    return out


def _med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="trials of the zero-length experiment")
    ap.add_argument("--bare", type=int, default=10, help="bare ansible-playbook runs (half before, half after)")
    ap.add_argument("--sleep-trials", type=int, default=4, help="trials of the 5-second experiment (0 to skip)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "overhead" / "results" / "overhead.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="knobflow-overhead-") as tmp:
        d = Path(tmp)
        home = d / "home"
        home.mkdir()
        os.environ["KNOBFLOW_HOME"] = str(home)
        zero = _write_experiment(d, "overhead-zero", "noop", ["/bin/echo", '{"noop": 1}'], args.trials)
        # Warm up: the embedded Airflow DB migration and first imports are not per-trial costs.
        warm = _write_experiment(d, "overhead-warmup", "noop", ["/bin/echo", '{"noop": 1}'], 1)
        _knobflow_run(warm, home)
        bare = _bare_runs(zero, args.bare // 2, home)
        wall, trials = _knobflow_run(zero, home)
        bare += _bare_runs(zero, args.bare - args.bare // 2, home)
        cycles = _cycles(trials)
        sleep_cycles: list[dict[str, float]] = []
        if args.sleep_trials > 1:
            slp = _write_experiment(
                d, "overhead-sleep5", "slept", ["/bin/sh", "-c", "sleep 5; echo '{\"slept\": 5}'"], args.sleep_trials
            )
            _, strials = _knobflow_run(slp, home)
            sleep_cycles = _cycles(strials)

    bare_med = statistics.median(bare)
    cycle_med = _med(cycles, "cycle_s")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python benchmarks/overhead/run.py " + " ".join(sys.argv[1:]),
        "bare_ansible_playbook_s": {"median": bare_med, "min": min(bare), "max": max(bare), "runs": bare},
        "knobflow_zero_length": {
            "trials": len(trials),
            "cycle_s_median": cycle_med,
            "cycle_s_min": min(c["cycle_s"] for c in cycles),
            "cycle_s_max": max(c["cycle_s"] for c in cycles),
            "tuner_s_median": _med(cycles, "tuner_s"),
            "ansible_s_median": _med(cycles, "ansible_s"),
            "airflow_s_median": _med(cycles, "airflow_s"),
            "run_wall_s": wall,
            "startup_s": wall - sum(c["cycle_s"] for c in cycles) - trials[-1]["playbook_s"],
            "cycles": cycles,
        },
        "ratio_knobflow_to_bare": cycle_med / bare_med,
        "target_ratio": 1.5,
    }
    if sleep_cycles:
        result["knobflow_sleep5"] = {
            "trials": len(sleep_cycles) + 1,
            "overhead_s_median": _med(sleep_cycles, "overhead_s"),
            "benchmark_s_median": _med(sleep_cycles, "benchmark_s"),
            "tuner_s_median": _med(sleep_cycles, "tuner_s"),
            "ansible_s_median": _med(sleep_cycles, "ansible_s"),
            "airflow_s_median": _med(sleep_cycles, "airflow_s"),
            "cycles": sleep_cycles,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    z = result["knobflow_zero_length"]
    print("| measure | median | min | max |\n|---|---|---|---|")
    print(
        f"| bare `ansible-playbook trial.yml` ({len(bare)} runs) | {bare_med:.2f} s | "
        f"{min(bare):.2f} s | {max(bare):.2f} s |"
    )
    print(
        f"| knobflow trial cycle, zero-length benchmark ({len(cycles)} cycles) | {cycle_med:.2f} s | "
        f"{z['cycle_s_min']:.2f} s | {z['cycle_s_max']:.2f} s |"
    )
    print(f"\nratio knobflow / bare: {result['ratio_knobflow_to_bare']:.2f} (target <= 1.5)")
    print(
        f"split of the zero-length cycle: tuner {z['tuner_s_median']:.2f} s, Ansible {z['ansible_s_median']:.2f} s, "
        f"Airflow + bookkeeping {z['airflow_s_median']:.2f} s; one-off start-up {z['startup_s']:.1f} s"
    )
    if sleep_cycles:
        s = result["knobflow_sleep5"]
        print(
            f"sleep-5 benchmark: overhead per trial {s['overhead_s_median']:.2f} s "
            f"(benchmark {s['benchmark_s_median']:.2f} s): "
            f"tuner {s['tuner_s_median']:.2f} s, Ansible {s['ansible_s_median']:.2f} s, "
            f"Airflow + bookkeeping {s['airflow_s_median']:.2f} s"
        )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
