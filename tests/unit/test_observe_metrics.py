"""The observe_metrics module (roles/observe_metrics): parsing Prometheus text and JSON, series
selection, counter rates with resets, gauge aggregates, windows and their errors. The module file
is loaded as Ansible would run it; the clock and sleep are injected, the documents are real text
(a command's output, through a real subprocess, where the source is a command)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import role_module

PROM = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="get",code="200"} 1000
http_requests_total{method="post",code="200"} 250
http_requests_total{method="get",code="500"} 5
latency_seconds{quantile="0.99"} 0.042
latency_seconds{quantile="0.5"} 0.010
odd_labels{path="/a\\"b",empty=""} 3
up 1
"""


def _module() -> Any:
    return role_module("observe_metrics", "observe_metrics_sample")


M = _module()


def test_prometheus_series_are_selected_by_name_and_labels_and_summed() -> None:
    doc = M.parse_document(PROM, "auto")
    assert doc[0] == "prometheus"
    assert M.lookup(doc, "http_requests_total") == 1255
    assert M.lookup(doc, 'http_requests_total{code="200"}') == 1250
    assert M.lookup(doc, 'http_requests_total{method="get", code="500"}') == 5
    assert M.lookup(doc, 'latency_seconds{quantile="0.99"}') == 0.042
    assert M.lookup(doc, 'odd_labels{path="/a\\"b"}') == 3
    assert M.lookup(doc, "up") == 1


def test_a_missing_series_names_itself_and_what_is_there() -> None:
    doc = M.parse_document(PROM, "prometheus")
    with pytest.raises(M.ObserveError, match=r"no series 'http_request_total' .* http_requests_total"):
        M.lookup(doc, "http_request_total")
    with pytest.raises(M.ObserveError, match=r"no series 'up\{job=\"x\"\}'"):
        M.lookup(doc, 'up{job="x"}')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metric_a\n", "line 1: no value"),
        ("metric_a 12abc\n", "line 1: value '12abc' is not a number"),
        ('# c\nmetric_a{x="1" 3\n', "line 2"),
        ("9bad 1\n", "line 1: '9bad' is not a Prometheus series selector"),
    ],
)
def test_bad_prometheus_text_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        M.parse_document(text, "auto")


def test_json_documents_and_paths() -> None:
    doc = M.parse_document(json.dumps({"app": {"rps": 120.5, "pools": [{"busy": 3}], "ok": True}}), "auto")
    assert doc[0] == "json"
    assert M.lookup(doc, "app.rps") == 120.5 and M.lookup(doc, "app.pools.0.busy") == 3
    with pytest.raises(M.ObserveError, match=r"'app.qps' not found .*at 'qps'; there: ok, pools, rps"):
        M.lookup(doc, "app.qps")
    with pytest.raises(M.ObserveError, match=r"'app\.ok' is True, not a number"):
        M.lookup(doc, "app.ok")
    with pytest.raises(ValueError, match="not JSON"):
        M.parse_document("up 1", "json")
    with pytest.raises(ValueError, match="JSON document is not an object"):
        M.parse_document("[1, 2]", "json")


