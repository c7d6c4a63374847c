"""Access control and CORS against real servers.

One server has a token (from ``SNNMON_TOKEN``) and one allowed CORS origin: every ``/api/`` request
needs ``Authorization: Bearer``, streams also take ``?access_token=``, health checks and the dashboard's
files stay open, and the token never reaches the log. Then: a non-loopback host without a token is
refused (exit code 2) unless ``--insecure``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from snnmon_client import SSEParser, small_job

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-Token-for-tests_0123456789"
STUDIO = "http://studio.example:3000"
OTHER = "http://evil.example"


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--cors-origin", STUDIO, "--cpu-threads", "1", env={"SNNMON_TOKEN": TOKEN})


def request(server, method: str, path: str, *, headers: dict[str, str] | None = None, body=None):
    """(status, headers, parsed body or text); streams are read to their end."""
    async def go():
        async with aiohttp.ClientSession() as session:
            data = json.dumps(body).encode() if body is not None else None
            async with session.request(method, server.base_url + path, headers=headers, data=data) as r:
                text = await r.text()
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text
                return r.status, r.headers, payload

    return asyncio.run(go())


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(result, *, invalid: bool) -> None:
    status, headers, body = result
    assert status == 401, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"] == "unauthorized" and body["message"]
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer") and ('error="invalid_token"' in challenge) == invalid
    assert TOKEN not in json.dumps(body)


@pytest.fixture(scope="module")
def job_id(server):
    """A finished tiny job, started and followed with the token."""
    status, _, body = request(server, "POST", "/api/training/start", headers=bearer(),
                              body=small_job(seed=31, epochs=1, hidden=[16]))
    assert status == 202, body
    status, _, _ = request(server, "GET", f"/api/training/stream/{body['job_id']}", headers=bearer())
    assert status == 200
    return body["job_id"]


def test_the_api_needs_the_bearer_token(server, job_id):
    assert_unauthorized(request(server, "GET", "/api/training/jobs"), invalid=False)
    assert_unauthorized(request(server, "GET", "/api/training/jobs", headers=bearer("wrong")), invalid=True)
    assert_unauthorized(request(server, "GET", "/api/training/jobs", headers=bearer(TOKEN + "x")), invalid=True)
    assert_unauthorized(request(server, "GET", "/api/training/jobs", headers={"Authorization": f"Basic {TOKEN}"}),
                        invalid=True)
    # the query parameter is for streams only
    assert_unauthorized(request(server, "GET", f"/api/training/jobs?access_token={TOKEN}"), invalid=False)
    assert_unauthorized(request(server, "GET", "/api/training/no-such-endpoint"), invalid=False)
    assert_unauthorized(request(server, "POST", "/api/training/start", body=small_job()), invalid=False)
    status, _, jobs = request(server, "GET", "/api/training/jobs", headers=bearer())
    assert status == 200 and [job["job_id"] for job in jobs] == [job_id]  # the refused start made no job
    assert request(server, "GET", f"/api/training/status/{job_id}", headers=bearer())[0] == 200


def test_streams_take_the_header_or_the_query_parameter(server, job_id):
    path = f"/api/training/stream/{job_id}"
    assert_unauthorized(request(server, "GET", path), invalid=False)
    assert_unauthorized(request(server, "GET", f"{path}?access_token=wrong"), invalid=True)
    assert_unauthorized(request(server, "GET", f"/api/training/{job_id}/stream?access_token="), invalid=True)
    streams = [request(server, "GET", path, headers=bearer()),
               request(server, "GET", f"{path}?access_token={TOKEN}"),
               request(server, "GET", f"/api/training/{job_id}/stream?access_token={TOKEN}&last_event_id=0"),
               request(server, "GET", f"{path}?access%5Ftoken={TOKEN}")]  # the key percent-encoded
    for status, headers, text in streams:
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    frames = [[(f.id, f.data) for f in SSEParser().feed(text.encode())] for _, _, text in streams]
    assert frames[0][-1][1].startswith('{"event":"completed"')
    assert all(other == frames[0] for other in frames[1:])


def test_health_checks_and_the_dashboard_stay_open(server):
    assert request(server, "GET", "/healthz")[::2] == (200, {"status": "ok"})
    assert request(server, "GET", "/readyz")[::2] == (200, {"status": "ready"})
    assert request(server, "GET", "/static/api.js")[0] == 200
    assert request(server, "GET", "/")[0] in (200, 404)  # 404 only where web/index.html is not installed


def test_cors_preflight_and_requests_from_the_allowed_origin(server, job_id):
    preflight = {"Origin": STUDIO, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = request(server, "OPTIONS", "/api/training/start", headers=preflight)  # no token
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == STUDIO
    assert {"GET", "POST", "DELETE"} <= {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
    allowed_headers = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "last-event-id"} <= allowed_headers
    assert "Access-Control-Allow-Credentials" not in headers

    status, headers, _ = request(server, "GET", "/api/training/jobs", headers={"Origin": STUDIO, **bearer()})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == STUDIO and "Origin" in headers["Vary"]
    # the page can read a 401, and a stream's headers carry CORS too
    status, headers, _ = request(server, "GET", "/api/training/jobs", headers={"Origin": STUDIO})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == STUDIO
    assert "WWW-Authenticate" in headers["Access-Control-Expose-Headers"]
    status, headers, _ = request(server, "GET", f"/api/training/stream/{job_id}?access_token={TOKEN}",
                                 headers={"Origin": STUDIO, "Last-Event-ID": "1"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == STUDIO


def test_other_origins_get_no_cors_headers(server):
    status, headers, body = request(server, "OPTIONS", "/api/training/start",
                                    headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"})
    assert status == 403 and body["error"] == "forbidden"
    assert not any(name.lower().startswith("access-control-") for name in headers)
    status, headers, _ = request(server, "GET", "/api/training/jobs", headers={"Origin": OTHER, **bearer()})
    assert status == 200 and not any(name.lower().startswith("access-control-") for name in headers)


def test_the_token_never_reaches_the_log(server, job_id):
    """Last of the token tests: every request above is in the log by now, none with the token."""
    log = server.log_text()
    assert f"/api/training/stream/{job_id}?access_token=[redacted]" in log
    assert TOKEN not in log and "Traceback" not in log


def test_a_public_host_without_a_token_is_refused(tmp_path):
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "0",
               "--data-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("SNNMON_TOKEN", "SNNMON_INSECURE")}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an access token" in refused.stderr
    assert "--token" in refused.stderr and "--insecure" in refused.stderr
    assert "serving on" not in refused.stdout


def test_insecure_allows_a_public_host_and_no_origin_is_allowed_by_default(server_factory):
    server = server_factory("--host", "0.0.0.0", "--insecure")
    port = server.base_url.rsplit(":", 1)[1]
    assert server.base_url == f"http://0.0.0.0:{port}"

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/training/jobs",
                                   headers={"Origin": STUDIO}) as response:
                return response.status, response.headers

    status, headers = asyncio.run(go())
    assert status == 200 and "Access-Control-Allow-Origin" not in headers  # no token, no CORS list
    assert "with no access token (--insecure)" in server.log_text()
