"""knobflow.client against the tuning service (in process, through httpx.ASGITransport, and over a
real socket with uvicorn), and the ``knobflow`` connection naming a remote service (KnobflowHook)."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from knobflow.client import (
    KnobflowBadRequest,
    KnobflowClient,
    KnobflowConflict,
    KnobflowError,
    KnobflowNotFound,
    KnobflowServiceError,
    KnobflowUnauthorized,
    KnobflowUnavailable,
    KnobflowUnreachable,
)
from knobflow.service.app import bearer_token, create_app
from tests.unit.test_service_api import EXPERIMENT, throughput

TOKEN = "client-test-token-0123456789"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'k.db'}"


@pytest.fixture
def kf(url: str) -> Iterator[KnobflowClient]:
    with KnobflowClient("http://knobflow.test", transport=httpx.ASGITransport(app=create_app(url))) as client:
        yield client


def _doc(name: str = "svc-demo", **changes: Any) -> dict[str, Any]:
    return {**EXPERIMENT, "name": name, **changes}


# --------------------------------------------------------------------------------------------
# Experiments


def test_create_from_a_dict_yaml_text_and_files_then_list_show_and_archive(kf: KnobflowClient, tmp_path: Path) -> None:
    created = kf.create_experiment(_doc("from-dict"))
    assert created["name"] == "from-dict" and created["runner"] == "client" and created["progress"]["done"] == 0
    assert kf.create_experiment(yaml.safe_dump(_doc("from-yaml")))["name"] == "from-yaml"
    yaml_file = tmp_path / "exp.yaml"
    yaml_file.write_text(yaml.safe_dump(_doc("from-yaml-file")))
    assert kf.create_experiment(yaml_file)["name"] == "from-yaml-file"
    json_file = tmp_path / "exp.json"
    json_file.write_text(json.dumps(_doc("from-json-file"), indent="\t"))  # tabs: JSON, not YAML
    assert kf.create_experiment(json_file)["name"] == "from-json-file"

    names = ["from-dict", "from-json-file", "from-yaml", "from-yaml-file"]
    assert sorted(e["name"] for e in kf.experiments()) == names
    shown = kf.experiment("from-yaml-file")
    assert shown["tuner"] == "random" and shown["budget"]["trials"] == 8

    archived = kf.archive("from-dict")
    assert archived["experiment"] == "from-dict" and archived["archived_as"].startswith("archive:from-dict:")
    assert sorted(e["name"] for e in kf.experiments()) == names[1:]
    assert kf.create_experiment(_doc("from-dict"))["name"] == "from-dict"  # the name is free again


def test_create_errors_carry_the_service_sentence(kf: KnobflowClient, tmp_path: Path) -> None:
    kf.create_experiment(_doc())
    with pytest.raises(KnobflowConflict) as dup:
        kf.create_experiment(_doc())
    assert dup.value.status == 409 and dup.value.message == "experiment 'svc-demo' already exists"
    with pytest.raises(KnobflowBadRequest) as bad:
        kf.create_experiment(_doc("other", storage="sqlite:////tmp/x.db"))
    assert bad.value.status == 400
    assert bad.value.message == "storage: the service keeps experiments in its own store; remove the field"
    assert "POST http://knobflow.test/api/v1/experiments" in str(bad.value)
    with pytest.raises(KnobflowBadRequest, match="tuner"):
        kf.create_experiment(_doc("other", tuner={"name": "no-such-tuner"}))
    with pytest.raises(KnobflowBadRequest):
        kf.create_experiment("name: [unclosed")
    with pytest.raises(KnobflowError, match="cannot read the experiment file"):
        kf.create_experiment(tmp_path / "missing.yaml")
    with pytest.raises(TypeError):
        kf.create_experiment(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Trials and the loop


def test_optimize_runs_the_whole_budget_and_the_reads_agree(kf: KnobflowClient) -> None:
    kf.create_experiment(_doc())
    seen: list[dict[str, Any]] = []

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        seen.append(params)
        return {"throughput": throughput(params), "p99_ms": 12.5}

    first = kf.optimize("svc-demo", objective, n_trials=3)
    assert [t["number"] for t in first.trials] == [0, 1, 2] and first.stop_reason is None
    assert first.trials[0]["baseline"] and seen[0] == {"threads": 8, "heap_mb": 512, "gc": "G1"}

    rest = kf.optimize("svc-demo", objective)
    assert [t["number"] for t in rest.trials] == [3, 4, 5, 6, 7]
    assert rest.stop_reason == "budget spent: 8 of 8 trials done"
    assert all(t["state"] == "complete" and t["metrics"]["p99_ms"] == 12.5 for t in first.trials + rest.trials)
    for t, params in zip(first.trials + rest.trials, seen, strict=True):
        assert t["params"] == params and t["value"] == pytest.approx(throughput(params))

    trials = kf.trials("svc-demo")
    assert [t["number"] for t in trials] == list(range(8))
    assert kf.trial("svc-demo", 4) == trials[4]
    best = kf.best("svc-demo")
    top = max(trials, key=lambda t: t["value"])
    assert best["best"]["number"] == top["number"] and best["gain_pct"] is not None
    assert kf.experiment("svc-demo")["stop_reason"].startswith("budget spent")
    # Once the budget is spent, the loop does nothing and says why.
    again = kf.optimize("svc-demo", objective)
    assert again.trials == [] and again.stop_reason == "budget spent: 8 of 8 trials done"

    rows = kf.export("svc-demo")
    assert len(rows) == 8 and rows[0]["baseline"] is True and rows[0]["params"] == seen[0]
    csv_text = kf.export("svc-demo", format="csv")
    assert csv_text.splitlines()[0].startswith("trial,state,baseline,") and len(csv_text.strip().splitlines()) == 9
    with pytest.raises(ValueError):
        kf.export("svc-demo", format="xml")  # type: ignore[arg-type]


def test_ask_and_tell_by_hand_values_batches_notes_and_importance(kf: KnobflowClient) -> None:
    kf.create_experiment(_doc(parallel=4, budget={"trials": 20}))
    batch = kf.ask("svc-demo", n=3, note="worker-1")
    assert [t["number"] for t in batch] == [0, 1, 2] and all(t["state"] == "running" for t in batch)
    assert all(t["note"] == "worker-1" for t in batch)
    told = kf.tell("svc-demo", 0, value=throughput(batch[0]["params"]))
    assert told["state"] == "complete" and told["value"] == pytest.approx(throughput(batch[0]["params"]))
    assert kf.tell("svc-demo", 1, values=[5.0])["value"] == 5.0
    failed = kf.tell("svc-demo", 2, state="fail", reason="OOM killed")
    assert failed["state"] == "fail" and failed["reason"] == "OOM killed"

    with pytest.raises(KnobflowConflict) as few:
        kf.importance("svc-demo")
    assert "needs at least" in few.value.message
    done = kf.optimize("svc-demo", lambda p: throughput(p))  # a plain number is the objective's value
    assert done.stop_reason == "budget spent: 20 of 20 trials done"
    ranked = kf.importance("svc-demo")
    assert ranked["experiment"] == "svc-demo"
    assert {t["name"] for t in ranked["tunables"]} == {"threads", "heap_mb", "gc"}


def test_an_objective_that_raises_fails_its_trial_then_propagates_or_is_caught(kf: KnobflowClient) -> None:
    kf.create_experiment(_doc(budget={"trials": 8, "max_failed": 2}))

    def broken(params: dict[str, Any]) -> float:
        raise RuntimeError("the benchmark crashed")

    with pytest.raises(RuntimeError, match="the benchmark crashed"):
        kf.optimize("svc-demo", broken)
    t0 = kf.trial("svc-demo", 0)
    assert t0["state"] == "fail" and t0["reason"] == "RuntimeError: the benchmark crashed"

    # With catch=, a failing configuration is a failed trial and the loop goes on, until max_failed.
    calls = []

    def flaky(params: dict[str, Any]) -> float:
        calls.append(params)
        if len(calls) == 1:
            return throughput(params)
        raise OSError("connection reset by the system under test")

    result = kf.optimize("svc-demo", flaky, catch=(OSError,))
    assert [t["state"] for t in result.trials] == ["complete", "fail"]
    assert result.trials[1]["reason"] == "OSError: connection reset by the system under test"
    assert result.stop_reason is not None and "max_failed" in result.stop_reason

    # An objective returning something that is no outcome is a bug: the trial fails, TypeError propagates.
    kf.create_experiment(_doc("other"))
    with pytest.raises(TypeError, match="returned None"):
        kf.optimize("other", lambda p: None)  # type: ignore[arg-type,return-value]
    assert kf.trial("other", 0)["state"] == "fail"


def test_a_result_the_service_refuses_fails_the_trial_and_raises(kf: KnobflowClient) -> None:
    kf.create_experiment(_doc())
    with pytest.raises(KnobflowBadRequest) as err:
        kf.optimize("svc-demo", lambda p: {"latency": 3.0})  # not the objective's metric
    assert err.value.message.startswith("metrics: ")
    t0 = kf.trial("svc-demo", 0)
    assert t0["state"] == "fail" and t0["reason"].startswith("the service refused the objective's result: metrics: ")


def test_interrupting_the_loop_prunes_the_trial(kf: KnobflowClient) -> None:
    kf.create_experiment(_doc())

    def interrupted(params: dict[str, Any]) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kf.optimize("svc-demo", interrupted)
    t0 = kf.trial("svc-demo", 0)
    assert t0["state"] == "pruned" and t0["reason"] == "interrupted (KeyboardInterrupt)"


def test_service_errors_404_409_400(kf: KnobflowClient, url: str) -> None:
    for call in (
        lambda: kf.experiment("nope"),
        lambda: kf.ask("nope"),
        lambda: kf.trials("nope"),
        lambda: kf.best("nope"),
        lambda: kf.archive("nope"),
        lambda: kf.tell("nope", 0, value=1.0),
        lambda: kf.optimize("nope", throughput),
    ):
        with pytest.raises(KnobflowNotFound) as err:
            call()
        assert err.value.status == 404 and err.value.message == "no experiment named 'nope'"
        assert isinstance(err.value, KnobflowServiceError)

    kf.create_experiment(_doc(budget={"trials": 2}))
    with pytest.raises(KnobflowNotFound):
        kf.trial("svc-demo", 99)
    [t] = kf.ask("svc-demo")
    with pytest.raises(KnobflowBadRequest) as bad:
        kf.tell("svc-demo", t["number"], value=1.0, values=[1.0])
    assert bad.value.status == 400 and bad.value.message == "give value or values, not both"
    with pytest.raises(KnobflowBadRequest, match="a complete trial needs value, values or metrics"):
        kf.tell("svc-demo", t["number"])
    with pytest.raises(KnobflowBadRequest, match=r"^400: value: "):
        kf.tell("svc-demo", t["number"], value="fast")  # type: ignore[arg-type]
    kf.tell("svc-demo", t["number"], value=1.0)
    with pytest.raises(KnobflowConflict) as told:
        kf.tell("svc-demo", t["number"], value=2.0)
    assert told.value.message == f"trial {t['number']} of 'svc-demo' is already finished (complete)"
    [t] = kf.ask("svc-demo")
    kf.tell("svc-demo", t["number"], value=2.0)
    with pytest.raises(KnobflowConflict) as spent:
        kf.ask("svc-demo")
    assert spent.value.status == 409 and spent.value.message == "budget spent: 2 of 2 trials done"

    # An experiment knobflow runs itself (runner: ansible): a 409 that optimize raises, not a stop.
    from knobflow import spec
    from knobflow.store import Store
    from tests.conftest import REPO

    exp = spec.load(REPO / "experiments" / "sqlite-demo.yaml")
    Store(url).open(exp)
    with pytest.raises(KnobflowConflict, match="runner: client"):
        kf.optimize(exp.name, throughput)


def test_the_bearer_token_is_sent(url: str) -> None:
    app = create_app(url, auth=bearer_token(TOKEN))
    with KnobflowClient("http://knobflow.test", TOKEN, transport=httpx.ASGITransport(app=app)) as kf:
        assert kf.health() == {"status": "ok"}
        kf.create_experiment(_doc())
        assert kf.optimize("svc-demo", throughput, n_trials=2).trials[1]["state"] == "complete"
        assert TOKEN not in repr(kf)
    for token in (None, "wrong-token-0123456789"):
        with KnobflowClient("http://knobflow.test", token, transport=httpx.ASGITransport(app=app)) as kf:
            with pytest.raises(KnobflowUnauthorized) as err:
                kf.experiments()
            assert err.value.status == 401
            assert err.value.message == "a bearer token is required (Authorization: Bearer <token>)"


# --------------------------------------------------------------------------------------------
# Transport, retries, unreachable services


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[KnobflowClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = KnobflowClient("http://svc.test/knobflow/api/v1/", "tok", transport=httpx.MockTransport(record), backoff=0)
    return client, seen


def test_base_url_with_a_path_prefix_and_headers() -> None:
    kf, seen = _mock(lambda r: httpx.Response(200, json={"status": "ok"}))
    assert kf.base_url == "http://svc.test/knobflow"
    kf.health()
    kf.trial("a b/c", 3)
    assert [str(r.url) for r in seen] == [
        "http://svc.test/knobflow/api/v1/health",
        "http://svc.test/knobflow/api/v1/experiments/a%20b%2Fc/trials/3",
    ]
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert seen[0].headers["user-agent"].startswith("knobflow-client/")
    with pytest.raises(ValueError, match="http"):
        KnobflowClient("svc.test:8085")


def test_reads_are_retried_on_connection_errors_and_503(caplog: pytest.LogCaptureFixture) -> None:
    failures = [httpx.ConnectError("refused"), httpx.ReadError("reset")]

    def handler(request: httpx.Request) -> httpx.Response:
        if failures:
            raise failures.pop(0)
        return httpx.Response(200, json=[])

    kf, seen = _mock(handler)
    assert kf.experiments() == []
    assert len(seen) == 3 and "retrying" in caplog.text

    kf, seen = _mock(lambda r: httpx.Response(503, json={"error": "the store is unavailable: OperationalError"}))
    with pytest.raises(KnobflowUnavailable) as err:
        kf.health()
    assert err.value.message == "the store is unavailable: OperationalError"
    assert len(seen) == 1 + kf.retries


def test_ask_and_tell_are_not_retried_once_sent() -> None:
    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset")

    kf, seen = _mock(reset)
    with pytest.raises(KnobflowUnreachable, match="may or may not have been carried out"):
        kf.ask("exp")
    assert len(seen) == 1
    with pytest.raises(KnobflowUnreachable):
        kf.tell("exp", 1, value=1.0)
    with pytest.raises(KnobflowUnreachable):
        kf.ask("exp")
    assert len(seen) == 3
    for r in seen:  # every 503 or reset of a write reaches the caller at once
        assert r.method == "POST"

    # A connection that could not be opened sent nothing: that, and only that, is retried.
    refused = [httpx.ConnectError("refused")]

    def handler(request: httpx.Request) -> httpx.Response:
        if refused:
            raise refused.pop(0)
        return httpx.Response(200, json={"experiment": "exp", "trials": [{"number": 0, "params": {}}]})

    kf, seen = _mock(handler)
    assert kf.ask("exp") == [{"number": 0, "params": {}}]
    assert len(seen) == 2

    kf, seen = _mock(lambda r: httpx.Response(503, json={"error": "the store is unavailable: X"}))
    with pytest.raises(KnobflowUnavailable):
        kf.tell("exp", 1, value=1.0)
    assert len(seen) == 1


def test_an_error_that_is_not_the_services_json() -> None:
    kf, _ = _mock(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(KnobflowServiceError) as err:
        kf.experiments()
    assert type(err.value) is KnobflowServiceError and err.value.status == 502
    assert err.value.message == "<html>Bad Gateway</html>"
    kf, _ = _mock(lambda r: httpx.Response(403, json={"detail": "Forbidden"}))
    with pytest.raises(KnobflowUnauthorized, match="Forbidden"):
        kf.experiments()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_service_names_its_url() -> None:
    base = f"http://127.0.0.1:{_free_port()}"
    with KnobflowClient(base, retries=1, backoff=0) as kf, pytest.raises(KnobflowUnreachable) as err:
        kf.experiments()
    assert str(err.value).startswith(f"cannot reach the knobflow service at {base}: ConnectError")
    assert isinstance(err.value, ConnectionError) and err.value.url == base


def test_the_asgi_transport_works_from_inside_an_event_loop(kf: KnobflowClient) -> None:
    async def main() -> dict[str, Any]:
        return kf.health()

    assert asyncio.run(main()) == {"status": "ok"}


@pytest.fixture
def served(url: str) -> Iterator[str]:
    """The service over a real socket (uvicorn in a thread), with a bearer token."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(url, auth=bearer_token(TOKEN)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --------------------------------------------------------------------------------------------
