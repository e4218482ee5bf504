"""The tuning service mounted in a real Airflow api-server (the plugin's fastapi_apps at /knobflow):
401 on every endpoint without Airflow credentials, and the service working with them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.airflow_stack import airflow_stack, pg_url, postgres_database

pytestmark = pytest.mark.slow

SEARCH_SPACE = {
    "experiment_name": "mounted",
    "experiment_id": "m1",
    "total_trials": 3,
    "objective_function": "rps",
    "direction": "maximize",
    "tunables": [{"name": "threads", "value_type": "integer", "lower_bound": 1, "upper_bound": 32, "step": 1}],
}


def test_the_mounted_service_needs_airflow_credentials_on_every_endpoint(tmp_path: Path) -> None:
    from knobflow.service.app import create_app

    app = create_app(f"sqlite:///{tmp_path / 'routes.db'}")
    routes = [(m, r.path) for r in app.routes for m in sorted(getattr(r, "methods", ())) if m != "HEAD"]
    assert len(routes) >= 20
    with postgres_database("knobflow_mount") as db:
        storage = pg_url(db, "psycopg")
        with airflow_stack(
            tmp_path / "stack", triggerer=False, env={"KNOBFLOW_SERVICE_STORAGE": storage}, knobflow_home=tmp_path
        ) as stack:
            base = f"{stack.base_url}/knobflow"
            for method, path in routes:
                url = base + path.replace("{name}", "mounted").replace("{number}", "0")
                for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Cookie": "_token=forged"}):
                    r = httpx.request(method, url, headers=headers, timeout=30)
                    assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert httpx.get(f"{base}/no/such/page", timeout=30).status_code == 401
            auth = {"Authorization": f"Bearer {stack.token()}"}
            r = httpx.post(
                f"{base}/experiment_trials",
                json={"operation": "EXP_TRIAL_GENERATE_NEW", "search_space": SEARCH_SPACE},
                headers=auth,
                timeout=60,
            )
            assert r.status_code == 200, r.text
            r = httpx.get(
                f"{base}/experiment_trials",
                params={"experiment_name": "mounted", "trial_number": 0},
                headers=auth,
                timeout=30,
            )
            assert r.status_code == 200 and r.json()[0]["tunable_name"] == "threads", r.text
            listed = httpx.get(f"{base}/api/v1/experiments", headers=auth, timeout=30)
            assert listed.status_code == 200 and [e["name"] for e in listed.json()] == ["mounted"]
            # The browser's way in: the Airflow UI's JWT cookie.
            r = httpx.get(f"{base}/api/v1/experiments/mounted", cookies={"_token": stack.token()}, timeout=30)
            assert r.status_code == 200 and r.json()["runner"] == "client"
            page = httpx.get(f"{base}/ui/mounted", cookies={"_token": stack.token()}, timeout=60)
            assert page.status_code == 200 and "mounted" in page.text and "static/plotly.min.js" in page.text
            plugins = stack.api("GET", "/plugins")["plugins"]
            mine = next(p for p in plugins if p["name"] == "knobflow")
            assert [a["url_prefix"] for a in mine["fastapi_apps"]] == ["/knobflow"]
            assert [v["href"] for v in mine["external_views"]] == ["/knobflow/ui"]
