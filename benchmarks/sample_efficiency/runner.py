"""Runs: one tuner on one problem with one seed for a number of trials, exactly as knobflow runs an
experiment (baseline first, proposals through :func:`knobflow.tuners.base.ask`), cached as JSON lines.

A run's record keeps, per trial, the measured and the true value (None when the configuration
failed), the time the proposal took, who proposed it and whether the configuration broke the space
(it never should). Records are appended to ``runs.jsonl`` by the parent process as workers finish,
and a run already in the file (same problem, tuner, seed, trials and code fingerprint) is not run
again, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import multiprocessing
import os
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from benchmarks.sample_efficiency import problems
from benchmarks.sample_efficiency.problem import noise_rng
from knobflow.tuners import base, registry

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PEERS = ("smac",)
# The tuners a benchmark runs when none are named: knobflow's single-objective tuners worth
# comparing (grid, qmc, nsga2 and identity are left out) and the peers.
DEFAULT_TUNERS = ("random", "tpe", "tpe-univariate", "cmaes", "gp", "auto", "hybrid", "smac")
ONLINE_TUNERS = ("hybrid", "bluefin", "exp_weights", "autoscope")  # knobflow.tuners.online_adapter
RECORD_VERSION = 1


@dataclass(frozen=True)
class Task:
    problem: str
    tuner: str
    seed: int
    trials: int
    checkpoints: str | None = None  # a folder: the run saves each trial there and resumes from it

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.problem, self.tuner, self.seed, self.trials)


def tuner_unavailable(name: str) -> str | None:
    """Why tuner ``name`` cannot run here, or None."""
    if name == "smac":
        from benchmarks.sample_efficiency.peers.smac import available

        return available()
    if name not in registry.names():
        return f"not a knobflow tuner here (known: {', '.join(registry.names())})"
    if name == "auto":
        return None if importlib.util.find_spec("knobflow.tuners.auto") is not None else "knobflow.tuners.auto missing"
    if name in ONLINE_TUNERS:  # no extra packages
        return None
    from knobflow.tuners.optuna import SAMPLERS, missing_modules

    if name not in SAMPLERS:  # identity
        return None

    missing = missing_modules(name)
    return f"needs {', '.join(missing)}" if missing else None


def default_tuners() -> list[str]:
    """The default tuners that can run here (``auto`` appears once the registry lists it)."""
    return [t for t in DEFAULT_TUNERS if tuner_unavailable(t) is None]


def make_tuner(name: str, seed: int, space: Any, trials: int) -> Any:
    """A knobflow tuner from the registry, or a peer."""
    if name == "smac":
        from benchmarks.sample_efficiency.peers.smac import SmacPeer

        return SmacPeer(space=space, seed=seed, n_trials=trials)
    return registry.create(name, seed=seed, defaults=space.defaults())


def _tuner_sources(tuner: str) -> list[str]:
    """The source a tuner's proposals depend on: knobflow's proposal path and space, and the tuner's
    own code (for Optuna-backed tuners, the wrapper and that sampler's factory, not the others')."""
    from knobflow import space as space_module
    from knobflow.tuners import optuna as kopt

    parts = [inspect.getsource(base), inspect.getsource(space_module)]
    if tuner == "auto":
        parts.append((REPO / "src" / "knobflow" / "tuners" / "auto.py").read_text())
    elif tuner == "smac":
        parts.append((HERE / "peers" / "smac.py").read_text())
    elif tuner in ONLINE_TUNERS:  # the adapter and the whole online library
        tuners_dir = REPO / "src" / "knobflow" / "tuners"
        parts.append((tuners_dir / "online_adapter.py").read_text())
        parts += [p.read_text() for p in sorted((tuners_dir / "online").glob("*.py"))]
    elif tuner in kopt.SAMPLERS:
        spec = kopt.SAMPLERS[tuner]
        parts += [inspect.getsource(kopt.OptunaTuner), inspect.getsource(kopt._shadow)]
        parts += [inspect.getsource(kopt._derive_seed), *_factory_sources(spec.factory), repr(spec.reseed)]
    else:
        parts.append(inspect.getsource(kopt.IdentityTuner))
    return parts


def _factory_sources(factory: Callable[..., Any]) -> list[str]:
    """A sampler factory's source and, transitively, that of the functions and classes of
    :mod:`knobflow.tuners.optuna` it uses (say, the wrapper that repairs the GP's refused proposals)
    and the values of that module's constants they name."""
    from knobflow.tuners import optuna as kopt

    parts: list[str] = []
    seen: set[str] = set()
    todo: list[Any] = [factory]
    while todo:
        source = textwrap.dedent(inspect.getsource(todo.pop()))
        parts.append(source)
        names = sorted({n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)} - seen)
        for name in names:
            seen.add(name)
            obj = getattr(kopt, name, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == kopt.__name__:
                todo.append(obj)
            elif isinstance(obj, int | float | str) and name.isupper():
                parts.append(f"{name} = {obj!r}")
    return parts


class _Meaning(ast.NodeTransformer):
    """Strips what cannot change what code does: docstrings and type annotations (the code runs
    with ``from __future__ import annotations``, so they are never evaluated). A ``ClassVar``
    annotation is kept: it decides whether a dataclass attribute is a field."""

    def _body(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = _body

    depth = 0  # how many functions the visitor is inside

    def visit_FunctionDef(self, node: Any) -> Any:
        node.returns = None
        for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]:
            if a is not None:
                a.annotation = None
        self.depth += 1
        try:
            return self._body(node)
        finally:
            self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        self.generic_visit(node)
        if self.depth and node.value is not None:  # in a function, ``x: T = v`` is ``x = v``
            return ast.Assign([node.target], node.value, lineno=node.lineno)
        if "ClassVar" not in ast.dump(node.annotation):  # in a class body it may declare a field
            node.annotation = ast.Name("_", ast.Load())
        return node


def meaning(source: str) -> str:
    """The source without docstrings, comments, formatting and type annotations (:class:`_Meaning`):
    what a cache fingerprint should depend on, so that a docstring or a type hint does not make
    hours of benchmark runs stale."""
    return ast.dump(_Meaning().visit(ast.parse(textwrap.dedent(source))))


def fingerprint(tuner: str, problem: str) -> str:
    """A digest of what a run's result depends on: the tuner's code (:func:`_tuner_sources`), Optuna's
    (and SMAC's) version and the problem's version. A cached run with another fingerprint is stale;
    a change to another tuner's code (say, the grid sampler's) leaves it current."""
    h = hashlib.sha256()
    for part in _tuner_sources(tuner):
        h.update(meaning(part).encode())
    h.update(importlib.metadata.version("optuna").encode())
    if tuner == "smac":
        try:
            h.update(importlib.metadata.version("smac").encode())
        except importlib.metadata.PackageNotFoundError:  # not installed: no cached SMAC run is current
            h.update(b"smac missing")
    h.update(f"{problems.get(problem).version}:{RECORD_VERSION}".encode())
    return h.hexdigest()[:16]


def resumable(tuner: str) -> bool:
    """Whether a run of ``tuner`` can stop after any trial and resume with the proposals an
    uninterrupted run makes: Optuna's samplers keep no state outside the study (knobflow rebuilds
    them for each proposal, seeded from the number of trials so far), so a study rebuilt from the
    trials is all they need. ``auto`` (its rejection count), the online tuners and SMAC keep state
    of their own: their runs start over."""
    from knobflow.tuners.optuna import SAMPLERS

    return tuner in SAMPLERS


def checkpoint_path(task: Task) -> Path | None:
    """Where a run saves its trials as it goes (None: it does not), named after the task and the
    code's fingerprint, so a checkpoint of other code is never resumed."""
    if task.checkpoints is None or not resumable(task.tuner):
        return None
    fp = fingerprint(task.tuner, task.problem)
    return Path(task.checkpoints) / f"{task.problem}.{task.tuner}.seed{task.seed}.n{task.trials}.{fp}.jsonl"


def _saved_trials(path: Path | None) -> list[dict[str, Any]]:
    """The trials a checkpoint holds, in order (a partly written last line, from a killed run, is dropped)."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if rec.get("number") != len(out):
            break
        out.append(rec)
    return out


def _restore(study: optuna.Study, saved: dict[str, Any]) -> None:
    """Add a saved trial to the study as the run had it: parameters, their distributions, state,
    value and attributes (what the tuners read)."""
    state = TrialState[saved["state"]]
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            value=saved["noisy"] if state == TrialState.COMPLETE else None,
            params=saved["params"],
            distributions={n: optuna.distributions.json_to_distribution(d) for n, d in saved["distributions"].items()},
            user_attrs=saved["user_attrs"],
            system_attrs=saved["system_attrs"],
        )
    )


def run_one(task: Task) -> dict[str, Any]:
    """One run, as knobflow runs an experiment: the defaults as trial 0, then ``trials - 1`` proposals.

    With ``task.checkpoints`` (and a :func:`resumable` tuner), each trial is saved as it ends and a
    run that was stopped resumes after its last saved trial; the checkpoint is removed when the run
    is done. The record is the uninterrupted run's (``resumed_at`` lists the trials it resumed at;
    ``wall_s`` sums the trials' times).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    problem = problems.get(task.problem)
    space = problem.space
    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), direction="maximize" if problem.maximize else "minimize"
    )
    cp = checkpoint_path(task)
    saved = _saved_trials(cp)[: task.trials]
    for rec in saved:
        _restore(study, rec)
    if not saved:
        study.enqueue_trial(space.defaults(), user_attrs={"baseline": True})
    tuner = make_tuner(task.tuner, task.seed, space, task.trials)
    noisy: list[float | None] = [r["noisy"] for r in saved]
    true: list[float | None] = [r["true"] for r in saved]
    ask_s: list[float] = [r["ask_s"] for r in saved]
    sources: list[str] = [r["source"] for r in saved]
    broken: list[dict[str, Any]] = [b for r in saved for b in r["broken"]]
    trial_s: list[float] = [r["trial_s"] for r in saved]
    started = time.perf_counter()
    if cp is not None:  # rewritten with the trials it resumes from (a partly written line dropped)
        cp.parent.mkdir(parents=True, exist_ok=True)
        cp.write_text("".join(json.dumps(r) + "\n" for r in saved))
    try:
        for _ in range(len(saved), task.trials):
            t0 = time.perf_counter()
            trial = base.ask(tuner, study, space, seed=task.seed)
            ask_s.append(time.perf_counter() - t0)
            params = dict(trial.params)
            wrong = space.problems(params)
            if wrong:
                broken.append({"trial": trial.number, "problems": wrong})
            y, f = problem.evaluate(params, noise_rng(task.problem, task.seed, trial.number))
            state = TrialState.COMPLETE if y is not None else TrialState.FAIL
            base.tell(study, trial.number, state, y)
            noisy.append(y)
            true.append(f)
            sources.append(str(trial.user_attrs.get("proposed_by", "baseline" if trial.number == 0 else "")))
            trial_s.append(time.perf_counter() - t0)
            if cp is not None:
                done = study._storage.get_trial(trial._trial_id)
                line = {
                    "number": trial.number,
                    "params": done.params,
                    "distributions": {
                        n: optuna.distributions.distribution_to_json(d) for n, d in done.distributions.items()
                    },
                    "state": state.name,
                    "user_attrs": done.user_attrs,
                    "system_attrs": done.system_attrs,
                    "noisy": y,
                    "true": f,
                    "ask_s": ask_s[-1],
                    "source": sources[-1],
                    "broken": [b for b in broken if b["trial"] == trial.number],
                    "trial_s": trial_s[-1],
                    "resumed": bool(saved) and trial.number == len(saved),
                }
                with open(cp, "a") as fh:
                    fh.write(json.dumps(line) + "\n")
    finally:
        close = getattr(tuner, "close", None)
        if close is not None:
            close()
    record: dict[str, Any] = {
        "problem": task.problem,
        "tuner": task.tuner,
        "seed": task.seed,
        "trials": task.trials,
        "fingerprint": fingerprint(task.tuner, task.problem),
        "noisy": noisy,
        "true": true,
        "ask_s": [round(s, 5) for s in ask_s],
        "sources": sources,
        "broken": broken,
        "rejections": getattr(tuner, "rejections", None),
        "wall_s": round(sum(trial_s) if saved else time.perf_counter() - started, 3),
    }
    if saved:
        record["resumed_at"] = [r["number"] for r in saved if r.get("resumed")] + [len(saved)]
    if cp is not None:
        cp.unlink(missing_ok=True)
    return record


