"""The HTML report and the plots of an experiment (``knobflow report``), on experiments built in a
temporary store with a tuner and made-up outcomes (no Ansible)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from knobflow import cli, report, spec
from knobflow.store import Store
from knobflow.tuners import registry
from knobflow.tuners.base import ask
from tests.conftest import REPO

SQLITE_DEMO = REPO / "experiments" / "sqlite-demo.yaml"
SINGLE = "objective:\n  metric: throughput_ops\n  direction: maximize\n"
MULTI = "objectives:\n  - {metric: throughput_ops, direction: maximize}\n  - {metric: p99_ms, direction: minimize}\n"
EVIL = "</script><script>alert('x')</script>"


def _exp(*, objective: str = SINGLE, extra: str = "", name: str | None = None) -> spec.Experiment:
    text = SQLITE_DEMO.read_text()
    assert SINGLE in text
    text = text.replace(SINGLE, objective + extra)
    if name:
        text = text.replace("name: sqlite-demo\n", f"name: {name}\n")
    return spec.parse(text, source="test", base_dir=SQLITE_DEMO.parent)


def _store(folder: Path) -> Store:
    return Store(f"sqlite:///{folder / 'k.db'}")


@contextlib.contextmanager
def _memory_folder() -> Iterator[Path]:
    """A folder in memory (/dev/shm) where there is one: SQLite's commits then wait for no disk
    (20 trials take 1 s instead of 4)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="knobflow-report-", dir=shm if shm.is_dir() else None))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fast() -> Iterator[Path]:
    with _memory_folder() as folder:
        yield folder


def _run(store: Store, exp: spec.Experiment, outcomes: list[dict[str, Any]]) -> list[int]:
    """Ask a trial per outcome (the baseline first) and finish it as the outcome says:
    ``{"value": v}`` (a float, or a list for several objectives), optionally ``"violations"``,
    ``"metrics"``; or ``{"reason": why}`` for a failed trial."""
    study = store.open(exp)
    tuner = registry.create("random", seed=7)
    numbers = []
    for o in outcomes:
        t = ask(tuner, study, exp.space())
        attrs: dict[str, Any] = {"metrics": o.get("metrics", {})}
        if "reason" in o:
            attrs["reason"] = o["reason"]
            store.finish(study, t.number, state=TrialState.FAIL, value=None, attrs=attrs)
        else:
            if "violations" in o:
                attrs["slo_violations"] = o["violations"]
            store.finish(study, t.number, state=TrialState.COMPLETE, value=o["value"], attrs=attrs)
        numbers.append(t.number)
    return numbers


