"""knobflow as an Airflow provider: the provider metadata, the ``knobflow`` connection type and its
hook, the plugin's macros and the plugins-folder shim, as the installed Airflow 3.3 sees them.

The Airflow commands run in subprocesses with an Airflow home of their own (``tmp_path``), as an
operator would run them after ``pip install``. The slow test builds the wheel and installs it into
a new virtual environment with constraints.txt.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from knobflow import spec
from knobflow.store import Store
from knobflow.tuners import registry
from knobflow.tuners.base import ask
from tests.conftest import BIN, DATA, REPO, knobflow

SITE = Path(__import__("airflow").__file__).parent
SHIM = REPO / "plugins" / "knobflow_plugin.py"


# --------------------------------------------------------------------------------------------
# Helpers


def _airflow_env(tmp_path: Path, *, plugins: Path | None = None, **extra: str) -> dict[str, str]:
    """A clean Airflow home under tmp_path (no examples, an empty or given plugins folder)."""
    home = tmp_path / "airflow-home"
    home.mkdir(exist_ok=True)
    if plugins is None:
        plugins = tmp_path / "plugins-empty"
        plugins.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
            "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
            "KNOBFLOW_HOME": str(tmp_path / "knobflow-home"),
        }
    )
    env.update(extra)
    return env


def _airflow_json(bin_dir: Path, args: list[str], env: dict[str, str], cwd: Path) -> tuple[Any, list[str]]:
    """Run ``airflow ARGS -o json --verbose``; return the JSON it printed and every other line.

    ``--verbose`` keeps the warnings Airflow otherwise hides in these commands (a provider class
    that fails to import is only a logged warning), so they can be checked.
    """
    proc = subprocess.run(
        [str(bin_dir / "airflow"), *args, "-o", "json", "--verbose"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"airflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    data, other = None, []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        if data is None and line.startswith("["):
            try:
                data = json.loads(line)
                continue
            except json.JSONDecodeError:
                pass
        if line.strip():
            other.append(line)
    assert data is not None, f"airflow {' '.join(args)} printed no JSON\n{proc.stdout}\n{proc.stderr}"
    return data, other


def _problems(lines: list[str]) -> list[str]:
    """Log lines that report an error, or any warning about knobflow."""
    return [
        line
        for line in lines
        if "Traceback" in line
        or "error" in line.lower()
        or "exception" in line.lower()
        or ("knobflow" in line.lower() and "warning" in line.lower())
    ]


# Runs in a subprocess with a clean Airflow home: what Airflow's own loaders see, warnings included.
PROBE = r"""
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from airflow import plugins_manager as core
    from airflow.sdk import plugins_manager as sdk
    from airflow.providers_manager import ProvidersManager
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    core_plugins, core_errors = core._get_plugins()
    sdk_plugins, sdk_errors = sdk._get_plugins()
    pm = ProvidersManager()
    behaviours = pm.field_behaviours
    widgets = {k: v.field for k, v in pm.connection_form_widgets.items() if "knobflow" in k}
    meta = [m.model_dump() for m in HookMetaService.hook_meta_data() if m.connection_type == "knobflow"]
    from airflow.sdk.execution_time import macros
    sdk.integrate_macros_plugins()
    template_macros = sorted(n for n in dir(getattr(macros, "knobflow", None)) if n.startswith("knobflow_"))
