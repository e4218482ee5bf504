"""A real Airflow deployment for tests: every component a separate process, as in production.

``airflow_stack()`` gives a test its own Airflow: a PostgreSQL metadata database created for it on
this machine's server (127.0.0.1:5432, trust auth), ``airflow db migrate``, then ``api-server`` (on a
free port), ``scheduler``, ``dag-processor`` and, when asked, ``triggerer``, with either the
LocalExecutor or the CeleryExecutor (a Redis database of the test's own as the broker, the metadata
database as the result backend, and ``airflow celery worker`` processes started with
:meth:`AirflowStack.start_celery_worker`). The test drives it only through Airflow's public REST
API (``/api/v2``). Its token comes from the SimpleAuthManager, Airflow 3's default auth manager,
without a person: the harness writes the passwords file
(``[core] simple_auth_manager_passwords_file``, JSON ``{user: password}``) before anything starts,
names the user with ``[core] simple_auth_manager_users = knobflow:admin``, and POSTs
``{"username": ..., "password": ...}`` to ``/auth/token`` (201, ``{"access_token": JWT}``); the JWT
goes in ``Authorization: Bearer``. (Without the file, the api-server generates a password and prints
it once; ``simple_auth_manager_all_admins = True`` would let ``GET /auth/token`` hand out admin
tokens to anyone, which tests nothing.)

Whatever happens, leaving the ``with`` block stops every process (SIGTERM to each component, then
SIGKILL to its process group and to every descendant, which may have a group of its own), drops the
databases and flushes the Redis database. When the block ends with an exception, the tails of every process's log and of
the task logs are printed first, so that a CI failure can be read from pytest's output; the files
themselves stay under the test's ``tmp_path`` (``<root>/logs/<process>.log``, Airflow's task logs
under ``<root>/airflow/logs/dag_id=...``, knobflow's trial logs under ``<root>/knobflow/logs``).

Only the standard library is imported at module level: :func:`hostname` is Airflow's
``hostname_callable`` in the Celery workers, so their task processes import this module.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

PG_HOST = os.environ.get("KNOBFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("KNOBFLOW_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("KNOBFLOW_TEST_PG_USER", "postgres")
REDIS_HOST = os.environ.get("KNOBFLOW_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("KNOBFLOW_TEST_REDIS_PORT", "6379"))

API_USER = "knobflow"
HOSTNAME_ENV = "KNOBFLOW_STACK_HOSTNAME"

T = TypeVar("T")


class StackError(RuntimeError):
    """Something in the deployment did not come up, died, or did not finish in time."""


def hostname() -> str:
    """Airflow's ``[core] hostname_callable`` for the Celery workers of a test.

    Both workers run on this machine, so the task instances' ``hostname`` would be the same for both;
    each worker gets ``$KNOBFLOW_STACK_HOSTNAME`` instead, which the REST API then reports.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call ``check`` until it returns something truthy; StackError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------
# PostgreSQL and Redis of the test's own


