"""Trials from elsewhere: measurements imported from a file, another experiment's trials (warm
start), and the export that the import reads back.

Import (``knobflow import FILE --into EXPERIMENT.yaml``) reads CSV, a JSON list of row objects, or
JSON lines. A row holds the tunables' values (columns named after the tunables) and the metrics
(every other column holding a number), optionally ``state`` (complete or failed), ``baseline``
(true on the row measured with the defaults), ``reason`` (why a failed row failed) and ``trial``
(the row's trial number where it came from; kept for reference). A column may also be written
``params.NAME`` or ``metrics.NAME`` to say what it is (the export does so when a name is ambiguous),
and a JSON row may nest them: ``{"params": {...}, "metrics": {...}, "state": "complete"}``.

Every row is checked against the experiment: each active tunable given a value of its type, in its
domain (range, step, choices), inactive tunables left empty, the constraints held, the objective
metrics present and numeric. A row that breaks any of these is rejected and reported as
``FILE:LINE: what is wrong``, LINE being the physical line where the row starts. Good rows become
finished trials of the experiment's study with the user attribute ``imported`` (file and line);
their objective values and SLO violations are computed as for a trial the experiment ran.

Warm start (``warm_start`` in the experiment file) copies, when the study is created, the complete
trials of another experiment whose configurations are valid in this space, and queues the best of
them to be measured again right after the baseline.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from knobflow.objective import Objectives
from knobflow.space import Space, snap
from knobflow.spec import Experiment
from knobflow.store import Store, StoreError

FORMATS = ("csv", "json", "jsonl")
RESERVED = ("trial", "state", "baseline", "reason")
PARAMS_PREFIX = "params."
METRICS_PREFIX = "metrics."
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
COMPLETE_WORDS = ("complete", "completed", "ok", "success")
FAILED_WORDS = ("failed", "fail", "failure", "error")
MAX_REASONS = 100  # skipped warm-start trials listed in the study's attribute (the count is always exact)


class ImportFileError(Exception):
    """The file cannot be read as rows at all (not CSV/JSON, a bad header). The message names file and line."""


# --------------------------------------------------------------------------------------------
# Reading rows


@dataclass
class RawRow:
    """One row as read: its first physical line and its cells (``None`` or ``""`` means empty)."""

    line: int
    cells: dict[str, Any]
    error: str | None = None


@dataclass
class Rejected:
    """A row that was not imported, and everything wrong with it."""

    line: int
    problems: list[str]

    def format(self, source: str) -> str:
        return f"{source}:{self.line}: {'; '.join(self.problems)}"


def detect_format(path: Path, fmt: str | None) -> str:
    """``fmt`` if given, else from the file's extension (.csv, .json, .jsonl/.ndjson)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ImportFileError(f"{path}: unknown format {fmt!r} (use {', '.join(FORMATS)})")
        return fmt
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv"):
        return "csv"
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    raise ImportFileError(
        f"{path}: cannot tell the format from the extension {ext or '(none)'!r}: use --format {'|'.join(FORMATS)}"
    )


