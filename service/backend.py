"""The process backend: one spawned worker process per job, behind a narrow seam.

The job manager only ever sees ``Backend.submit(spec) -> JobHandle`` and the handle's
``events()`` / ``request_stop()`` / ``terminate()`` / ``kill()`` / ``wait()``; a backend that runs jobs
on other machines implements the same two protocols.

``ProcessBackend`` (server process, event-loop thread): each job is a ``torch.multiprocessing`` spawn
process running ``trainer.worker.run_job``, which makes itself a process-group leader, so a signal to
the group reaches anything it started. Events arrive on an ``mp.Queue``; the loop watches the queue's
reader fd and the process sentinel with ``add_reader``, so no thread polls per job. When the sentinel
fires, the queue is drained before the process is joined (a worker blocked on a full pipe never exits).
With pre-starting on (the default), the process was started before its job (``service.prestarted``):
the same process, queue and Event, handed the job's spec through a pipe instead of its arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import queue as queue_module
import signal
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Callable, Protocol

from service.prestarted import PrestartedWorker, signal_worker
from trainer import worker

log = logging.getLogger("snnmon.backend")
RESPAWN_PAUSE_S = 0.5  # before replacing a pre-started worker that died; doubles while they keep dying
RESPAWN_PAUSE_MAX_S = 30.0  # the longest pause; a worker that lived longer than this resets the count


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs, all plain values (it is pickled into the spawned process)."""

    job_id: str
    config: dict[str, Any]  # TrainConfig.to_dict(), with a concrete seed
    device: str  # "cpu" or "cuda:N"
    cpu_threads: int
    data_dir: str | None
    allow_download: bool
    checkpoint_dir: str | None = None  # where the worker writes this job's checkpoints
    resume_dir: str | None = None  # a stopped/failed job's checkpoint directory to continue
    init_weights: str | None = None  # a checkpoint file whose weights the model starts from


@dataclass(frozen=True)
class ExitStatus:
    code: int | None  # the process exit code; -N when killed by signal N

    def describe(self) -> str:
        """One line for a job that ended without reporting a result."""
        if self.code is None:
            return "worker process ended in an unknown state"
        if self.code < 0:
            try:
                name = signal.Signals(-self.code).name
            except ValueError:
                name = f"signal {-self.code}"
            hint = " (out of memory, or killed from outside)" if self.code == -signal.SIGKILL else ""
            return f"worker process was killed by {name}{hint} before reporting a result"
        return f"worker process exited with code {self.code} before reporting a result"


class JobHandle(Protocol):
    pid: int | None  # the worker's process id on this machine (its memory is watched); None elsewhere

    def events(self) -> AsyncIterator[dict[str, Any]]:
        """The worker's events as sent; ends once the job's process is gone and every event is read."""

    def request_stop(self) -> None:
        """Ask the worker to stop at its next batch."""

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    @property
    def alive(self) -> bool: ...

    async def wait(self) -> ExitStatus: ...


class Backend(Protocol):
    def warm_up(self) -> None:
        """Begin any slow set-up now (called at server start), so the first submit is quick."""

    async def submit(self, spec: JobSpec) -> JobHandle: ...

    async def close(self) -> None:
        """Release what the backend holds (called at server exit, after every job has ended)."""


class ProcessHandle:
    """One worker process; created and used in the server's event-loop thread."""

    def __init__(self, process: Any, event_queue: Any, stop_event: Any,
                 on_exit: Callable[[], None] | None = None):
        self._loop = asyncio.get_running_loop()
        self._on_exit_callback = on_exit  # the backend counts live jobs (its free slots) with it
        self._process = process
        self._queue = event_queue  # mp.Queue of plain dicts, written by the worker
        self._stop_event = stop_event
        self._received: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._reader_fd = event_queue._reader.fileno()
        self.pid: int = process.pid
        self._loop.add_reader(self._reader_fd, self._drain)
        self._loop.add_reader(process.sentinel, self._on_exit)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while (item := await self._received.get()) is not None:
            yield item

    def request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return not self._exited.done()

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exited)

    def _signal_group(self, signum: signal.Signals) -> None:
        if not self.alive:
            return  # reaped: the pid may belong to someone else now
        signal_worker(self.pid, signum)
        log.info("sent %s to worker %d", signum.name, self.pid)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue_module.Empty:
                return
            except EOFError:  # the worker's end of the pipe is closed: nothing more can come
                self._loop.remove_reader(self._reader_fd)
                return
            except (OSError, pickle.UnpicklingError) as exc:
                log.warning("worker %d: unreadable event discarded (%s)", self.pid, exc)
                return
            self._received.put_nowait(item)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._process.sentinel)
        # Every event the worker wrote is in the pipe by now; a partial one (killed mid-write) must not
        # block the loop, so read the rest without waiting.
        os.set_blocking(self._reader_fd, False)
        self._drain()
        self._loop.remove_reader(self._reader_fd)
        self._process.join()  # exited already: reaps it at once
        status = ExitStatus(self._process.exitcode)
        self._queue._reader.close()
        self._queue._writer.close()
        self._process.close()
        # Drop the queue, the Event and the process (whose args hold both) now, so their named
        # semaphores are unlinked here rather than reported as leaked by the resource tracker.
        self._process = self._queue = self._stop_event = None
        self._received.put_nowait(None)
        self._exited.set_result(status)
        if self._on_exit_callback is not None:
            self._on_exit_callback()