# Cache ------------------------------------------------------------------------------------------------
def load(path: Path) -> list[dict[str, Any]]:
    """Every record of a runs.jsonl (a partly written last line, from a killed run, is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# Tuners whose proposals depend on the run's budget (SMAC sizes its initial design from it): their
# runs are only reused for the same number of trials. Every other tuner proposes the same first n
# configurations whatever the budget, so a longer cached run answers a shorter task.
BUDGET_AWARE = frozenset({"smac"})

_PER_TRIAL = ("noisy", "true", "ask_s", "sources")


def truncated(record: dict[str, Any], trials: int) -> dict[str, Any]:
    """The first ``trials`` trials of a longer run, as the record of a run of that length."""
    out = dict(record)
    for k in _PER_TRIAL:
        out[k] = record[k][:trials]
    out["broken"] = [b for b in record["broken"] if b["trial"] < trials]
    out["trials"] = trials
    out["truncated_from"] = record["trials"]
    return out


def current(records: Iterable[dict[str, Any]], tasks: Iterable[Task]) -> dict[tuple[str, str, int, int], dict]:
    """The cached record of each task, if it has one with the current fingerprint (the last one wins;
    for a tuner not in :data:`BUDGET_AWARE`, the first trials of a longer run when there is no run of
    the task's length)."""
    wanted = {t.key: t for t in tasks}
    prints: dict[tuple[str, str], str] = {}
    exact: dict[tuple[str, str, int, int], dict] = {}
    longer: dict[tuple[str, str, int], dict] = {}
    for r in records:
        if "error" in r:
            continue
        pk = (r["tuner"], r["problem"])
        if pk not in prints:
            prints[pk] = fingerprint(*pk)
        if r.get("fingerprint") != prints[pk]:
            continue
        exact[(r["problem"], r["tuner"], r["seed"], r["trials"])] = r
        if r["tuner"] not in BUDGET_AWARE:
            k3 = (r["problem"], r["tuner"], r["seed"])
            if k3 not in longer or r["trials"] >= longer[k3]["trials"]:
                longer[k3] = r
    out: dict[tuple[str, str, int, int], dict] = {}
    for key, t in wanted.items():
        if key in exact:
            out[key] = exact[key]
        elif (t.problem, t.tuner, t.seed) in longer and longer[(t.problem, t.tuner, t.seed)]["trials"] > t.trials:
            out[key] = truncated(longer[(t.problem, t.tuner, t.seed)], t.trials)
    return out


def _worker_init() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run_safely(task: Task) -> dict[str, Any]:
    """``run_one``, an exception becoming a record with ``error`` (reported, never cached)."""
    try:
        return run_one(task)
    except Exception:
        return {**task.__dict__, "error": traceback.format_exc()}


def run_all(
    tasks: list[Task],
    results: Path,
    *,
    jobs: int = 2,
    fresh: bool = False,
    run_missing: bool = True,
    progress: Callable[[dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every task not already cached in ``results/runs.jsonl`` on ``jobs`` processes (none when
    ``run_missing`` is false); return the records of the tasks that have one."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "runs.jsonl"
    for name in sorted({t.problem for t in tasks}):
        problems.get(name).stats()  # computed once here, not by two workers at a time
    done = {} if fresh else current(load(path), tasks)
    todo = [t for t in tasks if t.key not in done] if run_missing else []
    errors: list[dict[str, Any]] = []
    # Slow tuners first, so the two processes finish together.
    cost = {"smac": 0, "auto": 1, "gp": 2, "tpe": 3}
    todo.sort(key=lambda t: (cost.get(t.tuner, 9), -t.trials, t.problem, t.seed))
    if todo:
        with open(path, "a") as out:
            if jobs <= 1:
                iterator: Iterable[dict[str, Any]] = map(_run_safely, todo)
                pool = None
            else:
                ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
                pool = ctx.Pool(processes=jobs, initializer=_worker_init)
                iterator = pool.imap_unordered(_run_safely, todo)
            try:
                for i, record in enumerate(iterator, start=1):
                    if "error" in record:
                        errors.append(record)
                        print(f"FAILED {record['problem']} {record['tuner']} seed {record['seed']}:\n{record['error']}")
                        continue
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    done[(record["problem"], record["tuner"], record["seed"], record["trials"])] = record
                    if progress is not None:
                        progress(record, i, len(todo))
            finally:
                if pool is not None:
                    pool.close()
                    pool.join()
    return [done[t.key] for t in tasks if t.key in done]