print(json.dumps({
    "core": [[p.name, str(p.source)] for p in core_plugins],
    "core_errors": core_errors,
    "sdk": [[getattr(p, "name", None), str(getattr(p, "source", None))] for p in sdk_plugins],
    "sdk_errors": sdk_errors,
    "behaviour": behaviours.get("knobflow"),
    "widgets": widgets,
    "meta": meta,
    "template_macros": template_macros,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught if "knobflow" in str(w.message).lower()],
}, default=str))
"""


def _probe(env: dict[str, str], cwd: Path, python: Path = BIN / "python") -> dict[str, Any]:
    proc = subprocess.run([str(python), "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    return out


def _record(store: Store, exp: spec.Experiment, outcomes: list[tuple[float | None, dict[str, Any]]]) -> list[Any]:
    """Record trials of ``exp`` with the given (value, user attributes); None is a failed trial."""
    study = store.open(exp)
    tuner = registry.create("random", seed=7)
    done = []
    for value, attrs in outcomes:
        t = ask(tuner, study, exp.space())
        state = TrialState.FAIL if value is None else TrialState.COMPLETE
        store.finish(study, t.number, state=state, value=value, attrs={"metrics": {"score": value}, **attrs})
        done.append(t)
    return done


def _flaky(tmp_path: Path, name: str, *, several_objectives: bool = False) -> spec.Experiment:
    text = (DATA / "experiments" / "flaky.yaml").read_text().replace("name: test-flaky", f"name: {name}")
    if several_objectives:
        text = text.replace(
            "objective:\n  metric: score\n  direction: maximize\n",
            "objectives:\n  - {metric: score, direction: maximize}\n  - {metric: cost, direction: minimize}\n",
        )
    return spec.parse(text, base_dir=DATA / "experiments")


# --------------------------------------------------------------------------------------------
# Provider metadata


def test_provider_info_is_valid_for_this_airflow() -> None:
    import jsonschema

    from knobflow.airflow.hooks import KnobflowHook
    from knobflow.airflow.provider_info import get_provider_info

    info = get_provider_info()
    jsonschema.validate(info, json.loads((SITE / "provider_info.schema.json").read_text()))
    # Airflow refuses a provider whose package-name is not its distribution's name.
    from importlib.metadata import distribution

    assert info["package-name"] == distribution("knobflow").metadata["Name"]
    assert info["versions"] == [distribution("knobflow").version]

    # The runtime schema leaves the connection form and the plugins list unchecked (its "plugins"
    # items have no "properties"); check them against the stricter provider.yaml schema's parts.
    dev_schema = json.loads((SITE / "provider.yaml.schema.json").read_text())
    conn_schema = dev_schema["properties"]["connection-types"]["items"]
    (conn,) = info["connection-types"]
    jsonschema.validate(conn, conn_schema)
    assert (conn["connection-type"], conn["hook-name"]) == (KnobflowHook.conn_type, KnobflowHook.hook_name)
    behaviour = conn["ui-field-behaviour"]
    as_hook_returns = {
        "hidden_fields": behaviour["hidden-fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }
    behaviour_schema = json.loads((SITE / "customized_form_field_behaviours.schema.json").read_text())
    jsonschema.validate(as_hook_returns, behaviour_schema)
    assert KnobflowHook.get_ui_field_behaviour() == as_hook_returns
    # The plugin comes from the `airflow.plugins` entry point only (see the eager-discovery test).
    assert "plugins" not in info


def test_every_module_and_class_the_provider_names_imports() -> None:
    import importlib

    from airflow._shared.module_loading import import_string

    from knobflow.airflow.provider_info import get_provider_info

    info = get_provider_info()
    for section in ("operators", "hooks"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for conn in info["connection-types"]:
        assert import_string(conn["hook-class-name"]).conn_type == conn["connection-type"]


def test_provider_modules_import_light() -> None:
    """Every Airflow process imports the hook and the plugin: neither may pull in Optuna or the store."""
    code = (
        "import sys\n"
        "import knobflow.airflow.provider_info, knobflow.airflow.hooks, knobflow.airflow.plugin\n"
        "heavy = ('optuna', 'knobflow.store', 'knobflow.cli', 'knobflow.engine', 'knobflow.spec', 'ansible_runner')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# The Airflow commands, in a clean Airflow home


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, list[str]]]:
    """`airflow providers list`, `airflow plugins` and `airflow providers hooks`, run once."""
    tmp = tmp_path_factory.mktemp("airflow-cli")
    env = _airflow_env(tmp)
    return {
        " ".join(args): _airflow_json(BIN, args, env, tmp)
        for args in (["providers", "list"], ["plugins"], ["providers", "hooks"])
    }


def test_airflow_providers_list_shows_knobflow(cli: dict[str, tuple[Any, list[str]]]) -> None:
    data, log = cli["providers list"]
    (row,) = [p for p in data if p["package_name"] == "knobflow"]
    assert row["version"] == __import__("knobflow").__version__
    assert row["description"].startswith("Hyperparameter tuning for system performance")
    assert _problems(log) == []


def test_airflow_plugins_lists_knobflow_with_its_macros(cli: dict[str, tuple[Any, list[str]]]) -> None:
    data, log = cli["plugins"]
    (plugin,) = [p for p in data if p["name"] == "knobflow"]
    assert plugin["macros"] == ["knobflow.airflow.plugin.knobflow_best", "knobflow.airflow.plugin.knobflow_trials"]
    assert "EntryPoint(name='knobflow', value='knobflow.airflow.plugin:KnobflowPlugin'" in plugin["source"]
    assert _problems(log) == []


def test_airflow_providers_hooks_lists_the_knobflow_connection_type(cli: dict[str, tuple[Any, list[str]]]) -> None:
    data, log = cli["providers hooks"]
    (hook,) = [h for h in data if h["connection_type"] == "knobflow"]
    # A hook that fails to import is listed with "Error when importing hook!" in these fields.
    assert hook == {
        "connection_type": "knobflow",
        "class": "knobflow.airflow.hooks.KnobflowHook",
        "conn_id_attribute_name": "knobflow_conn_id",
        "package_name": "knobflow",
        "hook_name": "knobflow",
    }
    assert _problems(log) == []


def test_connection_form_and_plugin_as_airflow_loads_them_with_the_shim_in_the_plugins_folder(
    tmp_path: Path,
) -> None:
    """The API server's connection form gets knobflow's fields from the provider info (no hook
    method called, no deprecation warning); the plugin is registered once, from the entry point,
    although plugins/knobflow_plugin.py sits in the plugins folder; task templates get the macros."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(SHIM, plugins)
    out = _probe(_airflow_env(tmp_path, plugins=plugins), tmp_path)

    for side in ("core", "sdk"):
        knobflow_plugins = [p for p in out[side] if p[0] == "knobflow"]
        assert len(knobflow_plugins) == 1, out[side]
        assert "EntryPoint" in knobflow_plugins[0][1]
        assert out[f"{side}_errors"] == {}
    assert out["template_macros"] == ["knobflow_best", "knobflow_trials"]
    assert out["warnings"] == []
    assert "Traceback" not in out["stderr"]

    assert out["behaviour"]["relabeling"]["schema"] == "Database"
    assert out["behaviour"]["placeholders"]["extra__knobflow__storage"] == "sqlite:////var/lib/knobflow/knobflow.db"
    assert set(out["widgets"]) == {"extra__knobflow__storage", "extra__knobflow__service_url", "extra__knobflow__token"}
    assert out["behaviour"]["placeholders"]["extra__knobflow__service_url"].startswith("https://")
    (meta,) = out["meta"]
    assert meta["hook_class_name"] == "knobflow.airflow.hooks.KnobflowHook"
    assert meta["standard_fields"]["url_schema"]["title"] == "Database"
    assert meta["standard_fields"]["host"]["title"] == "PostgreSQL host"
    assert meta["extra_fields"]["storage"]["schema"]["title"] == "Store URL"
    assert meta["extra_fields"]["service_url"]["schema"]["title"] == "Service URL"
    assert meta["extra_fields"]["token"]["schema"]["title"] == "Service token"
    assert meta["extra_fields"]["token"]["schema"]["format"] == "password"  # a masked field in the form


