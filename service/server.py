"""``snnmon serve``: runs the app on uvloop until SIGINT or SIGTERM, then shuts down cleanly.

Runs in the server process. It prints ``snnmon: serving on http://HOST:PORT`` once it listens (with
``--port 0`` that line names the port picked), so scripts and tests can wait for it. On SIGINT or
SIGTERM it ends every stream, stops every job (grace, SIGTERM, SIGKILL), reaps the workers and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from service.app import create_app
from service.settings import Settings

log = logging.getLogger("snnmon.server")


def serve(settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM; then exit the process with the returned status."""
    _configure_logging(settings.log_level)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop has no Windows build
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        code = runner.run(_serve(settings))
    # Jobs are reaped, sockets closed, logs flushed below: the interpreter's teardown of the torch
    # modules (imported for torch.multiprocessing) would only add seconds to every restart.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _serve(settings: Settings) -> int:
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        await runner.cleanup()
        return 1
    for address in runner.addresses:
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"snnmon: serving on http://{shown}:{port}", flush=True)
    finished = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, finished.set)
    await finished.wait()
    log.info("shutting down: stopping jobs and closing streams")
    await runner.cleanup()
    log.info("stopped")
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("snnmon").setLevel(level.upper())
    if level in ("warning", "error"):
        logging.getLogger().setLevel(level.upper())
