"""A simulated Java service in a container, shaped like real JVM/Quarkus tuning: 31 tunables.

The service answers REST requests that use a database. Its throughput (requests/s, maximised) is
the smooth minimum of four capacities, each a function of a few tunables:

* **CPU**: effective cores (``cpu_limit`` with Amdahl-like contention) divided by the CPU cost of a
  request, which is the application's work plus garbage collection (``gc`` x heap headroom
  ``xmx_mb`` over the live set: Serial stops every core while one thread collects, Parallel
  collects with ``parallel_gc_threads``, G1 is partly concurrent and pays for short
  ``max_gc_pause_millis``, Z is concurrent but stalls when the heap has little headroom), thread
  contention (``worker_threads`` against ``cpu_limit``) and small factors (JIT flags, log level...).
* **Database**: ``min(worker_threads, db_pool_size)`` connections over the database time, which
  grows with the pool (the database itself saturates), so the pool has a sweet spot.
* **Worker threads**: Little's law, ``worker_threads`` over the response time.
* **HTTP I/O threads**: ``io_threads`` event loops, each parsing a bounded number of requests/s.

Five tunables carry most of the effect (:data:`IMPORTANT`); about ten have a small effect (a few
percent) and the rest none (:data:`NO_EFFECT`). Failures (the configuration crashes; ``evaluate``
returns ``(None, None)``):

* ``xmx_mb > 0.9 * memory_limit_mb``: the container is OOM-killed (heap plus native memory);
* ``xms_mb > xmx_mb``: the JVM refuses to start;
* ``xmx_mb < 1.15 * LIVE_SET_MB``: ``OutOfMemoryError: Java heap space``.

Two variants: ``jvm-sim`` declares nothing (every tunable is always set, the G1 flags are ignored
by the other collectors, and the first two failure regions crash), and ``jvm-sim-constrained``
declares the first two failures as space constraints and makes the G1 flags conditional on
``gc == "G1"``. The third failure region is left undeclared in both, as a real system has
failures nobody wrote down. Measurements carry multiplicative log-normal noise, whose level is a
property of the problem instance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from benchmarks.sample_efficiency.problem import Problem
from knobflow.expr import compile_expr
from knobflow.space import Condition, Param, Space

LIVE_SET_MB = 150.0  # live heap of the application
CPU_MS = 4.0  # CPU time of one request on one core, compiled code
DB_MS = 25.0  # database time of one request on an idle database
GC_MS = 1.6  # GC CPU time per request when the free heap equals the live set (headroom 1)
IO_MS = 1.2  # time an HTTP event loop spends on one request
AMDAHL = 0.25  # contention: cores beyond the first are worth 1 / (1 + AMDAHL * (cores - 1))
DB_SATURATION = 40.0  # pool size at which the database's time per query has doubled
SMOOTH_MIN_POWER = 3.0

#: The tunables that carry most of the effect (for ``knobflow select`` tests).
IMPORTANT = frozenset({"cpu_limit", "gc", "xmx_mb", "worker_threads", "db_pool_size"})
#: Tunables the model ignores entirely.
NO_EFFECT = frozenset(
    {"thread_stack_size_kb", "http_accept_backlog", "somaxconn", "tcp_fin_timeout_s", "vm_swappiness", "rmem_max_kb"}
)


def _params(conditional: bool) -> list[Param]:
    g1 = Condition(equals=(("gc", ("G1",)),)) if conditional else None
    cat = CategoricalDistribution
    return [
        # container ------------------------------------------------------------------------------
        Param("cpu_limit", FloatDistribution(0.5, 2.0, step=0.25), 1.0, "container"),
        Param("memory_limit_mb", IntDistribution(512, 4096, step=128), 1024, "container"),
        Param("cpu_cfs_period_ms", IntDistribution(10, 100, step=10), 100, "container"),
        # runtime (HotSpot) ----------------------------------------------------------------------
        Param("gc", cat(["Serial", "Parallel", "G1", "Z"]), "G1", "runtime"),
        Param("xmx_mb", IntDistribution(128, 4096, log=True), 256, "runtime"),  # MaxRAMPercentage=25
        Param("xms_mb", IntDistribution(16, 4096, log=True), 16, "runtime"),  # 1/64 of the memory
        Param("max_gc_pause_millis", IntDistribution(10, 1000, log=True), 200, "runtime", g1),
        Param("g1_heap_region_size_mb", cat([1, 2, 4, 8, 16, 32]), 1, "runtime", g1),
        Param("parallel_gc_threads", IntDistribution(1, 16), 1, "runtime"),
        Param("conc_gc_threads", IntDistribution(1, 8), 1, "runtime"),
        Param("tiered_compilation", cat([True, False]), True, "runtime"),
        Param("reserved_code_cache_mb", IntDistribution(16, 512, log=True), 240, "runtime"),
        Param("max_inline_level", IntDistribution(5, 30), 15, "runtime"),
        Param("metaspace_size_mb", IntDistribution(16, 512, log=True), 21, "runtime"),
        Param("thread_stack_size_kb", IntDistribution(256, 2048, step=256), 1024, "runtime"),
        Param("use_string_deduplication", cat([True, False]), False, "runtime"),
        Param("always_pre_touch", cat([True, False]), False, "runtime"),
        # stack (Quarkus) ------------------------------------------------------------------------
        Param("worker_threads", IntDistribution(2, 512, log=True), 200, "stack"),  # max(200, 8 * cores)
        Param("io_threads", IntDistribution(1, 32), 2, "stack"),  # 2 * cores
        Param("db_pool_size", IntDistribution(2, 128, log=True), 20, "stack"),  # jdbc.max-size
        Param("http_accept_backlog", IntDistribution(64, 8192, log=True), 1024, "stack"),
        Param("http_compression", cat([True, False]), False, "stack"),
        Param("prepared_statement_cache_size", IntDistribution(0, 1024, step=16), 0, "stack"),
        Param("jdbc_batch_size", IntDistribution(1, 100), 1, "stack"),
        Param("log_level", cat(["DEBUG", "INFO", "WARN", "ERROR"]), "INFO", "stack"),
        # os (sysctl) ----------------------------------------------------------------------------
        Param("somaxconn", IntDistribution(128, 65535, log=True), 4096, "os"),
        Param("tcp_fin_timeout_s", IntDistribution(5, 120), 60, "os"),
        Param("vm_swappiness", IntDistribution(0, 100), 60, "os"),
        Param("transparent_hugepages", cat(["always", "madvise", "never"]), "madvise", "os"),
        Param("rmem_max_kb", IntDistribution(128, 16384, log=True), 208, "os"),
        Param("sched_migration_cost_ns", IntDistribution(50_000, 5_000_000, log=True), 500_000, "os"),
    ]


CONSTRAINTS = ("xmx_mb <= memory_limit_mb * 0.9", "xms_mb <= xmx_mb")


def build_space(constrained: bool) -> Space:
    """The simulator's space: flat and unconstrained, or with the G1 conditions and the constraints."""
    params = _params(conditional=constrained)
    names = {p.name for p in params}
    constraints = (
        [compile_expr(c, known=names, boolean=True, what="tunable") for c in CONSTRAINTS] if constrained else []
    )
    return Space(params, constraints)


