"""The job manager: queue, concurrency limit, device placement, lifecycle, stop and its escalation.

Runs in the server's event-loop thread. A job goes ``queued → starting → running → completed | stopped |
failed`` (``stopping`` between). The manager numbers the worker's events through the job's
``EventChannel``, keeps the ``JobRecord`` in step with them and saves it to the store; when a worker
ends without a terminal event the manager writes one itself, so every stream ends. Processes are
reached only through the ``Backend``/``JobHandle`` seam (``service.backend``).

Stop: set the job's stop Event; if the process still lives after ``stop_grace_s``, SIGTERM its group,
then SIGKILL after ``kill_grace_s``; the job then ends ``stopped`` with ``forced: true``. Whatever
happens, the device slot is released and the process reaped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from service.backend import Backend, JobHandle, JobSpec
from service.devices import DevicePool
from service.errors import InvalidConfig, UnknownJob
from service.events import EventChannel
from service.settings import Settings
from service.store import JobRecord, JobStore
from trainer.config import ConfigError, TrainConfig

log = logging.getLogger("snnmon.jobs")

WORKER_EVENTS = frozenset({"config", "batch", "epoch", "completed", "stopped", "error"})


@dataclass(eq=False)
class Job:
    """A job's live state in this server; ``record`` is what clients and the store see."""

    record: JobRecord
    channel: EventChannel
    handle: JobHandle | None = None
    task: asyncio.Task | None = None
    reaper: asyncio.Task | None = None  # waits for the process after a stop or a terminal event
    stop_requested: bool = False


