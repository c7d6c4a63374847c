"""``snnmon serve``: runs the app on uvloop until SIGINT or SIGTERM, then shuts down cleanly.

Runs in the server process. It prints ``snnmon: serving on http://HOST:PORT`` once it listens (with
``--port 0`` that line names the port picked), so scripts and tests can wait for it.

On SIGINT or SIGTERM, while still listening (so a proxy's requests get answers, not refusals): new jobs
get 503 and ``/readyz`` says 503; every job is stopped (stop Event, SIGTERM after ``--stop-grace``,
SIGKILL at most 2 s later), its terminal event committed and sent to its open streams. Then it stops
listening, ends the streams and closes the store: all within ``--stop-grace`` + 5 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from service import api, logs, redact
from service.app import create_app
from service.auth import RedactingAccessLogger
from service.connections import GatedRunner, connection_cap, raise_descriptor_limit
from service.settings import Settings, is_loopback
from service.store import StoreError

log = logging.getLogger("snnmon.server")


def serve(settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM; then exit the process with the returned status."""
    logs.configure(settings.log_level, settings.log_format)
    redact.install([settings.token] if settings.token else [])  # on the handler just configured
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop has no Windows build
        loop_factory = asyncio.new_event_loop
    # The event loop holds the GIL through its socket writes (uvloop writes without releasing it), and the
    # store's writer thread needs the GIL to hand each commit back; at Python's default switch interval
    # (5 ms) a commit under a busy fan-out waits up to 5 ms per hand-over. 0.5 ms keeps the commit, and so
    # every live event, that much sooner (issue 15, docs/benchmarks.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        code = runner.run(_serve(settings))
    # Jobs are reaped, sockets closed, logs flushed below: the interpreter's teardown of the torch
    # modules (imported for torch.multiprocessing) would only add seconds to every restart.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


GIL_SWITCH_INTERVAL_S = 0.0005
# Connections the kernel queues until they are accepted (aiohttp's default is 128). Beyond the queue a burst
# of clients is held in handshake retries for many seconds, not answered; in it they are accepted, then
# served or refused with a 503 at once (Linux caps it at net.core.somaxconn).
LISTEN_BACKLOG = 1024
# After the streams have been ended: time for their handlers to finish writing before they are cancelled.
HANDLER_SHUTDOWN_S = 1.0


async def _serve(settings: Settings) -> int:
    app = create_app(settings)
    descriptors = raise_descriptor_limit()
    cap = connection_cap(settings.max_connections, descriptors)
    log.info("open-file limit %d; at most %d connections at once", descriptors, cap)
    # keepalive_timeout: aiohttp closes a connection that waits this long for its next request (a later
    # request's headers included; the first one's have --header-timeout); lingering_time bounds reading
    # an unread body after the answer
    runner = GatedRunner(app, max_connections=cap, access_log_class=RedactingAccessLogger,
                         shutdown_timeout=HANDLER_SHUTDOWN_S, keepalive_timeout=settings.keepalive_timeout_s,
                         lingering_time=min(10.0, settings.body_timeout_s),
                         logger=redact.ProtocolLogger(logging.getLogger("aiohttp.server")))
    from service.ray_backend import RayUnavailable  # Ray itself is imported only by the Ray backend

    try:
        await runner.setup()
    except (StoreError, RayUnavailable) as exc:
        log.error("%s", exc)
        return 1
    if settings.token is None and not is_loopback(settings.host):
        log.warning("listening on %s with no access token (--insecure): whoever can reach it can use it",
                    settings.host or "every interface")
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
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
    started = loop.time()
    log.info("shutting down: no new jobs; stopping jobs and ending streams")
    await app[api.JOB_MANAGER].shutdown()
    await runner.cleanup()
    log.info("stopped in %.1f s", loop.time() - started)
    return 0

