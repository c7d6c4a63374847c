"""The OpenAPI document and a schemathesis run against a live server (issue 10, item 8).

``GET /api/openapi.json`` documents every API route the app serves, its error codes are exactly those of
``service.errors``, and its TrainConfig is ``trainer.config.FIELDS``. Then schemathesis generates cases
(valid and invalid) for every operation: no answer may be a 5xx, and every answer's status, content type
and body must match the document. At least ``MIN_CASES`` cases run in all; the tally by operation and
status is printed (``-s``) and quoted in the issue note.

The server is kept cheap: one job trains at a time, each start that may be valid is shrunk to a tiny job
before it is sent (still valid), each accepted job is stopped at once (a queued one never spawns a
worker), and the test checks that no worker outlives the server.
"""

from __future__ import annotations

import asyncio
import collections
import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from service import errors, openapi
from service.api import routes as api_routes
from service.artifacts import routes as artifact_routes
from service.stream import routes as stream_routes
from snnmon_client import wait_gone, worker_pids
from trainer import config as train_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MIN_CASES = 1000
EXAMPLES_PER_OPERATION = 80
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
TALLY: collections.Counter = collections.Counter()  # (operation, status) -> cases
STARTED: list[str] = []  # jobs the fuzzing started


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    return server_factory("--max-concurrent", "1", "--cpu-threads", "1", "--stop-grace", "1", "--kill-grace", "1",
                          "--no-allow-download", "--keep-jobs", "20", "--log-level", "warning")


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/api/openapi.json")


def test_every_api_route_is_documented():
    document = openapi.document()
    served = {(route.method.lower(), route.path) for route in (*api_routes(), *artifact_routes(), *stream_routes())}
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert served <= documented, served - documented
    assert ("get", "/api/openapi.json") in documented and ("get", "/metrics") in documented


def test_the_document_is_generated_from_the_errors_and_the_config_table():
    document = openapi.document()
    codes = {code for name, answer in document["components"]["responses"].items()
             for code in answer["content"]["application/json"]["schema"]["properties"]["error"]["enum"]}
    every_error = {cls.code for cls in openapi._error_classes() if cls.status != 500}
    assert codes == every_error
    assert {"cross_site", "misdirected_request", "too_many_connections", "bad_encoding"} <= codes
    config = document["components"]["schemas"]["TrainConfig"]
    assert list(config["properties"]) == [field.name for field in train_config.FIELDS]
    epochs = train_config.FIELDS_BY_NAME["epochs"]
    assert (config["properties"]["epochs"]["minimum"], config["properties"]["epochs"]["maximum"]) == (
        epochs.min, epochs.max)
    assert "atan" in config["properties"]["surrogate"]["enum"]  # aliases are accepted values too
    assert errors.CrossSite.status == 403


def test_the_served_document_is_openapi_3_1(fuzz_server):
    answer = requests.get(f"{fuzz_server.base_url}/api/openapi.json", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["openapi"] == "3.1.0" and answer.json() == json.loads(json.dumps(openapi.document()))


def _cheap(case) -> None:
    """A start body that may be valid becomes a tiny job (valid stays valid): one epoch, few neurons."""
    body = case.body
    if case.operation.path != "/api/training/start" or not isinstance(body, dict):
        return
    for name, cheapest in (("epochs", 1), ("timesteps", 5), ("batch_size", 8)):
        if isinstance(body.get(name), int) and not isinstance(body[name], bool) and body[name] > cheapest:
            body[name] = cheapest
    hidden = body.get("hidden")
    if isinstance(hidden, list) and all(isinstance(size, int) and not isinstance(size, bool) for size in hidden):
        body["hidden"] = [min(size, 8) for size in hidden]


# every operation with valid inputs; those that take inputs also with invalid ones (nothing to break otherwise)
RUNS = [(method.upper(), path, mode) for path, operations in openapi.document()["paths"].items()
        for method, operation in operations.items()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if mode is GenerationMode.POSITIVE or operation.get("parameters") or operation.get("requestBody")]


@pytest.mark.parametrize("method, path, mode", RUNS, ids=[f"{m} {p} {mode.value}" for m, p, mode in RUNS])
def test_fuzz(fuzz_server, api_schema, method, path, mode):
    base_url = fuzz_server.base_url
    operation = api_schema[path][method]
    session = requests.Session()  # one keep-alive connection for the run

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def fuzz(case):
        _cheap(case)
        response = case.call(session=session, timeout=30)
        TALLY[(f"{case.method} {case.operation.path}", response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code == 202:  # stop it at once: queued jobs then never spawn a worker
            STARTED.append(response.json()["job_id"])
            session.post(f"{base_url}/api/training/stop", json={"job_id": STARTED[-1]}, timeout=30)

    try:
        fuzz()
    finally:
        session.close()


def test_fuzz_totals_and_no_worker_outlives_the_server(fuzz_server):
    total = sum(TALLY.values())
    by_operation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for (operation, status), count in TALLY.items():
        by_operation[operation][status] += count
    print(f"\nschemathesis: {total} cases")
    for operation, statuses in sorted(by_operation.items()):
        print(f"  {operation}: {sum(statuses.values())} cases, by status {dict(sorted(statuses.items()))}")
    documented = {f"{method.upper()} {path}" for path, operations in openapi.document()["paths"].items()
                  for method in operations}
    assert set(by_operation) == documented, documented - set(by_operation)
    assert total >= MIN_CASES, total
    assert not [key for key in TALLY if key[1] >= 500]
    print(f"  jobs accepted (and stopped at once): {len(STARTED)}")
    workers = worker_pids(fuzz_server.pid)
    fuzz_server.stop()
    assert fuzz_server.process.returncode == 0, fuzz_server.log_text()[-2000:]
    asyncio.run(wait_gone(workers, 10, reaped=False))
    assert "Traceback" not in fuzz_server.log_text(), fuzz_server.log_text()[-3000:]