class _Tags(HTMLParser):
    """Every start tag with its attributes (a <script>'s content is not parsed as tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Tags()
    p.feed(page)
    return p.tags


def _numbers(fig: dict[str, Any], name: str) -> list[int]:
    return [n for tr in fig["data"] if tr.get("name") == name for n in tr["customdata"]]


@pytest.fixture(scope="module")
def single() -> Iterator[tuple[Store, dict[str, Any]]]:
    """sqlite-demo with an SLO: the baseline, 16 more complete trials (one infeasible: the highest
    value), 2 failed ones (one with a reason that is a script). 17 usable trials rank 7 tunables."""
    with _memory_folder() as folder:
        yield _single_experiment(_store(folder))


def _single_experiment(store: Store) -> tuple[Store, dict[str, Any]]:
    exp = _exp(extra='slos:\n  - "p99_ms <= 50"\n')
    values = [100.0, 120.0, 90.0, 150.0, 130.0, 80.0, 140.0, 95.0, 125.0, 110.0, 135.0, 105.0, 145.0, 85.0, 115.0, 99.0]
    outcomes: list[dict[str, Any]] = [{"value": v, "metrics": {"throughput_ops": v, "p99_ms": 10.0}} for v in values]
    outcomes.insert(
        3, {"value": 999.0, "metrics": {"throughput_ops": 999.0, "p99_ms": 80.0}, "violations": ["p99_ms <= 50"]}
    )
    outcomes.insert(5, {"reason": f"the benchmark crashed: {EVIL}"})
    outcomes.insert(9, {"reason": "timed out"})
    outcomes.append({"value": 101.0, "metrics": {"throughput_ops": 101.0, "p99_ms": 9.0}})
    numbers = _run(store, exp, outcomes)
    by_number = dict(zip(numbers, outcomes, strict=True))
    return store, {"exp": exp, "outcomes": by_number}


def test_history_plots_every_complete_trial_once_and_marks_the_rest(single: tuple[Store, dict[str, Any]]) -> None:
    store, info = single
    figs = report.figures(store, "sqlite-demo")
    assert set(figs) == {"history", "importance", "parallel"}  # one objective: no Pareto plot
    json.dumps(figs, allow_nan=False)  # plain JSON
    h = figs["history"]
    outcomes = info["outcomes"]
    complete = sorted(n for n, o in outcomes.items() if "value" in o)
    failed = sorted(n for n, o in outcomes.items() if "reason" in o)
    infeasible = [n for n, o in outcomes.items() if o.get("violations")]
    points = [n for tr in h["data"] if tr["mode"] == "markers" and not tr["name"].startswith("failed") for n in tr["x"]]
    assert sorted(points) == complete  # one point per complete trial
    assert _numbers(h, "baseline") == [0]
    assert _numbers(h, "infeasible (broke an SLO)") == infeasible
    assert sorted(_numbers(h, "failed (no value: drawn at the bottom)")) == failed
    [best] = [tr for tr in h["data"] if tr["name"] == "best so far"]
    assert best["y"] == sorted(best["y"]) and max(best["y"]) == 150.0  # the infeasible 999 is never best
    assert any(s["y0"] == 100.0 for s in h["layout"]["shapes"])  # the baseline line


def test_importance_parallel_coordinates_and_their_uncertainty(single: tuple[Store, dict[str, Any]]) -> None:
    store, info = single
    figs = report.figures(store, "sqlite-demo")
    imp = figs["importance"]
    [bars] = imp["data"]
    names = [t.name for t in info["exp"].tunables]
    assert sorted(bars["y"]) == sorted(names)
    assert all(0 <= x <= 1 for x in bars["x"])
    assert len(bars["error_x"]["array"]) == len(names) and len(bars["error_x"]["arrayminus"]) == len(names)
    assert bars["x"] == sorted(bars["x"])  # the most important on top (plotly draws the first bar lowest)
    par = figs["parallel"]
    [trace] = par["data"]
    complete = sorted(n for n, o in info["outcomes"].items() if "value" in o)
    assert trace["customdata"] == complete
    labels = [d["label"] for d in trace["dimensions"]]
    assert labels[:7] == [
        "journal_mode",
        "synchronous",
        "cache_size_kib (log)",
        "mmap_size_mib",
        "page_size",
        "temp_store",
        "batch_size (log)",
    ]
    assert "throughput_ops (maximize)" in labels and "feasible" in labels
    assert all(len(d["values"]) == len(complete) for d in trace["dimensions"])
    journal = trace["dimensions"][0]
    assert journal["ticktext"] == ["delete", "truncate", "persist", "memory", "wal"]
    assert trace["line"]["color"] == [info["outcomes"][n]["value"] for n in complete]


def test_parallel_coordinates_of_conditional_and_pinned_tunables() -> None:
    """A tunable a trial did not have (its condition did not hold) sits at "(inactive)"; a tunable
    pinned at one value gets no axis; a log-scaled one is drawn on log10 with the real values as ticks."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from knobflow.objective import ObjectiveDef, Objectives

    dists = {
        "gc": CategoricalDistribution(("G1", "Parallel")),
        "regions": IntDistribution(1, 64),
        "heap": FloatDistribution(1.0, 1000.0, log=True),
        "pinned": CategoricalDistribution(("x",)),
    }
    rows = [("G1", 8, 10.0, 5.0), ("Parallel", None, 100.0, 7.0), ("G1", 32, 1000.0, 6.0)]
    trials = []
    for i, (gc, regions, heap, value) in enumerate(rows):
        params: dict[str, Any] = {"gc": gc, "heap": heap, "pinned": "x"}
        if regions is not None:
            params["regions"] = regions
        ds = {n: d for n, d in dists.items() if n in params}
        trials.append(create_trial(params=params, distributions=ds, value=value, state=TrialState.COMPLETE))
        trials[-1].number = i
    objectives = Objectives((ObjectiveDef("latency", "minimize", "latency", None),))
    fig = report.parallel_figure(trials, objectives, list(dists), dists)
    [trace] = fig["data"]
    dims = {d["label"]: d for d in trace["dimensions"]}
    assert list(dims) == ["gc", "regions", "heap (log)", "latency (minimize)"]
    assert dims["gc"]["values"] == [0, 1, 0] and dims["gc"]["ticktext"] == ["G1", "Parallel"]
    regions = dims["regions"]
    assert regions["ticktext"][0] == "(inactive)" and regions["values"][1] == regions["tickvals"][0]
    assert regions["values"][1] < 1 <= min(regions["values"][0], regions["values"][2])
    assert dims["heap (log)"]["values"] == [1.0, 2.0, 3.0] and dims["heap (log)"]["ticktext"] == [
        "1",
        "10",
        "100",
        "1000",
    ]
    assert trace["line"]["reversescale"] is True  # minimised: the low values bright
    assert "note" not in fig