def test_with_eager_provider_discovery_the_plugin_still_loads_once(tmp_path: Path) -> None:
    """``[core] lazy_discover_providers = False`` makes Airflow also load the plugins that providers
    list in their provider info. knobflow's provider info lists none (the entry point is enough), so
    the plugin loads once and no "already registered" import error is recorded."""
    env = _airflow_env(tmp_path, AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS="False")
    out = _probe(env, tmp_path)
    for side in ("core", "sdk"):
        assert [p[0] for p in out[side]].count("knobflow") == 1
        assert out[f"{side}_errors"] == {}
    assert out["template_macros"] == ["knobflow_best", "knobflow_trials"]


def test_the_shim_exposes_the_plugin_only_without_the_entry_point() -> None:
    import importlib.util

    spec_ = importlib.util.spec_from_file_location("knobflow_plugin_shim", SHIM)
    assert spec_ is not None and spec_.loader is not None
    shim = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(shim)
    # knobflow is installed here (editable), so its entry point registers the plugin.
    assert shim.registered_by_entry_point() is True
    assert not hasattr(shim, "KnobflowPlugin")


# --------------------------------------------------------------------------------------------
# The hook


def test_storage_url_from_the_connection_fields() -> None:
    from sqlalchemy.engine import make_url

    from knobflow.airflow.hooks import KnobflowConnectionError, storage_url_from_fields

    assert storage_url_from_fields(extra={"storage": "sqlite:////data/k.db"}) == "sqlite:////data/k.db"
    assert storage_url_from_fields(extra={"extra__knobflow__storage": " sqlite:////d.db "}) == "sqlite:////d.db"
    url = storage_url_from_fields(host="db.example", login="us@er:1", password="p@ss/w:rd%?", schema="kn/ob")
    assert url.startswith("postgresql+psycopg://")
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "us@er:1",
        "p@ss/w:rd%?",
        "db.example",
        5432,
        "kn/ob",
    )
    assert storage_url_from_fields(host="h", port=6543, schema="s") == "postgresql+psycopg://h:6543/s"

    bad = {
        "names two stores": {"extra": {"storage": "sqlite:////a.db"}, "host": "h", "schema": "s"},
        "names no store": {},
        "Schema": {"host": "h"},
        "password is set but no login": {"host": "h", "schema": "s", "password": "pw"},
        "must be a database URL": {"extra": {"storage": "/a/file.db"}},
        "must be a URL string": {"extra": {"storage": 5}},
    }
    for words, fields in bad.items():
        with pytest.raises(KnobflowConnectionError, match=words) as err:
            storage_url_from_fields(conn_id="my_conn", **fields)
        assert "'my_conn'" in str(err.value)


