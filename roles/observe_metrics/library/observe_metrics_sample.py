#!/usr/bin/python
"""Observe a live system for a window: sample an HTTP metrics endpoint or a command, compute metrics."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: observe_metrics_sample
short_description: Observe a live system's metrics over a time window
description:
  - Reads I(url) (HTTP GET) or runs I(argv) (no shell) every I(interval) seconds for I(window)
    seconds, from the target host, after waiting I(settle) seconds.
  - The document is Prometheus text exposition format or a JSON object (I(format)).
  - Each metric of I(metrics) names its I(source) (a Prometheus series name, optionally with
    label matchers, summed over the matching series; or a dotted path into the JSON document) and
    its I(kind) - C(gauge) (the samples are aggregated) or C(counter) (the per-second rate over the
    window, counter resets handled as Prometheus does).
  - The observation is repeated I(warmup) + I(repeats) times; warm-up windows are discarded and the
    measured ones combined with I(aggregate), with their spread, as bench_command does.
  - Fails, naming the sample and the metric, when the endpoint cannot be read, answers with an
    HTTP error, the command fails, or a metric is missing or not a number.
options:
  url:
    description: The metrics endpoint (http or https). Exactly one of url and argv.
    type: str
  argv:
    description: A command that prints the metrics document. Exactly one of url and argv.
    type: list
    elements: str
  headers:
    description: Extra HTTP headers (for example Authorization).
    type: dict
    default: {}
  format:
    description: C(auto) takes a document that parses as a JSON object as JSON, else Prometheus text.
    type: str
    choices: [auto, prometheus, json]
    default: auto
  metrics:
    description: >-
      knobflow metric name -> {source, kind (gauge or counter, default gauge), aggregate (of the
      gauge's samples within one window: mean, median, min, max, last; default mean), scale (a
      factor, default 1)}.
    type: dict
    required: true
  settle:
    description: Seconds to wait before the first window (after a configuration was applied).
    type: float
    default: 0
  window:
    description: Seconds one observation window lasts.
    type: float
    default: 60
  interval:
    description: Seconds between two samples within a window.
    type: float
    default: 10
  warmup:
    description: Windows observed and discarded before the measured ones.
    type: int
    default: 0
  repeats:
    description: Measured windows.
    type: int
    default: 1
  aggregate:
    description: How to combine the measured windows.
    type: str
    choices: [median, mean, trimmed_mean, min, max]
    default: median
  timeout:
    description: Seconds one request or command may take.
    type: float
    default: 10
author: knobflow maintainers
"""

import json
import math
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

KINDS = ("gauge", "counter")
GAUGE_AGGREGATES = ("mean", "median", "min", "max", "last")
_SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class ObserveError(Exception):
    pass


def parse_labels(text):
    """``a="x",b="y"`` -> {"a": "x", "b": "y"}; raises ValueError on anything else."""
    labels, pos = {}, 0
    text = text or ""
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad label matchers {text!r}")
        labels[m.group(1)] = m.group(2).encode().decode("unicode_escape")
        pos = m.end()
    return labels


def parse_selector(source):
    m = _SERIES.match(source.strip())
    if not m:
        raise ValueError(f'{source!r} is not a Prometheus series selector (name or name{{label="value"}})')
    return m.group(1), parse_labels(m.group(3))