def test_the_page_has_the_best_the_gain_every_trial_and_the_plots_inline(
    single: tuple[Store, dict[str, Any]],
) -> None:
    store, info = single
    page = report.render_experiment(store, "sqlite-demo")
    feasible = {n: o["value"] for n, o in info["outcomes"].items() if "value" in o and not o.get("violations")}
    best = max(feasible, key=lambda n: feasible[n])
    gain = 100.0 * (feasible[best] - 100.0) / 100.0
    assert f"trial {best}: <code>throughput_ops</code> = <strong>150</strong>" in page
    assert f"gain over the baseline: {gain:+.1f}%" in page and "+50.0%" in page
    assert "baseline (trial 0): 100" in page
    assert "1 trial broke an SLO" in page
    for n in info["outcomes"]:
        assert f'id="trial-{n}"' in page
    assert "p99_ms &lt;= 50" in page  # the SLO, and the infeasible trial's violation
    assert "maximize <code>throughput_ops</code>" in page
    assert "tuner</dt><dd>auto (seed 42)" in page
    assert "20 of 20 trials done (18 complete, 2 failed)" in page
    # The figures, as figures() gives them, in the page's JSON.
    [data] = re.findall(r'<script type="application/json" id="knobflow-figures">(.*?)</script>', page, re.S)
    embedded = json.loads(data)
    assert embedded == json.loads(json.dumps(report.figures(store, "sqlite-demo")))
    for key in ("history", "importance", "parallel"):
        assert f'id="plot-{key}"' in page
    # Self-contained: plotly.js inline, nothing loaded from elsewhere.
    plotly_js = report.plotly_js_path().read_text()
    assert len(page) > len(plotly_js)
    assert plotly_js[:2000] in page
    refs = [(tag, a) for tag, attrs in _tags(page) for k, a in attrs.items() if k in ("src", "href")]
    assert not [r for r in refs if r[1] and re.match(r"(https?:)?//", r[1])], refs
    assert "<link" not in page and "@import" not in page and "url(" not in page.split("<script")[0]


def test_a_page_that_loads_plotly_from_a_url(single: tuple[Store, dict[str, Any]]) -> None:
    store, _ = single
    page = report.render_experiment(store, "sqlite-demo", plotly_js="/knobflow/static/plotly.min.js")
    assert '<script src="/knobflow/static/plotly.min.js"></script>' in page
    assert len(page) < 1_000_000