def _conn_env(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> str:
    """A connection defined the way deployments often do it: an AIRFLOW_CONN_* variable."""
    conn_id = f"knobflow_test_{secrets.token_hex(4)}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "knobflow", **conn}))
    return conn_id


def test_hook_on_a_sqlite_store_named_by_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import Connection

    from knobflow.airflow.hooks import KnobflowHook

    db = tmp_path / "store" / "knobflow.db"
    url = f"sqlite:///{db}"
    conn_id = _conn_env(monkeypatch, {"extra": {"storage": url}})
    hook = KnobflowHook(knobflow_conn_id=conn_id)
    assert hook.get_storage_url() == url

    ok, message = hook.test_connection()
    assert not ok and "no such file" in message
    assert not db.exists(), "testing the connection must not create the store"

    _record(hook.get_store(), _flaky(tmp_path, "hook-sqlite"), [(1.0, {})])
    ok, message = hook.test_connection()
    assert ok and "1 experiments (hook-sqlite)" in message, message
    assert "hook-sqlite" in KnobflowHook(knobflow_conn_id=conn_id).get_store().names()
    # Airflow resolves the connection type to this hook (what "Test" in the connection form does).
    conn = Connection.get(conn_id)
    assert type(conn.get_hook()) is KnobflowHook
    assert conn.test_connection() == (True, message)


@pytest.fixture
def pg_database() -> Iterator[dict[str, Any]]:
    """A database of this test's own on the machine's PostgreSQL, dropped afterwards."""
    try:
        import psycopg
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg (3) is not installed: install with -c constraints.txt '.[dev]'")
    name = f"knobflow_hook_test_{secrets.token_hex(4)}"
    admin = None
    for user in ("postgres", "root"):
        try:
            admin = psycopg.connect(host="127.0.0.1", port=5432, user=user, dbname="postgres", autocommit=True)
            break
        except psycopg.OperationalError:
            continue
    if admin is None:
        pytest.fail("no PostgreSQL server at 127.0.0.1:5432 accepting user postgres or root")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield {"host": "127.0.0.1", "port": 5432, "login": admin.info.user, "schema": name}
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_hook_on_a_postgresql_store_named_by_host_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_database: dict[str, Any]
) -> None:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    from knobflow.airflow.hooks import KnobflowHook
    from knobflow.airflow.plugin import knobflow_best

    # Trust authentication ignores the password; it is here to check the URL's quoting end to end.
    conn_id = _conn_env(monkeypatch, {**pg_database, "password": "p@ss/w:rd%"})
    hook = KnobflowHook(knobflow_conn_id=conn_id)
    url = hook.get_storage_url()
    assert url.startswith(f"postgresql+psycopg://{pg_database['login']}:p%40ss%2Fw%3Ard%25@127.0.0.1:5432/")

    ok, message = hook.test_connection()
    assert ok and "holds no knobflow store" in message, message
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as c:
        assert inspect(c).get_table_names() == [], "testing the connection must not create tables"
    engine.dispose()

    exp = _flaky(tmp_path, "hook-pg")
    trials = _record(hook.get_store(), exp, [(3.0, {}), (9.0, {}), (5.0, {})])
    ok, message = hook.test_connection()
    assert ok and "1 experiments (hook-pg)" in message, message
    assert message.count("p%40ss") == 0 and "***" in message, "the password is not shown"
    assert knobflow_best("hook-pg", conn_id=conn_id) == trials[1].params


