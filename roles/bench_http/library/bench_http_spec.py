#!/usr/bin/python
"""Validate the parameters of an HTTP load run and build the load generator's specification."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bench_http_spec
short_description: Check the parameters of knobflow's HTTP benchmark and build its load specification
description:
  - Validates the target URL, method, headers, body, expected statuses and load shape, and returns
    them as one specification (C(spec)) for the load generator C(knobflow_http_load.py), which reads
    it from its environment. Nothing here reaches a shell or a command line.
  - Also returns the Python interpreter running the module (C(python)), to run the load generator with.
  - Changes nothing; runs in check mode too, so C(--check) still validates.
options:
  url:
    description: C(http://) or C(https://) URL; no user name or password (use an Authorization header).
    type: str
    required: true
  method:
    description: The request method, an HTTP token such as C(GET), C(POST).
    type: str
    default: GET
  headers:
    description: Request headers by name. Values become strings; CR, LF and other control characters are refused.
    type: dict
    default: {}
  body:
    description: Request body (UTF-8).
    type: str
    default: ""
  body_file:
    description: A file on the managed host whose bytes are the request body (instead of I(body)).
    type: path
  expected_status:
    description: Statuses that count as a successful response; any other is an error.
    type: list
    elements: int
    default: [200]
  concurrency:
    description: Connections, each with one request in flight.
    type: int
    default: 8
  duration:
    description: Seconds of load in one run (when I(requests) is 0).
    type: float
    default: 10
  requests:
    description: Requests in one run; 0 to run for I(duration) instead.
    type: int
    default: 0
  request_timeout:
    description: Seconds one request may take before it counts as an error.
    type: float
    default: 10
  processes:
    description: Load processes (python engine) or threads (wrk) sharing the connections.
    type: int
    default: 1
  max_error_rate:
    description: A run whose error rate (errors / attempts) is above this fails.
    type: float
    default: 1.0
  engine:
    description: C(python) (knobflow's own load generator) or C(wrk).
    type: str
    choices: [python, wrk]
    default: python
  verify_tls:
    description: Check the server's certificate for https URLs.
    type: bool
    default: true
  run_timeout:
    description: Seconds one run may take (the benchmark's timeout); a duration that does not fit is refused.
    type: int
    default: 600
author: knobflow maintainers
"""

RETURN = r"""
spec:
  description: The load specification, for the environment variable KNOBFLOW_HTTP_SPEC (as JSON).
  type: dict
  returned: success
python:
  description: The Python interpreter that ran this module.
  type: str
  returned: success
"""

import os
import re
import sys
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule

TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Characters allowed in a URL as sent: printable ASCII without spaces (percent-encode the rest).
URL_CHARS = re.compile(r"^[\x21-\x7e]+$")
BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
COMPUTED = {"content-length", "transfer-encoding"}