def failure(p: Mapping[str, Any]) -> str | None:
    """Why a configuration crashes, or None."""
    if p["xmx_mb"] > 0.9 * p["memory_limit_mb"]:
        return "container OOM-killed: heap above 90% of the memory limit"
    if p["xms_mb"] > p["xmx_mb"]:
        return "JVM refuses to start: initial heap larger than the maximum heap"
    if p["xmx_mb"] < 1.15 * LIVE_SET_MB:
        return "OutOfMemoryError: Java heap space (heap too small for the live set)"
    return None


def _smooth_min(values: list[float], power: float = SMOOTH_MIN_POWER) -> float:
    return float(sum(v**-power for v in values) ** (-1.0 / power))


def _gc_cost(p: Mapping[str, Any], cores: float) -> float:
    """CPU time (core-ms) garbage collection costs per request, pauses counted on every core."""
    gc = p["gc"]
    cpu = float(p["cpu_limit"])
    headroom = (p["xmx_mb"] - LIVE_SET_MB) / LIVE_SET_MB
    work = GC_MS / headroom**0.7
    threads = int(p["parallel_gc_threads"])
    usable = min(threads, max(1, math.ceil(cpu)))
    speedup = 1.0 + 0.8 * (usable - 1)
    oversubscribed = 1.0 + 0.1 * max(0.0, threads / cpu - 1.0)  # CFS throttling of GC threads
    if gc == "Serial":
        return 1.2 * work * cores  # one thread collects (young and old), every core waits
    if gc == "Parallel":
        return 1.1 * work * oversubscribed / speedup * cores
    if gc == "G1":
        pause = int(p.get("max_gc_pause_millis", 200))  # ignored when absent (conditional variant)
        region = int(p.get("g1_heap_region_size_mb", 1))
        ideal_region = min(32.0, max(1.0, 2 ** round(math.log2(max(p["xmx_mb"], 1) / 2048))))
        work *= 1.2 * (1.0 + 10.0 / pause) * (1.0 + 0.01 * abs(math.log2(region / ideal_region)))
        concurrent = 0.35 * work * (1.0 + 0.05 * max(0.0, p["conc_gc_threads"] / cpu - 1.0))
        return concurrent + 0.65 * work * oversubscribed / speedup * cores
    # Z: concurrent, but allocation stalls when there is little free heap
    stall = 0.25 * CPU_MS * max(0.0, 2.0 - headroom) ** 2 * (1.0 + 0.3 / p["conc_gc_threads"])
    return 1.5 * work + stall


