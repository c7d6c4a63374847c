"""An event whose write failed is never sent (issue 10, item 2), on a real SQLite store whose writes
are made to fail one at a time: a write that breaks the events table's primary key fails in the
database exactly as a full disk's does, through the same path (the writer thread, the future)."""

from __future__ import annotations

import asyncio

import pytest

from service.events import EventChannel
from service.sqlite_store import SQLiteJobStore
from service.store import JobRecord, StoredEvent

pytestmark = pytest.mark.timeout(30)


class FailingStore(SQLiteJobStore):
    """Writes event ``fail_seq`` as a duplicate of event 1, so the database refuses it."""

    fail_seq: int | None = None

    def append_event(self, job_id, event, record):
        if event.seq == self.fail_seq:
            event = StoredEvent(1, event.event, event.frame, event.numbered_at)
        return super().append_event(job_id, event, record)


def test_an_unsaved_event_is_never_published_and_the_streams_end_after_what_was(tmp_path):
    async def scenario():
        store = FailingStore(tmp_path)
        await store.open()
        record = JobRecord("job1", {})
        await store.put_job(record)
        channel = EventChannel("job1", store)
        failures = []
        channel.on_write_failed = lambda stored, error: failures.append((stored.seq, error.cause))
        live = channel.subscribe(0, capacity=64)
        channel.append("config", {}, record)
        first = await live.next_event(1.0)
        store.fail_seq = 3
        for batch in range(4):  # seq 2 is saved; 3 fails; 4 and 5 are saved but follow a failure
            channel.append("batch", {"batch": batch}, record)
        await channel.wait_published()
        handed_out = [first]
        while (event := await live.next_event(1.0)) is not None:
            handed_out.append(event)
        late = channel.subscribe(0, capacity=64)  # a client reconnecting: the store, then the end
        replayed = []
        while (event := await late.next_event(1.0)) is not None:
            replayed.append(event)
        health = store.healthy
        await store.close()
        return channel, failures, handed_out, live.ended, replayed, late.ended, health

    channel, failures, handed_out, live_ended, replayed, late_ended, health = asyncio.run(scenario())
    assert [event.seq for event in handed_out] == [1, 2]  # nothing from the failed write on
    assert live_ended and late_ended  # both streams end instead of waiting for events that never come
    assert [event.seq for event in replayed] == [1, 2, 4, 5]  # what the store holds; 3 never existed
    assert channel.broken and channel.published_seq == 2 and channel.head_seq == 5  # seqs never reused
    assert [seq for seq, _ in failures] == [3]
    assert failures[0][1].startswith("IntegrityError: UNIQUE constraint failed")
    assert health  # the writes after the failure succeeded: the store is healthy again
