"""A loopback TCP benchmark of short connections: a server and a client load in one process tree.

Meant to run inside a network namespace (``ip netns exec NS python -m knobflow.workloads.tcp_bench``),
so that what it measures is the namespace's TCP settings (``net.core.somaxconn``,
``net.ipv4.tcp_*``, ``net.ipv4.ip_local_port_range``), not the host's.

The process forks a server: one process, an epoll loop that accepts (at most 64 connections per
turn, as event-loop servers do), reads a ``--request-bytes`` request, spends ``--service-us`` of
CPU on it (the application's work), sends a ``--response-bytes`` response, and closes once the
client has closed. It listens with a backlog of ``--backlog`` (4096, as a modern server asks for;
the kernel caps it at ``net.core.somaxconn``). The parent process is the client. By default it is
an open loop of bursts, a flash crowd: every ``--interval`` seconds ``--burst`` new connections
start at once (300 every 0.5 s, 600 connections per second), each one connect, send the request,
read the response, close. The request goes out right after connect() returns, as clients send
theirs, so the server is already busy answering while the rest of a burst still arrives. The
client closes first, so its side holds the TIME_WAIT state, as an HTTP/1.0 client or a
connection-per-request RPC client does. ``--interval 0`` makes it a closed loop instead:
``--burst`` connections always in flight, each followed at once by the next one.

What the kernel settings change, and the load is built to show:

* a burst larger than the accept queue (``min(backlog, somaxconn)``) overflows it while the server
  is busy: the kernel drops the SYNs (``listen_overflows``), the client sends them again after the
  1 s SYN retransmission timeout, and the latency p99 jumps from the time to drain a burst to
  more than 1000 ms. ``tcp_abort_on_overflow = 1`` turns the overflow into resets (errors);
* every closed connection keeps its local port in TIME_WAIT for 60 s: with ``tcp_tw_reuse = 0``
  the client runs out of ports (``EADDRNOTAVAIL``, errors) after about as many connections as
  ``ip_local_port_range`` holds ports; ``tcp_tw_reuse`` 1 (or 2, loopback only) reuses a port
  once its TIME_WAIT is ``tcp_tw_reuse_delay`` (1 s) old.

Each run listens on a fresh random address of 127.0.0.0/8 (``--host auto``): TIME_WAIT sockets
outlive a run by 60 s, and once they hold every local port between two addresses no connection
between them can start, whatever the port. Fresh addresses keep the runs (and the trials of an
experiment) independent of each other.

Connections that start in the measured window (``--duration`` seconds after ``--warmup``) are
counted, however late they finish; after the window the client starts no new connection and waits
for those in flight, at most ``--timeout`` seconds each (a connection open longer is an error).
It prints one JSON line::

    {"connections_per_s": 600.0, "p50_ms": 70.1, "p90_ms": 129.7, "p99_ms": 184.5, "max_ms": 191.3,
     "p99_all_ms": 184.5, "errors": 0, "error_rate": 0.0, "connections": 3000,
     "listen_overflows": 0, "listen_drops": 0, "syn_retransmits": 0, "tw_reused": 0,
     "time_wait": 9499, "duration_s": 5.0, "error_kinds": {}}

connections_per_s: completed counted connections per second of the window; p50_ms, p90_ms,
p99_ms, max_ms: their latency (connect + request + response; ``--timeout`` when none completed);
p99_all_ms: the p99 over every counted connection, a failed one counting as ``--timeout``: the
latency clients see when failures are waited out, the metric to minimise when failures must
count; errors (failed or timed-out counted connections) and error_rate (errors / (errors +
connections)); the namespace's TCP counters over the run (listen_overflows, listen_drops,
syn_retransmits, tw_reused) and its TIME_WAIT sockets at the end (time_wait); duration_s;
error_kinds, not a metric: the errors by errno name.

Usage: python -m knobflow.workloads.tcp_bench [--duration 5] [--burst 300] [--interval 0.5] ...
Exit status 2 when it cannot listen, 3 when the server process failed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import math
import os
import random
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

COUNTERS = {
    "ListenOverflows": "listen_overflows",
    "ListenDrops": "listen_drops",
    "TCPSynRetrans": "syn_retransmits",
    "TWRecycled": "tw_reused",
}


def tcp_counters() -> dict[str, int]:
    """TcpExt counters of this process's network namespace (/proc/net/netstat is per namespace)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if not names.startswith("TcpExt:"):
            continue
        for name, value in zip(names.split()[1:], values.split()[1:], strict=False):
            if name in COUNTERS:
                out[COUNTERS[name]] = int(value)
    return out


