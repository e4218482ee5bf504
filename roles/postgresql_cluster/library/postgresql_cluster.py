#!/usr/bin/python
"""Create, start, stop or remove a private PostgreSQL cluster for benchmarking."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postgresql_cluster
short_description: A private PostgreSQL cluster (initdb, pg_ctl) with a pgbench database
description:
  - C(state=started) creates the cluster with C(initdb) when I(datadir) holds none, writes its
    listen address, port and socket directory into C(knobflow-cluster.conf) (included from
    C(postgresql.conf)), starts it with C(pg_ctl), creates I(database) and initialises it with
    C(pgbench -i -s) I(pgbench_scale) unless it already holds that scale.
  - C(state=stopped) stops the cluster (C(pg_ctl stop -m fast)); C(state=absent) stops it and deletes
    the data directory, the socket directory and the password file.
  - Run as root, the server runs as the unprivileged I(user) (initdb refuses root); otherwise as the
    current user. Every command runs with an argument vector, never through a shell.
  - Supports check mode.
options:
  datadir:
    description: The data directory.
    type: path
    required: true
  socket_dir:
    description: The unix socket directory; empty for C(<parent of datadir>/socket).
    type: path
  port:
    description: TCP port on 127.0.0.1; 0 keeps the cluster's port, or picks a free one on creation. Never 5432.
    type: int
    default: 0
  user:
    description: OS user that owns and runs the cluster when the module runs as root.
    type: str
    default: knobflow-pg
  superuser:
    description: The database superuser created by initdb.
    type: str
    default: postgres
  database:
    description: Database to create for pgbench; empty for none.
    type: str
    default: pgbench
  pgbench_scale:
    description: C(pgbench -i) scale factor for I(database); 0 to leave it empty.
    type: int
    default: 10
  bindir:
    description: Directory holding initdb, pg_ctl, psql, createdb and pgbench.
    type: path
    default: /usr/lib/postgresql/15/bin
  log_file:
    description: The server's log file (pg_ctl -l); empty for C(<datadir>/server.log).
    type: path
  passfile:
    description: A pgpass file with the superuser's TCP password; empty for C(<parent of datadir>/pgpass).
    type: path
  timeout:
    description: Seconds to wait for the server to start or stop.
    type: int
    default: 120
  init_timeout:
    description: Seconds C(pgbench -i) may take.
    type: int
    default: 3600
  state:
    description: C(started), C(stopped) or C(absent).
    type: str
    choices: [started, stopped, absent]
    default: started
author: knobflow maintainers
"""

RETURN = r"""
port:
  description: The cluster's TCP port (and the number in its socket file name).
  type: int
  returned: when the cluster exists
socket_dir:
  description: The unix socket directory (connect with host=<socket_dir>).
  type: str
  returned: always
run_as:
  description: The OS user that runs the server.
  type: str
  returned: always
actions:
  description: What was done (or would be, in check mode), in order.
  type: list
  returned: always
"""

import os
import pwd
import random
import re
import secrets
import shutil
import socket
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

CLUSTER_CONF = "knobflow-cluster.conf"
INCLUDE_LINE = "include = '" + CLUSTER_CONF + "'"
INCLUDE_BLOCK = (
    "\n# Added by knobflow's postgresql_cluster role: listen address, port and socket directory.\n"
    + INCLUDE_LINE
    + "\n"
)
# pg_ctl hands the data directory and the log file to /bin/sh inside double quotes; these would be interpreted.
UNSAFE_PATH = re.compile(r"[\"'$`\\\x00-\x1f\x7f]")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SOCKET_PATH_MAX = 107


