"""Continuous tuning of a live service (experiments/sqlite-live.yaml): the SQLite workload runs as a
service (knobflow.workloads.sqlite_service) that reloads its configuration file, and each round
observes it through its Prometheus endpoint with the observe_metrics role, real ansible-runner on
localhost. What the service runs is checked on the service (its config digest and generation), not
only in the store. A round killed with SIGKILL after its prediction is re-applied by the next one."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from knobflow.continuous import ATTR
from knobflow.store import Store
from tests.conftest import BIN, REPO, knobflow

pytestmark = pytest.mark.slow


def _scrape(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = value
    return out


def _running_digest(url: str) -> tuple[int, str]:
    m = _scrape(url)
    (info,) = [k for k in m if k.startswith("knobflow_sqlite_config_info")]
    return int(m["knobflow_sqlite_config_generation"]), info.split('"')[1]


@pytest.fixture
def service(home: Path) -> Iterator[str]:
    target = home / "targets" / "sqlite-live"
    target.mkdir(parents=True)
    argv = [sys.executable, "-m", "knobflow.workloads.sqlite_service", "--config", str(target / "config.json")]
    argv += ["--db", str(target / "orders.db"), "--port", "0", "--epoch", "0.2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout is not None, "the service did not start"
        line = proc.stdout.readline()
        assert "serving http://" in line, line + (proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        yield line.split("serving ")[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not (target / "orders.db").exists(), "the service removes its database when stopped"


def _file(tmp_path: Path, url: str, window: float = 1.5, name: str = "live.yaml") -> Path:
    text = (REPO / "experiments" / "sqlite-live.yaml").read_text()
    text = text.replace("name: sqlite-live", "name: test-sqlite-live")
    text = text.replace(
        "\"{{ lookup('env', 'KNOBFLOW_SQLITE_LIVE_URL') | default('http://127.0.0.1:9464/metrics', true) }}\"", url
    )
    text = text.replace("observe_metrics_settle: 2", "observe_metrics_settle: 0.5")
    text = text.replace("observe_metrics_window: 20", f"observe_metrics_window: {window}")
    text = text.replace("observe_metrics_interval: 2", "observe_metrics_interval: 0.5")
    text = text.replace("pause_after: 3", "pause_after: 10")
    assert url in text and f"window: {window}" in text
    f = tmp_path / name
    f.write_text(text)
    return f


def test_rounds_observe_the_live_service_through_its_metrics(tmp_path: Path, home: Path, service: str) -> None:
    f = _file(tmp_path, service)
    config_file = home / "targets" / "sqlite-live" / "config.json"
    generations = []
    for n in range(3):
        out = knobflow("round", str(f), home=home, check=True).stdout
        assert f"round {n}: " in out, out
        gen, digest = _running_digest(service)
        # The service runs exactly the file the round left on the target (a restore included).
        assert digest == hashlib.sha256(config_file.read_bytes()).hexdigest()
        generations.append(gen)
    assert generations[0] >= 2 and generations == sorted(generations), generations

    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    study = store.load("test-sqlite-live")
    trials = store.trials(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("reason") for t in trials]
    for t in trials:
        m = t.user_attrs["metrics"]
        # A counter's rate over the window, a gauge's max, and the generation the window saw.
        assert m["throughput_ops"] > 50 and m["read_p99_ms"] > 0 and m["observe_samples"] == 4
        assert 1.4 < m["observe_seconds"] < 10
        assert t.value == m["throughput_ops"]
    # The window observed the configuration of its own trial: the service's generation moved on
    # between the baseline's window and the first predicted round's.
    assert trials[1].user_attrs["metrics"]["config_generation"] > trials[0].user_attrs["metrics"]["config_generation"]
    state = study.user_attrs[ATTR]
    assert state["rounds"] == 3 and state["baseline"] == trials[0].value


def test_a_round_killed_after_predict_is_re_applied_on_the_live_service(
    tmp_path: Path, home: Path, service: str
) -> None:
    f = _file(tmp_path, service, window=20)  # a long window, killed in the middle
    env = {**os.environ, "KNOBFLOW_HOME": str(home)}
    short = _file(tmp_path, service, name="short.yaml")  # the same experiment, a short window
    knobflow("round", str(short), home=home, check=True)  # round 0: the baseline
    gen0, _ = _running_digest(service)

    proc = subprocess.Popen(
        [str(BIN / "knobflow"), "round", str(f)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while _running_digest(service)[0] == gen0:  # wait until the prediction reached the service
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)
    time.sleep(1.0)  # well inside the 20 s window
    os.killpg(proc.pid, signal.SIGKILL)  # knobflow, ansible-runner and the module: all of it
    proc.wait(timeout=30)

    store = Store(f"sqlite:///{home / 'knobflow.db'}")
    state = store.load("test-sqlite-live").user_attrs[ATTR]
    pending = state["pending"]
    assert pending is not None and pending["round"] == 1 and state["rounds"] == 1
    config_file = home / "targets" / "sqlite-live" / "config.json"
    on_target = json.loads(config_file.read_text())
    assert on_target["batch_size"] == pending["config"]["batch_size"]

    out = knobflow("round", str(short), home=home, check=True).stdout
    assert "round 1: re-applied the pending configuration of a round that did not finish" in out, out
    study = store.load("test-sqlite-live")
    state = study.user_attrs[ATTR]
    assert state["pending"] is None and state["rounds"] == 2 and state["log"][-1]["action"] == "re-applied"
    trials = store.trials(study)
    killed = [t for t in trials if t.user_attrs.get("interrupted")]
    assert killed and all(t.state == TrialState.FAIL for t in killed)
    assert "is gone" in killed[0].user_attrs["reason"]
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("continuous_round") == 1]
    assert len(done) == 1 and dict(done[0].params) == pending["config"], (done, pending)
    # The service runs the re-applied configuration (or the last good one, if its reward was bad).
    _, digest = _running_digest(service)
    assert digest == hashlib.sha256(config_file.read_bytes()).hexdigest()
    applied = json.loads(config_file.read_text())
    expected = pending["config"] if state["bad"] == 0 else state["current"]
    assert applied["batch_size"] == expected["batch_size"]