def read_rows(path: Path, fmt: str, *, source: str | None = None) -> list[RawRow]:
    """The rows of a CSV, JSON (a list of objects, or JSON lines) file, each with its line number."""
    source = source or str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFileError(f"{source}: file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"{source}: cannot read: {exc}") from None
    if fmt == "csv":
        return _read_csv(text, source, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    if fmt == "jsonl":
        return _read_jsonl(text, source)
    if text.lstrip().startswith("["):
        return _read_json_list(text, source)
    return _read_jsonl(text, source)  # a .json file of one object per line


def _read_csv(text: str, source: str, delimiter: str = ",") -> list[RawRow]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[RawRow] = []
    end = 0
    while True:
        start = end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ImportFileError(f"{source}:{reader.line_num}: not valid CSV: {exc}") from None
        end = reader.line_num
        if not record or all(not c.strip() for c in record):
            continue  # blank line
        if header is None:
            header = [c.strip() for c in record]
            empty = [i + 1 for i, c in enumerate(header) if not c]
            if empty:
                raise ImportFileError(f"{source}:{start}: header column {empty[0]} has no name")
            dupes = sorted({c for c in header if header.count(c) > 1})
            if dupes:
                raise ImportFileError(f"{source}:{start}: the header names column {dupes[0]!r} twice")
            continue
        if len(record) != len(header):
            rows.append(RawRow(start, {}, error=f"has {len(record)} cells but the header has {len(header)} columns"))
            continue
        rows.append(RawRow(start, dict(zip(header, record, strict=True))))
    if header is None:
        raise ImportFileError(f"{source}: empty file: no header line")
    return rows


class _Lines:
    """Line numbers of offsets into a text, for offsets visited in increasing order."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _read_json_list(text: str, source: str) -> list[RawRow]:
    """A JSON array of objects; each row's line is the line of its opening brace."""
    decoder = json.JSONDecoder()
    space = re.compile(r"\s*")
    lines = _Lines(text)

    def skip(pos: int) -> int:
        m = space.match(text, pos)
        return m.end() if m else pos

    def fail(pos: int, message: str) -> ImportFileError:
        return ImportFileError(f"{source}:{lines.at(pos)}: not valid JSON: {message}")

    pos = skip(0) + 1  # past '['
    rows: list[RawRow] = []
    pos = skip(pos)
    if text.startswith("]", pos):
        end = skip(pos + 1)
    else:
        while True:
            try:
                obj, after = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise ImportFileError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None
            rows.append(_json_row(obj, lines.at(pos)))
            pos = skip(after)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
                continue
            if text.startswith("]", pos):
                end = skip(pos + 1)
                break
            raise fail(pos, "expected ',' or ']' after a row" if pos < len(text) else "the list is not closed (']')")
    if end < len(text):
        raise fail(end, "extra text after the list")
    return rows


def _read_jsonl(text: str, source: str) -> list[RawRow]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFileError(
                f"{source}:{n}: not valid JSON lines: {exc.msg} (each line must hold one JSON object; "
                "a whole-file JSON document must be a list of objects)"
            ) from None
        rows.append(_json_row(obj, n))
    return rows


def _json_row(obj: Any, line: int) -> RawRow:
    if not isinstance(obj, dict):
        return RawRow(line, {}, error=f"a row must be a JSON object, got {type(obj).__name__}")
    params, metrics = obj.get("params"), obj.get("metrics")
    if params is None and metrics is None:
        return RawRow(line, {str(k): v for k, v in obj.items()})
    # The nested form: tunables under "params", metrics under "metrics"; other keys but the reserved
    # ones (such as the export's "values" and "feasible") are ignored.
    for key, value in (("params", params), ("metrics", metrics)):
        if value is not None and not isinstance(value, dict):
            return RawRow(line, {}, error=f"{key!r} must be an object, got {type(value).__name__}")
    cells: dict[str, Any] = {k: obj[k] for k in RESERVED if k in obj}
    cells.update({f"{PARAMS_PREFIX}{k}": v for k, v in (params or {}).items()})
    cells.update({f"{METRICS_PREFIX}{k}": v for k, v in (metrics or {}).items()})
    return RawRow(line, cells)


# --------------------------------------------------------------------------------------------
# Values


def _empty(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def parse_number(raw: Any) -> int | float | None:
    """A finite number from a JSON number or a text cell; None when it is not one (booleans are not)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else None
    if not isinstance(raw, str):
        return None
    s = raw.strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_bool(raw: Any) -> bool | None:
    """true/false, yes/no, 1/0 (any case), or a JSON boolean; None for anything else."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        s = raw.strip().lower()
        if s in TRUE_WORDS:
            return True
        if s in FALSE_WORDS:
            return False
    return None


def _match_choice(raw: Any, choices: tuple[Any, ...]) -> tuple[bool, Any]:
    """(True, the choice) that ``raw`` names, matching text against numeric and boolean choices too."""
    if not isinstance(raw, str):
        for c in choices:
            if isinstance(raw, bool) or isinstance(c, bool):
                same = isinstance(raw, bool) and isinstance(c, bool) and raw == c
            else:
                numeric = isinstance(raw, int | float) and isinstance(c, int | float)
                same = (numeric or type(raw) is type(c)) and raw == c
            if same:
                return True, c
        return False, None
    for text in (raw, raw.strip()):
        for c in choices:
            if isinstance(c, str) and c == text:
                return True, c
    b = parse_bool(raw) if any(isinstance(c, bool) for c in choices) else None
    if b is not None:
        for c in choices:
            if isinstance(c, bool) and c == b:
                return True, c
    num = parse_number(raw)
    if num is not None:
        for c in choices:
            if isinstance(c, int | float) and not isinstance(c, bool) and c == num:
                return True, c
    return False, None


def coerce(name: str, dist: BaseDistribution, raw: Any) -> tuple[Any, str | None]:
    """A cell's value as the tunable's type, or a message saying why it is not one."""
    if isinstance(dist, CategoricalDistribution):
        if set(dist.choices) == {False, True} and all(isinstance(c, bool) for c in dist.choices):
            b = parse_bool(raw)
            if b is None:
                return None, f"{name}: {raw!r} is not a boolean (use true/false, yes/no or 1/0)"
            return b, None
        ok, choice = _match_choice(raw, tuple(dist.choices))
        if not ok:
            return None, f"{name}: {raw!r} is not one of the choices {list(dist.choices)}"
        return choice, None
    num = parse_number(raw)
    if isinstance(dist, IntDistribution):
        if num is None or num != int(num):
            return None, f"{name}: {raw!r} is not an integer"
        return int(num), None
    if num is None:
        return None, f"{name}: {raw!r} is not a finite number"
    return float(num), None


def _domain_message(name: str, dist: BaseDistribution, value: Any) -> str:
    if isinstance(dist, IntDistribution | FloatDistribution):
        if not (dist.low - 1e-9 <= value <= dist.high + 1e-9):
            scale = " (log scale)" if dist.log else ""
            return f"{name}={value} is outside [{dist.low}, {dist.high}]{scale}"
        if dist.step is not None:
            return f"{name}={value} is not on the grid {dist.low} + k*{dist.step}"
    if isinstance(dist, CategoricalDistribution):
        return f"{name}={value!r} is not one of the choices {list(dist.choices)}"
    return f"{name}={value!r} is outside its domain"


def snap_params(space: Space, params: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric values put exactly on their grid (Optuna checks steps without tolerance)."""
    out = {}
    for name, value in params.items():
        dist = space.params[name].distribution
        out[name] = snap(dist, value) if isinstance(dist, IntDistribution | FloatDistribution) else value
    return out


# --------------------------------------------------------------------------------------------
# Checking rows


@dataclass
class GoodRow:
    """A row whose configuration fits the experiment (its objective is computed later)."""

    line: int
    params: dict[str, Any]
    metrics: dict[str, Any]
    state: TrialState
    baseline: bool = False
    reason: str | None = None
    trial: Any = None


def check_row(row: RawRow, space: Space, objectives: Objectives) -> GoodRow | Rejected:
    """The row's configuration and metrics, or everything wrong with it."""
    if row.error is not None:
        return Rejected(row.line, [row.error])
    dists = space.distributions()
    problems: list[str] = []
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    text: dict[str, str] = {}
    bad: set[str] = set()
    state, baseline, reason, trial = TrialState.COMPLETE, False, None, None

    def set_param(name: str, raw: Any) -> None:
        if name in params or name in bad:
            problems.append(f"{name} is given twice")
            return
        value, why = coerce(name, dists[name], raw)
        if why is not None:
            problems.append(why)
            bad.add(name)
        else:
            params[name] = value

    for key, raw in row.cells.items():
        if _empty(raw):
            continue
        if key.startswith(PARAMS_PREFIX):
            name = key.removeprefix(PARAMS_PREFIX)
            if name not in dists:
                problems.append(f"{name} is not a tunable of this experiment (tunables: {', '.join(dists)})")
            else:
                set_param(name, raw)
        elif key.startswith(METRICS_PREFIX):
            name = key.removeprefix(METRICS_PREFIX)
            num = parse_number(raw)
            if num is None:
                text[name] = raw
            else:
                metrics[name] = num
        elif key == "state":
            word = str(raw).strip().lower()
            if word in COMPLETE_WORDS:
                state = TrialState.COMPLETE
            elif word in FAILED_WORDS:
                state = TrialState.FAIL
            else:
                problems.append(f"state: {raw!r} is neither complete nor failed")
        elif key == "baseline":
            b = parse_bool(raw)
            if b is None:
                problems.append(f"baseline: {raw!r} is not a boolean (use true/false, yes/no or 1/0)")
            else:
                baseline = b
        elif key == "reason":
            reason = str(raw)
        elif key == "trial":
            trial = raw
        elif key in dists:
            set_param(key, raw)
        else:
            num = parse_number(raw)
            if num is None:
                text[key] = raw
            else:
                metrics[key] = num

    others = [k for k in row.cells if k not in dists and k not in RESERVED]
    for p in space.problems(params):
        name = p.split("=", 1)[0].split(" ", 1)[0]
        if name in bad:
            continue  # already reported: its value could not be read
        if " is outside its domain (" in p and name in params:
            problems.append(_domain_message(name, dists[name], params[name]))
        elif p == f"{name} is missing":
            close = difflib.get_close_matches(name, others, n=1, cutoff=0.75)
            hint = f" (is column {close[0]!r} a misspelling of it?)" if close else ""
            problems.append(f"{name} is missing{hint}")
        else:
            problems.append(p)

    if state == TrialState.COMPLETE:
        for o in objectives.objectives:
            for m in sorted(o.metrics):
                what = f"the objective metric {m!r}" if o.expr is None else f"the metric {m!r} (objective {o.label})"
                if m in text:
                    problems.append(f"{what} is not a number: {text[m]!r}")
                elif m not in metrics:
                    problems.append(f"no value for {what}")
    if problems:
        return Rejected(row.line, problems)
    return GoodRow(row.line, snap_params(space, params), metrics, state, baseline, reason, trial)


# --------------------------------------------------------------------------------------------
# Import


def measured_baseline(trials: Iterable[FrozenTrial], *, imported: bool = False) -> dict[str, Any] | None:
    """The metrics of the study's own (measured) baseline trial, if it completed; with ``imported``,
    else those of an imported row marked as the baseline."""
    trials = list(trials)
    for t in trials:
        if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE:
            return dict(t.user_attrs.get("metrics") or {})
    if imported:
        for t in trials:
            info = t.user_attrs.get("imported")
            if isinstance(info, dict) and info.get("baseline") and t.state == TrialState.COMPLETE:
                return dict(t.user_attrs.get("metrics") or {})
    return None


@dataclass
class ImportPlan:
    """What an import would add: the trials to create, and the rows rejected."""

    experiment: str
    source: str
    total: int
    trials: list[FrozenTrial] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    baseline_from: str = "none"  # study | file | none: the baseline relative SLOs were checked against

    def apply(self, study: optuna.Study) -> int:
        """Add the trials to ``study``; returns how many."""
        study.add_trials(self.trials)
        return len(self.trials)


def plan_import(
    exp: Experiment,
    path: Path,
    fmt: str | None = None,
    *,
    study_baseline: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> ImportPlan:
    """Read and check every row of ``path`` against ``exp``. Raises :class:`ImportFileError`."""
    source = source or str(path)
    rows = read_rows(path, detect_format(path, fmt), source=source)
    space, objectives = exp.space(), exp.objectives()
    plan = ImportPlan(experiment=exp.name, source=source, total=len(rows))
    checked = [check_row(r, space, objectives) for r in rows]
    good = [c for c in checked if isinstance(c, GoodRow)]
    baseline: Mapping[str, Any] | None = study_baseline
    if baseline is not None:
        plan.baseline_from = "study"
    else:
        row_base = next((g for g in good if g.baseline and g.state == TrialState.COMPLETE), None)
        if row_base is not None:
            baseline, plan.baseline_from = row_base.metrics, "file"
    dists = space.distributions()
    resolved = str(path.resolve())
    for c in checked:
        if isinstance(c, Rejected):
            plan.rejected.append(c)
            continue
        info: dict[str, Any] = {"file": resolved, "line": c.line}
        if c.baseline:
            info["baseline"] = True
        if c.trial is not None:
            info["trial"] = c.trial
        attrs: dict[str, Any] = {"imported": info, "metrics": c.metrics}
        kwargs: dict[str, Any] = {}
        if c.state == TrialState.COMPLETE:
            outcome = objectives.evaluate(c.metrics, c.metrics if c.baseline else baseline)
            if outcome.values is None:
                plan.rejected.append(Rejected(c.line, [outcome.reason or "the objective cannot be computed"]))
                continue
            kwargs["values"] = outcome.values
            if exp.model.slos:
                attrs["slo_violations"] = outcome.violations
                kwargs["system_attrs"] = {"constraints": list(outcome.constraint_values)}
        else:
            attrs["reason"] = c.reason or f"imported as failed from {source}:{c.line}"
        plan.trials.append(
            optuna.trial.create_trial(
                state=c.state,
                params=c.params,
                distributions={n: dists[n] for n in c.params},
                user_attrs=attrs,
                **kwargs,
            )
        )
    plan.rejected.sort(key=lambda r: r.line)
    return plan


# --------------------------------------------------------------------------------------------
# Export


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def exportable(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials an export writes: complete and failed ones (interrupted runs and queued ones are not results)."""
    return [
        t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get("interrupted")
    ]


def is_baseline(t: FrozenTrial) -> bool:
    """A baseline measurement: the study's own, or an imported row marked as the baseline."""
    imported = t.user_attrs.get("imported")
    return bool(t.user_attrs.get("baseline")) or (isinstance(imported, dict) and bool(imported.get("baseline")))


def write_export(trials: list[FrozenTrial], tunables: list[str], fmt: str, out: IO[str]) -> int:
    """Write ``trials`` as rows ``knobflow import`` reads back; returns how many rows."""
    rows = exportable(trials)
    names = list(tunables) + [n for t in rows for n in t.params if n not in tunables]
    names = list(dict.fromkeys(names))
    if fmt == "json" or fmt == "jsonl":
        objs = []
        for t in rows:
            obj: dict[str, Any] = {
                "trial": t.number,
                "state": "complete" if t.state == TrialState.COMPLETE else "failed",
            }
            if is_baseline(t):
                obj["baseline"] = True
            obj["params"] = {n: t.params[n] for n in names if n in t.params}
            obj["metrics"] = dict(t.user_attrs.get("metrics") or {})
            if t.state == TrialState.COMPLETE and t.values is not None:
                obj["values"] = list(t.values)
                obj["feasible"] = not t.user_attrs.get("slo_violations")
            if t.user_attrs.get("reason"):
                obj["reason"] = t.user_attrs["reason"]
            objs.append(obj)
        if fmt == "json":
            out.write(json.dumps(objs, indent=2) + "\n")
        else:
            out.writelines(json.dumps(o) + "\n" for o in objs)
        return len(objs)
    metric_names = list(dict.fromkeys(m for t in rows for m in (t.user_attrs.get("metrics") or {})))
    taken = set(RESERVED)
    param_cols = {n: (n if n not in taken else PARAMS_PREFIX + n) for n in names}
    taken |= set(names) | set(param_cols.values())
    metric_cols = {
        m: (m if m not in taken and not m.startswith((PARAMS_PREFIX, METRICS_PREFIX)) else METRICS_PREFIX + m)
        for m in metric_names
    }
    with_baseline = any(is_baseline(t) for t in rows)
    with_reason = any(t.user_attrs.get("reason") for t in rows)
    header = ["trial", "state"] + (["baseline"] if with_baseline else [])
    header += list(param_cols.values()) + list(metric_cols.values()) + (["reason"] if with_reason else [])
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for t in rows:
        metrics = t.user_attrs.get("metrics") or {}
        line = [str(t.number), "complete" if t.state == TrialState.COMPLETE else "failed"]
        if with_baseline:
            line.append("true" if is_baseline(t) else "")
        line += [_cell(t.params.get(n)) for n in param_cols]
        line += [_cell(metrics.get(m)) for m in metric_cols]
        if with_reason:
            line.append(_cell(t.user_attrs.get("reason")))
        writer.writerow(line)
    return len(rows)


# --------------------------------------------------------------------------------------------
# Warm start


def _objective_keys(objs: Any) -> list[tuple[Any, Any, Any]] | None:
    if not isinstance(objs, list):
        return None
    try:
        return [(o.get("metric"), o.get("expression"), o.get("direction")) for o in objs]
    except AttributeError:
        return None


def fit_to_space(space: Space, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Another experiment's configuration in this space: (params, tunables filled with defaults,
    problems). Tunables this space lacks are dropped; active ones the configuration lacks get
    their default. The configuration fits when the problems are empty."""
    kept = {k: v for k, v in params.items() if k in space.params}
    out: dict[str, Any] = {}
    filled = []
    for name, p in space.params.items():
        if space.active(name, out):
            if name in kept:
                out[name] = kept[name]
            else:
                out[name] = p.default
                filled.append(name)
    candidate = {**out, **{k: v for k, v in kept.items() if k not in out}}
    problems = space.problems(candidate)
    return (snap_params(space, candidate) if not problems else candidate), filled, problems


def _rank_key(objectives: Objectives, values: list[float], feasible: bool, count_better: int) -> tuple[Any, ...]:
    first = values[0] if objectives.objectives[0].maximize else -values[0]
    return (0 if feasible else 1, count_better, -first)


@dataclass
class WarmStartPlan:
    """The source experiment's trials to copy into a new study, and what was left out and why."""

    source: str
    storage: str
    multi: bool
    space: Space
    objectives: Objectives
    trials: list[FrozenTrial] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, study: optuna.Study) -> None:
        """Copy the trials into ``study`` and queue the best configuration to be measured again."""
        from knobflow import results

        study.add_trials(self.trials)
        copied = [
            t for t in study._storage.get_all_trials(study._study_id, deepcopy=False) if t.user_attrs.get("warm_start")
        ]
        best: FrozenTrial | None = None
        if self.multi:
            front = results.pareto(self.objectives, copied)
            if front:
                first = self.objectives.objectives[0]
                rec = (max if first.maximize else min)(front, key=lambda r: (r.values or [0.0])[0])
                best = next(t for t in copied if t.number == rec.number)
        else:
            top = results.best(self.space, self.objectives, copied)
            if top is not None:
                best = next(t for t in copied if t.number == top.record.number)
        if best is not None:
            study.enqueue_trial(
                dict(best.params),
                user_attrs={"remeasure_of": best.number, "warm_start_best": True},
                skip_if_exists=False,
            )
            self.info["best"] = {"trial": best.number, "source_trial": best.user_attrs["warm_start"]["trial"]}
        study.set_user_attr("warm_start", self.info)


def plan_warm_start(store: Store, exp: Experiment) -> WarmStartPlan:
    """Read the source experiment named by ``exp.model.warm_start``. Raises StoreError when it is missing."""
    ws = exp.model.warm_start
    assert ws is not None
    url = ws.storage or store.url
    if url == store.url:
        src = store
    else:
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            raise StoreError(
                f"warm_start.from: no experiment named {ws.from_!r} in {url}: that store does not exist "
                "(check warm_start.storage)"
            )
        src = Store(url)
    if not src.exists(ws.from_):
        known = ", ".join(n for n in src.names() if not n.startswith("archive:")) or "none"
        raise StoreError(
            f"warm_start.from: no experiment named {ws.from_!r} in {url} (known: {known}); "
            "run it first, or fix warm_start.from / warm_start.storage"
        )
    src_study = optuna.load_study(study_name=ws.from_, storage=src.storage)
    src_trials = src.trials(src_study)
    src_base = measured_baseline(src_trials, imported=True)
    space, objectives = exp.space(), exp.objectives()
    dists = space.distributions()
    same_objectives = _objective_keys(src_study.user_attrs.get("objectives")) == [
        (o.metric, o.expression, o.direction) for o in exp.objective_list
    ]
    same_slos = list((src_study.user_attrs.get("spec") or {}).get("slos") or []) == list(exp.model.slos)

    skipped: list[dict[str, Any]] = []
    dropped: set[str] = set()
    filled: dict[str, int] = {}
    candidates: list[tuple[FrozenTrial, dict[str, Any], list[float], list[str], list[float]]] = []
    complete = [t for t in src_trials if t.state == TrialState.COMPLETE]
    for t in complete:
        params, filled_here, problems = fit_to_space(space, t.params)
        dropped |= set(t.params) - set(space.params)
        if problems:
            skipped.append({"trial": t.number, "why": "; ".join(problems)})
            continue
        metrics = dict(t.user_attrs.get("metrics") or {})
        outcome = objectives.evaluate(metrics, metrics if is_baseline(t) else src_base)
        if outcome.values is not None:
            values, violations, cvals = outcome.values, outcome.violations, outcome.constraint_values
        elif same_objectives and t.values and (same_slos or not exp.model.slos):
            values = list(t.values)
            violations = list(t.user_attrs.get("slo_violations") or [])
            cvals = list(t.system_attrs.get("constraints") or [])
        else:
            skipped.append({"trial": t.number, "why": outcome.reason or "no objective value"})
            continue
        for name in filled_here:
            filled[name] = filled.get(name, 0) + 1
        candidates.append((t, params, values, violations, cvals))

    if ws.trials is not None and len(candidates) > ws.trials:
        pts = [(c[2], not c[3]) for c in candidates]

        def key(i: int) -> tuple[Any, ...]:
            values, feasible = pts[i]
            better = sum(
                1 for j, (w, f) in enumerate(pts) if j != i and f == feasible and objectives.dominates(w, values)
            )
            return _rank_key(objectives, values, feasible, better)

        keep = set(sorted(range(len(candidates)), key=key)[: ws.trials])
        for i, c in enumerate(candidates):
            if i not in keep:
                skipped.append({"trial": c[0].number, "why": f"not among the best {ws.trials} (warm_start.trials)"})
        candidates = [c for i, c in enumerate(candidates) if i in keep]

    trials = []
    for t, params, values, violations, cvals in candidates:
        attrs: dict[str, Any] = {
            "warm_start": {"from": ws.from_, "trial": t.number},
            "metrics": t.user_attrs.get("metrics") or {},
        }
        kwargs: dict[str, Any] = {}
        if exp.model.slos:
            attrs["slo_violations"] = list(violations)
            kwargs["system_attrs"] = {"constraints": list(cvals)}
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=values,
                params=params,
                distributions={n: dists[n] for n in params},
                user_attrs=attrs,
                **kwargs,
            )
        )
    skipped.sort(key=lambda s: s["trial"])
    info = {
        "from": ws.from_,
        "storage": url,
        "source_complete": len(complete),
        "copied": len(trials),
        "skipped": len(skipped),
        "skipped_why": skipped[:MAX_REASONS],
        "dropped_tunables": sorted(dropped),
        "filled_defaults": filled,
    }
    return WarmStartPlan(ws.from_, url, exp.multi_objective, space, objectives, trials, info)
