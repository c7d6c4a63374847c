"""One stream client's position in a job's ``EventChannel`` (``service.events``): its replay from the
store, page by page, then the live events, either written straight to its socket by the channel (its
``sink``) or queued, bounded, for its stream task. The module docstring of ``service.events`` tells the
whole story; this one holds the per-client half.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from service.store import StoredEvent

if TYPE_CHECKING:
    from service.events import EventChannel, FrameBatch, FrameSink

log = logging.getLogger("snnmon.events")

REPLAY_PAGE = 256  # events read from the store at a time during a replay
SKIPPABLE = "batch"  # the only event a slow subscriber may miss: the next epoch event sums it up


class Subscriber:
    """One stream client's position in a channel (event loop). Its stream task calls ``next_events``; once
    the subscriber is live and has a ``sink``, the channel writes to the sink directly while it can."""

    def __init__(self, channel: EventChannel, after_seq: int, capacity: int):
        self._channel = channel
        self._capacity = capacity
        self._cursor = after_seq  # seq of the last event handed out or written to the sink
        self.offered_seq = after_seq  # seq of the last live event offered (written, queued or skipped)
        self._replay: deque[StoredEvent] = deque()  # the current replay page
        self._live: deque[StoredEvent] | None = None  # None while replaying
        self._wakeup = asyncio.Event()
        self._holding = False  # events handed out are being written by the task: the sink must wait
        self.sink: FrameSink | None = None  # set by the stream once its response has started
        self.ended = False  # the terminal event was handed out, or the subscriber was closed
        self.dropped = 0  # batch events skipped because this subscriber fell behind

    async def next_event(self, timeout: float) -> StoredEvent | None:
        """The next event, or None after ``timeout`` seconds without one (or once ``ended``)."""
        while not self.ended:
            event = self._take()
            if event is not None:
                self._hand_out(event)
                return event
            if not await self._wait_for_more(timeout):
                return None
        return None

    async def next_events(self, timeout: float) -> list[StoredEvent]:
        """Every event ready now, in order (a replay page, or live events the sink could not take), or []
        after ``timeout`` seconds in which nothing was sent to this subscriber (a heartbeat is due), or
        once ``ended``. The caller writes them before it asks again: until then the sink is not used."""
        self._holding = False
        while not self.ended:
            events = []
            while (event := self._take()) is not None:
                events.append(event)
                self._cursor = event.seq  # so _take drops a live repeat of what was just taken
            if events:
                self._hand_out(events[-1])
                self._holding = self.sink is not None
                return events
            if not await self._wait_for_more(timeout):
                return []
        return []

    def offer(self, event: StoredEvent) -> None:
        """Queue one new event (live phase only) for the task; never blocks."""
        live = self._live
        if self.ended or live is None or event.seq <= self._cursor:
            return
        if len(live) >= self._capacity and not self._make_room(live, event):
            self._skipped()
            return
        live.append(event)
        self._wakeup.set()

    def offer_batch(self, batch: FrameBatch) -> None:
        """Called by the channel's sweep with the events published after ``offered_seq`` (live phase only);
        never blocks. The fast path: nothing queued, so the batch goes to the sink at once and the task
        sleeps on."""
        self.offered_seq = batch.last_seq
        sink, live = self.sink, self._live
        if (sink is not None and live is not None and not live and not self._holding and not self.ended
                and batch.first_seq > self._cursor and sink.write(batch)):
            self._cursor = batch.last_seq
            if batch.terminal:
                self.close()  # the stream task wakes and ends the response
            return
        for event in batch.events:
            self.offer(event)

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

    def _hand_out(self, event: StoredEvent) -> None:
        self._cursor = event.seq
        if event.terminal:
            self.close()

    async def _wait_for_more(self, timeout: float) -> bool:
        """Nothing to hand out: read the store, or wait for a publish or ``wake``. False after ``timeout``
        seconds in which nothing went to this subscriber (sink writes count), or once it has ended."""
        channel = self._channel
        if channel.deleted and channel.published_seq >= channel.head_seq:
            self.close()  # its events are gone from the store, and no more are coming
            return False
        if channel.broken and self._live is not None:
            self.close()  # what was published is handed out; what failed to save never will be
            return False
        if self._live is None:
            await self._read_page_or_go_live()
            return True
        if channel.ended and self._cursor >= channel.published_seq:
            self.close()  # joined with a Last-Event-ID at or past the terminal event
            return False
        loop = asyncio.get_running_loop()
        self._wakeup.clear()
        deadline = loop.time() + timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wakeup.wait()
                return True
            except TimeoutError:
                # sink writes do not wake the task: the quiet time runs from the latest publish
                deadline = channel.published_at + timeout
                if self.sink is None or deadline <= loop.time():
                    return False

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
        self.offered_seq = self._cursor
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
