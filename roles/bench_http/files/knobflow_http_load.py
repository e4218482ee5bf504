#!/usr/bin/env python3
"""knobflow's HTTP load generator: one measured run, one JSON line of metrics on standard output.

The bench_http role copies this file to the managed host and runs it through the bench_command
role (which repeats it, aggregates the runs and reports them to knobflow). It reads what to do
from the environment variable KNOBFLOW_HTTP_SPEC (JSON, built and validated by the role's
bench_http_spec module), so the URL, headers and body never appear on a command line or in a shell.

Engines:
  python  closed-loop load: `concurrency` keep-alive HTTP/1.1 connections, each sending its next
          request when the previous response is complete; asyncio protocols with a small
          hand-written response parser (uvloop when it is importable), in `processes` forked
          processes that split the connections between them.
  wrk     runs wrk (a C load generator) with a generated Lua script that sets the method, headers
          and body and counts the responses whose status is not expected.

Exit status: 0 with the metrics; 2 when the spec is unusable or no request got an expected
response; 3 when the error rate is above max_error_rate (a message on standard error says why).
Standard library only; Python 3.8 or later.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import json
import os
import pickle
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

SPEC_ENV = "KNOBFLOW_HTTP_SPEC"
MAX_HEADER_BYTES = 256 * 1024
CONNECT_ERRORS = (ConnectionRefusedError, socket.gaierror)


class Failure(Exception):
    """A problem that ends the run with a message and an exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The request


def target_of(url: str) -> dict:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rpartition("@")[2]
    return {"tls": tls, "host": host, "port": port, "path": path, "host_header": host_header}


def build_request(spec: dict, target: dict) -> bytes:
    headers = [(str(k), str(v)) for k, v in spec.get("headers", [])]
    names = {k.lower() for k, _ in headers}
    body = load_body(spec)
    lines = [f"{spec['method']} {target['path']} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {target['host_header']}")
    if "user-agent" not in names:
        lines.append("User-Agent: knobflow-bench-http")
    if "accept" not in names:
        lines.append("Accept: */*")
    lines.extend(f"{k}: {v}" for k, v in headers)
    if body or spec["method"] in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body


def load_body(spec: dict) -> bytes:
    if spec.get("body_file"):
        try:
            with open(spec["body_file"], "rb") as f:
                return f.read()
        except OSError as exc:
            raise Failure(f"cannot read the body file {spec['body_file']}: {exc.strerror or exc}") from None
    return str(spec.get("body", "")).encode("utf-8")


# --------------------------------------------------------------------------------------------
# The python engine


