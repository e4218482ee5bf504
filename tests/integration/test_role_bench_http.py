"""The bench_http role and its load generator against real HTTP servers started here on 127.0.0.1:
Python's own `python -m http.server`, and a small HTTP/1.1 keep-alive server (below) that records
what it receives and answers 200, 500, half and half, chunked, close-delimited or slowly. The role
runs through knobflow's playbooks; the load generator's protocol cases run it directly, with the
same environment the role gives it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knobflow.ansible import bridge
from tests.conftest import REPO, role_module

pytestmark = pytest.mark.slow

LOADGEN = REPO / "roles" / "bench_http" / "files" / "knobflow_http_load.py"
SPEC = role_module("bench_http", "bench_http_spec")
PWNED = Path("/tmp/knobflow-pwned")

SERVER = r"""
import http.server, json, sys, threading, time

lock = threading.Lock()
seen = {"count": 0, "last": None}
log_path = sys.argv[1]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            seen["count"] += 1
            n = seen["count"]
            seen["last"] = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                            "body": body.decode("utf-8", "replace")}
            if n % 50 == 1:
                with open(log_path, "w") as f:
                    json.dump(seen, f)
        path = self.path.split("?")[0]
        status = 200
        if path == "/fail" or (path == "/half" and n % 2 == 0):
            status = 500
        if path == "/slow":
            time.sleep(2)
        payload = b'{"ok": true}'
        if path == "/chunked":
            self.send_response(status)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: 1\r\n\r\n")
            return
        if path == "/close":  # HTTP/1.0 style: no length, the body ends when the connection closes
            self.send_response(status)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload * 3)
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = answer

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
tls = len(sys.argv) > 2
if tls:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)

def flush():
    while True:
        time.sleep(0.2)
        with lock:
            with open(log_path, "w") as f:
                json.dump(seen, f)

threading.Thread(target=flush, daemon=True).start()
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path, scheme: str = "http") -> None:
        self.proc, self.port, self.log, self.scheme = proc, port, log, scheme

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def seen(self) -> dict[str, Any]:
        time.sleep(0.5)  # the server writes its log every 0.2 s
        return dict(json.loads(self.log.read_text())) if self.log.exists() else {"count": 0, "last": None}


def _start(tmp_path: Path, *args: str) -> Server:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    log = tmp_path / "seen.json"
    errors = tmp_path / "server.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(log), *args], stdout=subprocess.PIPE, stderr=err, text=True
        )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().strip() or 0)
    assert port, errors.read_text()
    return Server(proc, port, log, "https" if args else "http")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = _start(tmp_path)
    yield s
    _stop(s.proc)


