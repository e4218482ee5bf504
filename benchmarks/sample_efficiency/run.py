"""Sample efficiency of knobflow's tuners, offline: problems x tuners x seeds, summarised as a table.

Usage (from the repository root):

    .venv/bin/python benchmarks/sample_efficiency/run.py --tier smoke      # < 60 s on 2 cores
    .venv/bin/python benchmarks/sample_efficiency/run.py --tier full       # 10 problems x 10 seeds x 100 trials
    .venv/bin/python benchmarks/sample_efficiency/run.py --tier full --tuners random,tpe --seeds 3 --trials 50

Runs are cached in ``<out>/runs.jsonl`` and skipped when run again (``--fresh`` re-runs them); the
summary goes to ``<out>/summary.md`` and ``<out>/summary.json``, and with matplotlib installed the
full tier plots median normalized regret against trials to docs/images/sample_efficiency.png.
README.md beside this file describes the problems and the metrics.
"""

from __future__ import annotations

import os

# One BLAS thread per process: the benchmark runs one process per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.sample_efficiency import problems, report, runner  # noqa: E402

HERE = Path(__file__).resolve().parent
PLOT = REPO / "docs" / "images" / "sample_efficiency.png"

TIERS: dict[str, dict[str, Any]] = {
    "smoke": {
        "problems": ["jvm-sim-constrained", "bbob-mixint-f15-d10"],
        "seeds": 2,
        "trials": 15,
        "tuners": ["random", "tpe", "auto"],
        "out": HERE / "results" / "smoke",
        "plot": None,
    },
    "full": {
        "problems": None,  # every problem that can run here
        "seeds": 10,
        "trials": 50,
        "tuners": None,  # runner.default_tuners()
        "out": HERE / "results",
        "plot": PLOT,
    },
}


def _seeds(text: str) -> list[int]:
    """``10`` means seeds 0..9; ``1,4,7`` means those seeds."""
    return [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tier", choices=sorted(TIERS), default="smoke", help="preset of the options below (smoke)")
    ap.add_argument("--tuners", help="comma-separated tuners (default: the tier's; missing ones are skipped)")
    ap.add_argument("--problems", help=f"comma-separated problems, of: {', '.join(problems.names())}")
    ap.add_argument("--seeds", help="number of seeds (0..n-1) or a comma-separated list")
    ap.add_argument("--trials", type=int, help="trials per run, the baseline (trial 0) included")
    ap.add_argument("--jobs", type=int, default=2, help="processes (2)")
    ap.add_argument("--out", type=Path, help="results directory (runs.jsonl, summary.md, summary.json)")
    ap.add_argument("--plot", type=Path, help="where to write the plot (the full tier: docs/images/...)")
    ap.add_argument("--no-plot", action="store_true", help="no plot")
    ap.add_argument("--fresh", action="store_true", help="re-run runs found in the cache")
    ap.add_argument(
        "--checkpoints",
        type=Path,
        help="save each trial of a run here and resume a stopped run after its last saved trial\n"
        "(Optuna-sampler tuners only: GP's 50-trial runs take up to an hour each)",
    )
    ap.add_argument("--report-only", action="store_true", help="summarise the cached runs; run nothing")
    ap.add_argument("--list", action="store_true", help="list problems and tuners with their availability")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    tier = TIERS[args.tier]
    if args.list:
        for p in problems.names():
            print(f"problem {p}: {problems.unavailable(p) or 'ok'}")
        for t in runner.DEFAULT_TUNERS:
            print(f"tuner {t}: {runner.tuner_unavailable(t) or 'ok'}")
        return 0
    chosen_problems = args.problems.split(",") if args.problems else (tier["problems"] or problems.names())
    for p in list(chosen_problems):
        reason = problems.unavailable(p)
        if reason:
            print(f"skipping problem {p}: {reason}", file=sys.stderr)
            chosen_problems.remove(p)
    tuners = args.tuners.split(",") if args.tuners else (tier["tuners"] or runner.default_tuners())
    for t in list(tuners):
        reason = runner.tuner_unavailable(t)
        if reason:
            print(f"skipping tuner {t}: {reason}", file=sys.stderr)
            tuners.remove(t)
    seeds = _seeds(args.seeds) if args.seeds else list(range(tier["seeds"]))
    trials = args.trials or tier["trials"]
    out: Path = args.out or tier["out"]
    if not chosen_problems or not tuners:
        print("nothing to run", file=sys.stderr)
        return 2
    checkpoints = None if args.checkpoints is None or args.fresh else str(args.checkpoints)
    tasks = [runner.Task(p, t, s, trials, checkpoints) for p in chosen_problems for t in tuners for s in seeds]
    print(
        f"{len(chosen_problems)} problems x {len(tuners)} tuners ({', '.join(tuners)}) x {len(seeds)} seeds, "
        f"{trials} trials, {args.jobs} processes -> {out}",
        flush=True,
    )
    started = time.monotonic()

    def progress(record: dict[str, Any], i: int, n: int) -> None:
        print(
            f"[{i}/{n} {time.monotonic() - started:6.0f}s] {record['problem']} {record['tuner']} seed {record['seed']}:"
            f" {record['wall_s']:.1f}s",
            flush=True,
        )

    records = runner.run_all(
        tasks, out, jobs=args.jobs, fresh=args.fresh, run_missing=not args.report_only, progress=progress
    )
    if len(records) < len(tasks):
        print(f"{len(tasks) - len(records)} of {len(tasks)} runs are not in the cache: summarising the others")
    if not records:
        return 2
    summary = report.summarise(records)
    summary["settings"] = {"problems": chosen_problems, "tuners": tuners, "seeds": seeds, "trials": trials}
    table = report.markdown(summary)
    (out / "summary.md").write_text(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print(table)
    plot_path = None if args.no_plot else (args.plot or tier["plot"])
    if plot_path is not None:
        if report.plot(summary, plot_path):
            print(f"plot: {plot_path}")
        else:
            print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    if summary["optimum_check"]:
        print(f"WARNING: runs beat the recorded optimum: {summary['optimum_check']}", file=sys.stderr)
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