def parse_prometheus(text):
    """Prometheus text exposition format -> list of (name, labels, value). Comments and blank lines skipped."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            close = line.rfind("}")
            if close < 0:
                raise ValueError(f"line {number}: unclosed label set: {line[:120]!r}")
            head, rest = line[: close + 1], line[close + 1 :].split()
        else:
            parts = line.split()
            head, rest = parts[0], parts[1:]
        if not rest:
            raise ValueError(f"line {number}: no value: {line[:120]!r}")
        try:
            name, labels = parse_selector(head)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        try:
            value = float(rest[0])
        except ValueError:
            raise ValueError(f"line {number}: value {rest[0]!r} is not a number") from None
        out.append((name, labels, value))
    return out


def parse_document(text, fmt):
    """Returns ("json", object) or ("prometheus", samples)."""
    if fmt in ("auto", "json"):
        try:
            data = json.loads(text)
        except ValueError:
            if fmt == "json":
                raise ValueError(f"not JSON: {text.strip()[:200]!r}") from None
        else:
            if isinstance(data, dict):
                return "json", data
            if fmt == "json":
                raise ValueError(f"JSON document is not an object: {text.strip()[:200]!r}")
    return "prometheus", parse_prometheus(text)


def lookup(doc, source):
    """The number a metric's source names in a parsed document."""
    kind, data = doc
    if kind == "json":
        node = data
        for part in source.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                keys = ", ".join(sorted(map(str, node))[:12]) if isinstance(node, dict) else type(node).__name__
                raise ObserveError(f"{source!r} not found in the JSON document (at {part!r}; there: {keys})")
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise ObserveError(f"{source!r} is {node!r}, not a number")
        return float(node)
    name, want = parse_selector(source)
    values = [v for n, labels, v in data if n == name and all(labels.get(k) == x for k, x in want.items())]
    if not values:
        names = sorted({n for n, _, _ in data})
        near = [n for n in names if name.split("_")[0] in n][:8] or names[:8]
        raise ObserveError(
            "no series {!r} in the metrics ({} series; names such as: {})".format(source, len(data), ", ".join(near))
        )
    return math.fsum(values)


def counter_rate(times, values):
    """Per-second increase over the samples; a drop is a counter reset (the new value is the increase)."""
    if len(values) < 2 or times[-1] <= times[0]:
        raise ObserveError("a counter needs at least two samples in a window: make window >= interval")
    increase = 0.0
    for i in range(1, len(values)):
        before, after = values[i - 1], values[i]
        increase += after - before if after >= before else after
    return increase / (times[-1] - times[0])


def gauge_value(values, how):
    if how == "last":
        return values[-1]
    if how == "median":
        return statistics.median(values)
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return statistics.fmean(values)


def combine(values, how):
    if how == "mean":
        return statistics.fmean(values)
    if how == "trimmed_mean":
        ordered = sorted(values)
        cut = max(1, len(ordered) // 10) if len(ordered) >= 3 else 0
        return statistics.fmean(ordered[cut : len(ordered) - cut])
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return statistics.median(values)


def fetch(p):
    """One document, as text."""
    if p["url"]:
        request = urllib.request.Request(p["url"], headers={str(k): str(v) for k, v in p["headers"].items()})
        try:
            with urllib.request.urlopen(request, timeout=p["timeout"]) as response:
                return response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise ObserveError("{} answered HTTP {} {}".format(p["url"], exc.code, exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ObserveError("cannot read {}: {}".format(p["url"], reason)) from None
    try:
        proc = subprocess.run(p["argv"], capture_output=True, text=True, timeout=p["timeout"])
    except subprocess.TimeoutExpired:
        raise ObserveError("metrics command timed out after {} s".format(p["timeout"])) from None
    except OSError as exc:
        raise ObserveError(
            "cannot start the metrics command {}: {}".format(p["argv"][0], exc.strerror or exc)
        ) from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout or "no output").strip().splitlines()[-3:])[-400:]
        raise ObserveError(f"metrics command exited with status {proc.returncode}: {tail}")
    return proc.stdout


def check_metrics(metrics):
    """The metric specs, normalised; raises ValueError naming the bad one."""
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError("metrics must be a non-empty mapping of knobflow metric names to {source, kind}")
    out = {}
    for name, spec in metrics.items():
        if isinstance(spec, str):
            spec = {"source": spec}
        if not isinstance(spec, dict):
            raise ValueError(f"metrics.{name}: give a mapping with source (and kind, aggregate, scale)")
        unknown = sorted(set(spec) - {"source", "kind", "aggregate", "scale"})
        if unknown:
            raise ValueError(f"metrics.{name}: unknown key {unknown[0]!r} (source, kind, aggregate, scale)")
        source = spec.get("source")
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"metrics.{name}.source: a series name or a JSON path is required")
        kind = spec.get("kind", "gauge")
        if kind not in KINDS:
            raise ValueError("metrics.{}.kind: {!r} is not one of {}".format(name, kind, ", ".join(KINDS)))
        how = spec.get("aggregate", "mean")
        if how not in GAUGE_AGGREGATES:
            raise ValueError(
                "metrics.{}.aggregate: {!r} is not one of {}".format(name, how, ", ".join(GAUGE_AGGREGATES))
            )
        scale = spec.get("scale", 1)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                raise ValueError(f"metrics.{name}.scale: {scale!r} is not a number") from None
        out[str(name)] = {"source": source, "kind": kind, "aggregate": how, "scale": float(scale)}
    return out


