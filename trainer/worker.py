"""The functions a spawned job process runs: ``run_job(spec, events, stop_event)``, or
``wait_for_job(jobs, events, stop_event)`` for a worker started before its job.

Everything here runs in the worker process, started by ``service.backend`` with the spawn method. A
pre-started worker (``wait_for_job``) imports torch and the trainer and warms what their first use loads
lazily, none of it job-specific, then blocks on ``jobs`` (a pipe) until the server sends one job's spec;
it runs that job exactly as ``run_job`` would and exits with it, so no two jobs share a process. It
names itself ``snnmon-idle`` once it is ready and ``snnmon-job`` when its job arrives (``run_job``
does too), so ``ps -o comm`` tells them apart. The worker

- makes itself a process-group (and session) leader, so the server can signal it and anything it
  starts with one ``killpg``, and a Ctrl-C in the server's terminal is the server's to handle;
- exits by itself when the server dies: a thread waits on the parent sentinel (a pipe the server holds
  open) and ``os._exit``s when it closes, so no orphan keeps a GPU busy;
- caps torch's CPU threads so concurrent jobs do not oversubscribe the cores, and makes its GPU (if
  any) the current CUDA device;
- runs ``trainer.train.train``, putting each event on ``events`` as a plain dict
  ``{"event": name, "data": {...}}`` and reading ``stop_event`` between batches;
- turns any exception ``train`` lets through into an ``error`` event with a one-line message; the
  traceback goes to this process's stderr (the server's log), never to clients;
- exits with ``os._exit(0)`` once its events are flushed (no interpreter teardown).

Test-only fault hook: ``SNNMON_TEST_FAULT`` in the server's environment (workers inherit it) lists
``fault:seed`` pairs, e.g. ``hang:4242,raise:4343``; a job whose config seed matches gets the fault.
``hang`` ignores SIGTERM and blocks forever after its first batch event (it can neither see the stop
Event nor die of SIGTERM); ``raise`` raises a two-line RuntimeError after its config event;
``checkpointkill`` SIGKILLs the worker in the middle of its second epoch's checkpoint write (the temporary
file written, not yet renamed); a job resuming that one runs without it; ``hog`` allocates (and touches)
64 MiB every 50 ms after its first batch event, up to ``HOG_MAX_BYTES``, then blocks (what the server's
memory watch must end). Nothing in the HTTP API can set it: only whoever starts the server.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

TEST_FAULT_ENV = "SNNMON_TEST_FAULT"
PARENT_GONE_EXIT = 75  # exit code when the server disappeared under the worker
MESSAGE_LIMIT = 1000  # characters of an error message sent to clients: long enough for a fix hint with paths
HOG_MAX_BYTES = 6 << 30  # the hog fault stops growing here, should the watch that ends it be broken
IDLE_NAME = "snnmon-idle"  # process name (comm) of a pre-started worker ready for its job
JOB_NAME = "snnmon-job"  # process name of a worker that has its job
PR_SET_NAME = 15  # prctl(2) option: name the calling thread (the main thread's name is the process's)


def run_job(spec: dict[str, Any], events: Any, stop_event: Any) -> None:
    """Train one job. ``spec`` is ``service.backend.JobSpec`` as a dict; ``events`` an mp.Queue."""
    os.setsid()
    _exit_when_parent_dies()
    _run_and_exit(spec, events, stop_event)


def wait_for_job(jobs: Any, events: Any, stop_event: Any) -> None:
    """Get ready for a job, wait for it on ``jobs`` (the reading end of a pipe), train it, exit.

    Until the job arrives nothing is pinned: its CPU threads and CUDA device are set by ``execute_job``
    like a fresh worker's. The server closing ``jobs`` without sending (its shutdown) ends the process."""
    os.setsid()  # first: a Ctrl-C in the server's terminal must not reach an idle worker either
    _exit_when_parent_dies()
    prepare_for_jobs()
    _name_process(IDLE_NAME)
    try:
        spec = jobs.recv()
    except (EOFError, OSError):
        os._exit(0)  # no job will come
    jobs.close()
    _run_and_exit(spec, events, stop_event)


def prepare_for_jobs() -> None:
    """Load what every job needs and no job decides: torch, the trainer's modules, and what their
    first use imports lazily (an optimiser's first construction imports ``torch._dynamo``: seconds).
    Creates no tensor a job could see and seeds nothing: each job seeds torch itself."""
    import torch

    from trainer import checkpoint, mnist, train  # noqa: F401  (train imports data, models, optim, step)
    from trainer.config import TrainConfig
    from trainer.optim import build_optimizer

    build_optimizer(torch.nn.Linear(1, 1), TrainConfig())