def throughput(p: Mapping[str, Any]) -> float | None:
    """Requests per second of configuration ``p`` (noise-free), None when it crashes."""
    if failure(p) is not None:
        return None
    cpu = float(p["cpu_limit"])
    cores = cpu / (1.0 + AMDAHL * max(0.0, cpu - 1.0))

    # CPU cost of a request, core-ms --------------------------------------------------------
    app = CPU_MS * {"Serial": 1.0, "Parallel": 1.0, "G1": 1.10, "Z": 1.25}[p["gc"]]  # GC barriers
    workers = int(p["worker_threads"])
    app *= 1.0 + 0.06 * max(0.0, math.log2(workers / (32.0 * cpu)))  # context switches
    app *= {"DEBUG": 1.12, "INFO": 1.0, "WARN": 0.985, "ERROR": 0.98}[p["log_level"]]
    app *= 1.04 if p["http_compression"] else 1.0
    app *= 1.0 if p["tiered_compilation"] else 1.04
    app *= 1.0 + 0.25 * max(0.0, 1.0 - p["reserved_code_cache_mb"] / 32.0)  # code cache full
    app *= 1.0 + 0.03 * ((p["max_inline_level"] - 18) / 12.0) ** 2
    app *= 1.0 + min(0.06, 0.02 * max(0.0, 64.0 / p["metaspace_size_mb"] - 1.0))  # early full GCs
    app *= 1.0 + 0.01 * abs(math.log10(p["cpu_cfs_period_ms"] / 50.0))
    app *= 1.0 + 0.005 * abs(math.log10(p["sched_migration_cost_ns"] / 500_000.0))
    app *= {"always": 0.985, "madvise": 1.0, "never": 1.005}[p["transparent_hugepages"]]
    app *= 1.01 if p["use_string_deduplication"] else 1.0
    app *= 1.0 + 0.5 * max(0.0, p["xmx_mb"] / p["memory_limit_mb"] - 0.8)  # memory pressure near the limit
    resize = 0.0 if p["gc"] == "Z" else 0.03 * (1.0 - p["xms_mb"] / p["xmx_mb"])  # heap resizing
    pre_touch = 0.01 if p["always_pre_touch"] and p["xms_mb"] == p["xmx_mb"] else 0.0
    cost = app * (1.0 + resize - pre_touch) + _gc_cost(p, cores)
    cpu_capacity = cores / cost

    # Database ------------------------------------------------------------------------------
    pool = int(p["db_pool_size"])
    db_ms = DB_MS * (1.0 - 0.08 * min(1.0, p["prepared_statement_cache_size"] / 256.0))
    db_ms *= 1.0 - 0.04 * min(1.0, (p["jdbc_batch_size"] - 1) / 30.0)
    db_ms *= 1.0 + (pool / DB_SATURATION) ** 2
    db_capacity = min(workers, pool) / db_ms

    # Worker threads (Little's law) and HTTP event loops --------------------------------------
    thread_capacity = workers / (db_ms + cost / min(1.0, cores))
    io = int(p["io_threads"])
    io_capacity = io / IO_MS / (1.0 + 0.01 * max(0.0, io / (2.0 * cpu) - 1.0))

    return 1000.0 * _smooth_min([cpu_capacity, db_capacity, thread_capacity, io_capacity])


