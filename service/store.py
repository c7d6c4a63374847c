"""What the service keeps about jobs, and the ``JobStore`` seam that keeps it.

A ``JobRecord`` is one job as clients see it; ``JobRecord.apply`` is the one place that says how each
event changes it. A ``StoredEvent`` is one numbered event, encoded once into its SSE frame; the store
keeps those exact bytes, so a replay (also after a restart) is byte-identical to the live stream.

The job manager is the only writer. Writes are queued and return a future that resolves once they are
committed (``service.sqlite_store`` commits off the event loop, in one writer thread); an event and the
record it changes are one write, so they commit in one transaction. Reads are coroutines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

TERMINAL_EVENTS = frozenset({"completed", "stopped", "error"})
TERMINAL_STATUSES = frozenset({"completed", "stopped", "failed"})
# queued → starting → running → completed | stopped | failed, with stopping between
STATUSES = ("queued", "starting", "running", "stopping", "completed", "stopped", "failed")
# The record is rewritten with every event: a run that warns every epoch must not make that slow.
# (Every warning stays in the job's events either way.)
WARNINGS_KEPT = 100


@dataclass
class JobRecord:
    job_id: str
    config: dict[str, Any]  # the validated TrainConfig, with its seed
    status: str = "queued"
    device: str | None = None  # "cpu" or "cuda:N", set when the job starts
    created_at: float = field(default_factory=time.time)  # Unix seconds
    started_at: float | None = None
    finished_at: float | None = None
    epoch: int | None = None  # the epoch in progress (0-based)
    epochs: int = 0
    last_metrics: dict[str, Any] | None = None  # data of the latest batch or epoch event
    final_metrics: dict[str, Any] | None = None  # data of the completed event
    best_val_accuracy: float | None = None
    error: str | None = None  # one line, when failed
    forced: bool = False  # stopped by signals after the grace period
    memory_estimate_bytes: int | None = None  # the admission estimate of its peak memory (service.memory)
    memory_limit_bytes: int | None = None  # the budget it was admitted under; its worker is ended past it
    peak_rss_bytes: int | None = None  # the worker's peak resident memory, as last read while it ran
    name: str = ""  # run metadata (service.metadata): set at start, changed by PATCH
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    warnings: list[dict[str, Any]] = field(default_factory=list)  # data of its warning events, oldest first
    artifacts: dict[str, Any] = field(default_factory=dict)  # {"best"|"last": {"epoch", "bytes"}}
    disk_bytes: int = 0  # the job's checkpoint folder in the data directory
    resumed_from: str | None = None  # the job this one continues (start option resume_from)
    init_from: dict[str, str] | None = None  # {"job_id", "which"}: the weights this job started from
    backend: str = "process"  # what ran it: "process" (a worker process on the server's machine) or "ray"
    node: str | None = None  # the Ray node id of the node that ran it (Ray backend only), set once placed

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "JobRecord":
        """A record read back from storage; fields this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known})

    def apply(self, event: str, data: dict[str, Any], now: float) -> None:
        """Bring the record in step with one of its job's events (called as the event is numbered)."""
        if event == "config":
            if self.status == "starting":
                self.status = "running"
        elif event in ("batch", "epoch"):
            self.epoch = data.get("epoch")
            self.last_metrics = data
            accuracy = data.get("val_accuracy")
            if isinstance(accuracy, (int, float)) and (self.best_val_accuracy is None
                                                       or accuracy > self.best_val_accuracy):
                self.best_val_accuracy = accuracy
        elif event == "warning":
            if len(self.warnings) < WARNINGS_KEPT:
                self.warnings.append(data)
        elif event == "checkpoint":
            self.artifacts[str(data.get("which"))] = {"epoch": data.get("epoch"), "bytes": data.get("bytes")}
        elif event == "completed":
            self.status, self.final_metrics, self.finished_at = "completed", data, now
        elif event == "stopped":
            self.status, self.forced, self.finished_at = "stopped", bool(data.get("forced")), now
        elif event == "error":
            self.status, self.error, self.finished_at = "failed", str(data.get("message")), now


@dataclass(frozen=True)
class StoredEvent:
    """One numbered event, encoded once: ``frame`` is the exact SSE bytes every subscriber gets."""

    seq: int
    event: str
    frame: bytes
    numbered_at: float  # Unix seconds, when the service numbered it

    @classmethod
    def encode(cls, seq: int, event: str, data: dict[str, Any]) -> "StoredEvent":
        # orjson writes NaN and infinities as null; the trainer never sends them (a NaN loss is an error)
        payload = orjson.dumps({"event": event, "data": data}, default=_plain)
        return cls(seq, event, b"id: %d\ndata: %s\n\n" % (seq, payload), time.time())

    @property
    def payload(self) -> bytes:
        """The JSON object on the frame's data line."""
        return self.frame.split(b"data: ", 1)[1].rstrip(b"\n")

    @property
    def data(self) -> dict[str, Any]:
        return orjson.loads(self.payload)["data"]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def _plain(value: Any) -> Any:
    """orjson fallback for numbers that are not Python floats (numpy, 0-dim tensors): their float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True)
class StoredJob:
    """A job as read back at start-up: its record and the seq of its last event (0: none)."""

    record: JobRecord
    head_seq: int


class StoreError(Exception):
    """The store cannot be opened or a write failed; the message says what to do about it."""

    cause: str | None = None  # for a failed write: the database's own error, e.g. "database or disk is full"


class JobStore(Protocol):
    """Writes return a future that resolves once committed (or fails with StoreError)."""

    healthy: bool  # open, and the latest write succeeded

    async def open(self) -> list[StoredJob]:
        """Open (creating it if needed) and return every job, oldest first."""

    def put_job(self, record: JobRecord) -> asyncio.Future[None]:
        """Create or replace the record of ``record.job_id`` (a snapshot is taken now)."""

    def append_event(self, job_id: str, event: StoredEvent, record: JobRecord) -> asyncio.Future[None]:
        """Add the job's next event and its updated record, in one transaction."""

    def delete_job(self, job_id: str) -> asyncio.Future[None]:
        """Remove a job's record and every one of its events."""

    async def events_after(self, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` committed events with seq > ``after_seq``, in order."""

    async def events_named(self, job_id: str, event: str) -> list[StoredEvent]:
        """Every committed event of one type (e.g. "epoch"), in order."""

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""

    async def probe(self) -> bool:
        """Try one small write now (to learn whether writes succeed again); True if it committed."""

    async def close(self) -> None:
        """Commit what is queued and release the store."""