def time_wait_sockets() -> int:
    """TIME_WAIT sockets of this namespace (the ``tw`` field of /proc/net/sockstat)."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def random_loopback() -> str:
    """A random address of 127.0.0.0/8 (on ``lo`` in every namespace), other than 127.0.0.1.

    The TIME_WAIT sockets of a run keep its local ports for 60 s; once they hold every port of
    ``ip_local_port_range``, later connections between the same two addresses fail, whatever the
    server port. A fresh server address for each run keeps runs (and trials) independent."""
    rng = random.SystemRandom()
    return f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(2, 254)}"


# --- server -------------------------------------------------------------------------------------


def busy(seconds: float) -> None:
    """Spend ``seconds`` of CPU: the application's work for one request."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def serve(listener: socket.socket, request_bytes: int, response: bytes, service_s: float, stop_fd: int) -> None:
    """The server loop (in the child): accept, read the request, work, answer, close after the client."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, "listen")
    sel.register(stop_fd, selectors.EVENT_READ, "stop")
    received: dict[int, int] = {}
    while True:
        for key, _ in sel.select():
            if key.data == "stop":
                return
            if key.data == "listen":
                # Accept what is queued, a bounded batch at a time (as event-loop servers do).
                for _ in range(64):
                    try:
                        conn, _addr = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # ECONNABORTED and the like: the client gave up
                        continue
                    conn.setblocking(False)
                    received[conn.fileno()] = 0
                    sel.register(conn, selectors.EVENT_READ, conn)
                continue
            conn = key.data
            fd = conn.fileno()
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data and received[fd] >= 0:
                received[fd] += len(data)
                if received[fd] >= request_bytes:
                    received[fd] = -1  # answered; wait for the client to close
                    if service_s > 0:
                        busy(service_s)
                    try:
                        conn.sendall(response)
                    except OSError:
                        data = b""
            if not data:
                sel.unregister(conn)
                del received[fd]
                conn.close()


def start_server(
    host: str, port: int, backlog: int, request_bytes: int, response: bytes, service_s: float
) -> tuple[int, int, int]:
    """Fork the server; return (pid, port, write end of its stop pipe)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(backlog)
    bound_port = listener.getsockname()[1]
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(stop_w)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            serve(listener, request_bytes, response, service_s, stop_r)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(stop_r)
    listener.close()
    return pid, bound_port, stop_w


# --- client -------------------------------------------------------------------------------------


@dataclass
class Conn:
    sock: socket.socket
    started: float
    counted: bool
    connected: bool = False
    received: int = 0


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


@dataclass
class Load:
    """What the client does: ``burst`` connections every ``interval`` seconds (open loop), or, with
    ``interval`` 0, ``burst`` connections always in flight (closed loop)."""

    burst: int
    interval: float
    duration: float
    warmup: float
    request: bytes
    response_bytes: int
    timeout: float
    retry_delay: float