class Parser:
    """Reads one HTTP/1.x response from the start of a buffer, as its bytes arrive."""

    __slots__ = ("hdr", "head")

    def __init__(self, head: bool) -> None:
        self.head = head  # the request is a HEAD: responses have no body
        self.hdr = None  # (body start, status, keep_alive, mode, end) once the header is complete

    def parse(self, buf: bytearray, eof: bool):
        """(status, keep_alive, bytes of the response) when it is complete, else None."""
        if self.hdr is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise ProtocolError("response header larger than 256 KiB")
                return None
            header = bytes(buf[:end]).lower()
            if not header.startswith(b"http/1.") or len(header) < 12 or header[8:9] != b" ":
                raise ProtocolError(f"not an HTTP/1.x response: {bytes(buf[:40])!r}")
            try:
                status = int(header[9:12])
            except ValueError:
                raise ProtocolError(f"bad status line: {bytes(buf[:40])!r}") from None
            keep = header[7:8] == b"1"
            i = header.find(b"\r\nconnection:")
            if i >= 0:
                token = header[i + 13 : header.find(b"\r\n", i + 13) if header.find(b"\r\n", i + 13) > 0 else None]
                if b"close" in token:
                    keep = False
                elif b"keep-alive" in token:
                    keep = True
            if 100 <= status < 200 and status != 101:
                del buf[: end + 4]  # an interim response (100 Continue): the real one follows
                return self.parse(buf, eof)
            start = end + 4
            chunked = False
            length = None
            i = header.find(b"\r\ntransfer-encoding:")
            if i >= 0:
                j = header.find(b"\r\n", i + 20)
                chunked = b"chunked" in header[i + 20 : j if j > 0 else None]
            if not chunked:
                i = header.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = header.find(b"\r\n", i + 17)
                    try:
                        length = int(header[i + 17 : j if j > 0 else None])
                    except ValueError:
                        raise ProtocolError("bad Content-Length") from None
            if self.head or status in (204, 304):
                self.hdr = (start, status, keep, 0, start)
            elif chunked:
                self.hdr = (start, status, keep, 1, start)
            elif length is not None:
                self.hdr = (start, status, keep, 0, start + length)
            else:
                self.hdr = (start, status, False, 2, 0)  # the body ends when the server closes
        start, status, keep, mode, need = self.hdr
        if mode == 0:
            return (status, keep, need) if len(buf) >= need else None
        if mode == 2:
            return (status, False, len(buf)) if eof else None
        pos = start  # chunked: walk the chunks from the start of the body
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                return None
            try:
                size = int(bytes(buf[pos:nl]).split(b";")[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            pos = nl + 2
            if size == 0:
                while True:  # trailer fields, then an empty line
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        return None
                    if nl == pos:
                        return (status, keep, nl + 2)
                    pos = nl + 2
            if len(buf) < pos + size + 2:
                return None
            pos += size + 2


class Counters:
    """What one process measured."""

    def __init__(self, spec: dict, start: float, deadline: float, budget) -> None:
        self.expected = frozenset(int(s) for s in spec["expected_status"])
        self.timeout = float(spec["request_timeout"])
        self.start = start
        self.deadline = deadline
        self.budget = budget  # [requests left] when the run has a request count, else None
        self.latencies = array.array("d")
        self.errors: dict = {}
        self.received = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def take(self) -> bool:
        """May one more request start?"""
        if self.budget is None:
            return True
        if self.budget[0] <= 0:
            return False
        self.budget[0] -= 1
        return True

    def result(self, finished: float) -> dict:
        end = min(finished, self.deadline)
        return {
            "latencies": self.latencies,
            "errors": self.errors,
            "received": self.received,
            "elapsed": max(end - self.start, 1e-9),
        }


def describe_oserror(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "connect: cannot resolve the host"
    if isinstance(exc, ConnectionRefusedError):
        return "connect: connection refused"
    name = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"connection: {name}"


class Conn:
    """One connection of the epoll engine."""

    __slots__ = ("buf", "connected", "mask", "parser", "pending", "retry_at", "sent_at", "sock")

    def __init__(self, head: bool) -> None:
        self.sock = None
        self.buf = bytearray()
        self.parser = Parser(head)
        self.connected = False
        self.mask = 0  # the epoll events registered for sock
        self.pending = b""  # request bytes not yet sent
        self.sent_at = 0.0  # when the request being answered started; 0 when idle
        self.retry_at = 0.0


class EpollWorker:
    """Plain HTTP with non-blocking sockets and one epoll loop: the fastest pure-Python way here."""

    def __init__(self, spec: dict, target: dict, concurrency: int, counters: Counters) -> None:
        self.c = counters
        self.request = build_request(spec, target)
        self.conns = [Conn(spec["method"] == "HEAD") for _ in range(concurrency)]
        self.ep = select.epoll()
        self.by_fd: dict = {}
        try:
            info = socket.getaddrinfo(target["host"], target["port"], type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise Failure(f"cannot resolve {target['host']}: {exc}") from None
        self.family, self.address = info[0], info[4]

    def close(self, conn: Conn) -> None:
        if conn.sock is not None:
            fd = conn.sock.fileno()
            self.by_fd.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(fd)
            conn.sock.close()
        conn.sock = None
        conn.connected = False
        conn.sent_at = 0.0
        conn.buf.clear()
        conn.parser.hdr = None

    def fail(self, conn: Conn, kind: str, now: float, pause: float = 0.0) -> None:
        self.c.error(kind)
        self.close(conn)
        conn.retry_at = now + pause

    def begin(self, conn: Conn, now: float) -> bool:
        """Start the next request on conn (connecting first when needed); False when the budget is spent."""
        if not self.c.take():
            self.close(conn)
            return False
        conn.sent_at = now
        conn.parser.hdr = None
        conn.buf.clear()
        conn.pending = self.request
        if conn.sock is None:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock = sock
            self.by_fd[sock.fileno()] = conn
            err = sock.connect_ex(self.address)
            if err not in (0, errno.EINPROGRESS):
                self.fail(conn, describe_oserror(OSError(err, os.strerror(err))), now, 0.01)
                return True
            self.ep.register(sock.fileno(), select.EPOLLOUT)
            conn.mask = select.EPOLLOUT
            return True
        self.send(conn, now)
        return True

    def send(self, conn: Conn, now: float) -> None:
        try:
            n = conn.sock.send(conn.pending)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.fail(conn, describe_oserror(exc), now)
            return
        conn.pending = conn.pending[n:]
        mask = select.EPOLLOUT if conn.pending else select.EPOLLIN
        if mask != conn.mask:  # usually the whole request goes at once: no epoll_ctl call
            self.ep.modify(conn.sock.fileno(), mask)
            conn.mask = mask

    def run(self) -> dict:
        c = self.c
        perf = time.perf_counter
        delay = c.start - perf()
        if delay > 0:
            time.sleep(delay)
        now = perf()
        active = len(self.conns)  # connections whose share of the request count is not spent
        for conn in self.conns:
            if not self.begin(conn, now):
                conn.retry_at = -1.0
                active -= 1
        poll = self.ep.poll
        by_fd = self.by_fd
        latencies = c.latencies
        expected = c.expected
        next_check = now + 0.05
        while active > 0:
            now = perf()
            if now >= c.deadline:
                break
            if now >= next_check:  # timeouts, and connections waiting to reconnect after an error
                next_check = now + 0.05
                for conn in self.conns:
                    if conn.sent_at and now - conn.sent_at > c.timeout:
                        self.fail(conn, "timeout", now)
                    if conn.sock is None and 0.0 <= conn.retry_at <= now and not self.begin(conn, now):
                        conn.retry_at = -1.0
                        active -= 1
            for fd, _ in poll(0.05):
                conn = by_fd.get(fd)
                if conn is None:
                    continue
                sock = conn.sock
                if not conn.connected:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self.fail(conn, describe_oserror(OSError(err, os.strerror(err))), perf(), 0.01)
                        continue
                    conn.connected = True
                if conn.pending:
                    self.send(conn, perf())
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.fail(conn, describe_oserror(exc), perf())
                    continue
                buf = conn.buf
                if data:
                    buf += data
                try:
                    done = conn.parser.parse(buf, not data)
                except ProtocolError as exc:
                    self.fail(conn, f"protocol: {exc}", perf())
                    continue
                t = perf()
                if done is None:
                    if not data:
                        self.fail(conn, "connection: closed before the response was complete", t)
                    continue
                if t > c.deadline:
                    break
                status, keep, size = done
                c.received += size
                if status in expected:
                    latencies.append(t - conn.sent_at)
                else:
                    c.error(f"HTTP {status}")
                conn.sent_at = 0.0
                if len(buf) > size:
                    self.fail(conn, "protocol: unexpected data after the response", t)
                    continue
                if not keep or not data:
                    self.close(conn)
                if not self.begin(conn, t):
                    conn.retry_at = -1.0
                    active -= 1
        finished = perf()
        for conn in self.conns:
            self.close(conn)
        self.ep.close()
        return c.result(finished)


class Client(asyncio.Protocol):
    """One connection of the asyncio engine (used for https)."""

    def __init__(self, head: bool, loop) -> None:
        self.loop = loop
        self.parser = Parser(head)
        self.buf = bytearray()
        self.transport = None
        self.waiter = None
        self.closed = False
        self.started = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._complete(False)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None:
            self._complete(True)

    def send(self, request: bytes, now: float):
        self.buf.clear()
        self.parser.hdr = None
        self.started = now
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return self.waiter

    def abort(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _complete(self, eof: bool) -> None:
        waiter = self.waiter
        try:
            result = self.parser.parse(self.buf, eof)
        except ProtocolError as exc:
            result = exc
        if result is None and not eof:
            return
        if result is None:
            result = ConnectionResetError("connection closed before the response was complete")
        self.waiter = None
        if waiter.done():
            return
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)


class AsyncWorker:
    """HTTPS (or plain HTTP where epoll is missing) with asyncio protocols; uvloop when importable."""

    def __init__(self, spec: dict, target: dict, concurrency: int, counters: Counters) -> None:
        self.c = counters
        self.target = target
        self.request = build_request(spec, target)
        self.head = spec["method"] == "HEAD"
        self.concurrency = concurrency
        self.clients: list = []
        self.stopping = False
        self.ssl = None
        if target["tls"]:
            ctx = ssl.create_default_context()
            if not spec.get("verify_tls", True):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl = ctx

    async def connect(self, loop):
        t = self.target
        transport, client = await loop.create_connection(
            lambda: Client(self.head, loop),
            t["host"],
            t["port"],
            ssl=self.ssl,
            server_hostname=t["host"] if self.ssl else None,
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def drop(self, client) -> None:
        if client is not None:
            if client in self.clients:
                self.clients.remove(client)
            if not client.closed and client.transport is not None:
                client.transport.close()
            client.closed = True

    async def connection(self, loop) -> None:
        c = self.c
        perf = time.perf_counter
        client = None
        while not self.stopping and c.take():
            t0 = perf()
            try:
                if client is None or client.closed:
                    client = None
                    client = await asyncio.wait_for(self.connect(loop), c.timeout)
                    self.clients.append(client)
                status, keep, size = await client.send(self.request, t0)
            except asyncio.CancelledError:
                raise
            except asyncio.TimeoutError:  # noqa: UP041 (not TimeoutError before Python 3.11)
                c.error("timeout")
                self.drop(client)
                client = None
                continue
            except ProtocolError as exc:
                c.error(f"protocol: {exc}")
                self.drop(client)
                client = None
                continue
            except (OSError, ssl.SSLError) as exc:
                c.error(describe_oserror(exc))
                self.drop(client)
                client = None
                if isinstance(exc, CONNECT_ERRORS):
                    await asyncio.sleep(0.01)  # the server is not there: do not spin
                continue
            t1 = perf()
            if self.stopping or t1 > c.deadline:
                break
            c.received += size
            if status in c.expected:
                c.latencies.append(t1 - t0)
            else:
                c.error(f"HTTP {status}")
            if not keep:
                self.drop(client)
                client = None
        self.drop(client)

    async def watchdog(self) -> None:
        """Abort requests older than the request timeout (one timer for all connections)."""
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter()
            for client in list(self.clients):
                if client.waiter is not None and now - client.started > self.c.timeout:
                    client.abort(asyncio.TimeoutError())  # noqa: UP041

    async def main(self) -> dict:
        loop = asyncio.get_running_loop()
        delay = self.c.start - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        dog = asyncio.ensure_future(self.watchdog())
        tasks = [asyncio.ensure_future(self.connection(loop)) for _ in range(self.concurrency)]
        remaining = self.c.deadline - time.perf_counter()
        await asyncio.wait(tasks, timeout=None if remaining == float("inf") else max(0.0, remaining))
        finished = time.perf_counter()
        self.stopping = True
        for t in tasks:
            t.cancel()
        dog.cancel()
        await asyncio.gather(*tasks, dog, return_exceptions=True)
        for client in list(self.clients):
            self.drop(client)
        return self.c.result(finished)

    def run(self) -> dict:
        try:
            import uvloop  # type: ignore[import-not-found]

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(self.main())
        finally:
            loop.close()


def run_worker(spec: dict, target: dict, concurrency: int, budget, start: float, deadline: float) -> dict:
    counters = Counters(spec, start, deadline, budget)
    if target["tls"] or not hasattr(select, "epoll") or spec.get("python_loop") == "asyncio":
        return AsyncWorker(spec, target, concurrency, counters).run()
    return EpollWorker(spec, target, concurrency, counters).run()


def split(total: int, parts: int) -> list:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def python_engine(spec: dict) -> dict:
    target = target_of(spec["url"])
    processes = max(1, min(int(spec.get("processes", 1)), int(spec["concurrency"])))
    conns = split(int(spec["concurrency"]), processes)
    count = int(spec.get("requests") or 0)
    budgets = [[n] for n in split(count, processes)] if count > 0 else [None] * processes
    # Everyone starts at the same instant (CLOCK_MONOTONIC is shared by the processes).
    start = time.perf_counter() + (0.05 if processes > 1 else 0.0)
    deadline = start + float(spec["duration"]) if count <= 0 else float("inf")
    if processes == 1:
        return merge([run_worker(spec, target, conns[0], budgets[0], start, deadline)])
    children = []
    for i in range(processes):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run its share, send the result, leave without cleanup
            os.close(r)
            code = 0
            try:
                data = pickle.dumps(run_worker(spec, target, conns[i], budgets[i], start, deadline))
            except BaseException as exc:  # report anything to the parent
                data = pickle.dumps({"failure": f"{type(exc).__name__}: {exc}"})
                code = 1
            with os.fdopen(w, "wb") as f:
                f.write(data)
            os._exit(code)
        os.close(w)
        children.append((pid, r))
    results = []
    for pid, r in children:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        result = pickle.loads(data) if data else {"failure": "a load process died"}
        if "failure" in result:
            raise Failure("load process failed: " + result["failure"])
        results.append(result)
    return merge(results)


def merge(results: list) -> dict:
    latencies = array.array("d")
    errors: dict[str, int] = {}
    received = 0
    for r in results:
        latencies.extend(r["latencies"])
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        received += r["received"]
    elapsed = max(r["elapsed"] for r in results)
    ordered = sorted(latencies)
    return {
        "ok": len(ordered),
        "errors": errors,
        "elapsed": elapsed,
        "received": received,
        "latencies_s": ordered,
    }


def percentile(ordered: list, q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not ordered:
        return 0.0
    k = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return ordered[k]


def metrics_of(run: dict) -> dict:
    ordered = run["latencies_s"]
    ok = run["ok"]
    errors = sum(run["errors"].values())
    elapsed = run["elapsed"]
    out = {
        "requests_per_s": ok / elapsed,
        "error_rate": errors / (ok + errors) if ok + errors else 0.0,
        "requests": float(ok),
        "errors": float(errors),
        "duration_s": elapsed,
        "received_mib_per_s": run["received"] / elapsed / (1024 * 1024),
    }
    if ordered:
        out.update(
            latency_mean_ms=1000.0 * sum(ordered) / len(ordered),
            latency_p50_ms=1000.0 * percentile(ordered, 50),
            latency_p90_ms=1000.0 * percentile(ordered, 90),
            latency_p99_ms=1000.0 * percentile(ordered, 99),
            latency_max_ms=1000.0 * ordered[-1],
        )
    return out


# --------------------------------------------------------------------------------------------
# The wrk engine


def lua_string(text: str) -> str:
    """A Lua string literal for any text: every byte but letters, digits and space as a \\ddd escape."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        out.append(ch if (ch.isalnum() and b < 128) or ch == " " else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


WRK_SCRIPT = """
local expected = {%(expected)s}
unexpected = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function response(status, headers, body)
  if not expected[status] then unexpected = unexpected + 1 end
end
function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + t:get("unexpected") end
  local e = summary.errors
  io.write(string.format(
    '\\nKNOBFLOW {"requests":%%d,"bad":%%d,"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,' ..
    '"duration_us":%%d,"bytes":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"mean":%%f}\\n',
    summary.requests, bad, e.connect, e.read, e.write, e.timeout, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_engine(spec: dict) -> dict:
    wrk = spec.get("wrk_path") or shutil.which("wrk")
    if not wrk:
        raise Failure("engine wrk: no wrk program on this host (apt-get install wrk)")
    lines = [
        f"wrk.method = {lua_string(spec['method'])}",
        f"wrk.body = {lua_string(load_body(spec).decode('utf-8', 'replace'))}",
    ]
    for name, value in spec.get("headers", []):
        lines.append(f"wrk.headers[{lua_string(str(name))}] = {lua_string(str(value))}")
    expected = ", ".join(f"[{int(s)}] = true" for s in spec["expected_status"])
    script = "\n".join(lines) + WRK_SCRIPT % {"expected": expected}
    concurrency = int(spec["concurrency"])
    threads = max(1, min(int(spec.get("processes", 1)), concurrency))
    duration = max(1, round(float(spec["duration"])))
    timeout = max(1, round(float(spec["request_timeout"])))
    with tempfile.TemporaryDirectory(prefix="knobflow-wrk-") as tmp:
        path = os.path.join(tmp, "knobflow.lua")
        with open(path, "w") as f:
            f.write(script)
        argv = [wrk, "-t", str(threads), "-c", str(concurrency), "-d", f"{duration}s", "--timeout", f"{timeout}s"]
        argv += ["-s", path, spec["url"]]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 60)
    found = None
    for line in proc.stdout.splitlines():
        if line.startswith("KNOBFLOW "):
            found = json.loads(line[len("KNOBFLOW ") :])
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-3:]
        raise Failure("wrk exited with status {}: {}".format(proc.returncode, " | ".join(tail)))
    elapsed = max(found["duration_us"] / 1e6, 1e-9)
    errors = {}
    for kind in ("connect", "read", "write", "timeout"):
        if found[kind]:
            errors[kind] = found[kind]
    if found["bad"]:
        errors["unexpected status"] = found["bad"]
    ok = found["requests"] - found["bad"]
    total_errors = sum(errors.values())
    metrics = {
        "requests_per_s": ok / elapsed,
        "error_rate": total_errors / (ok + total_errors) if ok + total_errors else 0.0,
        "requests": float(ok),
        "errors": float(total_errors),
        "duration_s": elapsed,
        "received_mib_per_s": found["bytes"] / elapsed / (1024 * 1024),
    }
    if ok > 0:
        metrics.update(
            latency_mean_ms=found["mean"] / 1000.0,
            latency_p50_ms=found["p50"] / 1000.0,
            latency_p90_ms=found["p90"] / 1000.0,
            latency_p99_ms=found["p99"] / 1000.0,
            latency_max_ms=found["max"] / 1000.0,
        )
    return {"metrics": metrics, "errors": errors, "ok": ok}


# --------------------------------------------------------------------------------------------


def describe(errors: dict) -> str:
    top = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    return ", ".join(f"{k}: {v}" for k, v in top) or "none"


def main() -> int:
    text = os.environ.get(SPEC_ENV)
    try:
        if not text:
            raise Failure(f"no {SPEC_ENV} in the environment: run this through the bench_http role")
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise Failure(f"{SPEC_ENV} is not JSON: {exc}") from None
        if spec.get("engine") == "wrk":
            result = wrk_engine(spec)
            metrics, errors, ok = result["metrics"], result["errors"], result["ok"]
        else:
            run = python_engine(spec)
            metrics, errors, ok = metrics_of(run), run["errors"], run["ok"]
        expected = "/".join(str(s) for s in spec["expected_status"])
        if ok == 0:
            raise Failure(
                "bench_http: no request to {} got an expected response (HTTP {}) in {:.1f} s; errors: {}".format(
                    spec["url"], expected, metrics["duration_s"], describe(errors)
                )
            )
        limit = float(spec.get("max_error_rate", 1.0))
        if metrics["error_rate"] > limit:
            raise Failure(
                "bench_http: error rate {:.4f} is above max_error_rate {} ({} errors, {} good responses; {})".format(
                    metrics["error_rate"], limit, int(metrics["errors"]), ok, describe(errors)
                ),
                3,
            )
    except Failure as exc:
        print(str(exc), file=sys.stderr)
        return exc.status
    if errors:
        print("bench_http: errors: " + describe(errors), file=sys.stderr)
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