def _run_and_exit(spec: dict[str, Any], events: Any, stop_event: Any) -> None:
    _name_process(JOB_NAME)
    fault = _test_fault(spec["config"].get("seed"))
    if fault == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    emit = _Emitter(events.put, fault)
    try:
        execute_job(spec, emit, stop_event.is_set, fault)
    finally:
        events.close()
        events.join_thread()  # every event is in the pipe before the process exits
        sys.stdout.flush()
        sys.stderr.flush()
        # Nothing is left to clean up, and the interpreter's teardown of torch takes a second or more:
        # skip it, so a stopped job's process is gone right after its stopped event.
        os._exit(0)


def execute_job(spec: dict[str, Any], emit: Callable[[str, dict[str, Any]], None],
                should_stop: Callable[[], bool], fault: str | None = None) -> None:
    """Set up this process for the job (threads, device) and train it; never raises.

    The part every backend shares: ``run_job`` (a spawned process) and any other host of a job call it
    with their own ``emit`` and ``should_stop``. An exception ``train`` lets through becomes an ``error``
    event with a one-line message; the traceback goes to this process's stderr."""
    try:
        _limit_threads(spec["cpu_threads"])
        _pin_device(spec["device"])
        from trainer.checkpoint import Checkpoints
        from trainer.config import TrainConfig
        from trainer.train import train

        checkpoints = Checkpoints(spec.get("checkpoint_dir"), resume_from=spec.get("resume_dir"),
                                  init_from=spec.get("init_weights"),
                                  before_replace=_kill_on_write(3) if fault == "checkpointkill"
                                  and not spec.get("resume_dir") else None)
        train(TrainConfig.from_dict(spec["config"]), emit, should_stop,
              device=spec["device"], data_dir=spec["data_dir"],
              allow_download=spec["allow_download"], job_id=spec["job_id"], checkpoints=checkpoints)
    except Exception as exc:  # process boundary: the server only ever sees one line
        traceback.print_exc(file=sys.stderr)
        emit("error", {"message": one_line_message(exc, spec["device"])})


class _Emitter:
    """``emit(event, data)`` that hands ``{"event", "data"}`` dicts to ``send``, applying a test fault."""

    def __init__(self, send: Callable[[dict[str, Any]], None], fault: str | None):
        self._send = send
        self._fault = fault

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        self._send({"event": event, "data": data, "emitted_at": time.monotonic()})  # latency, server log
        if self._fault == "raise" and event == "config":
            raise RuntimeError("injected test fault (raise)\nthis second line must not reach clients")
        if self._fault == "hang" and event == "batch":
            while True:  # stuck: never returns to the loop, so never reads the stop Event
                time.sleep(60)
        if self._fault == "hog" and event == "batch":
            held = []
            while len(held) * (64 << 20) < HOG_MAX_BYTES:
                held.append(b"\x01" * (64 << 20))  # written, so resident
                time.sleep(0.05)
            while True:
                time.sleep(60)


def one_line_message(exc: BaseException, device: str) -> str:
    """What a user can act on, on one line: the message of errors written for users, else type: text."""
    from trainer.config import ConfigError
    from trainer.mnist import MnistUnavailable

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(exc, (MnistUnavailable, ConfigError)) and text:
        message = text
    elif type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        message = f"out of memory on {device}; try a smaller batch_size, hidden size or timesteps"
    else:
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT - 1] + "…"


def _limit_threads(threads: int) -> None:
    # Before torch is imported, so its OpenMP pool starts at this size; set_num_threads makes sure (and
    # is all that counts in a pre-started worker, which imported torch before its job arrived).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _pin_device(device: str) -> None:
    """Make ``cuda:N`` this process's current device, so nothing lands on another GPU by default."""
    import torch

    if device.startswith("cuda:") and torch.cuda.is_available():
        torch.cuda.set_device(int(device.split(":", 1)[1]))


def _exit_when_parent_dies() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        def wait_for_parent() -> None:
            # The sentinel is a pipe whose other end only the server holds: readable (EOF) once it died.
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(PARENT_GONE_EXIT)
    else:
        parent_pid = os.getppid()

        def wait_for_parent() -> None:  # started some other way: notice being re-parented
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(PARENT_GONE_EXIT)

    threading.Thread(target=wait_for_parent, name="parent-watch", daemon=True).start()


def _name_process(name: str) -> None:
    """Set this process's name as ``ps -o comm`` and ``/proc/PID/comm`` show it (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: not Linux
        pass


def _kill_on_write(writes_before: int):
    """A before_replace hook that SIGKILLs this process at the write after ``writes_before`` renames."""
    count = 0

    def hook(path) -> None:
        nonlocal count
        count += 1
        if count > writes_before:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _test_fault(seed: Any) -> str | None:
    for item in os.environ.get(TEST_FAULT_ENV, "").split(","):
        fault, _, target = item.strip().partition(":")
        if fault in ("hang", "raise", "hog", "checkpointkill") and target == str(seed):
            return fault
    return None