class JvmSimulator(Problem):
    """``jvm-sim`` (``constrained=False``) or ``jvm-sim-constrained`` (``constrained=True``)."""

    family = "jvm-sim"
    maximize = True
    reference_kind = "default"
    version = "1"
    important = IMPORTANT
    no_effect = NO_EFFECT

    def __init__(self, *, constrained: bool, noise: float):
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise is a log-normal sigma, e.g. 0.05; got {noise}")
        self.constrained = constrained
        self.noise = noise
        self.name = "jvm-sim-constrained" if constrained else "jvm-sim"
        self.space = build_space(constrained)

    def true_value(self, params: Mapping[str, Any]) -> float | None:
        return throughput(params)

    def noisy(self, true: float, params: Mapping[str, Any], rng: np.random.Generator) -> float:
        return float(true * math.exp(self.noise * rng.standard_normal()))

    def compute_optimum(self) -> tuple[float, str]:
        """Random search (feasible draws) and then coordinate descent over each tunable's domain
        from the best few draws: the model is cheap, so this converges to the optimum."""
        from random import Random

        rng = Random(7)
        best: list[tuple[float, dict[str, Any]]] = []
        space = build_space(constrained=True)  # the feasible region of either variant
        for _ in range(60_000):
            cand = space.random_feasible(rng)
            assert cand is not None
            value = throughput(space.complete(cand))
            if value is not None:
                best.append((value, cand))
        best.sort(key=lambda t: -t[0])
        optimum = best[0][0]
        for _, start in best[:8]:
            optimum = max(optimum, self._coordinate_descent(space, space.complete(start)))
        return optimum, "60000 random feasible draws, then coordinate descent from the best 8"

    @staticmethod
    def _coordinate_descent(space: Space, start: dict[str, Any]) -> float:
        flat = build_space(constrained=False)
        current = {**flat.defaults(), **start}
        value = throughput(current) or 0.0
        improved = True
        while improved:
            improved = False
            for name, param in flat.params.items():
                for v in _candidates(param.distribution):
                    trial = {**current, name: v}
                    if space.violations(trial):
                        continue
                    t = throughput(trial)
                    if t is not None and t > value * (1 + 1e-12):
                        current, value, improved = trial, t, True
        return value


def _candidates(d: Any) -> list[Any]:
    """Every value of small domains, else 400 values spread over the domain (log-spaced on log scales)."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if d.step is not None and (d.high - d.low) / d.step <= 400:
        n = round((d.high - d.low) / d.step)
        return [d.low + k * d.step for k in range(n + 1)]
    lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
    grid = np.linspace(lo, hi, 400)
    grid = np.exp(grid) if d.log else grid
    if isinstance(d, IntDistribution):
        return sorted({round(float(x)) for x in grid})
    return [float(x) for x in grid]
