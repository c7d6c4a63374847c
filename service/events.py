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

Fan-out is a *sweep* over the live subscribers: each is handed everything published after its own
position (``Subscriber.offered_seq``) as one ``FrameBatch`` (those frames joined once, shared by every
subscriber at the same position). A live subscriber with a ``FrameSink`` (its stream's socket) and
nothing queued is written to directly: one ``transport.write`` and no task wake-up, no timer, no
``drain()``. Only a subscriber whose socket is above its high-water mark, or that has events queued,
takes the events into its buffer; its stream task writes them, all queued at once, and awaits the
drain. So a thousand subscribers cost a thousand writes per sweep, not a thousand tasks.

The sweep gives the event loop back every ``SWEEP_CHUNK`` subscribers. A thousand writes to loopback
sockets take tens of milliseconds, and before, the next commit's publish waited for all of them and
then paid its own thousand: an event's last client got it two fan-outs late. Now a commit that lands
mid-sweep joins it: the subscribers not yet visited get both groups in one write, and the next pass
takes the new group to those already visited. So no event waits more than about one sweep, and the
faster events come, the fewer writes each costs.

A subscriber that cannot keep up (its socket stays full) may skip batch events, never others: the
buffer holds at most ``capacity`` events plus the job's epoch and terminal events (at most 100 epochs).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

import orjson

from service.store import JobRecord, JobStore, StoredEvent
from service.subscriber import REPLAY_PAGE, Subscriber

__all__ = ["REPLAY_PAGE", "EventChannel", "FrameBatch", "FrameSink", "Subscriber", "heartbeat_frame"]

if TYPE_CHECKING:
    from service.prometheus import ServiceMetrics

log = logging.getLogger("snnmon.events")
_offered_seq = operator.attrgetter("offered_seq")

# Subscribers written per loop turn of a sweep: about 1 to 4 ms of loopback writes, so commits, numbering
# and requests wait at most that long for the loop while a thousand subscribers are written.
SWEEP_CHUNK = 25


class FrameBatch:
    """Events published together, in seq order, with their frames joined once for every subscriber."""

    __slots__ = ("events", "first_seq", "last_seq", "terminal", "_body", "_http_chunk")

    def __init__(self, events: list[StoredEvent]):
        self.events = events
        self.first_seq = events[0].seq
        self.last_seq = events[-1].seq
        self.terminal = events[-1].terminal
        self._body: bytes | None = None
        self._http_chunk: bytes | None = None

    @property
    def body(self) -> bytes:
        """The frames back to back: what a stream writes for the whole batch."""
        if self._body is None:
            events = self.events
            self._body = events[0].frame if len(events) == 1 else b"".join(e.frame for e in events)
        return self._body

    @property
    def http_chunk(self) -> bytes:
        """``body`` as one chunk of an HTTP/1.1 ``Transfer-Encoding: chunked`` response (RFC 9112 7.1),
        the framing aiohttp gives a stream response whose length is unknown."""
        if self._http_chunk is None:
            body = self.body
            self._http_chunk = b"%x\r\n%s\r\n" % (len(body), body)
        return self._http_chunk


class FrameSink(Protocol):
    """Where a live subscriber's frames go without its task: its stream's socket (``service.stream``)."""

    def write(self, batch: FrameBatch) -> bool:
        """Write the batch now and return True, or return False (the socket is above its high-water mark,
        or closing) and write nothing. Never raises, never waits."""


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
        self.published_at = float("-inf")  # loop.time() of the latest publish (heartbeats count from it)
        self.on_write_failed: Callable[[StoredEvent, BaseException], None] | None = None
        self._pending: deque[tuple[StoredEvent, asyncio.Future[None]]] = deque()
        self._subscribers: set[Subscriber] = set()
        # The sweep: events published since every subscriber last had all of them (contiguous seqs), the
        # subscribers still to visit in this pass, and one batch per position they start from.
        self._backlog: list[StoredEvent] = []
        self._to_visit: deque[Subscriber] = deque()
        self._batches: dict[int, FrameBatch] = {}
        self._sweep_started: float | None = None  # perf_counter() at the sweep's first step; None: idle
        self._sweep_cpu = 0.0  # thread_time() then: the debug line tells CPU from waiting for a core
        self._sweep_offers = 0
        self._next_step: asyncio.Handle | None = None  # the sweep's next loop turn, when one is due
        self._swept: asyncio.Event | None = None  # set when a sweep ends (``wait_published`` waits on it)
        self._covered = head_seq  # debug log only: the last seq logged as offered to every subscriber

    def append(self, event: str, data: dict[str, Any], record: JobRecord, *,
               emitted_at: float | None = None) -> StoredEvent:
        """Number and encode an event; store it with ``record`` (one transaction); publish once committed.
        ``emitted_at``: the worker's ``time.monotonic()`` when it emitted the event (debug log only: it is
        this machine's clock, so it is kept out of the frame)."""
        if self.finished:
            raise RuntimeError(f"job {self.job_id}: {event} event after the terminal event")
        stored = StoredEvent.encode(self.head_seq + 1, event, data)
        committed = self.store.append_event(self.job_id, stored, record)
        self.head_seq = stored.seq
        self.finished = stored.terminal
        if log.isEnabledFor(logging.DEBUG):
            log.debug("numbered job=%s seq=%d event=%s t=%.6f mono=%.6f emitted=%.6f", self.job_id,
                      stored.seq, event, stored.numbered_at, time.monotonic(),
                      emitted_at if emitted_at is not None else float("nan"))
        self._pending.append((stored, committed))
        committed.add_done_callback(self._publish_committed)
        return stored

    async def wait_published(self) -> None:
        """Until every event numbered so far is published (committed, or its write failed) and offered to
        every live subscriber."""
        if self._pending:
            await asyncio.wait([future for _, future in self._pending])
            await asyncio.sleep(0)  # the done callbacks run one loop turn after the futures complete
        while self._sweep_started is not None:
            if self._swept is None:
                self._swept = asyncio.Event()
            self._swept.clear()
            await self._swept.wait()

    def delete(self) -> None:
        """The job is being deleted. Its subscribers end once they have handed out what is published or
        still being committed (a job pruned as it finishes still sends its terminal event live)."""
        self.deleted = True
        self._finish_sweep()  # what was published goes out before the subscribers look at the flag
        for subscriber in tuple(self._subscribers):
            subscriber.wake()

    def subscribe(self, after_seq: int, capacity: int) -> Subscriber:
        return Subscriber(self, after_seq, capacity)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _publish_committed(self, _: asyncio.Future[None]) -> None:
        # The writer settles futures in order, so this publishes in seq order, and stops at a failure.
        # A group commit settles several futures at once: the first callback publishes them all, as one
        # batch, and the others find nothing left to do.
        ready: list[StoredEvent] = []
        while self._pending and self._pending[0][1].done():
            stored, committed = self._pending.popleft()
            if self.broken:
                continue
            error = committed.exception()
            if error is not None:
                self._fan_out(ready)
                ready = []
                self._break(stored, error)
                continue
            ready.append(stored)
        self._fan_out(ready)

    def _fan_out(self, ready: list[StoredEvent]) -> None:
        if not ready:
            return
        self.published_seq = ready[-1].seq
        self.ended = ready[-1].terminal
        self.published_at = asyncio.get_running_loop().time()
        if self.metrics is not None:
            for stored in ready:
                self.metrics.event_published(stored.event)
        if log.isEnabledFor(logging.DEBUG):  # the load benchmark's perf counters (bench/sse_load.py)
            published_at = time.time()
            for stored in ready:
                log.debug("published job=%s seq=%d t=%.6f", self.job_id, stored.seq, published_at)
        self._backlog.extend(ready)
        self._batches.clear()  # every batch now ends at the new head
        if self._sweep_started is None:
            self._sweep_started, self._sweep_cpu, self._sweep_offers = time.perf_counter(), time.thread_time(), 0
            self._sweep_step()
        if self.ended:
            # the terminal event ends every stream: write it to all at once, before their tasks wake to
            # end the responses (a task that ends its response mid-sweep would delay the rest)
            self._finish_sweep()

    def _sweep_step(self, chunk: int | None = None) -> None:
        """Offer the backlog to the next ``chunk`` (default ``SWEEP_CHUNK``) subscribers behind it; come back
        next loop turn while any subscriber is behind, else end the sweep."""
        self._next_step = None
        chunk = chunk or SWEEP_CHUNK
        if self._sweep_started is None:
            return  # finished early (``_finish_sweep``)
        backlog, to_visit = self._backlog, self._to_visit
        head = backlog[-1].seq
        for _ in range(chunk):
            if not to_visit:
                behind = [s for s in self._subscribers if s.offered_seq < head and not s.ended]
                if not behind:
                    self._end_sweep(head)
                    return
                # furthest behind first: the events that have waited longest reach everyone first
                behind.sort(key=_offered_seq)
                to_visit.extend(behind)
            subscriber = to_visit.popleft()
            after = subscriber.offered_seq
            if after >= head or subscriber.ended:
                continue
            batch = self._batches.get(after)
            if batch is None:  # seqs in the backlog are contiguous: the events after ``after`` are a tail
                batch = self._batches[after] = FrameBatch(backlog[max(0, after + 1 - backlog[0].seq):])
            try:
                subscriber.offer_batch(batch)
            except Exception:  # a bug in one stream must not stall the sweep for every other one
                log.exception("job %s: writing to a stream failed; ending that stream", self.job_id)
                subscriber.close()
            self._sweep_offers += 1
        if to_visit and log.isEnabledFor(logging.DEBUG):  # bench/sse_load.py: every subscriber has been
            # offered the events up to the position of the next one to visit (the pass goes oldest first)
            covered = to_visit[0].offered_seq
            if covered > self._covered:
                self._covered = covered
                log.debug("covered job=%s seq=%d t=%.6f", self.job_id, covered, time.time())
        if self._next_step is None:
            self._next_step = asyncio.get_running_loop().call_soon(self._sweep_step)

    def _end_sweep(self, head: int) -> None:
        if log.isEnabledFor(logging.DEBUG):  # the load benchmark's perf counters (bench/sse_load.py)
            log.debug("swept job=%s seq=%d subscribers=%d offers=%d sweep_ms=%.3f cpu_ms=%.3f t=%.6f", self.job_id,
                      head, len(self._subscribers), self._sweep_offers,
                      1000 * (time.perf_counter() - self._sweep_started),
                      1000 * (time.thread_time() - self._sweep_cpu), time.time())
        self._covered = head
        self._backlog.clear()
        self._batches.clear()
        self._sweep_started = None
        if self._next_step is not None:
            self._next_step.cancel()
            self._next_step = None
        if self._swept is not None:
            self._swept.set()

    def _finish_sweep(self) -> None:
        """Offer everything published to every subscriber now, without giving the loop back (before the
        subscribers are told the channel is deleted or broken: they end once they have it all)."""
        while self._sweep_started is not None:
            self._sweep_step(chunk=len(self._subscribers) + 1)

    def _break(self, stored: StoredEvent, error: BaseException) -> None:
        self.broken = True
        self._finish_sweep()
        log.warning("job %s: event %d (%s) was not saved, so it is not sent; ending the job's streams",
                    self.job_id, stored.seq, stored.event)
        for subscriber in tuple(self._subscribers):
            subscriber.wake()
        if self.on_write_failed is not None:
            self.on_write_failed(stored, error)

    def _attach(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def _detach(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