def _spawn_context() -> Any:
    import torch.multiprocessing  # imports torch (seconds): called off the event loop, once

    return torch.multiprocessing.get_context("spawn")


class ProcessBackend:
    """Starts each job in a fresh spawned process (never fork: the parent must not share its state).

    With ``prestart`` > 0 it keeps a ``PrestartedWorker`` (torch and the trainer imported) for each of its
    ``slots`` that no job's process holds, at most ``prestart`` of them, so a job need not wait for the
    imports (seconds). Each serves one job and exits with it; the slot's next one starts when the job's
    process has exited. One that dies before a job reaches it is logged and replaced, after a pause that
    grows while they keep dying."""

    def __init__(self, slots: int = 1, prestart: int = 0) -> None:
        self._context: asyncio.Future[Any] | None = None
        self._slots = slots  # jobs that run at once (--max-concurrent)
        self._prestart = prestart  # the most workers kept started ahead; 0: every job spawns its own
        self._idle: deque[PrestartedWorker] = deque()  # oldest (most likely ready) first
        self._live_jobs = 0  # job processes not yet exited: each holds a slot
        self._early_deaths = 0  # pre-started workers in a row that died before a job reached them
        self._refill: asyncio.TimerHandle | None = None
        self._closed = False

    def warm_up(self) -> None:
        """Import torch's multiprocessing in a thread now, so the first job does not wait for it; then
        pre-start the workers."""
        if self._context is None:
            self._context = asyncio.get_running_loop().run_in_executor(None, _spawn_context)
            if self._prestart:
                self._context.add_done_callback(lambda _: self._fill())

    async def submit(self, spec: JobSpec) -> ProcessHandle:
        self.warm_up()
        ctx = await self._context
        handle = None
        while handle is None and self._idle:
            taken = self._idle.popleft().hand_over(asdict(spec))
            if taken is not None:
                handle = ProcessHandle(*taken, self._job_exited)
        if handle is not None:
            self._early_deaths = 0
            log.debug("job %s: in pre-started worker %d", spec.job_id, handle.pid)
        else:
            handle = self._spawn_job(ctx, spec)
        self._live_jobs += 1
        self._fill()
        return handle

    def _spawn_job(self, ctx: Any, spec: JobSpec) -> ProcessHandle:
        event_queue = ctx.Queue()
        stop_event = ctx.Event()
        process = ctx.Process(target=worker.run_job, args=(asdict(spec), event_queue, stop_event),
                              name=f"snnmon-job-{spec.job_id}", daemon=True)
        # start() forks and execs a fresh interpreter and hands it the pickled arguments: milliseconds.
        # The child's torch import happens in the child.
        process.start()
        # The child has its own copy of the queue's writing end now. Closing ours means a worker that
        # dies in the middle of a message leaves an end of file, which a read cannot wait on forever.
        event_queue._writer.close()
        return ProcessHandle(process, event_queue, stop_event, self._job_exited)

    def _job_exited(self) -> None:
        self._live_jobs -= 1
        self._fill()

    def _fill(self) -> None:
        """Pre-start workers until every free slot has one (event-loop thread; never waits)."""
        context = self._context
        if (self._closed or self._refill is not None or context is None or not context.done()
                or context.cancelled() or context.exception() is not None):
            return
        while len(self._idle) < min(self._prestart, self._slots - self._live_jobs):
            try:
                self._idle.append(PrestartedWorker(context.result(), self._died_early))
            except Exception:  # e.g. out of processes or descriptors: jobs still spawn their own
                log.exception("could not pre-start a worker; trying again in %.0f s", RESPAWN_PAUSE_MAX_S)
                self._refill = asyncio.get_running_loop().call_later(RESPAWN_PAUSE_MAX_S, self._refill_now)
                return

    def _refill_now(self) -> None:
        self._refill = None
        self._fill()

    def _died_early(self, idle: PrestartedWorker) -> None:
        """A pre-started worker exited before any job reached it (killed, out of memory, a broken
        install): replace it, pausing longer each time in a row, so a worker that cannot start is not
        respawned in a tight loop."""
        self._idle.remove(idle)
        lived = asyncio.get_running_loop().time() - idle.started_at
        code = idle.reap()
        if lived > RESPAWN_PAUSE_MAX_S:
            self._early_deaths = 0  # it had been ready a while: not a worker that cannot start
        self._early_deaths += 1
        pause = min(RESPAWN_PAUSE_S * 2 ** (self._early_deaths - 1), RESPAWN_PAUSE_MAX_S)
        log.warning("pre-started worker %d ended before a job reached it (%s); starting another in %.1f s",
                    idle.pid, _exit_words(code), pause)
        if self._refill is None and not self._closed:
            self._refill = asyncio.get_running_loop().call_later(pause, self._refill_now)

    async def close(self) -> None:
        """End the pre-started workers (every job has ended: their processes are gone already)."""
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        idle, self._idle = list(self._idle), deque()
        for worker_process in idle:
            worker_process.terminate()
        await asyncio.gather(*(worker_process.ended() for worker_process in idle))
        if idle:
            log.info("ended %d pre-started worker(s)", len(idle))


def _exit_words(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
