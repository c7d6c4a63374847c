"""Where job records and their numbered events live: the ``JobStore`` seam and its in-memory version.

The job manager is the only writer. It owns each ``JobRecord`` while the job lives, and saves it after
every change with ``put_job``; events are appended once, already numbered and encoded, and read back by
sequence number for replays. A persistent store (SQLite) implements the same five methods.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

TERMINAL_EVENTS = frozenset({"completed", "stopped", "error"})
TERMINAL_STATUSES = frozenset({"completed", "stopped", "failed"})
# queued → starting → running → completed | stopped | failed, with stopping between
STATUSES = ("queued", "starting", "running", "stopping", "completed", "stopped", "failed")


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

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def _plain(value: Any) -> Any:
    """orjson fallback for numbers that are not Python floats (numpy, 0-dim tensors): their float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class JobStore(Protocol):
    def put_job(self, record: JobRecord) -> None:
        """Create or replace the record of ``record.job_id``."""

    def get_job(self, job_id: str) -> JobRecord | None: ...

    def list_jobs(self) -> list[JobRecord]:
        """Every record, newest first."""

    def append_event(self, job_id: str, event: StoredEvent) -> None:
        """Add the job's next event; ``event.seq`` is one more than the last one."""

    def events_after(self, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events with seq > ``after_seq``, in order."""


class MemoryJobStore:
    """Records and events in dictionaries: everything is lost when the server stops."""

    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}
        self._events: dict[str, list[StoredEvent]] = {}

    def put_job(self, record: JobRecord) -> None:
        self._records[record.job_id] = record
        self._events.setdefault(record.job_id, [])

    def get_job(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def list_jobs(self) -> list[JobRecord]:
        return list(reversed(self._records.values()))  # dicts keep insertion (creation) order

    def append_event(self, job_id: str, event: StoredEvent) -> None:
        events = self._events[job_id]
        if event.seq != len(events) + 1:
            raise ValueError(f"job {job_id}: event {event.seq} appended after {len(events)}")
        events.append(event)

    def events_after(self, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        # seq n is at index n - 1, so the slice needs no search
        start = max(after_seq, 0)
        return self._events.get(job_id, [])[start:start + limit]