@pytest.fixture
def stdlib_server(tmp_path: Path) -> Iterator[str]:
    """`python -m http.server` (HTTP/1.0: it closes the connection after every response)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>knobflow</h1>\n" * 20)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/index.html"
    _stop(proc)


def _vars(url: str, repeats: int = 2, warmup: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "bench_http_url": url,
        "bench_http_duration": 1,
        "bench_http_concurrency": 4,
        **extra,
        "knobflow": {
            "benchmark": {
                "role": "bench_http",
                "warmup": warmup,
                "repeats": repeats,
                "aggregate": "median",
                "timeout": 60,
            }
        },
    }


def _sane(m: dict[str, float]) -> None:
    assert m["requests_per_s"] > 20, m
    assert m["error_rate"] == 0.0 and m["errors"] == 0.0
    assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"] <= m["latency_p99_ms"] <= m["latency_max_ms"]
    assert m["latency_max_ms"] < 5000


def test_stdlib_http_server_gives_sane_metrics_with_warmup_and_repeats(stdlib_server: str) -> None:
    r = bridge.run_playbook("benchmark.yml", extravars=_vars(stdlib_server))
    assert r.ok, r.reason
    assert r.changed == [], "a benchmark changes nothing"
    m = r.stats["knobflow_metrics"]
    _sane(m)
    bench = r.stats["knobflow_benchmark"]
    assert len(bench["runs"]) == 2 and bench["aggregate"] == "median"
    assert set(bench["spread"]["requests_per_s"]) == {"min", "max", "stdev"}
    assert m["requests_per_s"] == pytest.approx(m["requests"] / m["duration_s"], rel=0.01)


def test_request_shape_reaches_the_server_literally_and_never_a_shell(server: Server) -> None:
    """Also the way a remote host runs it: the load generator copied to a scratch folder, removed after."""
    PWNED.unlink(missing_ok=True)
    scratch = set(Path("/tmp").glob("knobflow-http.*"))
    evil = "a; touch /tmp/knobflow-pwned # $(touch /tmp/knobflow-pwned) `touch /tmp/knobflow-pwned`"
    v = _vars(
        server.url("/ok?q=" + "%24%28id%29"),
        repeats=1,
        warmup=0,
        bench_http_method="POST",
        bench_http_headers={"X-Knobflow": evil, "Content-Type": "application/json", "X-Number": 7},
        bench_http_body=json.dumps({"note": evil, "unicode": "é"}),
        bench_http_requests=120,
        bench_http_concurrency=3,
        bench_http_copy_script=True,
    )
    r = bridge.run_playbook("benchmark.yml", extravars=v)
    assert r.ok, r.reason
    assert r.changed == [], "the scratch folder is not a change to the host"
    assert set(Path("/tmp").glob("knobflow-http.*")) == scratch, "the scratch folder is gone"
    m = r.stats["knobflow_metrics"]
    assert m["requests"] == 120 and m["error_rate"] == 0.0, "a request count is exact"
    seen = server.seen()
    assert seen["count"] == 120
    last = seen["last"]
    assert last["method"] == "POST" and last["path"] == "/ok?q=%24%28id%29"
    assert last["headers"]["X-Knobflow"] == evil and last["headers"]["X-Number"] == "7"
    assert json.loads(last["body"]) == {"note": evil, "unicode": "é"}
    assert not PWNED.exists()


def test_header_injection_and_bad_parameters_are_refused_before_any_load(server: Server) -> None:
    v = _vars(
        server.url("/ok"),
        bench_http_headers={"X-A": "1\r\nX-Injected: yes"},
        bench_http_method="GET /x HTTP/1.1",
        bench_http_expected_status=[200, 42],
        bench_http_duration=100,
    )
    r = bridge.run_playbook("benchmark.yml", extravars=v)
    assert not r.ok
    reason = r.reason or ""
    assert "Check the HTTP benchmark's parameters" in reason
    assert "headers: X-A: the value holds a line break" in reason
    assert "method: 'GET /x HTTP/1.1' is not an HTTP method token" in reason
    assert "expected_status: 42 is not an HTTP status" in reason
    assert "duration: 100.0 s does not fit in the run timeout of 60 s" in reason
    assert server.seen()["count"] == 0


def test_server_errors_give_an_error_rate_or_a_clear_failure(server: Server) -> None:
    half = bridge.run_playbook("benchmark.yml", extravars=_vars(server.url("/half"), repeats=1, warmup=0))
    assert half.ok, half.reason
    m = half.stats["knobflow_metrics"]
    assert 0.4 < m["error_rate"] < 0.6, m
    assert m["requests"] > 0 and m["latency_p50_ms"] > 0
    rc, _, err = run_load(server.url("/half"), max_error_rate=0.1)  # what bench_http_max_error_rate sets
    assert rc == 3 and "is above max_error_rate 0.1" in err and "HTTP 500:" in err, err
    r = bridge.run_playbook("benchmark.yml", extravars=_vars(server.url("/fail"), repeats=1, warmup=0))
    assert not r.ok
    reason = r.reason or ""
    assert "Run the benchmark command" in reason
    assert "no request to http://127.0.0.1" in reason and "got an expected response (HTTP 200)" in reason
    assert "HTTP 500:" in reason


def test_check_mode_runs_no_load(server: Server) -> None:
    r = bridge.run_playbook("benchmark.yml", extravars=_vars(server.url("/ok")), check=True)
    assert r.ok, r.reason
    assert "knobflow_metrics" not in r.stats
    assert server.seen()["count"] == 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (Debian package wrk)")
def test_wrk_engine(server: Server) -> None:
    v = _vars(
        server.url("/half"),
        repeats=1,
        warmup=0,
        bench_http_engine="wrk",
        bench_http_method="PUT",
        bench_http_headers={"X-Quote": 'a"b\\c]]'},
        bench_http_body="payload ]] \" ' \\",
    )
    r = bridge.run_playbook("benchmark.yml", extravars=v)
    assert r.ok, r.reason
    m = r.stats["knobflow_metrics"]
    assert m["requests_per_s"] > 20 and 0.4 < m["error_rate"] < 0.6, m
    last = server.seen()["last"]
    assert last["method"] == "PUT" and last["headers"]["X-Quote"] == 'a"b\\c]]'
    assert last["body"] == "payload ]] \" ' \\"


# --- the load generator alone, as the role runs it --------------------------------------------------


def run_load(url: str, **spec: Any) -> tuple[int, dict[str, float], str]:
    full = {
        "url": url,
        "method": "GET",
        "headers": [],
        "body": "",
        "expected_status": [200],
        "concurrency": 4,
        "duration": 0.5,
        "requests": 0,
        "request_timeout": 5,
        "processes": 1,
        "max_error_rate": 1.0,
        "engine": "python",
        **spec,
    }
    env = {**os.environ, "KNOBFLOW_HTTP_SPEC": json.dumps(full)}
    out = subprocess.run([sys.executable, str(LOADGEN)], env=env, capture_output=True, text=True, timeout=60)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return out.returncode, (json.loads(lines[-1]) if lines else {}), out.stderr


@pytest.mark.parametrize(
    ("path", "spec"),
    [
        ("/chunked", {}),
        ("/close", {}),
        ("/ok", {"method": "HEAD"}),
        ("/ok", {"processes": 2, "requests": 301, "concurrency": 5}),
        ("/ok", {"python_loop": "asyncio"}),
        ("/chunked", {"python_loop": "asyncio", "processes": 2}),
    ],
)
def test_response_framings_and_engines(server: Server, path: str, spec: dict[str, Any]) -> None:
    """A request count (exact, whatever the machine's load) through each framing and engine."""
    count = spec.get("requests", 40)
    rc, m, err = run_load(server.url(path), **{"requests": count, **spec})
    assert rc == 0, err
    assert m["errors"] == 0 and m["requests"] == count, (m, err)


def test_timeouts_and_refused_connections_are_clear_failures(server: Server) -> None:
    rc, _, err = run_load(server.url("/slow"), request_timeout=0.3, duration=1)
    assert rc == 2 and "timeout:" in err, err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run_load(f"http://127.0.0.1:{port}/", duration=0.3)
    assert rc == 2 and "connect: connection refused" in err, err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_https(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    s = _start(tmp_path, str(cert), str(key))
    try:
        rc, m, err = run_load(s.url("/ok"), verify_tls=False, requests=20, duration=0)
        assert rc == 0 and m["requests"] == 20 and m["errors"] == 0, err
        rc, _, err = run_load(s.url("/ok"), duration=0.3)
        assert rc == 2 and "CERTIFICATE_VERIFY_FAILED" in err, err
    finally:
        _stop(s.proc)


def test_spec_module_checks() -> None:
    base = {
        "url": "http://127.0.0.1:8080/x",
        "method": "GET",
        "headers": {},
        "body": "",
        "body_file": None,
        "expected_status": [200],
        "concurrency": 8,
        "duration": 10.0,
        "requests": 0,
        "request_timeout": 10.0,
        "processes": 1,
        "max_error_rate": 1.0,
        "engine": "python",
        "verify_tls": True,
        "run_timeout": 600,
    }
    spec, errors = SPEC.check(base)
    assert errors == [] and spec["headers"] == []
    cases = [
        ({"url": "ftp://x/"}, "scheme must be http or https"),
        ({"url": "http://user:pw@h/"}, "no user name or password"),
        ({"url": "http://h/a b"}, "percent-encode"),
        ({"headers": {"Content-Length": 3}}, "set by the load generator"),
        ({"headers": {"Bad Name": "x"}}, "is not a valid header name"),
        ({"processes": 9, "concurrency": 4}, "is more than concurrency"),
        ({"engine": "wrk", "requests": 5}, "runs for a duration only"),
        ({"max_error_rate": 2.0}, "between 0 and 1"),
    ]
    for change, message in cases:
        _, errors = SPEC.check({**base, **change}, wrk_path="/usr/bin/wrk")
        assert any(message in e for e in errors), (change, errors)
    _, errors = SPEC.check({**base, "engine": "wrk"}, wrk_path=None)
    assert any("wrk is not installed" in e for e in errors)