# The Airflow hook: a knobflow connection naming a service


def _conn_env(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> str:
    conn_id = f"knobflow_client_test_{secrets.token_hex(4)}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "knobflow", **conn}))
    return conn_id


def test_a_service_connection_gives_a_client_with_its_url_and_token(
    monkeypatch: pytest.MonkeyPatch, served: str, url: str
) -> None:
    from airflow.sdk import Connection

    from knobflow.airflow.hooks import KnobflowConnectionError, KnobflowHook

    conn_id = _conn_env(monkeypatch, {"extra": {"service_url": f"{served}/", "token": TOKEN}})
    hook = KnobflowHook(knobflow_conn_id=conn_id)
    assert hook.is_remote
    assert hook.get_service() == (f"{served}/", TOKEN)
    with hook.get_client() as kf:
        assert (kf.base_url, kf.token) == (served, TOKEN)
        kf.create_experiment(_doc())
        assert kf.optimize("svc-demo", throughput).stop_reason == "budget spent: 8 of 8 trials done"
    with hook.get_client(timeout=5.0, transport=httpx.ASGITransport(app=create_app(url))) as kf:
        assert [e["name"] for e in kf.experiments()] == ["svc-demo"]  # the same store, in process
    conn = hook.get_conn()
    assert isinstance(conn, KnobflowClient)
    conn.close()

    ok, message = hook.test_connection()
    assert (ok, message) == (True, f"knobflow service {served}: 1 experiments (svc-demo)")
    assert Connection.get(conn_id).test_connection() == (True, message)
    # What needs a store says the connection names a service.
    with pytest.raises(KnobflowConnectionError, match=r"names a remote knobflow service .* not a store"):
        hook.get_storage_url()

    # A wrong token, and no service there: the test fails, saying why.
    bad = KnobflowHook(_conn_env(monkeypatch, {"extra": {"service_url": served, "token": "wrong-0123456789"}}))
    ok, message = bad.test_connection()
    assert not ok and message.startswith("KnobflowUnauthorized: 401: a bearer token is required")
    gone = f"http://127.0.0.1:{_free_port()}"
    ok, message = KnobflowHook(_conn_env(monkeypatch, {"extra": {"service_url": gone}})).test_connection()
    assert not ok and f"cannot reach the knobflow service at {gone}" in message


def test_the_form_prefixed_extras_and_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from knobflow.airflow.hooks import KnobflowHook

    extra = {
        "extra__knobflow__storage": "",
        "extra__knobflow__service_url": " https://tuning.example:8085 ",
        "extra__knobflow__token": "",
    }
    hook = KnobflowHook(_conn_env(monkeypatch, {"extra": extra}))
    assert hook.is_remote and hook.get_service() == ("https://tuning.example:8085", None)
    with hook.get_client() as kf:
        assert kf.token is None and "authorization" not in kf._http.headers


def test_a_connection_naming_a_store_and_a_service_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from knobflow.airflow.hooks import KnobflowConnectionError, KnobflowHook, service_from_fields

    service = {"service_url": "https://tuning.example:8085", "token": "t"}
    cases = {
        "names both a store \\(extra 'storage'": {"extra": {**service, "storage": "sqlite:////a.db"}},
        "names both a store \\(host 'db'\\)": {"extra": service, "host": "db", "schema": "s"},
        "sets PostgreSQL fields too \\(login, password\\)": {"extra": service, "login": "u", "password": "tok"},
        "must be a URL string": {"extra": {"service_url": 5}},
    }
    for words, conn in cases.items():
        hook = KnobflowHook(_conn_env(monkeypatch, conn))
        for call in (lambda h=hook: h.is_remote, hook.get_storage_url, hook.get_client, hook.get_conn):
            with pytest.raises(KnobflowConnectionError, match=words) as err:
                call()
            assert f"'{hook.knobflow_conn_id}'" in str(err.value)
        ok, message = hook.test_connection()
        assert not ok and message.startswith("KnobflowConnectionError")
    # The password in a store URL is not shown.
    with pytest.raises(KnobflowConnectionError) as err:
        service_from_fields(extra={**service, "storage": "postgresql+psycopg://u:pw-secret@db/k"}, conn_id="c")
    assert "pw-secret" not in str(err.value) and "***" in str(err.value)

    for bad in ("tuning.example:8085", "ftp://tuning.example", "https://"):
        with pytest.raises(KnobflowConnectionError, match="must be an http:// or https:// URL"):
            service_from_fields(extra={"service_url": bad}, conn_id="c")
    with pytest.raises(KnobflowConnectionError, match="extra 'token' must be a string"):
        service_from_fields(extra={"service_url": "http://h", "token": 1}, conn_id="c")


def test_a_store_connection_is_unchanged_and_has_no_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from knobflow.airflow.hooks import KnobflowConnectionError, KnobflowHook, storage_url_from_fields
    from knobflow.store import Store

    db = f"sqlite:///{tmp_path / 'store.db'}"
    hook = KnobflowHook(_conn_env(monkeypatch, {"extra": {"storage": db}}))
    assert not hook.is_remote and hook.get_storage_url() == db
    assert isinstance(hook.get_conn(), Store)
    with pytest.raises(KnobflowConnectionError, match="names no knobflow service: set extra 'service_url'"):
        hook.get_client()
    pg = KnobflowHook(_conn_env(monkeypatch, {"host": "db", "login": "u", "password": "p", "schema": "k"}))
    assert not pg.is_remote and pg.get_storage_url() == "postgresql+psycopg://u:p@db:5432/k"
    # A stray token on a store connection changes nothing for the store (as before).
    assert storage_url_from_fields(extra={"storage": db, "token": "x"}) == db
    with pytest.raises(KnobflowConnectionError, match="names no store"):
        storage_url_from_fields(conn_id="c")