def observe_window(p, metrics, label, sleep=time.sleep, clock=time.monotonic):
    """One window: samples every interval, then each metric's value."""
    samples, times = [], []
    started = clock()
    n = int(p["window"] // p["interval"]) + 1 if p["interval"] > 0 else 1
    for i in range(n):
        due = started + i * p["interval"]
        wait = due - clock()
        if wait > 0:
            sleep(wait)
        try:
            text = fetch(p)
            times.append(clock())
            doc = parse_document(text, p["format"])
        except ValueError as exc:
            raise ObserveError(f"sample {i + 1} of {n} ({label}): the metrics do not parse: {exc}") from None
        except ObserveError as exc:
            raise ObserveError(f"sample {i + 1} of {n} ({label}): {exc}") from None
        samples.append(doc)
    out = {}
    for name, spec in metrics.items():
        try:
            values = [lookup(doc, spec["source"]) for doc in samples]
            value = counter_rate(times, values) if spec["kind"] == "counter" else gauge_value(values, spec["aggregate"])
        except ObserveError as exc:
            raise ObserveError(f"metric {name} ({label}): {exc}") from None
        except ValueError as exc:
            raise ObserveError(f"metric {name} ({label}): {exc}") from None
        out[name] = value * spec["scale"]
    out["observe_seconds"] = clock() - started
    out["observe_samples"] = float(len(samples))
    return out


def run(p, sleep=time.sleep, clock=time.monotonic):
    """The whole observation: settle, warm-up and measured windows; returns exit_json's fields."""
    if bool(p["url"]) == bool(p["argv"]):
        raise ValueError("give exactly one of url and argv")
    if p["url"] and not re.match(r"^https?://", p["url"]):
        raise ValueError("url must start with http:// or https://: {!r}".format(p["url"]))
    for key in ("window", "interval", "timeout"):
        if not p[key] > 0:
            raise ValueError(f"{key} must be > 0 seconds, got {p[key]}")
    if p["settle"] < 0:
        raise ValueError("settle must be >= 0 seconds")
    if p["repeats"] < 1 or p["warmup"] < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    metrics = check_metrics(p["metrics"])
    if p["settle"]:
        sleep(p["settle"])
    runs = []
    for i in range(p["warmup"] + p["repeats"]):
        if i < p["warmup"]:
            label = "warm-up window {} of {}".format(i + 1, p["warmup"])
        else:
            label = "window {} of {}".format(i - p["warmup"] + 1, p["repeats"])
        result = observe_window(p, metrics, label, sleep, clock)
        if i >= p["warmup"]:
            runs.append(result)
    names = sorted(runs[0])
    aggregated = {n: combine([r[n] for r in runs], p["aggregate"]) for n in names}
    spread = {}
    for n in names:
        vals = [r[n] for r in runs]
        spread[n] = dict(min=min(vals), max=max(vals), stdev=statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return dict(changed=False, metrics=aggregated, runs=runs, spread=spread, aggregate=p["aggregate"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str"),
            argv=dict(type="list", elements="str"),
            headers=dict(type="dict", default={}),
            format=dict(type="str", choices=["auto", "prometheus", "json"], default="auto"),
            metrics=dict(type="dict", required=True),
            settle=dict(type="float", default=0),
            window=dict(type="float", default=60),
            interval=dict(type="float", default=10),
            warmup=dict(type="int", default=0),
            repeats=dict(type="int", default=1),
            aggregate=dict(type="str", choices=["median", "mean", "trimmed_mean", "min", "max"], default="median"),
            timeout=dict(type="float", default=10),
        ),
        supports_check_mode=False,
    )
    try:
        result = run(module.params)
    except (ValueError, ObserveError) as exc:
        module.fail_json(msg=f"observe_metrics: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