def test_user_text_is_escaped(single: tuple[Store, dict[str, Any]]) -> None:
    store, _ = single
    page = report.render_experiment(store, "sqlite-demo")
    assert EVIL not in page and "<script>alert" not in page
    assert "the benchmark crashed: &lt;/script&gt;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    scripts = [a for tag, a in _tags(page) if tag == "script"]
    assert len(scripts) == 3  # plotly.js, the figures' JSON, the code that draws them
    # JSON inside a <script> cannot end it.
    assert report.script_json({"a": "</script><!--"}) == '{"a":"\\u003c/script\\u003e\\u003c!--"}'
    assert json.loads(report.script_json({"a": "</script>", "b": math.nan})) == {"a": "</script>", "b": None}


def test_text_from_the_experiment_file_is_escaped_too(fast: Path) -> None:
    text = SQLITE_DEMO.read_text().replace("choices: [default, file, memory]", f'choices: [default, "{EVIL}"]')
    text = text.replace("  Maximise the throughput", f"  {EVIL.replace(chr(39), '')} Maximise the throughput")
    exp = spec.parse(text, source="test", base_dir=SQLITE_DEMO.parent)
    store = _store(fast)
    _run(store, exp, [{"value": 1.0, "metrics": {"<b>odd metric</b>": 1}}, {"value": 2.0}])
    page = report.render_experiment(store, "sqlite-demo", plotly_js="plotly.min.js")
    assert "<script>alert" not in page and "<b>odd" not in page
    assert "&lt;b&gt;odd metric&lt;/b&gt; = 1" in page
    assert "&lt;/script&gt;&lt;script&gt;alert(x)&lt;/script&gt; Maximise the throughput" in page
    assert len([tag for tag, _ in _tags(page) if tag == "script"]) == 3


def test_a_new_experiment_and_one_with_a_single_trial_still_render(fast: Path) -> None:
    store = _store(fast)
    store.open(_exp())  # the baseline is queued, nothing ran
    figs = report.figures(store, "sqlite-demo")
    assert all(f["data"] == [] and f["note"] for f in figs.values())
    assert "no trial has finished yet" in figs["history"]["note"]
    assert "too few trials" in figs["importance"]["note"]
    page = report.render_experiment(store, "sqlite-demo", plotly_js="plotly.min.js")
    assert "no feasible completed trial yet" in page and "no trial has finished yet: nothing to plot" in page
    assert "0 of 20 trials done" in page

    one = _exp(name="one-trial")
    _run(store, one, [{"value": 42.0}])
    figs = report.figures(store, "one-trial")
    assert [n for tr in figs["history"]["data"] for n in tr.get("customdata", [])] == [0]
    assert "1 complete feasible trial, ranking 7 tunables needs at least 16" in figs["importance"]["note"]
    assert figs["parallel"]["note"] == "one complete trial: nothing to compare yet"
    page = report.render_experiment(store, "one-trial", plotly_js="plotly.min.js")
    assert "trial 0: <code>throughput_ops</code> = <strong>42</strong>" in page
    assert "gain over the baseline: +0.0%" in page

    failing = _exp(name="only-failures")
    _run(store, failing, [{"reason": "crashed"}])
    figs = report.figures(store, "only-failures")
    assert figs["history"]["note"] == "no trial has completed yet: only failed trials to show"
    assert _numbers(figs["history"], "failed (no value: drawn at the bottom)") == [0]
    assert "no trial has completed yet" in figs["parallel"]["note"]
    assert "the baseline has not completed" in report.render_experiment(store, "only-failures", plotly_js="p.js")


def _dominates(a: list[float], b: list[float]) -> bool:
    # maximize the first objective, minimize the second
    no_worse = a[0] >= b[0] and a[1] <= b[1]
    return no_worse and (a[0] > b[0] or a[1] < b[1])


