"""The tuning service's native API (/api/v1) over a SQLite store, with FastAPI's test client."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from knobflow.service.app import bearer_token, create_app
from knobflow.service.core import Service

EXPERIMENT: dict[str, Any] = {
    "name": "svc-demo",
    "description": "a client-run experiment",
    "runner": "client",
    "objective": {"metric": "throughput", "direction": "maximize"},
    "tunables": [
        {"name": "threads", "layer": "runtime", "type": "int", "low": 1, "high": 64, "default": 8},
        {"name": "heap_mb", "layer": "container", "type": "int", "low": 256, "high": 4096, "step": 256, "default": 512},
        {
            "name": "gc",
            "layer": "runtime",
            "type": "categorical",
            "choices": ["G1", "Parallel", "Serial"],
            "default": "G1",
        },
    ],
    "constraints": ["heap_mb >= threads * 32"],
    "tuner": {"name": "random", "seed": 7},
    "budget": {"trials": 8, "max_failed": 3},
}


def throughput(params: dict[str, Any]) -> float:
    return params["threads"] * 10.0 - abs(params["heap_mb"] - 2048) / 100 + (5 if params["gc"] == "Parallel" else 0)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def client(url: str) -> TestClient:
    return TestClient(create_app(url))


def _create(client: TestClient, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    r = client.post("/api/v1/experiments", json=doc or EXPERIMENT)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_client_runs_a_whole_experiment_through_ask_and_tell(client: TestClient) -> None:
    created = _create(client)
    assert created["name"] == "svc-demo" and created["runner"] == "client" and created["progress"]["done"] == 0
    numbers = []
    while True:
        r = client.post("/api/v1/experiments/svc-demo/ask", json={})
        if r.status_code == 409:
            assert "budget spent: 8 of 8 trials done" in r.json()["error"]
            break
        assert r.status_code == 200, r.text
        [trial] = r.json()["trials"]
        p = trial["params"]
        assert 1 <= p["threads"] <= 64 and p["heap_mb"] % 256 == 0 and p["heap_mb"] >= p["threads"] * 32
        numbers.append(trial["number"])
        told = client.post(
            f"/api/v1/experiments/svc-demo/trials/{trial['number']}/tell",
            json={"metrics": {"throughput": throughput(p), "p99_ms": 12.5}},
        )
        assert told.status_code == 200, told.text
        assert told.json()["state"] == "complete" and told.json()["value"] == pytest.approx(throughput(p))
    assert numbers == list(range(8))
    first = client.get("/api/v1/experiments/svc-demo/trials/0").json()
    assert first["baseline"] and first["params"] == {"threads": 8, "heap_mb": 512, "gc": "G1"}
    trials = client.get("/api/v1/experiments/svc-demo/trials").json()
    assert [t["number"] for t in trials] == numbers and all(t["metrics"]["p99_ms"] == 12.5 for t in trials)
    best = client.get("/api/v1/experiments/svc-demo/best").json()
    top = max(trials, key=lambda t: t["value"])
    assert best["best"]["number"] == top["number"] and best["best"]["value"] == pytest.approx(top["value"])
    assert best["gain_pct"] == pytest.approx(100 * (top["value"] - first["value"]) / abs(first["value"]))
    shown = client.get("/api/v1/experiments/svc-demo").json()
    assert shown["progress"]["done"] == 8 and shown["stop_reason"].startswith("budget spent")
    rows = client.get("/api/v1/experiments/svc-demo/export").json()
    assert len(rows) == 8 and rows[0]["baseline"] is True
    csv_text = client.get("/api/v1/experiments/svc-demo/export", params={"format": "csv"}).text
    assert csv_text.splitlines()[0].startswith("trial,") and len(csv_text.strip().splitlines()) == 9


def test_a_batch_ask_never_hands_out_a_configuration_twice_and_stops_at_the_budget(client: TestClient) -> None:
    _create(client, {**EXPERIMENT, "parallel": 4})
    r = client.post("/api/v1/experiments/svc-demo/ask", json={"n": 5})
    assert r.status_code == 200, r.text
    trials = r.json()["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 5
    more = client.post("/api/v1/experiments/svc-demo/ask", json={"n": 10}).json()["trials"]
    assert len(more) == 3  # 8 trials in the budget: 5 running + 3
    assert client.post("/api/v1/experiments/svc-demo/ask", json={}).status_code == 409


def test_concurrent_asks_get_distinct_trials(url: str) -> None:
    app = create_app(url)
    with TestClient(app) as c:
        _create(c, {**EXPERIMENT, "parallel": 8, "budget": {"trials": 40}})
    got: list[int] = []
    errors: list[str] = []

    def worker() -> None:
        with TestClient(create_app(url)) as c:  # a client of its own, and a Service (as another process)
            for _ in range(5):
                r = c.post("/api/v1/experiments/svc-demo/ask", json={})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                [t] = r.json()["trials"]
                got.append(t["number"])
                c.post(f"/api/v1/experiments/svc-demo/trials/{t['number']}/tell", json={"value": 1.0 + t["number"]})

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(20))
    trials = Service(url).trials("svc-demo")
    assert [t["state"] for t in trials] == ["complete"] * 20


def test_yaml_body_and_the_errors_name_the_field(client: TestClient) -> None:
    r = client.post(
        "/api/v1/experiments", content=yaml.safe_dump(EXPERIMENT), headers={"Content-Type": "application/yaml"}
    )
    assert r.status_code == 201, r.text
    assert client.post("/api/v1/experiments", json=EXPERIMENT).json() == {
        "error": "experiment 'svc-demo' already exists"
    }
    bad = {**EXPERIMENT, "name": "other", "tunables": [{**EXPERIMENT["tunables"][0], "low": 100}]}
    r = client.post("/api/v1/experiments", json=bad)
    assert r.status_code == 400 and "tunables[0]" in r.json()["error"]
    r = client.post("/api/v1/experiments", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("body: not valid JSON")
    r = client.post("/api/v1/experiments", json=[1, 2])
    assert r.status_code == 400 and "must be an object" in r.json()["error"]
    ansible = {k: v for k, v in EXPERIMENT.items() if k != "runner"} | {"name": "x3"}
    r = client.post("/api/v1/experiments", json=ansible | {"benchmark": {"role": "bench_command"}})
    assert r.status_code == 400 and r.json()["error"].startswith("runner:"), r.text
    r = client.post("/api/v1/experiments", json={**EXPERIMENT, "name": "x2", "storage": "sqlite:////tmp/x.db"})
    assert r.status_code == 400 and r.json()["error"].startswith("storage:")
    assert client.get("/api/v1/experiments/nope").status_code == 404
    assert client.get("/api/v1/experiments/svc-demo/trials/99").status_code == 404
    r = client.post("/api/v1/experiments/svc-demo/ask", json={"n": 0})
    assert r.status_code == 400 and r.json()["error"].startswith("n:")
    [t] = client.post("/api/v1/experiments/svc-demo/ask", json={}).json()["trials"]
    tell = f"/api/v1/experiments/svc-demo/trials/{t['number']}/tell"
    r = client.post(tell, json={"metrics": {"latency": 3}})
    assert r.status_code == 400 and "throughput" in r.json()["error"]
    r = client.post(tell, json={"state": "done"})
    assert r.status_code == 400 and r.json()["error"].startswith("state:")
    r = client.post(tell, json={})
    assert r.status_code == 400 and "value, values or metrics" in r.json()["error"]
    r = client.post(tell, json={"values": [1.0, 2.0]})
    assert r.status_code == 400 and r.json()["error"].startswith("values:")
    assert client.post(tell, json={"state": "fail", "reason": "OOM killed"}).status_code == 200
    r = client.post(tell, json={"value": 3.0})
    assert r.status_code == 409 and "already finished" in r.json()["error"]
    assert client.get(f"/api/v1/experiments/svc-demo/trials/{t['number']}").json()["reason"] == "OOM killed"
    r = client.post("/api/v1/experiments/svc-demo/trials/5/tell", json={"value": 1.0})
    assert r.status_code == 404


def test_an_ansible_experiment_is_shown_but_not_asked(client: TestClient, url: str) -> None:
    from knobflow import spec
    from knobflow.store import Store
    from tests.conftest import REPO

    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    Store(url).open(exp)
    assert client.get(f"/api/v1/experiments/{exp.name}").status_code == 200
    r = client.post(f"/api/v1/experiments/{exp.name}/ask", json={})
    assert r.status_code == 409 and "runner: client" in r.json()["error"]


def test_archive_frees_the_name(client: TestClient) -> None:
    _create(client)
    r = client.delete("/api/v1/experiments/svc-demo")
    assert r.status_code == 200 and r.json()["archived_as"].startswith("archive:svc-demo:")
    assert client.get("/api/v1/experiments/svc-demo").status_code == 404
    assert [e["name"] for e in client.get("/api/v1/experiments").json()] == []
    _create(client)


def test_a_trial_the_client_never_tells_expires_after_the_trial_timeout(client: TestClient, url: str) -> None:
    _create(client, {**EXPERIMENT, "budget": {"trials": 8, "trial_timeout": 1}})
    [t] = client.post("/api/v1/experiments/svc-demo/ask", json={}).json()["trials"]
    import time

    time.sleep(1.2)
    client.post("/api/v1/experiments/svc-demo/ask", json={})
    old = client.get(f"/api/v1/experiments/svc-demo/trials/{t['number']}").json()
    assert old["state"] == "fail" and "no result within budget.trial_timeout (1 s)" in old["reason"]
    assert client.get("/api/v1/experiments/svc-demo").json()["progress"]["done"] == 0  # not counted


def test_a_bearer_token_guards_every_route(url: str) -> None:
    app = create_app(url, auth=bearer_token("s3cret-token-0123456789"))
    c = TestClient(app)
    paths = sorted({r.path for r in app.routes if hasattr(r, "methods")})
    assert "/api/v1/experiments" in paths and "/experiment_trials" in paths
    checked = 0
    for route in app.routes:
        for method in getattr(route, "methods", ()):
            path = route.path.replace("{name}", "svc-demo").replace("{number}", "0")
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": "Basic eDp5"}):
                r = c.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                checked += 1
    assert checked >= 3 * 20  # the OpenAPI document and the docs page included
    assert c.get("/no/such/path").status_code == 401
    r = c.get("/api/v1/experiments", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = c.get("/api/v1/experiments", headers={"Authorization": "Bearer s3cret-token-0123456789"})
    assert r.status_code == 200


def test_the_pages_list_the_experiments_and_show_one_with_its_plots(client: TestClient) -> None:
    _create(client)
    for _ in range(4):
        [t] = client.post("/api/v1/experiments/svc-demo/ask", json={}).json()["trials"]
        client.post(f"/api/v1/experiments/svc-demo/trials/{t['number']}/tell", json={"value": throughput(t["params"])})
    index = client.get("/ui")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert 'href="ui/svc-demo"' in index.text
    page = client.get("/ui/svc-demo")
    assert page.status_code == 200 and "svc-demo" in page.text
    # plotly.js is served once, by the service, not inlined in every page and not from a CDN
    assert '<script src="static/plotly.min.js"></script>' in page.text and "https://" not in page.text
    js = client.get("/ui/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()
    assert client.get("/ui/no-such-experiment").status_code == 404


def test_an_unknown_path_gets_kruizes_sentence_and_an_unknown_api_path_json(client: TestClient) -> None:
    r = client.get("/no/such/path")
    assert r.status_code == 404 and r.text == "Could not be find requested resource. Please check the URL!"
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "no such path"}


def test_the_airflow_mount_serves_the_store_its_settings_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from knobflow.service import airflow_mount

    monkeypatch.setenv("KNOBFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("KNOBFLOW_SERVICE_STORAGE", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_KNOBFLOW_DEFAULT", raising=False)
    default = f"sqlite:///{tmp_path / 'knobflow.db'}"
    assert airflow_mount.storage_url() == default
    store = f"sqlite:///{tmp_path / 'conn.db'}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_KNOBFLOW_DEFAULT", json.dumps({"conn_type": "knobflow", "extra": {"storage": store}})
    )
    assert airflow_mount.storage_url() == store
    monkeypatch.setenv("KNOBFLOW_SERVICE_STORAGE", "sqlite:////srv/k.db")
    assert airflow_mount.storage_url() == "sqlite:////srv/k.db"
    monkeypatch.delenv("KNOBFLOW_SERVICE_STORAGE")
    remote = {"conn_type": "knobflow", "extra": {"service_url": "https://tuner:8085", "token": "t" * 20}}
    monkeypatch.setenv("AIRFLOW_CONN_KNOBFLOW_DEFAULT", json.dumps(remote))
    # Where a warning ends up depends on Airflow's logging set-up (structlog, handlers other tests
    # configure): record what the module logs instead.
    said: list[str] = []
    monkeypatch.setattr(airflow_mount.log, "warning", lambda msg, *args: said.append(msg % args))
    assert airflow_mount.storage_url() == default
    assert len(said) == 1 and "connection knobflow_default" in said[0] and "names a remote knobflow service" in said[0]
