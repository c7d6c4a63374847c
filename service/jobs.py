"""The job manager: queue, concurrency limit, device placement, lifecycle, stop and its escalation.

Runs in the server's event-loop thread. A job goes ``queued → starting → running → completed | stopped |
failed`` (``stopping`` between). The manager numbers the worker's events through the job's
``EventChannel``, keeps the ``JobRecord`` in step with them and stores both in one write; when a worker
ends without a terminal event the manager writes one itself, so every stream ends. Processes are
reached only through the ``Backend``/``JobHandle`` seam (``service.backend``).

Stop: set the job's stop Event; if the process still lives after ``stop_grace_s``, SIGTERM its group,
then SIGKILL after ``kill_grace_s``; the job then ends ``stopped`` with ``forced: true``. Whatever
happens, the device slot is released and the process reaped.

Admission: ``submit`` estimates the job's peak memory from its config (``service.memory``) and refuses
one over the per-job budget (400 ``job_too_large``, naming the estimate, the budget and the fields to
reduce); it answers only once the job's record is committed, so an acknowledged job survives a crash, and
a store that cannot write gets 503 ``store_unavailable`` (that attempt is also what learns that writes
succeed again). While a worker runs, a watcher reads its resident memory and ends it (SIGKILL, ``failed``
"exceeded its memory limit") past ``--job-memory-limit``, and sends a ``warning`` event when it has sent
nothing for ``--stall-timeout`` seconds (``--stall-action kill``: the job also ends ``failed``); before its
first event a starting worker is given at least ``STARTUP_ALLOWANCE_S``. An event
the store could not save is never sent (``service.events``): the job is killed and ends ``failed``.

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

from service import artifacts, memory, metadata
from service.backend import Backend, JobHandle, JobSpec
from service.devices import DevicePool
from service.errors import (BadRequest, InvalidConfig, JobActive, JobTooLarge, ShuttingDown, StoreUnavailable,
                            UnknownJob)
from service.events import EventChannel
from service.settings import Settings
from service.store import JobRecord, JobStore, StoredEvent, StoredJob, StoreError
from trainer.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from service.prometheus import ServiceMetrics

log = logging.getLogger("snnmon.jobs")

WORKER_EVENTS = frozenset({"config", "batch", "epoch", "warning", "checkpoint", "completed", "stopped", "error"})
INTERRUPTED = "interrupted by server restart"
# At shutdown SIGKILL follows SIGTERM after at most this long, so the server exits within
# stop-grace + 5 s (the rest: reaping, the last commits, ending the streams).
SHUTDOWN_KILL_GRACE_S = 2.0
# How often the watcher reads a worker's memory: a step that allocates gigabytes takes longer than this.
WATCH_INTERVAL_S = 0.5
# Before its first event a worker is starting: importing torch and loading (or downloading) its data,
# which takes from seconds to minutes on a loaded machine. A stall is counted from then on only after this.
STARTUP_ALLOWANCE_S = 300.0
# Why each field, made smaller or switched, makes a job need less memory (for job_too_large).
REDUCE_REASONS = {
    "hidden": "fewer or smaller layers: what is kept per step grows with the neurons",
    "encoding": "direct keeps no input spikes over time",
    "cell_type": "LIFCell, IFCell and SynapticCell keep the least per neuron and step",
    "learn_beta": "off: the per-step cells keep one state less per step",
    "learn_threshold": "off: the per-step cells keep one state less per step",
    "network": "SpikingNet: ConvSpikingNet keeps about 60,000 values per sample and step",
}


@dataclass(eq=False)
class Job:
    """A job's live state in this server; ``record`` is what clients and the store see."""

    record: JobRecord
    channel: EventChannel
    handle: JobHandle | None = None
    task: asyncio.Task | None = None
    reaper: asyncio.Task | None = None  # waits for the process after a stop or a terminal event
    watcher: asyncio.Task | None = None  # reads the worker's memory and notices a stall
    stop_requested: bool = False
    failure: str | None = None  # why the server ended the job itself: the message of its error event
    last_progress: float = 0.0  # loop time of the worker's latest event (or of its start)
    reported: bool = False  # the worker has sent an event: it has started
    stall_warned: bool = False  # a warning was sent for the current silence


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
        # What one job may use: host memory (admission of CPU jobs, and every worker's watch) and, for a
        # GPU job, device memory; 0 where it cannot be known (then nothing is refused for it).
        self.memory_limit = memory.cpu_job_budget(settings.job_memory_limit, settings.max_concurrent)
        self.gpu_memory_limit = memory.gpu_job_budget(settings.job_memory_limit, settings.max_concurrent,
                                                      devices.gpu_count)
        log.info("memory one job may use: %s%s", memory.gib(self.memory_limit),
                 f", {memory.gib(self.gpu_memory_limit)} on a GPU" if devices.gpu_count else "")

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
            job = self._new_job(record, head_seq=item.head_seq)
            self._jobs[record.job_id] = job
            if not record.finished:  # the server stopped without ending it: its stream must end
                self._append(job, "error", {"message": INTERRUPTED})
                interrupted += 1
        self._prune()
        if stored:
            log.info("restored %d job(s), %d of them unfinished: marked failed (%s)", len(stored), interrupted,
                     INTERRUPTED)

    async def submit(self, body: Any, origin: artifacts.StartOrigin = artifacts.StartOrigin()) -> JobRecord:
        """Validate a start request's body, admit the job by its memory and queue it once it is saved.
        ``origin``: the checkpoint it starts from (``artifacts.split_start_options``, checked already).
        Raises InvalidConfig, JobTooLarge, StoreUnavailable or ShuttingDown."""
        self._check_accepting()
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
        estimate = self._admit(config)
        job_id = uuid.uuid4().hex[:12]
        record = JobRecord(job_id, config.to_dict(), epochs=config.epochs, resumed_from=origin.resumed_from,
                           init_from=origin.init_from, memory_estimate_bytes=estimate.total,
                           memory_limit_bytes=self.memory_limit or None, **run_info)
        if not record.name:
            record.name = metadata.default_name(record.config, self.records())
        try:
            await self._store.put_job(record)  # acknowledged only once it would survive a crash
        except StoreError:
            raise StoreUnavailable("the job store cannot save anything now (the server log says why, e.g. its "
                                   "disk is full); no job was started, retry later") from None
        self._check_accepting()
        self._jobs[job_id] = self._new_job(record)
        self._waiting.append(job_id)
        log.info("job %s queued: %s", job_id, config.to_dict())
        self._prune()
        self._schedule()
        return record

    def _check_accepting(self) -> None:
        if self.shutting_down:
            raise ShuttingDown("the server is shutting down and accepts no new jobs; retry on its successor")

    def _admit(self, config: TrainConfig) -> memory.MemoryEstimate:
        """The job's memory estimate on the device it will get; JobTooLarge when over the budget."""
        on_gpu = config.device != "cpu" and (config.device != "auto" or self._devices.gpu_count > 0)
        device, budget = ("cuda", self.gpu_memory_limit) if on_gpu else ("cpu", self.memory_limit)
        estimate = memory.estimate_job_memory(config, device)
        if budget <= 0 or estimate.total <= budget:
            return estimate
        fields = {}
        for name in memory.reducible_fields(config):
            if name in ("batch_size", "timesteps"):
                largest = memory.largest_fitting(config, device, name, budget)
                fields[name] = (f"at most {largest} fits, the other fields as they are" if largest is not None
                                else "smaller (even its minimum does not fit alone)")
            else:
                fields[name] = REDUCE_REASONS[name]
        where = "GPU memory" if on_gpu else "memory"
        raise JobTooLarge(
            f"this job would need about {memory.gib(estimate.total)} of {where}, more than the "
            f"{memory.gib(budget)} one job may use (--job-memory-limit); reduce {', '.join(fields)}",
            estimate_bytes=estimate.total, budget_bytes=budget, estimate=estimate.as_dict(), fields=fields)

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
            job.last_progress = asyncio.get_running_loop().time()
            job.watcher = asyncio.create_task(self._watch(job), name=f"watch-{record.job_id}")
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
                if job.failure is not None:
                    self._append(job, "error", {"message": job.failure})
                elif job.stop_requested:
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
            for task in (job.reaper, job.watcher):
                if task is not None:
                    task.cancel()
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

    async def _watch(self, job: Job) -> None:
        """While the worker lives: its resident memory against the limit, and how long it has been silent."""
        handle, record = job.handle, job.record
        stall_s = self._settings.stall_timeout_s
        loop = asyncio.get_running_loop()
        while handle.alive and not job.channel.finished:
            await asyncio.sleep(min(WATCH_INTERVAL_S, stall_s / 4))
            usage = self._read_memory(job)
            if usage is not None and 0 < self.memory_limit < usage and job.failure is None:
                self._end(job, f"exceeded its memory limit ({memory.gib(usage, round_up=True)} of {memory.gib(self.memory_limit)})")
                return
            silent = loop.time() - job.last_progress
            allowed = stall_s if job.reported else max(stall_s, STARTUP_ALLOWANCE_S)
            if silent < allowed or job.stall_warned or job.stop_requested or job.channel.finished:
                continue
            job.stall_warned = True
            kill = self._settings.stall_action == "kill"
            log.warning("job %s: no event from its worker for %.0f s%s", record.job_id, silent,
                        "; ending it (--stall-action kill)" if kill else "")
            self._append(job, "warning", {"kind": "stall", "message": (
                f"no progress for {silent:.0f} s: the worker has sent no event for --stall-timeout "
                f"{allowed:g} s" + ("; the job is ended" if kill else ""))})
            if kill:
                self._end(job, f"no progress for {allowed:g} s")
                return

    def _read_memory(self, job: Job) -> int | None:
        """The worker's resident bytes now (None when unknown); keeps the record's peak up to date."""
        pid = getattr(job.handle, "pid", None)
        usage = memory.resident_bytes(pid) if pid is not None and job.handle.alive else None
        if usage is None:
            return None
        resident, peak = usage
        job.record.peak_rss_bytes = max(peak, job.record.peak_rss_bytes or 0)
        return resident

    def _end(self, job: Job, failure: str) -> None:
        """End a job for the server's own reason: SIGKILL its worker; it ends failed with ``failure``."""
        if job.failure is None:
            job.failure = failure
            log.warning("job %s: %s; killing its worker", job.record.job_id, failure)
        job.stop_requested = True
        if job.handle is not None:
            job.handle.kill()

    def _on_write_failed(self, job: Job, stored: StoredEvent, error: BaseException) -> None:
        """An event of this job could not be saved (so it was not sent): the job cannot go on."""
        if job.record.finished or job.failure is not None:
            return
        cause = getattr(error, "cause", None) or str(error)  # e.g. "OperationalError: database or disk is full"
        self._end(job, f"its events could not be saved ({cause}); the job was stopped")

    # -- events

    def _new_job(self, record: JobRecord, head_seq: int = 0) -> Job:
        job = Job(record, EventChannel(record.job_id, self._store, head_seq=head_seq, finished=record.finished,
                                       metrics=self.metrics))
        job.channel.on_write_failed = lambda stored, error: self._on_write_failed(job, stored, error)
        return job

    def _on_worker_event(self, job: Job, event: Any) -> None:
        name = event.get("event") if isinstance(event, dict) else None
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(name, str) or name not in WORKER_EVENTS or not isinstance(data, dict):
            log.warning("job %s: malformed worker event dropped: %.200r", job.record.job_id, event)
            return
        if job.channel.finished:
            log.warning("job %s: %s event after the terminal event dropped", job.record.job_id, name)
            return
        job.last_progress, job.stall_warned, job.reported = asyncio.get_running_loop().time(), False, True
        if job.failure is not None:
            return  # the server is ending this job: nothing it sends now can be saved or matters
        if name in ("completed", "stopped", "error"):
            self._read_memory(job)  # the worker is about to exit: its peak, for the record
        if name == "checkpoint":  # the file is on disk already: the record's size includes it
            job.record.disk_bytes = artifacts.disk_usage(artifacts.job_dir(self._settings, job.record.job_id))
        emitted_at = event.get("emitted_at")  # the worker's time.monotonic() (trainer.worker._Emitter)
        self._append(job, name, data, emitted_at=emitted_at if isinstance(emitted_at, float) else None)

    def _append(self, job: Job, name: str, data: dict[str, Any], *, emitted_at: float | None = None) -> None:
        """Number and encode one event, bring the record in step with it, and store both together."""
        record = job.record
        record.apply(name, data, time.time())
        job.channel.append(name, data, record, emitted_at=emitted_at)
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
