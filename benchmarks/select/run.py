"""knobflow select on the 31-knob simulator (issue 3, must-show 7): does a screening run find the
knobs that matter, and does tuning only those reach a good configuration in fewer trials?

The simulator (benchmarks/sample_efficiency/simulator.py) knows its 5 important knobs. Two parts:

* ``screening``: for each problem variant, screening design (``qmc``, ``morris``), seed and budget,
  run the screening exactly as knobflow runs an experiment (the defaults as trial 0, proposals
  through :func:`knobflow.tuners.base.ask`, failures told as failed), rank with each evaluator, and
  record where the 5 important knobs landed. A ranking's point estimate is used (``bootstrap=1``:
  the first resample is all the trials), not the CLI's median over 30 resamples.
* ``tuning``: the default screening (``knobflow select --screen``'s design and budget) and ranking
  of each seed pick the top k knobs (k = 5, 8); then a tuner runs on the full space and on the
  reduced one (:func:`knobflow.select.reduce_space`, the other knobs pinned at the best screening
  trial's values as ``knobflow select`` does by default, and for comparison at their defaults),
  same seed, same noise stream, and the normalized regret of the incumbent is recorded after
  each trial (benchmarks/sample_efficiency/metrics.py).

Results go to ``benchmarks/select/results/{screening,tuning}.jsonl`` (one line per run) and a
summary in ``results/summary.md``::

    python -m benchmarks.select.run --part screening --seeds 10
    python -m benchmarks.select.run --part tuning --seeds 10 --tuners tpe,auto
    python -m benchmarks.select.run --part summary
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmarks.sample_efficiency import metrics, problems
from benchmarks.sample_efficiency.problem import noise_rng
from knobflow import select
from knobflow.space import Space
from knobflow.tuners import base, registry

HERE = Path(__file__).resolve().parent
PROBLEMS = ("jvm-sim", "jvm-sim-constrained")
EVALUATORS = {"qmc": ("gp",), "morris": ("morris", "gp")}
BUDGETS = (64, 96, 128, 192)
TOPS = (5, 8, 10)
REGRET_LEVELS = (0.5, 0.4, 0.3)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def screen(problem: str, design: str, seed: int, trials: int) -> list[FrozenTrial]:
    """A screening run of ``trials`` trials with tuner ``design``, as knobflow runs it."""
    _quiet()
    prob = problems.get(problem)
    space = prob.space
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    study.enqueue_trial(space.defaults(), user_attrs={"baseline": True})
    tuner = registry.create(design, seed=seed, defaults=space.defaults())
    for _ in range(trials):
        trial = base.ask(tuner, study, space, seed=seed)
        params = dict(trial.params)
        assert not space.problems(params), (trial.number, space.problems(params))
        y, _ = prob.evaluate(params, noise_rng(f"{problem}:screening", seed, trial.number))
        base.tell(study, trial.number, TrialState.COMPLETE if y is not None else TrialState.FAIL, y)
    return study.get_trials(deepcopy=False)


def order(trials: list[FrozenTrial], space: Space, evaluator: str | None, k: int, bootstrap: int = 1) -> list[str]:
    """The tunables by importance, ranked ones first (``evaluator`` None: select's default)."""
    ranking = select.rank(
        trials, maximize=True, names=space.names, k=k, evaluator=evaluator, bootstrap=bootstrap, seed=0
    )
    return [r.name for r in ranking]


def tune(problem: str, space: Space, tuner: str, seed: int, trials: int) -> list[float]:
    """The incumbent's normalized regret after each trial of ``tuner`` on ``space``."""
    _quiet()
    prob = problems.get(problem)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    study.enqueue_trial(space.defaults(), user_attrs={"baseline": True})
    t = registry.create(tuner, seed=seed, defaults=space.defaults())
    noisy: list[float | None] = []
    true: list[float | None] = []
    for _ in range(trials):
        trial = base.ask(t, study, space, seed=seed)
        params = dict(trial.params)
        y, f = prob.evaluate(params, noise_rng(problem, seed, trial.number))
        base.tell(study, trial.number, TrialState.COMPLETE if y is not None else TrialState.FAIL, y)
        noisy.append(y)
        true.append(f)
    return metrics.regret_curve(metrics.incumbents(noisy, true, prob.maximize), metrics.Scale.of(prob))


def trials_to(curve: list[float], level: float) -> int | None:
    """The first number of trials whose incumbent has normalized regret at most ``level``."""
    return next((n for n, r in enumerate(curve, start=1) if r <= level), None)


# Tasks ---------------------------------------------------------------------------------------------------
def screening_task(task: tuple[str, str, int]) -> list[dict[str, Any]]:
    problem, design, seed = task
    prob = problems.get(problem)
    started = time.perf_counter()
    trials = screen(problem, design, seed, max(BUDGETS))
    rows = []
    for budget in BUDGETS:
        # The first ``budget`` trials (the baseline included): a screening run of that budget.
        part = [t for t in trials if t.number < budget]
        for evaluator in EVALUATORS[design]:
            try:
                names = order(part, prob.space, evaluator, 8)
            except select.SelectError:  # too few trials ran (the rest crashed): no ranking, a miss
                names = []
            important = sorted(prob.important)  # type: ignore[attr-defined]
            ranks = {n: names.index(n) + 1 if n in names else len(prob.space.names) + 1 for n in important}
            rows.append(
                {
                    "problem": problem,
                    "design": design,
                    "seed": seed,
                    "budget": budget,
                    "evaluator": evaluator,
                    "failed": sum(t.state == TrialState.FAIL for t in part),
                    "ranks": ranks,
                    "top": names[:10],
                }
            )
    rows[-1]["wall_s"] = round(time.perf_counter() - started, 1)
    return rows


def tuning_task(task: tuple[str, str, int, int]) -> dict[str, Any]:
    problem, tuner, seed, trials = task
    prob = problems.get(problem)
    space = prob.space
    screening = screen(problem, select.SCREENING_DESIGN, seed, select.screening_budget(len(space.names)))
    names = order(screening, space, None, 8)
    out: dict[str, Any] = {"problem": problem, "tuner": tuner, "seed": seed, "trials": trials, "curves": {}}
    out["screening_trials"] = len(screening)
    out["ranking"] = names[:10]
    out["hit"] = {k: set(names[:k]) >= set(prob.important) for k in TOPS}  # type: ignore[attr-defined]
    started = time.perf_counter()
    best = select.best_params(screening, maximize=prob.maximize)
    out["curves"]["full"] = [round(r, 4) for r in tune(problem, space, tuner, seed, trials)]
    for k in (5, 8):
        # As knobflow select writes it: the others pinned at the best screening trial's values.
        reduced = select.reduce_space(space, names[:k], select.pin_values(space, names[:k], best))
        out["curves"][f"top{k}"] = [round(r, 4) for r in tune(problem, reduced, tuner, seed, trials)]
    reduced = select.reduce_space(space, names[:5])  # --pin default: the others at their defaults
    out["curves"]["top5-defaults"] = [round(r, 4) for r in tune(problem, reduced, tuner, seed, trials)]
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def _pool_map(fn: Any, tasks: list[Any], jobs: int) -> Any:
    if jobs <= 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ctx.Pool(processes=jobs, initializer=_quiet) as pool:
        yield from pool.imap_unordered(fn, tasks)


# Summary -------------------------------------------------------------------------------------------------
def _load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary(results: Path) -> str:
    lines = ["# knobflow select on the 31-knob simulator", ""]
    rows = [r for rs in _load(results / "screening.jsonl") for r in (rs if isinstance(rs, list) else [rs])]
    if rows:
        lines += [
            "## Screening: runs with all 5 important knobs in the top k",
            "",
            "| problem | design | evaluator | trials | seeds | top 5 | top 8 | top 10 | median worst rank | failed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        cells: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            cells[(r["problem"], r["design"], r["evaluator"], r["budget"])].append(r)
        for (problem, design, evaluator, budget), rs in sorted(cells.items()):
            worst = [max(r["ranks"].values()) for r in rs]
            hits = [sum(w <= k for w in worst) for k in TOPS]
            fails = statistics.median(r["failed"] for r in rs)
            lines.append(
                f"| {problem} | {design} | {evaluator} | {budget} | {len(rs)} | "
                + " | ".join(f"{h}/{len(rs)}" for h in hits)
                + f" | {statistics.median(worst):g} | {fails:g} |"
            )
        lines.append("")
    runs = _load(results / "tuning.jsonl")
    if runs:
        lines += [
            "## Tuning the reduced file against the full one",
            "",
            "Median over seeds of the trials the incumbent needed to reach a normalized regret (a run that",
            "never reached it counts as more than its trials: shown as >N when it is the median), and the",
            "median normalized regret after 20, 40 and 60 trials. The screening's trials are not included.",
            "",
            "| problem | tuner | space | seeds | "
            + " | ".join(f"trials to NR<={lv}" for lv in REGRET_LEVELS)
            + " | NR@20 | NR@40 | NR@60 |",
            "|---|---|---|---|" + "---|" * len(REGRET_LEVELS) + "---|---|---|",
        ]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in runs:
            groups[(r["problem"], r["tuner"])].append(r)
        for (problem, tuner), rs in sorted(groups.items()):
            n = rs[0]["trials"]
            for space in ("full", "top5", "top8", "top5-defaults"):
                curves = [r["curves"][space] for r in rs if space in r["curves"]]
                if not curves:
                    continue
                cols = []
                for lv in REGRET_LEVELS:
                    needed = [trials_to(c, lv) or n + 1 for c in curves]
                    med = statistics.median(needed)
                    cols.append(f">{n}" if med > n else f"{med:g}")
                at = [statistics.median(c[min(m, len(c)) - 1] for c in curves) for m in (20, 40, 60)]
                lines.append(
                    f"| {problem} | {tuner} | {space} | {len(curves)} | "
                    + " | ".join(cols)
                    + f" | {at[0]:.2f} | {at[1]:.2f} | {at[2]:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["screening", "tuning", "summary"], required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--designs", default="qmc,morris")
    ap.add_argument("--tuners", default="tpe")
    ap.add_argument("--trials", type=int, default=60, help="tuning trials per run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    _quiet()
    args.out.mkdir(parents=True, exist_ok=True)
    for p in PROBLEMS:
        problems.get(p).stats()
    if args.part == "screening":
        tasks = [(p, d, s) for p in PROBLEMS for d in args.designs.split(",") for s in range(args.seeds)]
        with open(args.out / "screening.jsonl", "a") as f:
            for rows in _pool_map(screening_task, tasks, args.jobs):
                f.write(json.dumps(rows) + "\n")
                f.flush()
                print(rows[0]["problem"], rows[0]["design"], rows[0]["seed"], rows[-1].get("wall_s"), flush=True)
    elif args.part == "tuning":
        tasks = [(p, t, s, args.trials) for t in args.tuners.split(",") for p in PROBLEMS for s in range(args.seeds)]
        with open(args.out / "tuning.jsonl", "a") as f:
            for row in _pool_map(tuning_task, tasks, args.jobs):
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(row["problem"], row["tuner"], row["seed"], row["wall_s"], flush=True)
    text = summary(args.out)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