def run_client(addr: tuple[str, int], load: Load) -> Results:
    """Start connections for warmup + duration seconds, then wait for those in flight (up to the
    timeout). Connections started in the measured window are counted, whenever they finish."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sel = selectors.DefaultSelector()
    res = Results()
    closed_loop = load.interval <= 0
    begin = time.perf_counter()
    measure_from = begin + load.warmup
    end = measure_from + load.duration
    restarts: list[float] = []  # closed loop: when a failed slot starts again
    next_burst = end if closed_loop else begin
    conns: dict[int, Conn] = {}

    def finish(c: Conn, kind: str | None, now: float) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        del conns[id(c)]
        c.sock.close()
        if c.counted:
            if kind is None:
                res.latencies.append(now - c.started)
            else:
                res.error(kind)
        if closed_loop:
            if kind is None:
                start(now)
            else:
                heapq.heappush(restarts, now + load.retry_delay)

    def start(now: float) -> None:
        if now >= end:
            return
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        c = Conn(s, now, now >= measure_from)
        rc = s.connect_ex(addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            if c.counted:
                res.error(_errname(rc))
            if closed_loop:
                heapq.heappush(restarts, now + load.retry_delay)
            return
        conns[id(c)] = c
        # Send the request at once, as clients do: on loopback the handshake is usually done
        # by now, so the server gets work while the burst is still arriving. A socket still
        # connecting (its SYN dropped, say) sends once it is writable.
        try:
            s.send(load.request)
        except (BlockingIOError, InterruptedError):
            sel.register(s, selectors.EVENT_WRITE, c)
            return
        except OSError as exc:
            del conns[id(c)]
            s.close()
            if c.counted:
                res.error(_errname(exc.errno or 0))
            if closed_loop:
                heapq.heappush(restarts, now + load.retry_delay)
            return
        c.connected = True
        sel.register(s, selectors.EVENT_READ, c)

    if closed_loop:
        for _ in range(load.burst):
            start(begin)
    while True:
        now = time.perf_counter()
        if now >= end and not conns:
            break
        if closed_loop:
            while restarts and restarts[0] <= now:
                heapq.heappop(restarts)
                start(now)
        elif next_burst <= now and now < end:
            for _ in range(load.burst):
                start(now)
            next_burst += load.interval
        wait = 0.05
        if now < end:
            wait = min(wait, end - now)
            if not closed_loop:
                wait = min(wait, next_burst - now)
            elif restarts:
                wait = min(wait, restarts[0] - now)
        events = sel.select(max(0.0, wait))
        now = time.perf_counter()
        for key, _mask in events:
            c = key.data
            if not c.connected:
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(c, _errname(err), now)
                    continue
                c.connected = True
                try:
                    c.sock.send(load.request)
                except OSError as exc:
                    finish(c, _errname(exc.errno or 0), now)
                    continue
                sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                finish(c, _errname(exc.errno or 0), now)
                continue
            if not data:
                finish(c, "EOF", now)
                continue
            c.received += len(data)
            if c.received >= load.response_bytes:
                finish(c, None, now)
        for c in [c for c in conns.values() if now - c.started > load.timeout]:
            finish(c, "TIMEOUT", now)
    sel.close()
    return res


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def summarise(
    res: Results, seconds: float, timeout: float, before: dict[str, int], after: dict[str, int]
) -> dict[str, Any]:
    """The metrics. Latencies of completed connections; p99_all_ms also counts every failed one as
    ``timeout`` (what a client waiting for an answer would see). With no completed connection at
    all, the completed-connection latencies are ``timeout`` too, never a flattering 0."""
    lat = sorted(res.latencies) or [timeout]
    n = len(res.latencies)
    every = sorted(res.latencies + [timeout] * res.errors) or [timeout]
    out: dict[str, Any] = {
        "connections_per_s": round(n / seconds, 2) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "p90_ms": round(percentile(lat, 0.90) * 1000, 3),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "max_ms": round(lat[-1] * 1000, 3),
        "p99_all_ms": round(percentile(every, 0.99) * 1000, 3),
        "errors": res.errors,
        "error_rate": round(res.errors / (res.errors + n), 6) if res.errors + n else 0.0,
        "connections": n,
    }
    for name in COUNTERS.values():
        if name in before and name in after:
            out[name] = after[name] - before[name]
    out["time_wait"] = time_wait_sockets()
    out["duration_s"] = seconds
    out["error_kinds"] = dict(sorted(res.error_kinds.items()))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m knobflow.workloads.tcp_bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--host",
        default="auto",
        help="address the server listens on and the client connects to (auto, the default: a random 127.x.y.z)",
    )
    p.add_argument("--port", type=int, default=0, help="server port (0, the default: a free port chosen by the kernel)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds during which measured connections start (5)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of load before the measured window (0.5)")
    p.add_argument("--burst", type=int, default=300, help="connections started at once (300)")
    p.add_argument(
        "--interval", type=float, default=0.5, help="seconds between bursts (0.5); 0: closed loop, --burst in flight"
    )
    p.add_argument("--backlog", type=int, default=4096, help="listen() backlog (4096); the kernel caps it at somaxconn")
    p.add_argument("--request-bytes", type=int, default=100, help="request size (100)")
    p.add_argument("--response-bytes", type=int, default=1000, help="response size (1000)")
    p.add_argument("--service-us", type=float, default=100.0, help="server CPU time per request, microseconds (100)")
    p.add_argument("--timeout", type=float, default=4.0, help="a connection still open after this is an error (4)")
    p.add_argument("--retry-delay", type=float, default=0.01, help="closed loop: pause of a slot after an error")
    a = p.parse_args(argv)
    if a.host == "auto":
        a.host = random_loopback()
    if a.duration <= 0 or a.warmup < 0 or a.burst < 1 or a.backlog < 1 or a.interval < 0 or a.timeout <= 0:
        p.error("--duration and --timeout must be > 0, --warmup and --interval >= 0, --burst and --backlog >= 1")
    if a.request_bytes < 1 or a.response_bytes < 1 or a.retry_delay < 0 or a.service_us < 0:
        p.error("--request-bytes and --response-bytes must be >= 1, --retry-delay and --service-us >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    load = Load(
        burst=a.burst,
        interval=a.interval,
        duration=a.duration,
        warmup=a.warmup,
        request=b"Q" * a.request_bytes,
        response_bytes=a.response_bytes,
        timeout=a.timeout,
        retry_delay=a.retry_delay,
    )
    try:
        pid, port, stop_w = start_server(
            a.host, a.port, a.backlog, a.request_bytes, b"R" * a.response_bytes, a.service_us / 1e6
        )
    except OSError as exc:
        print(f"tcp_bench: cannot listen on {a.host}:{a.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        before = tcp_counters()
        res = run_client((a.host, port), load)
        after = tcp_counters()
    finally:
        os.close(stop_w)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("tcp_bench: the server process failed", file=sys.stderr)
        return 3
    print(json.dumps(summarise(res, a.duration, a.timeout, before, after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
