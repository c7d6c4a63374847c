"""The job manager: queue, concurrency limit, device placement, lifecycle, stop and its escalation.

Runs in the server's event-loop thread. A job goes ``queued → starting → running → completed | stopped |
failed`` (``stopping`` between). The manager numbers the worker's events through the job's
``EventChannel``, keeps the ``JobRecord`` in step with them and stores both in one write; when a worker
ends without a terminal event the manager writes one itself, so every stream ends. Processes are
reached only through the ``Backend``/``JobHandle`` seam (``service.backend``).

Stop: set the job's stop Event; if the process still lives after ``stop_grace_s``, SIGTERM its group,
then SIGKILL after ``kill_grace_s``; the job then ends ``stopped`` with ``forced: true``. Whatever
happens, the device slot is released and the process reaped.

History: at start-up ``restore`` takes every stored job back; one that had not finished ends ``failed``
with "interrupted by server restart" (an ``error`` event, so its stream ends). Beyond ``keep_jobs``
jobs, the oldest finished ones are deleted with their events. ``shutdown`` refuses new jobs, stops
every job the same way (SIGKILL at most ``SHUTDOWN_KILL_GRACE_S`` after SIGTERM) and returns once
their terminal events are committed and published.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service import artifacts, metadata
from service.backend import Backend, JobHandle, JobSpec
from service.devices import DevicePool
from service.errors import BadRequest, InvalidConfig, JobActive, ShuttingDown, UnknownJob
from service.events import EventChannel
from service.settings import Settings
from service.store import JobRecord, JobStore, StoredJob
from trainer.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from service.prometheus import ServiceMetrics

log = logging.getLogger("snnmon.jobs")

WORKER_EVENTS = frozenset({"config", "batch", "epoch", "warning", "checkpoint", "completed", "stopped", "error"})
INTERRUPTED = "interrupted by server restart"
# At shutdown SIGKILL follows SIGTERM after at most this long, so the server exits within
# stop-grace + 5 s (the rest: reaping, the last commits, ending the streams).
SHUTDOWN_KILL_GRACE_S = 2.0


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
    def __init__(self, settings: Settings, store: JobStore, backend: Backend, devices: DevicePool,
                 metrics: ServiceMetrics | None = None):
        self.metrics = metrics  # /metrics counters (service.prometheus); None: not counted
        self._settings = settings
        self._store = store
        self._backend = backend
        self._devices = devices
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[str] = deque()
        self._active = 0  # jobs holding a slot: starting, running or stopping
        self._kill_grace_s = settings.kill_grace_s
        self._shutdown: asyncio.Future[None] | None = None
        self.shutting_down = False

    # -- queries

    def record(self, job_id: str) -> JobRecord:
        return self._job(job_id).record

    def channel(self, job_id: str) -> EventChannel:
        return self._job(job_id).channel

    def records(self) -> list[JobRecord]:
        """Every job's record, newest first (dicts keep insertion order, which is creation order)."""
        return [job.record for job in reversed(self._jobs.values())]

    def find(self, query: Any) -> list[JobRecord]:
        """Records, newest first, that pass a request's ``status``/``tag``/``q`` filters (BadRequest if bad)."""
        try:
            filters = metadata.parse_filters(query)
        except metadata.InvalidMetadata as exc:
            raise BadRequest(f"invalid filter: {exc}", fields=exc.fields) from None
        return [record for record in self.records() if metadata.matches(record, **filters)]

    async def epoch_rows(self, job_id: str) -> tuple[JobRecord, list[dict[str, Any]]]:
        """A job's record and the data of its epoch events so far, read from the store."""
        record = self.record(job_id)
        events = await self._store.events_named(job_id, "epoch")
        return record, [event.data for event in events]

    async def batch_rows(self, job_id: str) -> tuple[JobRecord, list[dict[str, Any]]]:
        """A job's record and the data of its batch events so far, read from the store."""
        record = self.record(job_id)
        events = await self._store.events_named(job_id, "batch")
        return record, [event.data for event in events]

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    # -- commands

    def restore(self, stored: list[StoredJob]) -> None:
        """At start-up, before any request: take back every stored job, oldest first."""
        interrupted = 0
        for item in stored:
            record = item.record
            if not record.name:  # a job from before run names: it gets its default one
                record.name = metadata.default_name(record.config, self.records())
            job = Job(record, EventChannel(record.job_id, self._store, head_seq=item.head_seq,
                                           finished=record.finished, metrics=self.metrics))
            self._jobs[record.job_id] = job
            if not record.finished:  # the server stopped without ending it: its stream must end
                self._append(job, "error", {"message": INTERRUPTED})
                interrupted += 1
        self._prune()
        if stored:
            log.info("restored %d job(s), %d of them unfinished: marked failed (%s)", len(stored), interrupted,
                     INTERRUPTED)

    def submit(self, body: Any, origin: artifacts.StartOrigin = artifacts.StartOrigin()) -> JobRecord:
        """Validate a start request's body and queue the job; raise InvalidConfig for a bad one.
        ``origin``: the checkpoint it starts from (``artifacts.split_start_options``, checked already)."""
        if self.shutting_down:
            raise ShuttingDown("the server is shutting down and accepts no new jobs; retry on its successor")
        body, run_info = metadata.split_start_body(body)  # name, tags, notes: not TrainConfig fields
        errors: dict[str, str] = {}
        try:
            config = TrainConfig.from_dict(body).with_seed()
        except ConfigError as exc:
            errors.update(exc.fields)
        try:
            run_info = metadata.validate(run_info, partial=False)
        except metadata.InvalidMetadata as exc:
            errors.update(exc.fields)
        if errors:
            raise InvalidConfig(errors)
        self._devices.check(config.device)
        job_id = uuid.uuid4().hex[:12]
        record = JobRecord(job_id, config.to_dict(), epochs=config.epochs, resumed_from=origin.resumed_from,
                           init_from=origin.init_from, **run_info)
        if not record.name:
            record.name = metadata.default_name(record.config, self.records())
        self._store.put_job(record)
        self._jobs[job_id] = Job(record, EventChannel(job_id, self._store, metrics=self.metrics))
        self._waiting.append(job_id)
        log.info("job %s queued: %s", job_id, config.to_dict())
        self._prune()
        self._schedule()
        return record

    def update(self, job_id: str, body: Any) -> JobRecord:
        """Change a job's name, tags or notes (any job, running or not); the record is stored at once."""
        record = self.record(job_id)
        if not isinstance(body, dict) or not body:
            raise BadRequest(f"body must be a JSON object with any of {', '.join(metadata.FIELDS)}",
                             fields={"body": f"a JSON object with any of {', '.join(metadata.FIELDS)}"})
        try:
            changes = metadata.validate(body, partial=True)
        except metadata.InvalidMetadata as exc:
            raise BadRequest(f"invalid run metadata: {exc}", fields=exc.fields) from None
        self._save(record, **changes)
        log.info("job %s metadata changed: %s", job_id, ", ".join(changes))
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

    async def delete(self, job_id: str) -> None:
        """Delete a finished job, its events and its checkpoints (JobActive for one that has not finished)."""
        job = self._job(job_id)
        if not job.record.finished:
            raise JobActive(job_id, job.record.status)
        await self._forget(job)
        await asyncio.get_running_loop().run_in_executor(None, artifacts.remove_job_files, self._settings, job_id)
        log.info("job %s deleted", job_id)

    async def shutdown(self) -> None:
        """Refuse new jobs, stop every job, and return once their terminal events are published.
        Idempotent: the server calls it before it stops listening, and on_shutdown calls it again."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        self.shutting_down = True
        self._kill_grace_s = min(self._settings.kill_grace_s, SHUTDOWN_KILL_GRACE_S)
        for job_id in list(self._waiting):
            self.stop(job_id)
        running = [job for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for job in running:
            self.stop(job.record.job_id)
        if running:
            budget = self._settings.stop_grace_s + self._kill_grace_s + 1.0
            await asyncio.wait([job.task for job in running], timeout=budget)
            late = [job for job in running if not job.task.done()]
            for job in late:  # still spawning, or a process that did not go even after SIGKILL
                log.warning("job %s: not ended %.1f s into shutdown; giving up on it", job.record.job_id, budget)
                if job.handle is not None:
                    job.handle.kill()
                job.task.cancel()
            if late:
                await asyncio.wait([job.task for job in late], timeout=1.0)
            for job in running:
                if not job.channel.finished:
                    self._append(job, "stopped", {"epoch": job.record.epoch, "forced": True})
        for job in list(self._jobs.values()):
            await job.channel.wait_published()
        await self._store.flush()

    # -- scheduling and the life of one job

    def _schedule(self) -> None:
        if self.shutting_down:
            return
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
                           self._settings.allow_download, **self._checkpoint_paths(record))
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
            if self.metrics is not None:
                self.metrics.worker_exited(_exit_reason(record, exit_status.code, job.stop_requested))
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

    def _checkpoint_paths(self, record: JobRecord) -> dict[str, str | None]:
        """The worker's checkpoint folder, and what it starts from (paths of other jobs' files)."""
        settings = self._settings
        init = record.init_from
        return {
            "checkpoint_dir": str(artifacts.job_dir(settings, record.job_id)),
            "resume_dir": str(artifacts.job_dir(settings, record.resumed_from)) if record.resumed_from else None,
            "init_weights": str(artifacts.weights_path(settings, init["job_id"], init["which"])) if init else None,
        }

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
        if await _exits_within(handle, self._kill_grace_s):
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
        if name == "checkpoint":  # the file is on disk already: the record's size includes it
            job.record.disk_bytes = artifacts.disk_usage(artifacts.job_dir(self._settings, job.record.job_id))
        self._append(job, name, data)

    def _append(self, job: Job, name: str, data: dict[str, Any]) -> None:
        """Number and encode one event, bring the record in step with it, and store both together."""
        record = job.record
        record.apply(name, data, time.time())
        job.channel.append(name, data, record)
        if record.finished:
            log.info("job %s %s%s", record.job_id, record.status,
                     f": {record.error}" if record.error else " (forced)" if record.forced else "")
            self._prune()

    def _save(self, record: JobRecord, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(record, name, value)
        self._store.put_job(record)

    def _prune(self) -> None:
        """Beyond keep_jobs jobs, delete the oldest finished ones (running jobs are never pruned)."""
        excess = len(self._jobs) - self._settings.keep_jobs
        if excess <= 0:
            return
        oldest = [job for job in self._jobs.values() if job.record.finished][:excess]
        for job in oldest:
            self._forget(job)
        if oldest:
            log.info("pruned %d finished job(s) beyond --keep-jobs %d", len(oldest), self._settings.keep_jobs)
            asyncio.get_running_loop().run_in_executor(None, _remove_all_files, self._settings,
                                                       [job.record.job_id for job in oldest])

    def _forget(self, job: Job) -> asyncio.Future[None]:
        del self._jobs[job.record.job_id]
        job.channel.delete()
        return self._store.delete_job(job.record.job_id)


def _remove_all_files(settings: Settings, job_ids: list[str]) -> None:
    for job_id in job_ids:
        artifacts.remove_job_files(settings, job_id)


def _exit_reason(record: JobRecord, code: int | None, stop_requested: bool) -> str:
    """How a worker ended, for /metrics (service.prometheus.EXIT_REASONS)."""
    if record.status == "completed":
        return "completed"
    if record.status == "stopped":
        return "forced" if record.forced else "stopped"
    if code is not None and code < 0 and not stop_requested:
        return "signal"
    return "error" if code == 0 else "crashed"


async def _exits_within(handle: JobHandle, seconds: float) -> bool:
    try:
        await asyncio.wait_for(handle.wait(), seconds)
    except TimeoutError:
        return False
    return True
