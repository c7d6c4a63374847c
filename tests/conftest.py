"""Shared fixtures: real ``snnmon serve`` processes on free ports.

``server_factory(*flags, env={...})`` starts a server in a subprocess (``--port 0``; the port comes from
the ``snnmon: serving on http://...`` line it prints) and stops it after the test module;
``snnmon_server`` is one such server with default flags, shared by a module. Each server's output goes
to a log file (``server.log_text()``), so tests can check that nothing was logged that should not be.
A server gets a fresh data directory of its own (its job history lives there) unless the flags name
one with ``--data-dir``; ``server.data_dir`` says which.

The API helpers in ``tests/service/snnmon_client.py`` are importable from every test folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent / "service"))  # snnmon_client, for tests/e2e too
READY_LINE = re.compile(r"snnmon: serving on (http://\S+)")
START_TIMEOUT_S = 60  # imports and binding (and connecting to Ray); torch is imported later, in the background


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    data_dir: Path | None = None
    backend: str = "process"  # what runs its jobs: "process" or "ray" (--backend)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def reaps_workers(self) -> bool:
        """Whether its job processes are its own children (the process backend), which it reaps."""
        return self.backend == "process"

    def job_pids(self) -> set[int]:
        """The processes running its jobs now: its worker children, or the Ray actors' processes."""
        from snnmon_client import ray_actor_pids, worker_pids

        return worker_pids(self.pid) if self.backend == "process" else ray_actor_pids()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the server stops its jobs and exits), then SIGKILL if it takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(log_path: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
    data_dir = Path(flags[flags.index("--data-dir") + 1]) if "--data-dir" in flags else None
    if data_dir is None:
        data_dir = log_path.parent / "data"
        flags = ("--data-dir", str(data_dir), *flags)
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0", *flags]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, **(env or {})})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = READY_LINE.search(log_path.read_text(errors="replace"))
        if match:
            backend = flags[flags.index("--backend") + 1] if "--backend" in flags else "process"
            return ServerProcess(match.group(1), process, log_path, data_dir, backend)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise RuntimeError(f"snnmon serve did not start; its output:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def backend_flags() -> tuple[str, ...]:
    """Flags every server of a module gets to choose its job backend: none here (the process backend).
    The contract tests import the parametrised one from tests/service/backends.py (process and ray)."""
    return ()


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory,
                   backend_flags: tuple[str, ...]) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def factory(*flags: str, env: dict[str, str] | None = None) -> ServerProcess:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = start_server(log_path, *backend_flags, *flags, env=env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def snnmon_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


# Debian's Chromium, driven by Playwright; never `playwright install` (it downloads a browser).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium per test module; each test opens its own context. Module scope, not session:
    Playwright's sync API keeps an event loop running in this thread while it is open, which would
    break every later test that calls ``asyncio.run``."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make browser) to run the dashboard tests")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()
    playwright.stop()
