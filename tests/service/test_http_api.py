"""The JSON API against a real server: catalog endpoints, static files, and every kind of bad input
answered with the right 4xx and a JSON body naming the problem. No job trains in this module."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from trainer import catalog, config as train_config

WEB = Path(__file__).resolve().parents[2] / "web"

pytestmark = pytest.mark.timeout(60)


def call(server, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async def go():
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        url = yarl.URL(server.base_url + path, encoded=True)  # sent as written: no ".." clean-up
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, data=data, headers=headers) as r:
                text = await r.text()
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text
                return r.status, dict(r.headers), payload

    return asyncio.run(go())


def assert_error(result, status: int, code: str) -> dict:
    got_status, headers, body = result
    assert got_status == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in json.dumps(body)
    return body


def test_surrogates_come_from_the_catalog(snnmon_server):
    status, _, body = call(snnmon_server, "GET", "/api/training/surrogates")
    assert status == 200
    assert [s["name"] for s in body] == [s.name for s in catalog.SURROGATES]
    atan = body[0]
    assert atan["aliases"] == ["atan"] and atan["reference"] == "Fang et al. 2021"
    assert atan["params"] == [{"name": "alpha", "default": 2.0, "meaning": "sharpness"}]
    assert all(s["available"] is True and s["formula"] for s in body)


def test_cell_types_list_cells_then_networks(snnmon_server):
    status, _, body = call(snnmon_server, "GET", "/api/training/cell-types")
    assert status == 200
    names = [c.name for c in catalog.CELLS] + [n.name for n in catalog.NETWORKS]
    assert [c["name"] for c in body] == names
    assert [c["kind"] for c in body] == ["cell"] * len(catalog.CELLS) + ["network"] * len(catalog.NETWORKS)
    lif = body[0]
    assert lif["learnable"] == ["beta", "threshold"] and lif["description"]
    assert {p["name"] for p in lif["params"]} == {"beta", "threshold"}
    assert all(c["available"] is True for c in body)


def test_config_schema_is_the_trainers(snnmon_server):
    status, _, body = call(snnmon_server, "GET", "/api/training/config-schema")
    assert status == 200
    assert body == json.loads(json.dumps(train_config.schema()))


def test_jobs_list_starts_empty(snnmon_server):
    assert call(snnmon_server, "GET", "/api/training/jobs")[::2] == (200, [])


def test_static_files_and_missing_ones(snnmon_server):
    index = call(snnmon_server, "GET", "/")
    if (WEB / "index.html").is_file():
        assert index[0] == 200 and index[1]["Content-Type"].startswith("text/html")
    else:
        assert_error(index, 404, "not_found")
    for name in ("api.js", "stream.js"):
        status, headers, text = call(snnmon_server, "GET", f"/static/{name}")
        assert status == 200 and "javascript" in headers["Content-Type"]
        assert text == (WEB / "static" / name).read_text()
    uplot = call(snnmon_server, "GET", "/vendor/uplot/uPlot.iife.min.js")
    assert uplot[0] == 200, "web/node_modules is installed by `make install` (npm ci)"
    assert_error(call(snnmon_server, "GET", "/static/no-such-file.js"), 404, "not_found")
    assert_error(call(snnmon_server, "GET", "/vendor/uplot/nothing.css"), 404, "not_found")


def test_static_paths_cannot_escape_their_folder(snnmon_server):
    for path in ("/static/../../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml",
                 "/static/..%2f..%2fpyproject.toml", "/vendor/uplot/../../../../service/app.py"):
        status, _, body = call(snnmon_server, "GET", path)
        assert status == 404, (path, body)


def test_unknown_route_is_404_json(snnmon_server):
    assert_error(call(snnmon_server, "GET", "/api/training/nothing-here/at-all"), 404, "not_found")


def test_malformed_json_is_400(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/start", raw=b'{"epochs": 2,'),
                        400, "invalid_json")
    assert "not valid JSON" in body["message"]


def test_empty_body_is_400(snnmon_server):
    assert_error(call(snnmon_server, "POST", "/api/training/start", raw=b""), 400, "invalid_json")


def test_non_object_body_is_400(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/start", body=[1, 2]), 400, "invalid_config")
    assert "JSON object" in body["fields"]["body"]


def test_oversized_body_is_413(snnmon_server):
    huge = json.dumps({"epochs": 2, "padding": "x" * 200_000}).encode()
    body = assert_error(call(snnmon_server, "POST", "/api/training/start", raw=huge), 413, "payload_too_large")
    assert "larger than" in body["message"]


def test_unknown_field_is_400(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/start", body={"epochs": 2, "colour": "red"}),
                        400, "invalid_config")
    assert set(body["fields"]) == {"colour"} and "unknown field" in body["fields"]["colour"]


def test_wrong_type_is_400(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/start", body={"epochs": "ten"}),
                        400, "invalid_config")
    assert "integer" in body["fields"]["epochs"]


def test_out_of_range_values_are_400(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/start",
                             body={"epochs": 0, "lr": 5.0, "hidden": [0]}), 400, "invalid_config")
    assert set(body["fields"]) == {"epochs", "lr", "hidden"}
    assert "between 1 and 100" in body["fields"]["epochs"]


def test_unavailable_device_is_400(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/start", body={"device": "cuda:0"}),
                        400, "invalid_config")
    assert "no CUDA GPU" in body["fields"]["device"]


def test_wrong_method_is_405_json(snnmon_server):
    body = assert_error(call(snnmon_server, "GET", "/api/training/start"), 405, "method_not_allowed")
    assert body["allowed"] == ["POST"]
    body = assert_error(call(snnmon_server, "DELETE", "/api/training/jobs"), 405, "method_not_allowed")
    assert "GET" in body["allowed"]


def test_stop_body_must_name_a_job(snnmon_server):
    body = assert_error(call(snnmon_server, "POST", "/api/training/stop", body={"id": "x"}), 400, "bad_request")
    assert set(body["fields"]) == {"id", "job_id"}
    assert_error(call(snnmon_server, "POST", "/api/training/stop", body="abc"), 400, "bad_request")
    assert_error(call(snnmon_server, "POST", "/api/training/stop", body={"job_id": 7}), 400, "bad_request")


def test_unknown_job_is_404_on_status_stop_and_stream(snnmon_server):
    body = assert_error(call(snnmon_server, "GET", "/api/training/status/nope"), 404, "unknown_job")
    assert body["job_id"] == "nope"
    assert_error(call(snnmon_server, "POST", "/api/training/stop", body={"job_id": "nope"}), 404, "unknown_job")
    for path in ("/api/training/stream/nope", "/api/training/nope/stream"):
        status, headers, _ = result = call(snnmon_server, "GET", path)
        assert_error(result, 404, "unknown_job")
        assert "event-stream" not in headers["Content-Type"]


def test_nothing_above_crashed_the_server(snnmon_server):
    status, _, _ = call(snnmon_server, "GET", "/api/training/jobs")
    assert status == 200 and snnmon_server.process.poll() is None
    assert "Traceback" not in snnmon_server.log_text()
