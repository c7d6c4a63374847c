"""Pre-started workers: job processes spawned before their job, so a job need not wait for torch's import.

A ``PrestartedWorker`` (server process, event-loop thread) is a spawned process running
``trainer.worker.wait_for_job``: it leads its own process group, dies with the server, imports torch
and the trainer, then waits on a pipe. ``hand_over`` sends it one job's spec and gives up the process,
its event queue and its stop Event, which become that job's ``service.backend.ProcessHandle``; the
worker never gets a second job. ``service.backend.ProcessBackend`` keeps one per free slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Callable

from trainer import worker

log = logging.getLogger("snnmon.backend")
EXIT_GRACE_S = 2.0  # an idle worker dies of SIGTERM at once; this is for one stuck in the kernel


class PrestartedWorker:
    """A worker process started before its job (``trainer.worker.wait_for_job``): torch imported, waiting
    on a pipe for one job's spec. Server side, event-loop thread."""

    def __init__(self, ctx: Any, on_early_exit: Callable[["PrestartedWorker"], None]):
        self._loop = asyncio.get_running_loop()
        self.queue = ctx.Queue()
        self.stop_event = ctx.Event()
        job_reader, self._job_writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=worker.wait_for_job, args=(job_reader, self.queue, self.stop_event),
                                   name="snnmon-prestarted", daemon=True)
        self.process.start()  # fork and exec: milliseconds; the imports happen in the child
        self.pid: int = self.process.pid
        self.started_at = self._loop.time()
        job_reader.close()  # the child's end: with ours closed, a send to a dead worker fails at once
        self.queue._writer.close()  # as in submit: a worker that dies mid-message leaves an end of file
        self._loop.add_reader(self.process.sentinel, on_early_exit, self)

    def hand_over(self, spec: dict[str, Any]) -> tuple[Any, Any, Any] | None:
        """Send this worker its job (``JobSpec`` as a dict); return what the job's ``ProcessHandle`` is
        made of (process, event queue, stop Event), or None when the worker is gone."""
        self._loop.remove_reader(self.process.sentinel)
        try:
            self._job_writer.send(spec)  # a few hundred bytes: the pipe's buffer takes them at once
        except OSError:  # BrokenPipeError: it died, and its exit was not noticed yet
            self.reap()
            return None
        finally:
            self._job_writer.close()
        taken = self.process, self.queue, self.stop_event
        self.process = self.queue = self.stop_event = None
        return taken

    def terminate(self) -> None:
        """No job will come (server exit): end it now, whatever it is importing."""
        self._loop.remove_reader(self.process.sentinel)
        self._job_writer.close()
        signal_worker(self.pid, signal.SIGTERM)

    async def ended(self) -> None:
        """Wait for a terminated worker, SIGKILL it if it takes too long, reap it."""
        if not await _exits_within(self.process, EXIT_GRACE_S):
            log.warning("pre-started worker %d ignored SIGTERM; SIGKILL", self.pid)
            signal_worker(self.pid, signal.SIGKILL)
            if not await _exits_within(self.process, EXIT_GRACE_S):
                log.error("pre-started worker %d survived SIGKILL for %.0f s; not waiting for it", self.pid,
                          EXIT_GRACE_S)
        self.reap()

    def reap(self) -> int | None:
        """Collect the exited process (its exit code) and drop every handle on it, so its named
        semaphores are unlinked now rather than reported as leaked at the server's exit."""
        self._loop.remove_reader(self.process.sentinel)
        self._job_writer.close()
        self.process.join(EXIT_GRACE_S)  # exited already (its sentinel said so): returns at once
        code = self.process.exitcode
        self.queue._reader.close()
        if code is not None:
            self.process.close()
        self.process = self.queue = self.stop_event = None
        return code


async def _exits_within(process: Any, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(process.sentinel, lambda: exited.done() or exited.set_result(None))
    try:
        await asyncio.wait_for(exited, seconds)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(process.sentinel)


def signal_worker(pid: int, signum: signal.Signals) -> None:
    """Signal a worker's process group (it leads one: os.setsid), or the process alone while it is too
    young to lead one; never our own group. Only for a process not yet reaped."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


