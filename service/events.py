"""One job's event stream: numbering, encoding once, storing, and fanning out to SSE subscribers.

An ``EventChannel`` numbers each event the worker reports (1, 2, 3, ...), encodes it once into its SSE
frame, appends it to the store and offers it to every live ``Subscriber``. A subscriber first replays
from the store, page by page, until it has caught up with the channel's head; only then does it take
live events, through a bounded buffer. So a late subscriber, or one that reconnects with
``Last-Event-ID``, gets exactly the events after its position, and a job that ended long ago replays
from the store alone.

A subscriber that cannot keep up (its socket stays full) may skip batch events, never others: the
buffer holds at most ``capacity`` events plus the job's epoch and terminal events (at most 100 epochs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import orjson

from service.store import JobStore, StoredEvent

log = logging.getLogger("snnmon.events")

REPLAY_PAGE = 256  # events read from the store at a time during a replay
SKIPPABLE = "batch"  # the only event a slow subscriber may miss: the next epoch event sums it up


def heartbeat_frame() -> bytes:
    """A heartbeat has no ``id:`` line, so it leaves the client's Last-Event-ID where it was."""
    return b"data: %s\n\n" % orjson.dumps({"event": "heartbeat", "data": {"ts": time.time()}})


class EventChannel:
    """The numbered events of one job, and the subscribers that follow them live."""

    def __init__(self, job_id: str, store: JobStore, *, head_seq: int = 0, finished: bool = False):
        self.job_id = job_id
        self.store = store
        self.head_seq = head_seq  # seq of the last event appended
        self.finished = finished  # the terminal event is appended; nothing follows it
        self._subscribers: set[Subscriber] = set()

    def append(self, event: str, data: dict[str, Any]) -> StoredEvent:
        if self.finished:
            raise RuntimeError(f"job {self.job_id}: {event} event after the terminal event")
        stored = StoredEvent.encode(self.head_seq + 1, event, data)
        self.store.append_event(self.job_id, stored)
        self.head_seq = stored.seq
        self.finished = stored.terminal
        if log.isEnabledFor(logging.DEBUG):
            log.debug("numbered job=%s seq=%d event=%s t=%.6f", self.job_id, stored.seq, event,
                      stored.numbered_at)
        for subscriber in tuple(self._subscribers):
            subscriber.offer(stored)
        return stored

    def subscribe(self, after_seq: int, capacity: int) -> "Subscriber":
        return Subscriber(self, after_seq, capacity)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _attach(self, subscriber: "Subscriber") -> None:
        self._subscribers.add(subscriber)

    def _detach(self, subscriber: "Subscriber") -> None:
        self._subscribers.discard(subscriber)


class Subscriber:
    """One stream client's position in a channel. Runs in the event loop; ``next_event`` is its API."""

    def __init__(self, channel: EventChannel, after_seq: int, capacity: int):
        self._channel = channel
        self._capacity = capacity
        self._cursor = after_seq  # seq of the last event handed out
        self._replay: deque[StoredEvent] = deque()  # the current replay page
        self._live: deque[StoredEvent] | None = None  # None while replaying
        self._wakeup = asyncio.Event()
        self.ended = False  # the terminal event was handed out, or the subscriber was closed
        self.dropped = 0  # batch events skipped because this subscriber fell behind

    async def next_event(self, timeout: float) -> StoredEvent | None:
        """The next event, or None after ``timeout`` seconds without one (or once ``ended``)."""
        while not self.ended:
            event = self._take()
            if event is not None:
                self._cursor = event.seq
                if event.terminal:
                    self.close()
                return event
            if self._live is None:
                self._read_page_or_go_live()
                continue
            if self._channel.finished and self._cursor >= self._channel.head_seq:
                self.close()  # joined with a Last-Event-ID at or past the terminal event
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                return None
        return None

    def offer(self, event: StoredEvent) -> None:
        """Called by the channel for each new event (live phase only); never blocks."""
        live = self._live
        if self.ended or live is None or event.seq <= self._cursor:
            return
        if len(live) >= self._capacity and not self._make_room(live, event):
            self.dropped += 1
            return
        live.append(event)
        self._wakeup.set()

    def close(self) -> None:
        """Stop following the channel (stream ended, client gone, or server shutting down)."""
        self.ended = True
        self._channel._detach(self)
        self._replay.clear()
        if self._live is not None:
            self._live.clear()
        self._wakeup.set()

    def _take(self) -> StoredEvent | None:
        for buffer in (self._replay, self._live):
            while buffer:
                event = buffer.popleft()
                if event.seq > self._cursor:  # a live event may repeat the tail of the replay
                    return event
        return None

    def _read_page_or_go_live(self) -> None:
        page = self._channel.store.events_after(self._channel.job_id, self._cursor, REPLAY_PAGE)
        if page:
            self._replay.extend(page)
            return
        # Caught up: no await since the read, so no event can fall between the store and the buffer.
        if self._cursor < self._channel.head_seq:
            log.warning("job %s: store has no events after %d but the head is %d; following live",
                        self._channel.job_id, self._cursor, self._channel.head_seq)
        self._live = deque()
        self._channel._attach(self)

    def _make_room(self, live: deque[StoredEvent], incoming: StoredEvent) -> bool:
        """Drop the oldest queued batch event; False when the incoming one is the batch to drop."""
        for index, queued in enumerate(live):
            if queued.event == SKIPPABLE:
                del live[index]
                self.dropped += 1
                return True
        return incoming.event != SKIPPABLE