def test_counter_rate_handles_resets_as_prometheus_does() -> None:
    assert M.counter_rate([0.0, 1.0, 2.0], [100.0, 150.0, 220.0]) == 60.0
    # reset between the 2nd and 3rd sample: 50 before it, then 30 counted from zero
    assert M.counter_rate([0.0, 1.0, 2.0], [100.0, 150.0, 30.0]) == 40.0
    with pytest.raises(M.ObserveError, match="at least two samples"):
        M.counter_rate([0.0], [1.0])


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({}, "non-empty mapping"),
        ({"tps": {"kind": "counter"}}, "metrics.tps.source: a series name or a JSON path is required"),
        ({"tps": {"source": "x", "kind": "histogram"}}, "metrics.tps.kind: 'histogram' is not one of gauge, counter"),
        ({"tps": {"source": "x", "aggregate": "p95"}}, "metrics.tps.aggregate: 'p95' is not one of"),
        ({"tps": {"source": "x", "scale": "fast"}}, "metrics.tps.scale: 'fast' is not a number"),
        ({"tps": {"source": "x", "rate": True}}, "metrics.tps: unknown key 'rate'"),
        ({"tps": 3}, "metrics.tps: give a mapping"),
    ],
)
def test_bad_metric_specs_name_the_metric(metrics: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        M.check_metrics(metrics)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _params(**kw: Any) -> dict[str, Any]:
    p = dict(url=None, argv=None, headers={}, format="auto", metrics={}, settle=0.0, window=4.0, interval=1.0)
    p.update(warmup=0, repeats=1, aggregate="median", timeout=10.0)
    p.update(kw)
    return p


def test_a_window_samples_every_interval_from_a_command(tmp_path: Path) -> None:
    """A command as the source: it prints the counter in a file it bumps by 10 each call, and a gauge."""
    state = tmp_path / "n"
    state.write_text("0")
    script = tmp_path / "metrics.py"
    script.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(state)!r}); n = int(p.read_text()) + 10; p.write_text(str(n))\n"
        "print(f'ops_total {n}'); print(f'lat_ms{{quantile=\"0.99\"}} {n / 10}')\n"
    )
    t = FakeTime()
    p = _params(
        argv=[sys.executable, str(script)],
        settle=5.0,
        metrics={
            "tps": {"source": "ops_total", "kind": "counter"},
            "p99": {"source": 'lat_ms{quantile="0.99"}', "aggregate": "max", "scale": 2},
            "p99_mean": 'lat_ms{quantile="0.99"}',
        },
    )
    out = M.run(p, sleep=t.sleep, clock=t.clock)
    assert t.slept == [5.0, 1.0, 1.0, 1.0, 1.0]  # settle, then samples at 0, 1, 2, 3, 4 s of the window
    run = out["runs"][0]
    assert run["tps"] == 10.0  # +10 per sample, one sample per second
    assert run["p99"] == 10.0  # max of 1..5, times 2
    assert run["p99_mean"] == 3.0
    assert run["observe_samples"] == 5.0 and run["observe_seconds"] == 4.0
    assert out["metrics"]["tps"] == 10.0 and out["changed"] is False


def test_warmup_and_repeats_are_windows_combined_with_their_spread(tmp_path: Path) -> None:
    values = iter([1.0, 2.0, 3.0, 5.0, 9.0])  # one gauge sample per window (window == interval / 2)
    t = FakeTime()
    M_fetch = M.fetch
    try:
        M.fetch = lambda p: f"g {next(values)}\n"
        p = _params(
            url="http://x/metrics", window=0.5, interval=1.0, warmup=2, repeats=3, metrics={"g": {"source": "g"}}
        )
        out = M.run(p, sleep=t.sleep, clock=t.clock)
    finally:
        M.fetch = M_fetch
    assert [r["g"] for r in out["runs"]] == [3.0, 5.0, 9.0]  # the warm-up windows (1, 2) are dropped
    assert out["metrics"]["g"] == 5.0 and out["spread"]["g"]["min"] == 3.0 and out["spread"]["g"]["max"] == 9.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "exactly one of url and argv"),
        ({"url": "http://x", "argv": ["true"]}, "exactly one of url and argv"),
        ({"url": "ftp://x"}, "url must start with http:// or https://"),
        ({"url": "http://x", "window": 0.0}, "window must be > 0"),
        ({"url": "http://x", "settle": -1.0}, "settle must be >= 0"),
    ],
)
def test_bad_parameters_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        M.run(_params(metrics={"g": "g"}, **kw))


def test_sources_that_fail_are_named(tmp_path: Path) -> None:
    t = FakeTime()
    p = _params(
        argv=[sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(4)"], metrics={"g": "g"}
    )
    with pytest.raises(
        M.ObserveError, match=r"sample 1 of 5 \(window 1 of 1\): metrics command exited with status 4: boom"
    ):
        M.run(p, sleep=t.sleep, clock=t.clock)
    p = _params(argv=[str(tmp_path / "nope")], metrics={"g": "g"})
    with pytest.raises(M.ObserveError, match="cannot start the metrics command"):
        M.run(p, sleep=t.sleep, clock=t.clock)
    p = _params(argv=[sys.executable, "-c", "print('g 1')"], metrics={"h": {"source": "h_total", "kind": "counter"}})
    with pytest.raises(M.ObserveError, match=r"metric h \(window 1 of 1\): no series 'h_total'"):
        M.run(p, sleep=t.sleep, clock=t.clock)
    p = _params(url="http://127.0.0.1:9/metrics", metrics={"g": "g"}, timeout=2.0)
    with pytest.raises(M.ObserveError, match=r"cannot read http://127.0.0.1:9/metrics"):
        M.run(p, sleep=t.sleep, clock=t.clock)