# --------------------------------------------------------------------------------------------
# The macros


def test_knobflow_best_is_the_best_feasible_configuration(tmp_path: Path, home: Path) -> None:
    from knobflow.airflow.plugin import KnobflowResultError, knobflow_best, knobflow_trials

    url = f"sqlite:///{tmp_path / 'store.db'}"
    exp = _flaky(tmp_path, "macro-best")
    trials = _record(
        Store(url),
        exp,
        [
            (10.0, {}),
            (30.0, {}),
            (None, {"reason": "benchmark crashed"}),
            (50.0, {"slo_violations": ["p99_ms <= 5"]}),  # the highest value, but it broke an SLO
            (20.0, {}),
        ],
    )
    best = knobflow_best("macro-best", url)
    assert best == trials[1].params
    # The same answer as `knobflow best`.
    cli_best = json.loads(knobflow("best", "macro-best", "--storage", url, "--json", home=home, check=True).stdout)
    assert cli_best["best"]["params"] == best

    complete = knobflow_trials("macro-best", url)
    assert [t["number"] for t in complete] == [0, 1, 3, 4]
    assert [t["value"] for t in complete] == [10.0, 30.0, 50.0, 20.0]
    assert complete[0]["baseline"] is True and complete[2]["feasible"] is False
    everything = knobflow_trials("macro-best", url, state=None)
    assert [t["state"] for t in everything] == ["complete", "complete", "fail", "complete", "complete"]
    assert everything[2]["reason"] == "benchmark crashed"
    json.dumps(everything)  # templates may pass them on as JSON

    with pytest.raises(KnobflowResultError, match=r"no experiment named 'nope'.*macro-best"):
        knobflow_best("nope", url)


def test_knobflow_best_reads_the_default_store_and_says_when_there_is_no_result(tmp_path: Path, home: Path) -> None:
    from knobflow.airflow.plugin import KnobflowResultError, knobflow_best

    with pytest.raises(KnobflowResultError, match=r"no experiment named 'macro-default'.*no such file"):
        knobflow_best("macro-default")
    assert not (home / "knobflow.db").exists(), "reading must not create the store"

    exp = _flaky(tmp_path, "macro-default")
    default = Store(exp.storage_url())
    assert default.url == f"sqlite:///{home.resolve() / 'knobflow.db'}"
    _record(default, exp, [(None, {"reason": "crashed"})])
    with pytest.raises(KnobflowResultError, match="experiment 'macro-default' has no completed trial"):
        knobflow_best("macro-default")
    trials = _record(default, exp, [(4.0, {})])
    assert knobflow_best("macro-default") == trials[0].params

    _record(default, _flaky(tmp_path, "macro-pareto", several_objectives=True), [])
    with pytest.raises(KnobflowResultError, match="'macro-pareto' has 2 objectives"):
        knobflow_best("macro-pareto")
    with pytest.raises(ValueError, match="not both"):
        knobflow_best("macro-default", "sqlite:////x.db", conn_id="knobflow_default")


