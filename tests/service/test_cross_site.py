"""Cross-site safety of a loopback server without a token (issue 10, item 3), against a real server.

A page on another site may not change anything (a foreign ``Origin`` or ``Sec-Fetch-Site: cross-site``
gets 403), a browser's body must be JSON (415 otherwise), ``curl -d`` (form-encoded, no ``Origin``)
keeps working, and a ``Host`` the server does not answer to (DNS rebinding) gets 421 on every path.
Requests are POST /stop with an unknown job: past the guards it answers 404, so no job is started.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import pytest

pytestmark = pytest.mark.timeout(60)

PROXY = "snn.example.org"
STUDIO = "http://studio.example:3000"
STOP_BODY = json.dumps({"job_id": "no-such-job"})


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--allowed-host", PROXY, "--cors-origin", STUDIO)


def send(server, method: str, path: str, headers: dict[str, str] | None = None,
         body: str | None = STOP_BODY) -> tuple[int, dict]:
    async def go():
        async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as session:
            async with session.request(method, server.base_url + path, headers=headers or {},
                                       data=body.encode() if body is not None else None) as response:
                return response.status, await response.json(content_type=None)

    return asyncio.run(go())


def own_origin(server) -> str:
    return server.base_url.rstrip("/")


JSON_TYPE = {"Content-Type": "application/json"}


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", **JSON_TYPE},
    {"Origin": "null", **JSON_TYPE},  # a sandboxed iframe or a file: page
    {"Origin": "http://127.0.0.1:1", **JSON_TYPE},  # another port on this machine is another origin
    {"Sec-Fetch-Site": "cross-site", **JSON_TYPE},
    {"Origin": "http://evil.example", "Content-Type": "text/plain"},
])
def test_a_state_change_from_another_site_is_forbidden(server, headers):
    status, body = send(server, "POST", "/api/training/stop", headers)
    assert status == 403, body
    assert body["error"] == "cross_site" and "--cors-origin" in body["message"]
    status, body = send(server, "DELETE", "/api/training/jobs/x", headers, body=None)
    assert status == 403, body


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_browser_must_send_json_but_curl_may_send_a_form(server, content_type):
    typed = {"Content-Type": content_type} if content_type else {}
    browser = {"Origin": own_origin(server), "Sec-Fetch-Site": "same-origin", **typed}
    status, body = send(server, "POST", "/api/training/stop", browser)
    assert status == 415, body
    assert body["error"] == "unsupported_media_type" and body["allowed"] == ["application/json"]
    status, body = send(server, "POST", "/api/training/stop", typed)  # curl -d: no Origin, no Sec-Fetch-*
    assert status == 404 and body["error"] == "unknown_job", body


def test_the_dashboard_s_own_requests_and_allowed_origins_pass(server):
    same_origin = {"Origin": own_origin(server), "Sec-Fetch-Site": "same-origin", **JSON_TYPE}
    assert send(server, "POST", "/api/training/stop", same_origin)[0] == 404
    # behind the nginx example: Host is the proxy's name ($host, no port), Origin the proxy's https origin
    proxied = {"Host": PROXY, "Origin": f"https://{PROXY}", "Sec-Fetch-Site": "same-origin", **JSON_TYPE}
    assert send(server, "POST", "/api/training/stop", proxied)[0] == 404
    studio = {"Origin": STUDIO, "Sec-Fetch-Site": "cross-site", **JSON_TYPE}  # in the --cors-origin list
    assert send(server, "POST", "/api/training/stop", studio)[0] == 404
    assert send(server, "GET", "/api/training/jobs", {"Origin": "http://evil.example"}, body=None)[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "[2001:db8::1]:80"])
def test_a_foreign_host_is_misdirected_on_every_path(server, host):
    for method, path in (("GET", "/api/training/jobs"), ("GET", "/"), ("GET", "/healthz"),
                         ("POST", "/api/training/stop")):
        status, body = send(server, method, path, {"Host": host, **JSON_TYPE},
                            body=STOP_BODY if method == "POST" else None)
        assert status == 421, (method, path, body)
        assert body["error"] == "misdirected_request" and "--allowed-host" in body["message"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:9", "app.localhost", "127.0.0.1", "127.0.0.2:80",
                                  "[::1]", PROXY, PROXY.upper() + ":443"])
def test_loopback_names_and_allowed_hosts_are_answered(server, host):
    assert send(server, "GET", "/api/training/jobs", {"Host": host}, body=None)[0] == 200


def test_the_readme_curl_lines_still_work(server):
    """``curl -d`` as the README writes it: form-encoded JSON, no Origin."""
    result = subprocess.run(["curl", "-s", "-X", "POST", f"{server.base_url}/api/training/stop", "-d", STOP_BODY],
                            capture_output=True, text=True, timeout=20)
    assert json.loads(result.stdout)["error"] == "unknown_job", result.stdout