def pg_url(database: str, driver: str = "") -> str:
    """``postgresql://`` URL of a database on the test server (``driver`` e.g. ``psycopg``)."""
    scheme = "postgresql" + (f"+{driver}" if driver else "")
    return f"{scheme}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _pg_admin(statement: str, database: str) -> None:
    """Run ``statement`` (``{}`` standing for the quoted ``database``) on the server's postgres database."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(database)))


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>``; dropped (connections and all) at the end."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        _pg_admin("CREATE DATABASE {}", name)
    except Exception as exc:
        raise StackError(
            f"cannot create a PostgreSQL database on {PG_HOST}:{PG_PORT} as {PG_USER} ({exc}); "
            "is the server running (scripts/services.sh)?"
        ) from exc
    try:
        yield name
    finally:
        _pg_admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@contextlib.contextmanager
def redis_database() -> Iterator[int]:
    """An empty Redis database number (1-15) claimed for the test; flushed at the end."""
    import redis

    claim = "knobflow-test-claim"
    numbers = list(range(1, 16))
    random.shuffle(numbers)
    for n in numbers:
        r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n)
        try:
            if r.dbsize() == 0 and r.set(claim, str(os.getpid()), nx=True, ex=3600):
                break
        except redis.exceptions.ConnectionError as exc:
            raise StackError(
                f"cannot reach Redis on {REDIS_HOST}:{REDIS_PORT} ({exc}); is it running (scripts/services.sh)?"
            ) from exc
        r.close()
    else:
        raise StackError("no empty Redis database among 1-15 to claim")
    try:
        yield n
    finally:
        r.flushdb()
        r.close()


# ------------------------------------------------------------------------------------------------
# The test experiment


def write_experiment(
    folder: Path,
    name: str,
    *,
    trials: int,
    parallel: int = 1,
    storage: str | None = None,
    bench_sleep: float = 0,
) -> Path:
    """A small, fast experiment in ``folder``: one int tunable, tests/data/experiments' benchmark
    (``bench.py ok X``, score = 100 - (X - 7)^2, never fails) and its ``noop_layer`` role.

    With ``parallel`` > 1 the target is an inventory of ``parallel`` hosts, all this machine
    (``ansible_connection: local``), and each trial takes one of them (``target.per_trial: one``),
    as parallel trials need."""
    src = REPO / "tests" / "data" / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "bench.py", folder / "bench.py")
    shutil.copytree(src / "roles", folder / "roles", dirs_exist_ok=True)
    lines = [
        f"name: {name}",
        "description: A test experiment run by a real Airflow deployment (tests/airflow_stack.py).",
        "objective:",
        "  metric: score",
        "  direction: maximize",
        "tunables:",
        "  - name: x",
        "    layer: stack",
        "    type: int",
        "    low: 0",
        "    high: 10",
        "    default: 2",
        "layers:",
        "  stack:",
        "    role: noop_layer",
        "    vars:",
        '      noop_layer_file: "{{ knobflow.home }}/noop-layer-' + name + '-{{ inventory_hostname }}.json"',
        "benchmark:",
        "  role: bench_command",
        "  warmup: 0",
        "  repeats: 1",
        "  timeout: 60",
        "  vars:",
        "    bench_command_argv:",
        '      - "{{ ansible_playbook_python }}"',
        '      - "{{ knobflow.experiment_dir }}/bench.py"',
        "      - ok",
        '      - "{{ knobflow.params.stack.x }}"',
        f'      - "{bench_sleep}"',
        "tuner:",
        "  name: random",
        "  seed: 3",
        "budget:",
        f"  trials: {trials}",
        "  max_failed: 1",
        f"parallel: {parallel}",
    ]
    if storage:
        lines.append(f"storage: {storage}")
    if parallel > 1:
        hosts = "\n".join(
            f"    node-{i}:\n      ansible_connection: local\n"
            '      ansible_python_interpreter: "{{ ansible_playbook_python }}"'
            for i in range(parallel)
        )
        (folder / "hosts.yml").write_text(f"all:\n  hosts:\n{hosts}\n")
        lines += ["target:", "  inventory: hosts.yml", "  hosts: all", "  per_trial: one"]
    f = folder / f"{name}.yaml"
    f.write_text("\n".join(lines) + "\n")
    return f


# ------------------------------------------------------------------------------------------------
# The deployment


def _cmdline(p: Any) -> str:
    try:
        return " ".join(p.cmdline())[:160]
    except Exception:
        return "?"


@dataclass
class Service:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)


class AirflowStack:
    """The processes of one Airflow deployment and a REST client for it (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        metadata_db: str,
        executor: str = "LocalExecutor",
        experiments: Path | None = None,
        knobflow_home: Path | None = None,
        redis_db: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.airflow_home = root / "airflow"
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.knobflow_home = knobflow_home or root / "knobflow"
        self.executor = executor
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)
        self.services: list[Service] = []
        self.runs: list[tuple[str, str]] = []
        self._client: Any = None

        # The SimpleAuthManager (Airflow 3's default) reads each user's password from this file and
        # only generates one for users missing from it: writing it first gives a known password.
        passwords = root / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({API_USER: self.password}) + "\n")

        # Nothing of the pytest process's own Airflow (tests/conftest.py's SQLite one) leaks in.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KNOBFLOW_"))}
        self.env: dict[str, str] = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            # This checkout's knobflow (src/) and tests (for hostname()), whatever the venv has installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), base.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__EXECUTOR": executor,
            # psycopg 3 (SQLAlchemy 2.1's default driver) for the sync engine, asyncpg (Airflow's
            # default) for the api-server's async one.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(metadata_db),
            # A few connections per process: every test's Airflow shares the server's max_connections.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "2",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "8",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "180",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{API_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            # The log servers of the scheduler (LocalExecutor), workers and triggerer: free ports, not
            # the fixed 8793/8794 that two deployments (or two workers) on one machine would fight over.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "KNOBFLOW_HOME": str(self.knobflow_home),
        }
        if experiments is not None:
            self.env["KNOBFLOW_EXPERIMENTS"] = str(experiments)
        if executor == "CeleryExecutor":
            if redis_db is None:
                raise ValueError("the CeleryExecutor needs a Redis database (redis_db)")
            self.env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg_url(metadata_db),
                    # Sending a task to Redis takes longer than the 1 s default on a busy 2-CPU machine.
                    "AIRFLOW__CELERY__OPERATION_TIMEOUT": "15",
                }
            )
        self.env.update(env or {})

    # -- processes ---------------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one ``airflow`` command to completion (its output in logs/<args>.log)."""
        log = self.logs / ("airflow-" + "-".join(a.strip("-") for a in args if not a.startswith("/")) + ".log")
        try:
            proc = subprocess.run(
                [str(BIN / "airflow"), *args],
                env=self.env,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"`airflow {' '.join(args)}` did not finish in {timeout:.0f} s") from exc
        log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise StackError(f"`airflow {' '.join(args)}` exited {proc.returncode}:\n{tail(log, 60)}")
        return proc

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        """Start ``airflow ARGS...`` in its own process group, its output in logs/<name>.log."""
        log = self.logs / f"{name}.log"
        argv = [str(BIN / "airflow"), *args]
        full_env = {**self.env, **(env or {})}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=full_env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        svc = Service(name, argv, proc, log, full_env)
        self.services.append(svc)
        return svc

    def start_core(self, *, triggerer: bool = True) -> None:
        """api-server, scheduler, dag-processor (and triggerer): every process a deployment needs
        besides Celery workers."""
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1")
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")
        if triggerer:
            self.start("triggerer", "triggerer")

    def start_celery_worker(self, name: str, *, concurrency: int = 2, queues: str = "default") -> Service:
        """``airflow celery worker`` named ``name`` (its Celery node ``name@<host>``; its task
        instances' ``hostname`` is ``name`` too, through :func:`hostname`)."""
        return self.start(
            name,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(concurrency),
            "--queues",
            queues,
            env={
                HOSTNAME_ENV: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.hostname",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            },
        )

    def check_alive(self) -> None:
        for svc in self.services:
            rc = svc.proc.poll()
            if rc is not None:
                raise StackError(f"airflow {svc.name} exited with status {rc}:\n{tail(svc.log, 60)}")

    def stop(self, grace: float = 15) -> None:
        """SIGTERM each component's main process, which stops its own children (the scheduler its
        LocalExecutor workers, a Celery worker its pool); after ``grace`` seconds SIGKILL its process
        group and every process that descended from it (task runners and Ansible have groups of their
        own), whatever is left."""
        import psutil

        if self._client is not None:  # its kept-alive connection would hold up the api-server's shutdown
            self._client.close()
            self._client = None
        procs: dict[int, psutil.Process] = {}
        for svc in self.services:
            if svc.proc.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(svc.proc.pid)
                procs[top.pid] = top
                for child in top.children(recursive=True):
                    procs[child.pid] = child
        # Only the main processes: forked children inherit Airflow's Python SIGTERM handlers, and the
        # scheduler's LocalExecutor workers, signalled directly, were still running 10 s later.
        for svc in self.services:
            with contextlib.suppress(ProcessLookupError):
                svc.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
        if alive:
            print(
                f"airflow stack: {len(alive)} processes still running {grace:.0f} s after SIGTERM, killed: "
                + "; ".join(f"{p.pid} {_cmdline(p)}" for p in alive),
                flush=True,
            )
        else:
            print(f"airflow stack: {len(procs)} processes stopped in {time.monotonic() - t0:.1f} s", flush=True)
        for svc in self.services:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(svc.proc.pid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for svc in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                svc.proc.wait(timeout=10)

    # -- readiness ---------------------------------------------------------------------------------
    def _wait(self, what: str, check: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
        def alive_check() -> T | None:
            self.check_alive()
            return check()

        return wait_for(what, alive_check, timeout, interval)

    def health(self) -> dict[str, Any] | None:
        import httpx

        try:
            r = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=10)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def wait_healthy(self, timeout: float = 180) -> dict[str, Any]:
        """Until the api-server answers and reports every started component healthy (their heartbeats
        in the metadata database)."""
        names = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
        wanted = [names[s.name] for s in self.services if s.name in names]

        def ok() -> dict[str, Any] | None:
            h = self.health()
            healthy = [h["metadatabase"], *(h.get(c) or {} for c in wanted)] if h else []
            return h if healthy and all(c.get("status") == "healthy" for c in healthy) else None

        return self._wait(f"the api-server on port {self.port} to report {wanted} healthy", ok, timeout)

    def wait_celery_workers(self, timeout: float = 120) -> None:
        """Until every Celery worker has logged ``<node> ready.``."""
        workers = [s for s in self.services if s.argv[1:3] == ["celery", "worker"]]
        self._wait(
            f"Celery workers {[w.name for w in workers]} to be ready",
            lambda: all(" ready." in w.log.read_text(errors="replace") for w in workers),
            timeout,
        )

    # -- REST API ----------------------------------------------------------------------------------
    def token(self) -> str:
        """A JWT from the SimpleAuthManager: POST /auth/token with the user's name and password."""
        import httpx

        r = httpx.post(
            f"{self.base_url}/auth/token", json={"username": API_USER, "password": self.password}, timeout=30
        )
        if r.status_code != 201:
            raise StackError(f"POST /auth/token: {r.status_code} {r.text}")
        return str(r.json()["access_token"])

    def client(self) -> Any:
        """An ``httpx.Client`` on /api/v2 that sends the token (fetched once)."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                base_url=f"{self.base_url}/api/v2",
                headers={"Authorization": f"Bearer {self.token()}"},
                timeout=30,
            )
        return self._client

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to /api/v2 (``path`` relative to it), authenticated; its JSON answer."""
        r = self.client().request(method, path, **kwargs)
        if r.status_code >= 400:
            raise StackError(f"{method} /api/v2{path}: {r.status_code} {r.text}")
        return r.json() if r.content else None

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Until the dag-processor has parsed and serialized ``dag_id``."""
        import httpx

        def parsed() -> dict[str, Any] | None:
            r = self.client().get(f"/dags/{dag_id}")
            if r.status_code == 200:
                return dict(r.json())
            if r.status_code != 404:
                raise StackError(f"GET /dags/{dag_id}: {r.status_code} {r.text}")
            return None

        try:
            return self._wait(f"the dag-processor to parse DAG {dag_id}", parsed, timeout)
        except (StackError, httpx.HTTPError) as exc:
            errors = self.api("GET", "/importErrors")["import_errors"]
            # A DAG file that parses but whose DAGs cannot be sent back to the dag-processor (e.g.
            # an object msgpack cannot encode) records no import error: its traceback is in the log.
            crash = ""
            log = next((s.log for s in self.services if s.name == "dag-processor"), None)
            if log is not None:
                text = log.read_text(errors="replace")
                at = text.rfind("Traceback (most recent call last)")
                crash = "\n".join(text[at:].splitlines()[:30]) if at >= 0 else ""
            raise StackError(
                f"{exc}; import errors: {json.dumps(errors, indent=1)}"
                + (f"\nlast traceback in the dag-processor's log:\n{crash}" if crash else "")
            ) from exc

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, unpause: bool = True) -> str:
        """Unpause ``dag_id`` and trigger a run of it with ``conf``; the run's id."""
        if unpause:
            self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        run_id = str(run["dag_run_id"])
        self.runs.append((dag_id, run_id))
        return run_id

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
        """Until the run is in a finished state (success or failed); the run."""

        def finished() -> dict[str, Any] | None:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            return dict(run) if run["state"] in ("success", "failed") else None

        try:
            return self._wait(f"DAG run {dag_id}/{run_id} to finish", finished, timeout, interval=2)
        except StackError as exc:
            states = ", ".join(f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in self.tasks(dag_id, run_id))
            raise StackError(f"{exc}; task instances: {states}") from exc

    def tasks(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (mapped ones one per map index), as the REST API gives them."""
        out = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return list(out["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        entry = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index, "deserialize": True},
        )
        return entry["value"]

    # -- diagnostics -------------------------------------------------------------------------------
    def diagnostics(self, lines: int = 40) -> str:
        """The tails of every process's log, of the newest task logs and knobflow trial logs, and the
        state of every triggered run's task instances (when the api-server still answers)."""
        parts = [f"==== Airflow deployment under {self.root} (api-server {self.base_url}) ===="]
        for svc in self.services:
            rc = svc.proc.poll()
            parts.append(f"---- {svc.name} ({'running' if rc is None else f'exited {rc}'}): {svc.log}")
            parts.append(tail(svc.log, lines))
        for log in sorted(self.logs.glob("airflow-*.log")):
            parts.append(f"---- {log}")
            parts.append(tail(log, lines // 2))
        task_logs = sorted((self.airflow_home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        for log in task_logs[-6:]:
            parts.append(f"---- task log {log.relative_to(self.airflow_home / 'logs')}")
            parts.append(tail(log, lines // 2))
        trial_logs = sorted((self.knobflow_home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        for log in trial_logs[-3:]:
            parts.append(f"---- knobflow log {log}")
            parts.append(tail(log, lines // 2))
        for dag_id, run_id in self.runs:
            try:
                run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
                tis = self.tasks(dag_id, run_id)
            except Exception as exc:
                parts.append(f"---- run {dag_id}/{run_id}: cannot ask the api-server ({exc})")
                continue
            parts.append(f"---- run {dag_id}/{run_id}: {run['state']}")
            parts.extend(
                f"  {t['task_id']}[{t['map_index']}] {t.get('rendered_map_index') or ''}: {t['state']} "
                f"on {t.get('hostname')}"
                for t in tis
            )
        return "\n".join(parts)


@contextlib.contextmanager
def airflow_stack(
    root: Path,
    *,
    executor: str = "LocalExecutor",
    experiments: Path | None = None,
    knobflow_home: Path | None = None,
    triggerer: bool = True,
    env: dict[str, str] | None = None,
    start_timeout: float = 240,
) -> Iterator[AirflowStack]:
    """A migrated, running, healthy deployment (see the module docstring); torn down on exit."""
    with contextlib.ExitStack() as cleanup:
        t0 = time.monotonic()
        db = cleanup.enter_context(postgres_database("knobflow_af"))
        redis_db = cleanup.enter_context(redis_database()) if executor == "CeleryExecutor" else None
        stack = AirflowStack(
            root,
            metadata_db=db,
            executor=executor,
            experiments=experiments,
            knobflow_home=knobflow_home,
            redis_db=redis_db,
            env=env,
        )
        cleanup.callback(stack.stop)
        try:
            stack.airflow("db", "migrate")
            migrated = time.monotonic()
            stack.start_core(triggerer=triggerer)
            stack.wait_healthy(timeout=start_timeout)
            print(
                f"airflow stack: db migrate {migrated - t0:.1f} s, components healthy after "
                f"{time.monotonic() - migrated:.1f} s more",
                flush=True,
            )
            yield stack
        except BaseException:
            print(stack.diagnostics(), flush=True)
            raise


# ------------------------------------------------------------------------------------------------
# What a knobflow experiment's DAG run must show


def check_experiment_run(
    stack: AirflowStack, dag_id: str, run_id: str, trials: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Assert that a finished run of a knobflow experiment's DAG succeeded with ``trials`` trials,
    each its own successful task instance (labelled, its trial in XCom), and ``prepare`` and
    ``finish`` successful. Returns the trial task instances and their trial records, by map index."""
    run = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    assert run["state"] == "success", run
    by_task: dict[str, list[dict[str, Any]]] = {}
    for ti in stack.tasks(dag_id, run_id):
        by_task.setdefault(ti["task_id"], []).append(ti)
    assert [t["state"] for t in by_task.get("prepare", [])] == ["success"], by_task.get("prepare")
    assert [t["state"] for t in by_task.get("finish", [])] == ["success"], by_task.get("finish")
    tis = sorted(by_task.get("trial", []), key=lambda t: t["map_index"])
    assert [t["map_index"] for t in tis] == list(range(trials)), tis
    assert [t["state"] for t in tis] == ["success"] * trials, tis
    # Each labelled with its trial; with parallel trials, map index and trial number may differ.
    labels = sorted(t["rendered_map_index"] for t in tis)
    assert labels == sorted(["trial 0 (baseline)", *(f"trial {n}" for n in range(1, trials))]), labels
    records = [stack.xcom(dag_id, run_id, "trial", "trial", t["map_index"]) for t in tis]
    assert sorted(r["number"] for r in records) == list(range(trials))
    assert all(r["state"] == "complete" and r["metrics"]["score"] == r["value"] for r in records), records
    summary = stack.xcom(dag_id, run_id, "finish", "return_value")
    assert summary["trials"] == trials and summary["failed"] == 0, summary
    return tis, records


def overlapping(spans: list[tuple[Any, Any]]) -> bool:
    """Whether any two of these (start, end) spans overlap."""
    ordered = sorted(spans)
    return any(nxt[0] < prev[1] for prev, nxt in itertools.pairwise(ordered))


def ti_spans(tis: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(start date, end date) of these task instances, as the REST API reports them."""
    from datetime import datetime

    return [(datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"])) for t in tis]


def trial_spans(storage: str, name: str) -> list[tuple[float, float]]:
    """(started, finished) of each finished trial of an experiment, from the knobflow store: when a
    trial held its host (a task instance also waits for its host, and starts before it)."""
    from knobflow.store import Store

    store = Store(storage)
    try:
        return [(r.attrs["started"], r.attrs["finished"]) for r in store.records(name) if r.state != "running"]
    finally:
        store.storage.engine.dispose()