@pytest.mark.slow
def test_a_dag_template_renders_knobflow_best(tmp_path: Path) -> None:
    """A DAG of the user's own reads the best configuration in a template, under dag.test()."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    trials = _record(Store(url), _flaky(tmp_path, "macro-dag"), [(1.0, {}), (7.0, {})])
    dags = tmp_path / "dags"
    dags.mkdir()
    out = tmp_path / "rendered.json"
    (dags / "uses_knobflow_best.py").write_text(
        "from airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.python import PythonOperator\n"
        "from pathlib import Path\n\n"
        "def write(best):\n"
        f"    Path({str(out)!r}).write_text(best)\n\n"
        "with DAG(dag_id='uses_knobflow_best', schedule=None) as dag:\n"
        "    PythonOperator(task_id='read', python_callable=write,\n"
        f"        op_args=[\"{{{{ macros.knobflow.knobflow_best('macro-dag', {url!r}) | tojson }}}}\"])\n"
    )
    env = _airflow_env(tmp_path)
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(dags)!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "run = bag.dags['uses_knobflow_best'].test()\n"
        "print('STATE', run.state)\n"
    )
    proc = subprocess.run(
        [str(BIN / "python"), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text()) == trials[1].params


# --------------------------------------------------------------------------------------------
# Must-show: `pip install` of the wheel into a new Airflow environment


@pytest.mark.slow
def test_wheel_installed_into_a_new_venv_registers_the_provider_and_the_plugin(tmp_path: Path) -> None:
    timings: dict[str, float] = {}

    def step(name: str, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
        timings[name] = round(time.monotonic() - started, 1)
        assert proc.returncode == 0, f"{name}: {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    wheels = tmp_path / "wheels"
    step("wheel", [str(BIN / "python"), "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(REPO)])
    (wheel,) = wheels.glob("knobflow-*.whl")
    venv = tmp_path / "venv"
    step("venv", [sys.executable, "-m", "venv", str(venv)])
    vbin = venv / "bin"
    # Installed with the repository's constraints (everything pinned), as docs/airflow.md says.
    # --no-compile: byte-compiling every installed module is most of the install time; Python compiles
    # what it imports anyway.
    step(
        "install",
        [str(vbin / "python"), "-m", "pip", "install", "--no-compile", "-c", str(REPO / "constraints.txt"), str(wheel)],
    )

    env = _airflow_env(tmp_path)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{vbin}{os.pathsep}{env['PATH']}"
    started = time.monotonic()
    providers, log = _airflow_json(vbin, ["providers", "list"], env, tmp_path)
    assert [p["version"] for p in providers if p["package_name"] == "knobflow"] == [wheel.name.split("-")[1]]
    assert _problems(log) == []
    plugins, log = _airflow_json(vbin, ["plugins"], env, tmp_path)
    (plugin,) = [p for p in plugins if p["name"] == "knobflow"]
    assert plugin["macros"] == ["knobflow.airflow.plugin.knobflow_best", "knobflow.airflow.plugin.knobflow_trials"]
    assert _problems(log) == []
    hooks, log = _airflow_json(vbin, ["providers", "hooks"], env, tmp_path)
    assert [h["class"] for h in hooks if h["connection_type"] == "knobflow"] == ["knobflow.airflow.hooks.KnobflowHook"]
    assert _problems(log) == []
    out = _probe(env, tmp_path, python=vbin / "python")
    assert out["core_errors"] == {} and out["sdk_errors"] == {} and out["warnings"] == []
    assert out["template_macros"] == ["knobflow_best", "knobflow_trials"]
    timings["airflow commands"] = round(time.monotonic() - started, 1)

    # Without the package installed (knobflow only on PYTHONPATH), the plugins-folder shim
    # registers the plugin instead.
    step("uninstall", [str(vbin / "python"), "-m", "pip", "uninstall", "-y", "knobflow"])
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    shutil.copy(SHIM, plugins_dir)
    shim_env = _airflow_env(tmp_path, plugins=plugins_dir, PYTHONPATH=str(REPO / "src"))
    shim_env["PATH"] = env["PATH"]
    out = _probe(shim_env, tmp_path, python=vbin / "python")
    for side in ("core", "sdk"):
        assert [p for p in out[side] if p[0] == "knobflow"] == [["knobflow", "$PLUGINS_FOLDER/knobflow_plugin.py"]]
        assert out[f"{side}_errors"] == {}
    assert out["template_macros"] == ["knobflow_best", "knobflow_trials"]
    print(f"timings (s): {timings}")
