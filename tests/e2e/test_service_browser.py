"""The experiments' pages in a real browser: headless Chromium (Debian's `chromium`, see
system-packages.txt) opens the service's list of experiments, follows the link to one, and the
plots render (Plotly draws its SVG); the page `knobflow report` writes renders the same way from a
file, offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from knobflow.service.core import Service
from tests.airflow_stack import free_port
from tests.conftest import BIN
from tests.e2e.test_service_serve import serving
from tests.unit.test_service_api import EXPERIMENT, throughput

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOTS = ("history", "importance", "parallel")


def dump_dom(url: str, profile: Path, *, offline: bool = False) -> str:
    """The page's DOM after its scripts ran, as headless Chromium sees it. ``offline``: every
    network request goes to a proxy that does not exist, so only what the page holds can render."""
    network = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"] if offline else []
    assert CHROMIUM is not None, "chromium is not installed: `make system` installs it (system-packages.txt)"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # the tests run as root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *network,
            "--virtual-time-budget=20000",  # let the scripts run (and Plotly draw) before the dump
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def rendered_plots(dom: str) -> dict[str, bool]:
    """For each plot's div, whether Plotly drew into it (its SVG and the class Plotly adds)."""
    out = {}
    for key in PLOTS:
        m = re.search(rf'<div class="([^"]*)" id="plot-{key}"[^>]*>(.*?)</div>\s*(?:<h3|<h2|<p|<table)', dom, re.S)
        out[key] = bool(m) and "js-plotly-plot" in m.group(1) and 'class="main-svg"' in m.group(2)
    return out


def _experiment(storage: str) -> None:
    service = Service(storage)
    service.create({**EXPERIMENT, "budget": {"trials": 24}})
    for _ in range(20):
        [t] = service.ask(EXPERIMENT["name"])
        service.tell(EXPERIMENT["name"], t["number"], metrics={"throughput": throughput(t["params"])})


def test_the_browser_finds_the_experiment_and_its_plots_render(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    _experiment(storage)
    with serving(storage, tmp_path, token=None, port=free_port(), log=tmp_path / "serve.log") as base:
        index = dump_dom(f"{base}/ui", tmp_path / "profile")
        link = re.search(r'<a href="([^"]+)">svc-demo</a>', index)
        assert link, index[:3000]
        page = dump_dom(f"{base}/{link.group(1)}", tmp_path / "profile")
    assert "svc-demo" in page and "gain" in page.lower()
    assert rendered_plots(page) == dict.fromkeys(PLOTS, True), page[:5000]


def test_the_report_file_renders_offline(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    _experiment(storage)
    out = tmp_path / "report.html"
    proc = subprocess.run(
        [str(BIN / "knobflow"), "report", "svc-demo", "--storage", storage, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    html = re.sub(r"<script\b[^>]*>.*?</script>", "", out.read_text(), flags=re.S)  # plotly.js has links
    assert not re.search(r'(src|href)="(https?:)?//', html)  # the page loads nothing from outside
    # A file:// URL and no server: Chromium renders it from the file alone.
    page = dump_dom(out.as_uri(), tmp_path / "profile", offline=True)
    assert rendered_plots(page) == dict.fromkeys(PLOTS, True), page[:5000]