def check(p, wrk_path=None):
    """Return (spec, errors)."""
    errors = []
    url = p["url"] or ""
    if not url:
        errors.append("url: give the URL to load (bench_http_url)")
    elif not URL_CHARS.match(url):
        errors.append(f"url: {url!r} has spaces, control or non-ASCII characters (percent-encode them)")
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            errors.append(f"url: scheme must be http or https, got {parts.scheme or 'none'!r} in {url!r}")
        elif not parts.hostname:
            errors.append(f"url: no host in {url!r}")
        elif "@" in parts.netloc:
            errors.append("url: no user name or password in the URL; send an Authorization header instead")
        else:
            try:
                port = parts.port
            except ValueError:
                port = -1
            if port is not None and not 1 <= port <= 65535:
                errors.append(f"url: bad port in {url!r}")
    method = p["method"]
    if not TOKEN.match(method or ""):
        errors.append(f"method: {method!r} is not an HTTP method token")
    headers = []
    for name, value in (p["headers"] or {}).items():
        name = str(name)
        if not TOKEN.match(name):
            errors.append(f"headers: {name!r} is not a valid header name")
            continue
        if name.lower() in COMPUTED:
            errors.append(f"headers: {name} is set by the load generator; remove it")
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, (dict, list)) or value is None:
            errors.append(f"headers: {name}: the value must be a string or a number")
            continue
        value = str(value)
        if BAD_VALUE_CHARS.search(value):
            errors.append(f"headers: {name}: the value holds a line break or another control character")
            continue
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            errors.append(f"headers: {name}: the value has characters outside ISO-8859-1")
            continue
        headers.append([name, value])
    if p["body"] and p["body_file"]:
        errors.append("body, body_file: give one or the other")
    if p["body_file"] and not os.path.isfile(p["body_file"]):
        errors.append(f"body_file: {p['body_file']} is not a file on this host")
    statuses = p["expected_status"] or []
    if not statuses:
        errors.append("expected_status: give at least one status")
    for s in statuses:
        if not 100 <= s <= 599:
            errors.append(f"expected_status: {s} is not an HTTP status (100 to 599)")
    if not 1 <= p["concurrency"] <= 10000:
        errors.append(f"concurrency: must be between 1 and 10000, got {p['concurrency']}")
    if p["requests"] < 0:
        errors.append(f"requests: must be 0 (run for the duration) or more, got {p['requests']}")
    if p["requests"] == 0 and not 0 < p["duration"] <= 86400:
        errors.append(f"duration: must be more than 0 and at most 86400 seconds, got {p['duration']}")
    if p["requests"] == 0 and p["duration"] + 5 > p["run_timeout"]:
        errors.append(
            "duration: {} s does not fit in the run timeout of {} s (knobflow_timeout / bench_http_timeout); "
            "allow at least 5 s more".format(p["duration"], p["run_timeout"])
        )
    if not 0 < p["request_timeout"] <= 3600:
        errors.append(f"request_timeout: must be more than 0 and at most 3600 seconds, got {p['request_timeout']}")
    if not 1 <= p["processes"] <= 64:
        errors.append(f"processes: must be between 1 and 64, got {p['processes']}")
    elif p["processes"] > p["concurrency"]:
        errors.append(f"processes: {p['processes']} is more than concurrency ({p['concurrency']})")
    if not 0.0 <= p["max_error_rate"] <= 1.0:
        errors.append(f"max_error_rate: must be between 0 and 1, got {p['max_error_rate']}")
    if p["engine"] == "wrk":
        if wrk_path is None:
            errors.append("engine: wrk is not installed on this host (Debian/Ubuntu: apt-get install wrk)")
        if p["requests"]:
            errors.append("requests: the wrk engine runs for a duration only; set requests to 0")
        if p["requests"] == 0 and p["duration"] < 1:
            errors.append("duration: the wrk engine needs at least 1 second")
    spec = {
        "url": url,
        "method": method,
        "headers": headers,
        "body": p["body"] or "",
        "body_file": p["body_file"] or "",
        "expected_status": sorted(set(statuses)),
        "concurrency": p["concurrency"],
        "duration": p["duration"],
        "requests": p["requests"],
        "request_timeout": p["request_timeout"],
        "processes": p["processes"],
        "max_error_rate": p["max_error_rate"],
        "engine": p["engine"],
        "verify_tls": p["verify_tls"],
        "wrk_path": wrk_path or "",
    }
    return spec, errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            method=dict(type="str", default="GET"),
            headers=dict(type="dict", default={}),
            body=dict(type="str", default=""),
            body_file=dict(type="path"),
            expected_status=dict(type="list", elements="int", default=[200]),
            concurrency=dict(type="int", default=8),
            duration=dict(type="float", default=10),
            requests=dict(type="int", default=0),
            request_timeout=dict(type="float", default=10),
            processes=dict(type="int", default=1),
            max_error_rate=dict(type="float", default=1.0),
            engine=dict(type="str", choices=["python", "wrk"], default="python"),
            verify_tls=dict(type="bool", default=True),
            run_timeout=dict(type="int", default=600),
        ),
        supports_check_mode=True,
    )
    wrk_path = module.get_bin_path("wrk") if module.params["engine"] == "wrk" else None
    spec, errors = check(module.params, wrk_path)
    if errors:
        module.fail_json(msg="invalid HTTP benchmark parameters: " + "; ".join(errors))
    module.exit_json(changed=False, spec=spec, python=sys.executable)


if __name__ == "__main__":
    main()
