"""The cross-site attack in a real browser (Debian's Chromium): a page on another origin sends what needs
no preflight to a loopback server without a token. The server refuses it; no job appears.

Its own module: Playwright's sync API keeps an event loop running in this thread while the browser is
open, so the aiohttp helpers of ``test_cross_site.py`` (``asyncio.run``) cannot share a module with it.
"""

from __future__ import annotations

import http.server
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory()


class _BlankPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>elsewhere</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_page_on_another_origin_cannot_start_a_job_in_a_real_browser(server, browser):
    """The attack itself: Chromium on a page of another origin sends what needs no preflight (a text/plain
    and a form body, ``mode: no-cors``). The server must refuse both (403); no job appears."""
    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BlankPage)  # another origin: another port
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{page_server.server_address[1]}/")
        before = server.log_text().count('"POST /api/training/start HTTP/1.1" 403')
        outcomes = page.evaluate("""async (url) => {
            const job = JSON.stringify({epochs: 1, hidden: [8], timesteps: 5});
            const send = (init) => fetch(url, {method: "POST", mode: "no-cors", ...init})
                .then((r) => "sent: " + r.type, (e) => "error: " + e);
            return [await send({body: job}),
                    await send({body: "x=" + job, headers: {"Content-Type": "application/x-www-form-urlencoded"}})];
        }""", f"{server.base_url}/api/training/start")
    finally:
        context.close()
        page_server.shutdown()
        page_server.server_close()
    assert outcomes == ["sent: opaque", "sent: opaque"], outcomes  # the browser did send them
    time.sleep(0.3)  # the access log lines
    assert server.log_text().count('"POST /api/training/start HTTP/1.1" 403') == before + 2, server.log_text()[-1500:]
    jobs = requests.get(f"{server.base_url}/api/training/jobs", timeout=10)
    assert jobs.status_code == 200 and jobs.json() == [], jobs.text