def test_a_multi_objective_experiment_has_a_pareto_plot_of_exactly_the_front(fast: Path) -> None:
    store = _store(fast)
    exp = _exp(objective=MULTI, name="multi")
    points = [[100.0, 50.0], [120.0, 60.0], [90.0, 40.0], [150.0, 80.0], [110.0, 55.0], [95.0, 70.0], [120.0, 65.0]]
    outcomes: list[dict[str, Any]] = [{"value": p} for p in points]
    outcomes.insert(2, {"value": [500.0, 1.0], "violations": ["p99_ms <= 0.5 * baseline"]})  # dominates all: infeasible
    outcomes.insert(4, {"reason": "crashed"})
    numbers = _run(store, exp, outcomes)
    feasible = {
        n: o["value"] for n, o in zip(numbers, outcomes, strict=True) if "value" in o and not o.get("violations")
    }
    front = sorted(n for n, v in feasible.items() if not any(_dominates(w, v) for m, w in feasible.items() if m != n))
    assert len(front) == 5 and len(feasible) == 7  # (95, 70) and (120, 65) are dominated

    figs = report.figures(store, "multi")
    assert set(figs) == {"history", "importance", "parallel", "pareto"}
    pareto = figs["pareto"]
    assert sorted(_numbers(pareto, "Pareto front")) == front
    assert sorted(_numbers(pareto, "other feasible trials")) == sorted(set(feasible) - set(front))
    [line] = [tr for tr in pareto["data"] if tr["name"] == "Pareto front"]
    assert sorted(zip(line["x"], line["y"], strict=True)) == sorted(tuple(feasible[n]) for n in front)
    assert pareto["layout"]["xaxis"]["title"]["text"] == "throughput_ops (maximize)"
    # One history panel per objective, every complete trial on each.
    h = figs["history"]
    assert {tr["yaxis"] for tr in h["data"]} == {"y", "y2"}
    for axis in ("y", "y2"):
        shown = [n for tr in h["data"] if tr["yaxis"] == axis and tr["mode"] == "markers" for n in tr["x"]]
        assert len(shown) == len(numbers)  # 8 complete + the failed one
    page = report.render_experiment(store, "multi", plotly_js="plotly.min.js")
    assert "<h2>Pareto front</h2>" in page and "5 trials that no other feasible trial beats" in page
    table = page.split('<table class="pareto">')[1].split("</table>")[0]
    assert sorted(int(n) for n in re.findall(r'<tr><td class="num">(\d+)</td>', table)) == front
    assert "gain over the baseline" not in page


def test_the_index_lists_experiments_not_archives(single: tuple[Store, dict[str, Any]], fast: Path) -> None:
    store = _store(fast)
    _run(store, _exp(name="first"), [{"value": 10.0}, {"value": 12.0}])
    _run(store, _exp(name="gone"), [{"value": 1.0}])
    _run(store, _exp(objective=MULTI, name="multi"), [{"value": [1.0, 2.0]}])
    store.archive("gone")
    page = report.render_index(store)
    hrefs = [a["href"] for tag, a in _tags(page) if tag == "a"]
    assert hrefs == ["first.html", "multi.html"]
    assert "gone" not in page
    assert "2 / 20" in page and "12 (trial 1)" in page and "+20.0%" in page and "Pareto front: 1 trial<" in page
    assert "incomplete" in page
    page = report.render_index(store, link=lambda n: f"/knobflow/ui/{n}?x=1&y=2")
    assert 'href="/knobflow/ui/first?x=1&amp;y=2"' in page
    store2, _ = single
    assert "done" in report.render_index(store2)
    assert "no experiments" in report.render_index(_store(fast / "empty"))


def test_knobflow_report_writes_the_file_and_refuses_an_unknown_experiment(
    single: tuple[Store, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, _ = single
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "sqlite-demo", "--storage", store.url]) == cli.EXIT_OK
    out = tmp_path / "sqlite-demo-report.html"
    assert out.exists() and "gain over the baseline: +50.0%" in out.read_text()
    assert str(out.name) in capsys.readouterr().out
    other = tmp_path / "sub" / "r.html"
    other.parent.mkdir()
    assert cli.main(["report", "sqlite-demo", "--storage", store.url, "-o", str(other)]) == cli.EXIT_OK
    assert other.read_text() == out.read_text()

    assert cli.main(["report", "nope", "--storage", store.url]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert "knobflow report: no experiment named 'nope'" in err and "known: sqlite-demo" in err
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert cli.main(["report", "nope", "--storage", missing]) == cli.EXIT_INVALID
    assert "knobflow report: no experiment named 'nope': there is no store at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "nope-report.html").exists()
