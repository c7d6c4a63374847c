"""``deploy/nginx.conf`` in front of a live server, with Debian's nginx (``make test`` installs it).

nginx runs as this test's child on free loopback ports, with its own prefix, temp and log paths. Its
configuration includes ``deploy/nginx.conf`` itself with three lines pointed at this test (the upstream's
port, the listen address, the access log's path), each required to occur exactly once, so an edit to
the file is what gets tested.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from snnmon_client import get_json, read_stream, small_job, start_job

pytestmark = pytest.mark.timeout(240)

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
TOKEN = "nginx-test-token-5c1d0e9f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")


def nginx_binary() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} exactly once"
    return text.replace(old, new)


class Nginx:
    def __init__(self, binary: str, prefix: Path, upstream_port: int):
        self.binary = binary
        self.prefix = prefix
        self.port = free_port()
        self.access_log = prefix / "snnmon.access.log"
        self.error_log = prefix / "error.log"
        site = DEPLOY_CONF.read_text()
        site = replace_once(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};")
        site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{self.port};")
        site = replace_once(site, "/var/log/nginx/snnmon.access.log", str(self.access_log))
        (prefix / "snnmon.conf").write_text(site)
        temp_paths = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                               for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(f"""
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {self.error_log} warn;
events {{ worker_connections 256; }}
http {{
{temp_paths}
    access_log off;
    include {prefix / 'snnmon.conf'};
}}
""")
        self.process: subprocess.Popen | None = None

    def command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-e", str(self.error_log), "-c", str(self.conf), *extra]

    def start(self) -> None:
        self.process = subprocess.Popen(self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited; its log:\n{self.error_log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers finish their requests
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def proxied(server_factory, tmp_path_factory):
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed: `make test` installs Debian's nginx-light (apt-get install nginx-light)")
    server = server_factory("--cpu-threads", "1", env={"SNNMON_TOKEN": TOKEN})
    nginx = Nginx(binary, tmp_path_factory.mktemp("nginx"), int(server.base_url.rsplit(":", 1)[1]))
    nginx.start()
    yield server, nginx
    nginx.stop()


def test_nginx_accepts_the_config(proxied):
    _, nginx = proxied
    checked = subprocess.run(nginx.command("-t"), capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr


def test_events_arrive_as_they_happen_and_resume_through_nginx(proxied):
    server, nginx = proxied

    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            job_id = await start_job(session, nginx.url, **small_job(epochs=4, hidden=[128], timesteps=10))
            async with aiohttp.ClientSession() as browser_like:  # EventSource: the token in the URL
                live = await read_stream(browser_like, f"{nginx.url}/api/training/stream/{job_id}"
                                         f"?access_token={TOKEN}")
            resumed = await read_stream(session, f"{nginx.url}/api/training/stream/{job_id}",
                                        headers={"Last-Event-ID": "3"})
            _, record = await get_json(session, f"{nginx.url}/api/training/status/{job_id}")
            return job_id, live, resumed, record

    job_id, live, resumed, record = asyncio.run(scenario())
    assert live.status == 200 and live.ended
    events = live.events
    assert events[-1]["event"] == "completed" and record["status"] == "completed"
    frames = [frame for frame in live.frames if frame.id is not None]
    first_batch = next(frame for frame in frames if frame.json()["event"] == "batch")
    training_s = sum(event["data"]["epoch_s"] for event in events if event["event"] == "epoch")
    # Unbuffered: the first batch arrives while the job trains, not in one burst with the final event.
    assert frames[-1].received_at - first_batch.received_at >= 0.5 * training_s, (
        f"first batch {frames[-1].received_at - first_batch.received_at:.2f} s before the end; "
        f"training took {training_s:.2f} s")

    # Last-Event-ID passes through nginx: the rest of the stream, from event 4
    assert [event["seq"] for event in resumed.events] == [event["seq"] for event in events][3:]
    assert resumed.events == events[3:]

    # nginx's own log shows the stream's path without the token
    log = nginx.access_log.read_text()
    assert f"GET /api/training/stream/{job_id} " in log
    assert TOKEN not in log and "access_token" not in log
    assert TOKEN not in server.log_text()


def test_the_dashboard_loads_through_nginx(proxied, browser):
    _, nginx = proxied
    context = browser.new_context()
    context.set_default_timeout(30_000)
    page = context.new_page()
    page_errors: list[str] = []
    failed: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("response", lambda response: failed.append(response.url) if response.status >= 500 else None)
    try:
        page.goto(nginx.url + "/")
        page.wait_for_selector("#token-dialog[open]")  # the page loaded and the API said 401
        page.fill("#token-input", TOKEN)
        page.click("#token-dialog button[value=ok]")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector("#field-epochs")
    finally:
        context.close()
    assert not page_errors and not failed, (page_errors, failed)
    served = re.findall(r'"GET (/static/\S+) HTTP/1\.1" 200', nginx.access_log.read_text())
    assert served, "the dashboard's files came through nginx"
