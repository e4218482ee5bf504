"""`knobflow serve` as a real process: a Kruize-style client loop against it on a PostgreSQL store,
across a restart of the service; the bearer token on every endpoint; the refusal to listen beyond
loopback without a token."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.airflow_stack import free_port, pg_url, postgres_database
from tests.conftest import BIN, REPO
from tests.unit.test_service_kruize import SPACE

pytestmark = pytest.mark.slow

TOKEN = "test-token-" + "x" * 24
# The contract's example search space (as the Kruize tests use it), with a budget of 10 trials.
SEARCH_SPACE: dict[str, Any] = {**SPACE, "total_trials": 10}


@contextmanager
def serving(storage: str, home: Path, *, token: str | None, port: int, log: Path, workers: int = 1) -> Iterator[str]:
    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    env.pop("KNOBFLOW_SERVICE_TOKEN", None)
    if token is not None:
        env["KNOBFLOW_SERVICE_TOKEN"] = token
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [str(BIN / "knobflow"), "serve", "--storage", storage, "--port", str(port), "--workers", str(workers)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2, headers=_auth(token)).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"knobflow serve did not come up:\n{log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _op(base: str, body: dict[str, Any], token: str | None) -> httpx.Response:
    return httpx.post(f"{base}/experiment_trials", json=body, headers=_auth(token), timeout=30)


def test_a_kruize_client_loop_survives_a_restart_of_the_service(tmp_path: Path) -> None:
    with postgres_database("knobflow_serve") as db:
        storage = pg_url(db, "psycopg")
        port = free_port()
        log = tmp_path / "serve.log"
        name = SEARCH_SPACE["experiment_name"]
        seen: dict[int, dict[str, Any]] = {}

        def run_trials(base: str, count: int, trial: int) -> int:
            for _ in range(count):
                r = httpx.get(
                    f"{base}/experiment_trials",
                    params={"experiment_name": name, "trial_number": trial},
                    headers=_auth(TOKEN),
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                config = {c["tunable_name"]: c["tunable_value"] for c in r.json()}
                assert set(config) == {"memoryRequest", "cpuRequest", "MaxInlineLevel", "gc"}
                assert 270 <= config["memoryRequest"] <= 1024 and 1.0 <= config["cpuRequest"] <= 3.0
                seen[trial] = config
                value = 1000.0 / config["cpuRequest"] + abs(config["memoryRequest"] - 700) / 10
                r = _op(
                    base,
                    {
                        "operation": "EXP_TRIAL_RESULT",
                        "experiment_name": name,
                        "trial_number": trial,
                        "trial_result": "success",
                        "result_value_type": "double",
                        "result_value": value,
                    },
                    TOKEN,
                )
                assert r.status_code == 200 and r.text == "Result posted successfully!", r.text
                r = _op(base, {"operation": "EXP_TRIAL_GENERATE_SUBSEQUENT", "experiment_name": name}, TOKEN)
                if r.status_code == 400:
                    assert r.text == f"Trials completed for experiment: {name}"
                    return -1
                assert r.status_code == 200, r.text
                trial = int(r.text)
            return trial

        with serving(storage, tmp_path, token=TOKEN, port=port, log=log) as base:
            r = _op(base, {"operation": "EXP_TRIAL_GENERATE_NEW", "search_space": SEARCH_SPACE}, TOKEN)
            assert r.status_code == 200 and r.text == "Experiment posted successfully! Trial 0 started..", r.text
            trial = run_trials(base, 5, 0)
        assert trial == 5
        # A new process on the same store: the experiment and its next trial are there.
        with serving(storage, tmp_path, token=TOKEN, port=port, log=log) as base:
            assert run_trials(base, 10, trial) == -1
            best = httpx.get(
                f"{base}/experiment_trials/best", params={"experiment_name": name}, headers=_auth(TOKEN), timeout=30
            )
            assert best.status_code == 200, best.text
            trials = httpx.get(f"{base}/api/v1/experiments/{name}/trials", headers=_auth(TOKEN), timeout=30).json()
        assert sorted(seen) == list(range(10))
        assert [t["state"] for t in trials] == ["complete"] * 10
        assert "knobflow service on http://127.0.0.1" in log.read_text()


def test_with_a_token_every_endpoint_of_the_process_answers_401_without_it(tmp_path: Path) -> None:
    from knobflow.service.app import create_app

    app = create_app(f"sqlite:///{tmp_path / 'routes.db'}")
    routes = [(m, r.path) for r in app.routes for m in sorted(getattr(r, "methods", ())) if m != "HEAD"]
    assert len(routes) >= 20
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    with serving(storage, tmp_path, token=TOKEN, port=free_port(), log=tmp_path / "serve.log") as base:
        for method, path in routes:
            url = base + path.replace("{name}", "x").replace("{number}", "0")
            for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
                r = httpx.request(method, url, headers=headers, timeout=30)
                assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert httpx.get(f"{base}/api/v1/experiments", headers=_auth(TOKEN), timeout=30).status_code == 200


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    env = {**os.environ, "KNOBFLOW_HOME": str(tmp_path)}
    env.pop("KNOBFLOW_SERVICE_TOKEN", None)
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    cmd = [str(BIN / "knobflow"), "serve", "--storage", storage, "--port", str(free_port())]
    proc = subprocess.run([*cmd, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in proc.stderr
    short = {**env, "KNOBFLOW_SERVICE_TOKEN": "abc"}
    proc = subprocess.run([*cmd, "--host", "0.0.0.0"], env=short, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "use at least 16" in proc.stderr
    missing = tmp_path / "no-such-token"
    proc = subprocess.run([*cmd, "--token-file", str(missing)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"--token-file {missing}: cannot read it" in proc.stderr
