"""Fixtures for the dashboard tests: a real ``snnmon serve`` (from tests/conftest.py), Debian's Chromium
driven by Playwright, and a TCP proxy between them that can cut every connection (a network drop).
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # dashboard_page, the tests' page helpers
ARTIFACTS = REPO / "test-artifacts" / "web"
TERMINAL = {"completed", "stopped", "failed"}


@dataclass
class Server:
    url: str
    data_dir: Path
    log_path: Path

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read() or b"null")

    def jobs(self) -> list[dict]:
        status, records = self.api("GET", "/api/training/jobs")
        assert status == 200, records
        return records

    def stop_all(self) -> None:
        """Stop every unfinished job and wait until it has ended, so the next test starts on an idle server."""
        for record in self.jobs():
            if record["status"] not in TERMINAL:
                self.api("POST", "/api/training/stop", {"job_id": record["job_id"]})
        deadline = time.monotonic() + 60
        while any(r["status"] not in TERMINAL for r in self.jobs()):
            assert time.monotonic() < deadline, f"jobs did not stop within 60 s; server log:\n{self.log_tail()}"
            time.sleep(0.2)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory):
    """``snnmon serve`` (the shared ``server_factory``) with a fresh data directory, one job at a time
    (a second one waits as "queued") and no MNIST download (an MNIST job fails at once)."""
    data_dir = tmp_path_factory.mktemp("web-data")
    process = server_factory("--data-dir", str(data_dir), "--max-concurrent", "1", "--no-allow-download")
    return Server(process.base_url.rstrip("/"), data_dir, process.log_path)


@pytest.fixture
def page(browser, server):
    """A fresh browser context per test; uncaught page errors fail the test; no job outlives it."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    page_errors: list[str] = []
    elsewhere: list[str] = []  # the dashboard must work with no network beyond its own server
    tab.on("pageerror", lambda exc: page_errors.append(str(exc)))
    context.on("request", lambda req: None if req.url.startswith(("http://127.0.0.1:", "data:"))
               else elsewhere.append(req.url))
    yield tab
    context.close()
    server.stop_all()
    assert not page_errors, f"uncaught errors in the page: {page_errors}"
    assert not elsewhere, f"the page requested other origins: {elsewhere}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@dataclass
class DroppingProxy:
    """A TCP proxy to the server that records each request's head and can cut every open connection."""

    target_port: int
    port: int = 0
    request_heads: list[str] = field(default_factory=list)
    _listener: socket.socket | None = None
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def start(self) -> "DroppingProxy":
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in selector.select(timeout=1):
                    chunk = key.fileobj.recv(65536)
                    if not chunk:
                        return
                    if key.fileobj is client and chunk[:4] in (b"GET ", b"POST"):
                        with self._lock:
                            self.request_heads.append(chunk.split(b"\r\n\r\n")[0].decode("latin-1"))
                    key.data.sendall(chunk)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, upstream):
                sock.close()

    def drop_all(self) -> int:
        """Reset every open connection, as a network drop would; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_all()


@pytest.fixture
def proxy(server):
    port = int(server.url.rsplit(":", 1)[1])
    running = DroppingProxy(port).start()
    yield running
    running.close()
