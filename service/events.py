"""One job's event stream: numbering, encoding once, storing, and fanning out to SSE subscribers.

An ``EventChannel`` numbers each event the worker reports (1, 2, 3, ...), encodes it once into its SSE
frame and hands it, with the job's updated record, to the store. Only when the store has committed it
is it *published*: offered to every live ``Subscriber``. So no client ever sees an event that a crash
could take back. A subscriber first replays from the store, page by page, until it has caught up with
what is published; only then does it take live events, through a bounded buffer. So a late subscriber,
or one that reconnects with ``Last-Event-ID``, gets exactly the events after its position, and a job
that ended long ago replays from the store alone (memory holds no finished job's events).

An event whose write failed (a full disk) is never published: the channel is *broken* from then on,
publishes nothing more, and ends its subscribers once they have handed out what was published before; a
client that reconnects gets what the store holds and then the end of the stream. So no client ever holds
a seq that a later server could number again. ``on_write_failed`` tells the job manager, which stops the
job.

A subscriber that cannot keep up (its socket stays full) may skip batch events, never others: the
buffer holds at most ``capacity`` events plus the job's epoch and terminal events (at most 100 epochs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import orjson

from service.store import JobRecord, JobStore, StoredEvent

if TYPE_CHECKING:
    from service.prometheus import ServiceMetrics

log = logging.getLogger("snnmon.events")

REPLAY_PAGE = 256  # events read from the store at a time during a replay
SKIPPABLE = "batch"  # the only event a slow subscriber may miss: the next epoch event sums it up


def heartbeat_frame() -> bytes:
    """A heartbeat has no ``id:`` line, so it leaves the client's Last-Event-ID where it was."""
    return b"data: %s\n\n" % orjson.dumps({"event": "heartbeat", "data": {"ts": time.time()}})


class EventChannel:
    """The numbered events of one job, and the subscribers that follow them live (event-loop thread)."""

    def __init__(self, job_id: str, store: JobStore, *, head_seq: int = 0, finished: bool = False,
                 metrics: "ServiceMetrics | None" = None):
        self.job_id = job_id
        self.store = store
        self.metrics = metrics  # /metrics counters (service.prometheus); None: not counted
        self.head_seq = head_seq  # seq of the last event numbered (its commit may be pending)
        self.finished = finished  # the terminal event is numbered; nothing follows it
        self.published_seq = head_seq  # seq of the last event committed and offered to subscribers
        self.ended = finished  # the terminal event is published
        self.deleted = False  # the job was deleted: its subscribers end
        self.broken = False  # an event's write failed: nothing more is published, subscribers end
        self.on_write_failed: Callable[[StoredEvent, BaseException], None] | None = None
        self._pending: deque[tuple[StoredEvent, asyncio.Future[None]]] = deque()
        self._subscribers: set[Subscriber] = set()

    def append(self, event: str, data: dict[str, Any], record: JobRecord) -> StoredEvent:
        """Number and encode an event; store it with ``record`` (one transaction); publish once committed."""
        if self.finished:
            raise RuntimeError(f"job {self.job_id}: {event} event after the terminal event")
        stored = StoredEvent.encode(self.head_seq + 1, event, data)
        committed = self.store.append_event(self.job_id, stored, record)
        self.head_seq = stored.seq
        self.finished = stored.terminal
        if log.isEnabledFor(logging.DEBUG):
            log.debug("numbered job=%s seq=%d event=%s t=%.6f", self.job_id, stored.seq, event,
                      stored.numbered_at)
        self._pending.append((stored, committed))
        committed.add_done_callback(self._publish_committed)
        return stored

    async def wait_published(self) -> None:
        """Until every event numbered so far is published (committed, or its write failed)."""
        if self._pending:
            await asyncio.wait([future for _, future in self._pending])
            await asyncio.sleep(0)  # the done callbacks run one loop turn after the futures complete

    def delete(self) -> None:
        """The job is being deleted. Its subscribers end once they have handed out what is published or
        still being committed (a job pruned as it finishes still sends its terminal event live)."""
        self.deleted = True
        for subscriber in tuple(self._subscribers):
            subscriber.wake()

    def subscribe(self, after_seq: int, capacity: int) -> "Subscriber":
        return Subscriber(self, after_seq, capacity)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _publish_committed(self, _: asyncio.Future[None]) -> None:
        # The writer settles futures in order, so this publishes in seq order, and stops at a failure.
        while self._pending and self._pending[0][1].done():
            stored, committed = self._pending.popleft()
            if self.broken:
                continue
            error = committed.exception()
            if error is not None:
                self._break(stored, error)
                continue
            self.published_seq = stored.seq
            self.ended = stored.terminal
            if log.isEnabledFor(logging.DEBUG):
                log.debug("published job=%s seq=%d t=%.6f", self.job_id, stored.seq, time.time())
            if self.metrics is not None:
                self.metrics.event_published(stored.event)
            for subscriber in tuple(self._subscribers):
                subscriber.offer(stored)

    def _break(self, stored: StoredEvent, error: BaseException) -> None:
        self.broken = True
        log.warning("job %s: event %d (%s) was not saved, so it is not sent; ending the job's streams",
                    self.job_id, stored.seq, stored.event)
        for subscriber in tuple(self._subscribers):
            subscriber.wake()
        if self.on_write_failed is not None:
            self.on_write_failed(stored, error)

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
            if self._channel.deleted and self._channel.published_seq >= self._channel.head_seq:
                self.close()  # its events are gone from the store, and no more are coming
                break
            if self._channel.broken and self._live is not None:
                self.close()  # what was published is handed out; what failed to save never will be
                break
            if self._live is None:
                await self._read_page_or_go_live()
                continue
            if self._channel.ended and self._cursor >= self._channel.published_seq:
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
            self._skipped()
            return
        live.append(event)
        self._wakeup.set()

    def wake(self) -> None:
        """Make a waiting ``next_event`` look at the channel again."""
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

    async def _read_page_or_go_live(self) -> None:
        channel = self._channel
        published = channel.published_seq  # everything up to here is committed, so the read sees it
        page = await channel.store.events_after(channel.job_id, self._cursor, REPLAY_PAGE)
        if self.ended:
            return
        if page:
            self._replay.extend(page)
            return
        if channel.published_seq > self._cursor and published <= self._cursor:
            return  # more was published while the read ran: read again
        if channel.broken:
            self.close()  # the store holds all this job will ever send
            return
        # Caught up: no await since the check, so no event can fall between the store and the buffer.
        if self._cursor < channel.published_seq and not channel.deleted:
            log.warning("job %s: store has no events after %d but %d are published; following live",
                        channel.job_id, self._cursor, channel.published_seq)
        self._live = deque()
        channel._attach(self)

    def _make_room(self, live: deque[StoredEvent], incoming: StoredEvent) -> bool:
        """Drop the oldest queued batch event; False when the incoming one is the batch to drop."""
        for index, queued in enumerate(live):
            if queued.event == SKIPPABLE:
                del live[index]
                self._skipped()
                return True
        return incoming.event != SKIPPABLE

    def _skipped(self) -> None:
        self.dropped += 1
        if self._channel.metrics is not None:
            self._channel.metrics.batch_event_skipped()
