"""Schemathesis fuzzes the service's OpenAPI document: whatever it sends, no 500.

The app runs in-process (ASGI) over a SQLite store holding a client-run experiment with trials, so
that generated requests also reach existing experiments and trials, not only 404s.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from knobflow.service.app import create_app
from knobflow.service.core import Service
from tests.unit.test_service_api import EXPERIMENT

_DIR = Path(tempfile.mkdtemp(prefix="knobflow-fuzz-"))
_URL = f"sqlite:///{_DIR / 'fuzz.db'}"


def _seed() -> None:
    service = Service(_URL)
    service.create(EXPERIMENT)
    for trial in service.ask(EXPERIMENT["name"], 3):
        service.tell(EXPERIMENT["name"], trial["number"], value=float(trial["number"]))
    service.ask(EXPERIMENT["name"], 1)  # one left running


_seed()
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_URL))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_service_fail(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=(not_a_server_error,))