class JobManager:
    def __init__(self, settings: Settings, store: JobStore, backend: Backend, devices: DevicePool):
        self._settings = settings
        self._store = store
        self._backend = backend
        self._devices = devices
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[str] = deque()
        self._active = 0  # jobs holding a slot: starting, running or stopping

    # -- queries

    def record(self, job_id: str) -> JobRecord:
        return self._job(job_id).record

    def channel(self, job_id: str) -> EventChannel:
        return self._job(job_id).channel

    def records(self) -> list[JobRecord]:
        return self._store.list_jobs()

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    # -- commands

    def submit(self, body: Any) -> JobRecord:
        """Validate a start request's body and queue the job; raise InvalidConfig for a bad one."""
        try:
            config = TrainConfig.from_dict(body).with_seed()
        except ConfigError as exc:
            raise InvalidConfig(exc.fields) from None
        self._devices.check(config.device)
        job_id = uuid.uuid4().hex[:12]
        record = JobRecord(job_id, config.to_dict(), epochs=config.epochs)
        self._store.put_job(record)
        self._jobs[job_id] = Job(record, EventChannel(job_id, self._store))
        self._waiting.append(job_id)
        log.info("job %s queued: %s", job_id, config.to_dict())
        self._schedule()
        return record

    def stop(self, job_id: str) -> JobRecord:
        """Stop a job; a queued one is cancelled; a finished one is left as it is (idempotent)."""
        job = self._job(job_id)
        record = job.record
        if record.finished or job.stop_requested:
            return record
        job.stop_requested = True
        if record.status == "queued":
            self._waiting.remove(job_id)
            self._append(job, "stopped", {"epoch": None, "forced": False})
            log.info("job %s cancelled while queued", job_id)
            return record
        self._save(record, status="stopping")
        if job.handle is not None:
            self._begin_stop(job)
        return record  # a job still being started gets its stop as soon as its process exists

    async def close(self) -> None:
        """Stop every job and wait for its process (server shutdown)."""
        for job_id in list(self._waiting):
            self.stop(job_id)
        running = [job for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for job in running:
            self.stop(job.record.job_id)
        if running:
            budget = self._settings.stop_grace_s + self._settings.kill_grace_s + 2.0
            await asyncio.wait([job.task for job in running], timeout=budget)
        for job in running:
            if job.handle is not None and job.handle.alive:
                job.handle.kill()

    # -- scheduling and the life of one job

    def _schedule(self) -> None:
        while self._waiting and self._active < self._settings.max_concurrent:
            job = self._jobs[self._waiting.popleft()]
            self._active += 1
            device = self._devices.acquire(job.record.config["device"])
            self._save(job.record, status="starting", device=device, started_at=time.time())
            job.task = asyncio.create_task(self._run(job), name=f"job-{job.record.job_id}")

    async def _run(self, job: Job) -> None:
        record = job.record
        device = record.device
        try:
            spec = JobSpec(record.job_id, record.config, device,
                           self._settings.threads_per_cpu_job(), self._settings.data_dir,
                           self._settings.allow_download)
            try:
                job.handle = await self._backend.submit(spec)
            except Exception as exc:  # task boundary: e.g. too many processes or open files
                log.exception("job %s: could not start its worker", record.job_id)
                self._append(job, "error", {"message": f"could not start the worker process: {exc}"})
                return
            log.info("job %s started on %s", record.job_id, device)
            if job.stop_requested:
                self._begin_stop(job)
            async for event in job.handle.events():
                self._on_worker_event(job, event)
                if job.channel.finished and job.reaper is None:
                    # a worker that reported its end but lingers is ended like a stopped one
                    job.reaper = asyncio.create_task(self._escalate(job, self._settings.stop_grace_s))
            exit_status = await job.handle.wait()
            log.info("job %s: worker exited with code %s", record.job_id, exit_status.code)
            if not job.channel.finished:
                if job.stop_requested:
                    self._append(job, "stopped", {"epoch": record.epoch, "forced": True})
                else:
                    self._append(job, "error", {"message": exit_status.describe()})
        except Exception:  # task boundary: the server keeps serving, the job ends failed
            log.exception("job %s: internal error", record.job_id)
            if job.handle is not None:
                job.handle.kill()
            if not job.channel.finished:
                self._append(job, "error", {"message": "internal server error while running the job"})
        finally:
            if job.reaper is not None:
                job.reaper.cancel()
            self._devices.release(device)
            self._active -= 1
            self._schedule()

    def _begin_stop(self, job: Job) -> None:
        job.handle.request_stop()
        if job.reaper is None:
            job.reaper = asyncio.create_task(self._escalate(job, self._settings.stop_grace_s))

    async def _escalate(self, job: Job, grace: float) -> None:
        """Give the process ``grace`` seconds to exit, then SIGTERM its group, then SIGKILL it."""
        handle = job.handle
        if await _exits_within(handle, grace):
            return
        log.warning("job %s: worker still running %.1f s after it was asked to end; SIGTERM",
                    job.record.job_id, grace)
        handle.terminate()
        if await _exits_within(handle, self._settings.kill_grace_s):
            return
        log.warning("job %s: worker ignored SIGTERM; SIGKILL", job.record.job_id)
        handle.kill()

    # -- events

    def _on_worker_event(self, job: Job, event: Any) -> None:
        name = event.get("event") if isinstance(event, dict) else None
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(name, str) or name not in WORKER_EVENTS or not isinstance(data, dict):
            log.warning("job %s: malformed worker event dropped: %.200r", job.record.job_id, event)
            return
        if job.channel.finished:
            log.warning("job %s: %s event after the terminal event dropped", job.record.job_id, name)
            return
        self._append(job, name, data)

    def _append(self, job: Job, name: str, data: dict[str, Any]) -> None:
        """Number, encode, store and fan out one event, then bring the record in step with it."""
        job.channel.append(name, data)
        record = job.record
        now = time.time()
        if name == "config":
            if record.status == "starting":
                self._save(record, status="running")
        elif name in ("batch", "epoch"):
            changes: dict[str, Any] = {"epoch": data.get("epoch"), "last_metrics": data}
            accuracy = data.get("val_accuracy")
            if isinstance(accuracy, (int, float)) and (record.best_val_accuracy is None
                                                       or accuracy > record.best_val_accuracy):
                changes["best_val_accuracy"] = accuracy
            self._save(record, **changes)
        elif name == "completed":
            self._save(record, status="completed", final_metrics=data, finished_at=now)
        elif name == "stopped":
            self._save(record, status="stopped", forced=bool(data.get("forced")), finished_at=now)
        elif name == "error":
            self._save(record, status="failed", error=str(data.get("message")), finished_at=now)
        if record.finished:
            log.info("job %s %s%s", record.job_id, record.status,
                     f": {record.error}" if record.error else " (forced)" if record.forced else "")

    def _save(self, record: JobRecord, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(record, name, value)
        self._store.put_job(record)


async def _exits_within(handle: JobHandle, seconds: float) -> bool:
    try:
        await asyncio.wait_for(handle.wait(), seconds)
    except TimeoutError:
        return False
    return True
