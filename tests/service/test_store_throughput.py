"""How fast events go through the SQLite store, against a store that keeps them in memory.

Measured and printed (run with ``-s``; numbers in docs/benchmarks.md), through the real
``EventChannel`` (number, encode, store with the job's record, publish after the commit):

- burst: 20 000 events appended at once (group commit: one transaction per batch the writer takes);
- one at a time: each event appended and awaited until published (one commit, one fsync each): the
  latency a live stream sees from numbering to fan-out;
- replay: every event read back in pages of 256, as a subscriber replays a finished job.

The memory store is the baseline: the same protocol with futures that are done at once.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from service.events import REPLAY_PAGE, EventChannel
from service.sqlite_store import SQLiteJobStore
from service.store import JobRecord, StoredEvent, StoredJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BURST = 20_000
ONE_BY_ONE = 300
# A job emits at most ~10 batch events a second plus its epoch events; two concurrent jobs on this
# machine stay under 100 events/s. The store must have ample headroom over that, even with an fsync.
FLOOR_EVENTS_PER_S = 1_000


class MemoryStore:
    """The baseline: every write is "committed" at once; events live in a list per job."""

    healthy = True

    def __init__(self) -> None:
        self._events: dict[str, list[StoredEvent]] = {}

    async def open(self) -> list[StoredJob]:
        return []

    def _done(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def put_job(self, record: JobRecord) -> asyncio.Future[None]:
        return self._done()

    def append_event(self, job_id: str, event: StoredEvent, record: JobRecord) -> asyncio.Future[None]:
        self._events.setdefault(job_id, []).append(event)
        return self._done()

    async def events_after(self, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        return self._events.get(job_id, [])[after_seq:after_seq + limit]

    async def close(self) -> None:
        pass


BATCH = {"epoch": 3, "batch": 120, "n_batches": 375, "loss": 0.2345678901234, "accuracy": 0.93456789,
         "samples_per_s": 10234.56789}  # a typical batch event's data


async def _measure(store) -> dict[str, float]:
    await store.open()
    record = JobRecord("bench", {"epochs": 100})
    channel = EventChannel("bench", store)
    started = time.perf_counter()
    for i in range(BURST):
        channel.append("batch", {**BATCH, "batch": i}, record)
    await channel.wait_published()
    burst_s = time.perf_counter() - started

    latencies = []
    for i in range(ONE_BY_ONE):
        started = time.perf_counter()
        channel.append("batch", {**BATCH, "batch": i}, record)
        await channel.wait_published()
        latencies.append(time.perf_counter() - started)

    started, cursor, replayed = time.perf_counter(), 0, 0
    while page := await store.events_after("bench", cursor, REPLAY_PAGE):
        cursor, replayed = page[-1].seq, replayed + len(page)
    replay_s = time.perf_counter() - started
    await store.close()
    assert replayed == BURST + ONE_BY_ONE
    return {"burst": BURST / burst_s, "latency_p50_ms": 1000 * statistics.median(latencies),
            "one_by_one": ONE_BY_ONE / sum(latencies), "replay": replayed / replay_s}


def test_sqlite_store_throughput_against_memory(tmp_path):
    results = {
        "memory": asyncio.run(_measure(MemoryStore())),
        "sqlite FULL": asyncio.run(_measure(SQLiteJobStore(tmp_path / "full"))),
        "sqlite NORMAL": asyncio.run(_measure(SQLiteJobStore(tmp_path / "normal", synchronous="NORMAL"))),
    }
    print()
    for name, r in results.items():
        print(f"[store] {name:13s}: burst {r['burst']:8.0f} events/s | one at a time {r['one_by_one']:7.0f} "
              f"events/s, numbering→published p50 {r['latency_p50_ms']:.2f} ms | "
              f"replay {r['replay']:8.0f} events/s")
    full = results["sqlite FULL"]
    assert full["burst"] >= FLOOR_EVENTS_PER_S and full["replay"] >= FLOOR_EVENTS_PER_S
    assert full["one_by_one"] >= FLOOR_EVENTS_PER_S / 10  # every event its own fsync