class Cluster:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.datadir = os.path.abspath(p["datadir"])
        parent = os.path.dirname(self.datadir)
        self.socket_dir = os.path.abspath(p["socket_dir"] or os.path.join(parent, "socket"))
        self.log_file = os.path.abspath(p["log_file"] or os.path.join(self.datadir, "server.log"))
        self.passfile = os.path.abspath(p["passfile"] or os.path.join(parent, "pgpass"))
        self.bindir = p["bindir"]
        self.timeout = p["timeout"]
        self.actions = []
        self.changed = False
        self.warnings = []
        self.run_as = None
        self.port = None

    # ---------------------------------------------------------------- helpers

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, changed=self.changed, actions=self.actions, **extra)

    def did(self, what):
        self.actions.append(what)
        self.changed = True

    def exists(self):
        return os.path.isfile(os.path.join(self.datadir, "PG_VERSION"))

    def binary(self, name):
        path = os.path.join(self.bindir, name)
        if not os.access(path, os.X_OK):
            self.fail(f"{path} not found or not executable: install PostgreSQL 15 (postgresql-15) or set bindir")
        return path

    def server_env(self):
        # A clean environment: the server must not inherit the Ansible run's variables (knobflow kills
        # processes carrying its run marker when a run times out).
        return {"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}

    def run(self, argv, as_server=True, timeout=None, check=True, new_session=False):
        """Run argv (never a shell), as the server's OS user when as_server and running as root."""
        kwargs = {}
        if as_server and self.run_as is not None:
            kwargs.update(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[])
        try:
            proc = subprocess.run(
                argv,
                cwd="/",
                env=self.server_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout + 30,
                start_new_session=new_session,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            self.fail(f"{os.path.basename(argv[0])} timed out after {timeout or self.timeout + 30} s")
        except OSError as exc:
            self.fail(f"cannot run {argv[0]}: {exc.strerror or exc}")
        if check and proc.returncode != 0:
            self.fail(
                "{} failed with status {}: {}".format(
                    " ".join(argv[:2]), proc.returncode, tail(proc.stderr) or tail(proc.stdout) or "no output"
                ),
                log_tail=self.log_tail(),
            )
        return proc

    def log_tail(self):
        try:
            with open(self.log_file, errors="replace") as f:
                return tail(f.read(), 8)
        except OSError:
            return ""

    def psql(self, sql, database="postgres", check=True):
        argv = [
            self.binary("psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            self.module.params["superuser"],
            "-d",
            database,
            "-c",
            sql,
        ]
        return self.run(argv, as_server=False, timeout=60, check=check)

    def chown(self, path):
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    # ---------------------------------------------------------------- state

    def resolve_user(self):
        """The OS user that runs the server (None: the current user)."""
        if os.geteuid() != 0:
            return None
        if self.exists():
            owner = os.stat(self.datadir).st_uid
            try:
                entry = pwd.getpwuid(owner)
            except KeyError:
                self.fail(f"{self.datadir} belongs to uid {owner}, which has no user entry")
            if entry.pw_uid == 0:
                self.fail(f"{self.datadir} belongs to root; PostgreSQL cannot run as root")
            if entry.pw_name != self.module.params["user"]:
                self.warnings.append(
                    f"{self.datadir} belongs to {entry.pw_name}, not {self.module.params['user']}; "
                    f"running the server as {entry.pw_name}"
                )
            return entry
        name = self.module.params["user"]
        if not USER_RE.match(name):
            self.fail(f"user: {name!r} is not a valid user name")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            if self.module.check_mode:
                return None
            self.fail(f"user: no OS user {name!r}; the role creates it (ansible.builtin.user) before this module runs")
        if entry.pw_uid == 0:
            self.fail(f"user: {name!r} is root; initdb and postgres refuse to run as root")
        return entry

    def configured_port(self):
        try:
            with open(os.path.join(self.datadir, CLUSTER_CONF)) as f:
                m = re.search(r"^port = (\d+)$", f.read(), re.MULTILINE)
                return int(m.group(1)) if m else None
        except OSError:
            return None

    def cluster_conf(self):
        return (
            "# Written by knobflow's postgresql_cluster role: how clients reach this private cluster.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
        )

    def running(self):
        proc = self.run([self.binary("pg_ctl"), "status", "-D", self.datadir], check=False, timeout=30)
        return proc.returncode == 0

    def start(self):
        if port_in_use(self.port):
            self.fail(
                f"port {self.port} on 127.0.0.1 is in use by another process: stop it, or set "
                "postgresql_cluster_port to a free port"
            )
        self.run(
            [
                self.binary("pg_ctl"),
                "start",
                "-D",
                self.datadir,
                "-l",
                self.log_file,
                "-w",
                "-t",
                str(self.timeout),
            ],
            new_session=True,
        )

    # ---------------------------------------------------------------- entry points

    def check_params(self):
        p = self.module.params
        for label, path in (
            ("datadir", self.datadir),
            ("socket_dir", self.socket_dir),
            ("log_file", self.log_file),
            ("passfile", self.passfile),
        ):
            if UNSAFE_PATH.search(path):
                self.fail(
                    f"{label}: {path!r} holds a quote, '$', a backquote, a backslash or a control character, which "
                    "pg_ctl would hand to a shell or the configuration file cannot hold; choose a plainer path"
                )
        if p["port"] == 5432:
            self.fail(
                "port: 5432 is the port of the machine's own PostgreSQL server; a private cluster needs "
                "another (0 picks a free one)"
            )
        if p["port"] != 0 and not 1024 <= p["port"] <= 65535:
            self.fail(f"port: {p['port']} is not between 1024 and 65535 (0 picks a free port)")
        if p["database"] and not NAME_RE.match(p["database"]):
            self.fail(f"database: {p['database']!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
        if not NAME_RE.match(p["superuser"]):
            self.fail(f"superuser: {p['superuser']!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
        if p["pgbench_scale"] < 0:
            self.fail("pgbench_scale must be >= 0")
        if p["pgbench_scale"] and not p["database"]:
            self.fail("pgbench_scale needs a database")
        socket_path = os.path.join(self.socket_dir, ".s.PGSQL.65535")
        if len(socket_path) > SOCKET_PATH_MAX:
            self.fail(
                f"socket_dir: {self.socket_dir} is too long for a unix socket path "
                f"({len(socket_path)} > {SOCKET_PATH_MAX} characters with the socket's name); choose a shorter one"
            )

    def create(self):
        if os.path.isdir(self.datadir) and os.listdir(self.datadir):
            self.fail(f"{self.datadir} exists, is not empty, and holds no PostgreSQL cluster (no PG_VERSION)")
        if self.module.check_mode:
            self.did(f"create the cluster in {self.datadir} with initdb")
            return
        parent = os.path.dirname(self.datadir)
        if self.run_as is not None:
            # Before creating anything: the server's user must reach the deepest existing ancestor
            # (the parents created below are 0755).
            existing = parent
            while not os.path.isdir(existing):
                existing = os.path.dirname(existing)
            reach = self.run(["/usr/bin/test", "-x", existing], check=False, timeout=30)
            if reach.returncode != 0:
                self.fail(
                    f"{self.run_as.pw_name} cannot reach {existing} (it or a parent lacks search permission for "
                    f"it, for example a 0700 home directory); choose a data directory under a path it can traverse "
                    f"(every parent at least o+x), such as /var/tmp/knobflow/..., or grant it: chmod o+x <dir>"
                )
        os.makedirs(parent, mode=0o755, exist_ok=True)
        for d in (self.datadir, self.socket_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
            self.chown(d)
        password = secrets.token_urlsafe(24)
        fd, pwfile = tempfile.mkstemp(dir=self.socket_dir, prefix="initdb-pw-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            self.chown(pwfile)
            self.run(
                [
                    self.binary("initdb"),
                    "-D",
                    self.datadir,
                    "-U",
                    self.module.params["superuser"],
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--pwfile=" + pwfile,
                ],
                timeout=300,
            )
        finally:
            os.unlink(pwfile)
        conf = os.path.join(self.datadir, "postgresql.conf")
        with open(conf, "a") as f:
            f.write(INCLUDE_BLOCK)
        write_file(os.path.join(self.datadir, CLUSTER_CONF), self.cluster_conf(), self.chown)
        old = os.umask(0o077)
        try:
            write_file(self.passfile, f"*:*:*:{self.module.params['superuser']}:{password}\n", None)
        finally:
            os.umask(old)
        os.chmod(self.passfile, 0o600)
        self.did(f"created the cluster in {self.datadir} (initdb, as {self.user_name()})")

    def user_name(self):
        return self.run_as.pw_name if self.run_as is not None else pwd.getpwuid(os.geteuid()).pw_name

    def started(self):
        p = self.module.params
        self.check_params()
        self.run_as = self.resolve_user()
        existed = self.exists()
        configured = self.configured_port() if existed else None
        self.port = p["port"] or configured
        if not self.port and not self.module.check_mode:
            self.port = pick_free_port()
            if self.port is None:
                self.fail("no free TCP port between 20000 and 29999 on 127.0.0.1: set postgresql_cluster_port")
        if not existed:
            self.create()
            if self.module.check_mode:
                self.actions += [
                    f"start it on 127.0.0.1:{self.port or 'a free port'} with pg_ctl",
                    f"create database {p['database']} and run pgbench -i -s {p['pgbench_scale']}"
                    if p["pgbench_scale"]
                    else "",
                ]
                return self.result()
        conf_changed = False
        conf_path = os.path.join(self.datadir, CLUSTER_CONF)
        if read(conf_path) != self.cluster_conf():
            conf_changed = True
            if not self.module.check_mode:
                write_file(conf_path, self.cluster_conf(), self.chown)
            self.did(f"set port {self.port} and socket directory {self.socket_dir} in {CLUSTER_CONF}")
        pg_conf = os.path.join(self.datadir, "postgresql.conf")
        if INCLUDE_LINE not in (read(pg_conf) or "").splitlines():
            conf_changed = True
            if not self.module.check_mode:
                with open(pg_conf, "a") as f:
                    f.write(INCLUDE_BLOCK)
            self.did(f"include {CLUSTER_CONF} from postgresql.conf")
        if not os.path.isdir(self.socket_dir):
            if not self.module.check_mode:
                os.makedirs(self.socket_dir, mode=0o700)
                self.chown(self.socket_dir)
            self.did(f"create the socket directory {self.socket_dir}")
        running = self.running()
        if running and conf_changed:
            if self.module.check_mode:
                self.did("restart the server")
                return self.result()
            self.run([self.binary("pg_ctl"), "stop", "-D", self.datadir, "-m", "fast", "-w", "-t", str(self.timeout)])
            running = False
            self.did("stopped the server to apply the new address")
        if not running:
            if self.module.check_mode:
                self.did(f"start the server on 127.0.0.1:{self.port}")
                return self.result()
            self.start()
            self.did(f"started the server on 127.0.0.1:{self.port} as {self.user_name()}")
        ready = self.psql("SELECT 1", check=False)
        if ready.returncode != 0:
            self.fail(
                f"the server runs but does not answer on {self.socket_dir} port {self.port}: "
                + (tail(ready.stderr) or "no output"),
                log_tail=self.log_tail(),
            )
        if p["database"]:
            self.ensure_database()
        return self.result()

    def ensure_database(self):
        p = self.module.params
        db = p["database"]
        found = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").stdout.strip()
        if found != "1":
            if self.module.check_mode:
                self.did(f"create database {db}")
                if p["pgbench_scale"]:
                    self.did(f"initialise it with pgbench -i -s {p['pgbench_scale']}")
                return
            self.run(
                [
                    self.binary("createdb"),
                    "-h",
                    self.socket_dir,
                    "-p",
                    str(self.port),
                    "-U",
                    p["superuser"],
                    db,
                ],
                as_server=False,
            )
            self.did(f"created database {db}")
        if not p["pgbench_scale"]:
            return
        scale = self.pgbench_scale(db)
        if scale == p["pgbench_scale"]:
            return
        if self.module.check_mode:
            self.did(f"initialise {db} with pgbench -i -s {p['pgbench_scale']} (now: {scale or 'not initialised'})")
            return
        self.run(
            [
                self.binary("pgbench"),
                "-i",
                "-q",
                "-s",
                str(p["pgbench_scale"]),
                "-h",
                self.socket_dir,
                "-p",
                str(self.port),
                "-U",
                p["superuser"],
                db,
            ],
            as_server=False,
            timeout=p["init_timeout"],
        )
        # Start the benchmarks from a clean state rather than in the middle of the load's checkpoint.
        self.psql("CHECKPOINT", database=db)
        if self.pgbench_scale(db) != p["pgbench_scale"]:
            self.fail(f"pgbench -i -s {p['pgbench_scale']} finished but {db} does not hold that scale")
        self.did(f"initialised {db} with pgbench -i -s {p['pgbench_scale']}")

    def pgbench_scale(self, db):
        """The scale of db's pgbench tables, 0 when they are missing or incomplete (an interrupted -i)."""
        complete = self.psql(
            "SELECT to_regclass('public.pgbench_branches') IS NOT NULL AND "
            "to_regclass('public.pgbench_accounts_pkey') IS NOT NULL AND "
            "to_regclass('public.pgbench_history') IS NOT NULL",
            database=db,
        ).stdout.strip()
        if complete != "t":
            return 0
        branches = int(self.psql("SELECT count(*) FROM pgbench_branches", database=db).stdout.strip())
        accounts = self.psql(f"SELECT count(*) = {branches} * 100000 FROM pgbench_accounts", database=db).stdout.strip()
        return branches if accounts == "t" else 0

    def stopped(self):
        self.check_params()
        if not self.exists():
            return self.result()
        self.run_as = self.resolve_user()
        self.port = self.configured_port()
        if self.running():
            if not self.module.check_mode:
                proc = self.run(
                    [self.binary("pg_ctl"), "stop", "-D", self.datadir, "-m", "fast", "-w", "-t", str(self.timeout)],
                    check=False,
                )
                if proc.returncode != 0:
                    self.run([self.binary("pg_ctl"), "stop", "-D", self.datadir, "-m", "immediate", "-w"])
                    self.warnings.append("the server did not stop in time with -m fast; stopped it with -m immediate")
            self.did("stopped the server")
        return self.result()

    def absent(self):
        self.check_params()
        if os.path.isdir(self.datadir) and os.listdir(self.datadir):
            if not (self.exists() and os.path.isfile(os.path.join(self.datadir, CLUSTER_CONF))):
                self.fail(
                    f"{self.datadir} is not a cluster made by the postgresql_cluster role (no PG_VERSION or "
                    f"{CLUSTER_CONF}); not deleting it"
                )
            self.stopped()
            if not self.module.check_mode:
                shutil.rmtree(self.datadir)
            self.did(f"deleted {self.datadir}")
        elif os.path.isdir(self.datadir):
            if not self.module.check_mode:
                os.rmdir(self.datadir)
            self.did(f"deleted the empty {self.datadir}")
        if os.path.isdir(self.socket_dir):
            leftovers = [n for n in os.listdir(self.socket_dir) if not n.startswith((".s.PGSQL.", "initdb-pw-"))]
            if leftovers:
                self.warnings.append(f"kept {self.socket_dir}: it holds other files ({', '.join(sorted(leftovers))})")
            else:
                if not self.module.check_mode:
                    shutil.rmtree(self.socket_dir)
                self.did(f"deleted {self.socket_dir}")
        if os.path.isfile(self.passfile):
            if not self.module.check_mode:
                os.unlink(self.passfile)
            self.did(f"deleted {self.passfile}")
        return self.result()

    def result(self):
        out = dict(
            changed=self.changed,
            actions=[a for a in self.actions if a],
            datadir=self.datadir,
            socket_dir=self.socket_dir,
            passfile=self.passfile,
            log_file=self.log_file,
            run_as=self.user_name() if self.run_as is not None or os.geteuid() != 0 else None,
        )
        if self.port:
            out["port"] = self.port
        if self.warnings:
            out["warnings"] = self.warnings
        return out


def tail(text, n=5):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-800:]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def write_file(path, text, chown):
    tmp = path + ".knobflow-tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    if chown is not None:
        chown(tmp)
    os.replace(tmp, path)


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def pick_free_port():
    """A free port below the ephemeral range (so outgoing connections never take it), never 5432."""
    candidates = list(range(20000, 30000))
    random.shuffle(candidates)
    for port in candidates[:500]:
        if not port_in_use(port):
            return port
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            datadir=dict(type="path", required=True),
            socket_dir=dict(type="path"),
            port=dict(type="int", default=0),
            user=dict(type="str", default="knobflow-pg"),
            superuser=dict(type="str", default="postgres"),
            database=dict(type="str", default="pgbench"),
            pgbench_scale=dict(type="int", default=10),
            bindir=dict(type="path", default="/usr/lib/postgresql/15/bin"),
            log_file=dict(type="path"),
            passfile=dict(type="path"),
            timeout=dict(type="int", default=120),
            init_timeout=dict(type="int", default=3600),
            state=dict(type="str", choices=["started", "stopped", "absent"], default="started"),
        ),
        supports_check_mode=True,
    )
    cluster = Cluster(module)
    state = module.params["state"]
    if state == "started":
        result = cluster.started()
    elif state == "stopped":
        result = cluster.stopped()
    else:
        result = cluster.absent()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
