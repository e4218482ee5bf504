"""Load on the tuning service: 16 concurrent clients running 100 experiments on a PostgreSQL store,
ask+tell latency against raw Optuna (ask/tell straight on an RDB storage) on the same server.

    .venv/bin/python benchmarks/service_load/run.py [--clients 16] [--experiments 100] [--trials 20]

Needs PostgreSQL (`make services`). Both sides use the same search space (four tunables) and
Optuna's TPE sampler (knobflow's `tpe` tuner is Optuna's TPE, multivariate, constant liar). The
service is a real `knobflow serve` process (uvicorn, ``--workers``); each client is a process of its
own driving its share of the experiments one trial at a time (ask, then tell a synthetic value).
Raw Optuna's clients do the same with ``study.ask()`` / ``study.tell()``. The phases alternate
(service, Optuna, service, Optuna) so that a drift of the machine affects both; each phase uses
fresh experiments in its own database.

Checked: no request failed, and no experiment has a trial number twice (the numbers of each
experiment are 0..trials-1). Results: ``results/load.json`` and ``results/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

TOKEN = "load-test-token-0123456789abcdef"
TUNABLES = [
    {"name": "threads", "layer": "runtime", "type": "int", "low": 1, "high": 64, "default": 8},
    {"name": "heap_mb", "layer": "container", "type": "int", "low": 256, "high": 4096, "step": 256, "default": 512},
    {"name": "ratio", "layer": "runtime", "type": "float", "low": 0.1, "high": 0.9, "default": 0.5},
    {"name": "gc", "layer": "runtime", "type": "categorical", "choices": ["G1", "Parallel", "Serial"], "default": "G1"},
]


def value_of(params: dict[str, Any]) -> float:
    return params["threads"] * 3.0 - abs(params["heap_mb"] - 2048) / 200 + params["ratio"] + (params["gc"] == "G1")


def experiment(name: str, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "runner": "client",
        "objective": {"metric": "throughput", "direction": "maximize"},
        "tunables": TUNABLES,
        "tuner": {"name": "tpe", "seed": 1},
        "budget": {"trials": trials},
    }


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------------------------------------
# Clients (each a process)


def service_client(base: str, names: list[str], trials: int, out: Any) -> None:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    numbers: dict[str, list[int]] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        for name in names:
            for _ in range(trials):
                t0 = time.perf_counter()
                r = c.post(f"/api/v1/experiments/{name}/ask", json={})
                if r.status_code != 200:
                    errors.append(f"ask {name}: {r.status_code} {r.text[:200]}")
                    continue
                [t] = r.json()["trials"]
                r = c.post(
                    f"/api/v1/experiments/{name}/trials/{t['number']}/tell", json={"value": value_of(t["params"])}
                )
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"tell {name} {t['number']}: {r.status_code} {r.text[:200]}")
                numbers.setdefault(name, []).append(t["number"])
    out.put({"latencies": lat, "errors": errors, "numbers": numbers})


def optuna_client(storage: str, names: list[str], trials: int, out: Any) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
    lat: list[float] = []
    errors: list[str] = []
    numbers: dict[str, list[int]] = {}
    for name in names:
        study = optuna.load_study(
            study_name=name,
            storage=rdb,
            sampler=optuna.samplers.TPESampler(seed=1, multivariate=True, constant_liar=True, n_startup_trials=5),
        )
        for _ in range(trials):
            t0 = time.perf_counter()
            try:
                trial = study.ask()
                params = {
                    "threads": trial.suggest_int("threads", 1, 64),
                    "heap_mb": trial.suggest_int("heap_mb", 256, 4096, step=256),
                    "ratio": trial.suggest_float("ratio", 0.1, 0.9),
                    "gc": trial.suggest_categorical("gc", ["G1", "Parallel", "Serial"]),
                }
                study.tell(trial, value_of(params))
            except Exception as exc:
                errors.append(f"{name}: {exc!r}"[:300])
                continue
            lat.append(time.perf_counter() - t0)
            numbers.setdefault(name, []).append(trial.number)
    out.put({"latencies": lat, "errors": errors, "numbers": numbers})


def run_clients(target: Any, first_arg: str, names: list[str], clients: int, trials: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    shares = [names[i::clients] for i in range(clients)]
    procs = [ctx.Process(target=target, args=(first_arg, share, trials, q)) for share in shares if share]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [q.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    lat = [x for r in results for x in r["latencies"]]
    numbers: dict[str, list[int]] = {}
    for r in results:
        for k, v in r["numbers"].items():
            numbers.setdefault(k, []).extend(v)
    duplicates = sum(len(v) - len(set(v)) for v in numbers.values())
    bad = [k for k, v in numbers.items() if sorted(v) != list(range(trials))]
    return {
        "wall_s": wall,
        "pairs": len(lat),
        "pairs_per_s": len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p95_ms": 1000 * pct(lat, 0.95) if lat else None,
        "mean_ms": 1000 * statistics.fmean(lat) if lat else None,
        "errors": [e for r in results for e in r["errors"]],
        "duplicate_trial_numbers": duplicates,
        "experiments_not_0_to_n": bad,
    }


# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--experiments", type=int, default=100)
    ap.add_argument("--trials", type=int, default=20, help="trials per experiment (default 20)")
    ap.add_argument("--workers", type=int, default=2, help="knobflow serve's uvicorn workers (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="service/Optuna phase pairs (default 2)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    import optuna

    from knobflow.service.core import Service
    from tests.airflow_stack import free_port, pg_url, postgres_database
    from tests.e2e.test_service_serve import serving

    phases: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        with postgres_database("knobflow_load") as db:
            storage = pg_url(db, "psycopg")
            names = [f"load-{rnd}-{i:03d}" for i in range(args.experiments)]
            service = Service(storage)
            for n in names:
                service.create(experiment(n, args.trials))
            home = Path(os.environ.get("TMPDIR", "/tmp")) / f"knobflow-load-{os.getpid()}"
            home.mkdir(exist_ok=True)
            env_token = os.environ.get("KNOBFLOW_SERVICE_TOKEN")
            os.environ["KNOBFLOW_SERVICE_TOKEN"] = TOKEN
            try:
                with serving(
                    storage, home, token=TOKEN, port=free_port(), log=home / "serve.log", workers=args.workers
                ) as base:
                    r = run_clients(service_client, base, names, args.clients, args.trials)
            finally:
                if env_token is None:
                    os.environ.pop("KNOBFLOW_SERVICE_TOKEN", None)
            r.update(kind="knobflow service", round=rnd)
            phases.append(r)
            print(
                f"[load] round {rnd}: service p50 {r['p50_ms']:.1f} ms p95 {r['p95_ms']:.1f} ms, "
                f"{r['pairs']} pairs, {len(r['errors'])} errors, {r['duplicate_trial_numbers']} duplicates",
                flush=True,
            )
        with postgres_database("knobflow_load_optuna") as db:
            storage = pg_url(db, "psycopg")
            rdb = optuna.storages.RDBStorage(storage)
            names = [f"raw-{rnd}-{i:03d}" for i in range(args.experiments)]
            for n in names:
                optuna.create_study(study_name=n, storage=rdb, direction="maximize")
            rdb.engine.dispose()
            r = run_clients(optuna_client, storage, names, args.clients, args.trials)
            r.update(kind="raw Optuna", round=rnd)
            phases.append(r)
            print(
                f"[load] round {rnd}: Optuna  p50 {r['p50_ms']:.1f} ms p95 {r['p95_ms']:.1f} ms, "
                f"{r['pairs']} pairs, {len(r['errors'])} errors, {r['duplicate_trial_numbers']} duplicates",
                flush=True,
            )

    def agg(kind: str, key: str) -> float:
        return statistics.median(p[key] for p in phases if p["kind"] == kind)

    summary = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "clients": args.clients,
        "experiments": args.experiments,
        "trials": args.trials,
        "workers": args.workers,
        "phases": phases,
        "service_p50_ms": agg("knobflow service", "p50_ms"),
        "optuna_p50_ms": agg("raw Optuna", "p50_ms"),
        "service_p95_ms": agg("knobflow service", "p95_ms"),
        "optuna_p95_ms": agg("raw Optuna", "p95_ms"),
    }
    summary["p50_ratio"] = summary["service_p50_ms"] / summary["optuna_p50_ms"]
    summary["errors"] = sum(len(p["errors"]) for p in phases)
    summary["duplicates"] = sum(p["duplicate_trial_numbers"] for p in phases)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"{args.clients} clients, {args.experiments} experiments x {args.trials} trials per phase, "
        f"`knobflow serve --workers {args.workers}`, PostgreSQL",
        "",
        "| phase | round | ask+tell p50 | p95 | pairs/s | errors | duplicate trial numbers |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in phases:
        lines.append(
            f"| {p['kind']} | {p['round'] + 1} | {p['p50_ms']:.1f} ms | {p['p95_ms']:.1f} ms | "
            f"{p['pairs_per_s']:.0f} | {len(p['errors'])} | {p['duplicate_trial_numbers']} |"
        )
    lines += ["", f"p50 ratio (service / raw Optuna, medians of the rounds): {summary['p50_ratio']:.2f}x"]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if summary["errors"] == 0 and summary["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
