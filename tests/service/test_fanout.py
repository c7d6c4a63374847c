"""Fan-out to live subscribers (issue 15): a live subscriber with a sink is written to by the channel
itself, once per group of events committed together, and its stream task is not woken; a sink that is
full makes the events queue for the task as before (bounded, batch events skipped); heartbeats still
come only after a silence. Then the same through the real stream handler, on real sockets: the bytes on
the wire are the frames, chunk-framed for HTTP/1.1 and bare for HTTP/1.0.
"""

from __future__ import annotations

import asyncio
import re
import socket
import weakref
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from snnmon_client import event_channel

from service import api, events, stream
from service.events import EventChannel, FrameBatch
from service.sqlite_store import SQLiteJobStore

pytestmark = pytest.mark.timeout(30)


class RecordingSink:
    """A socket stand-in: takes writes while ``open``, records each one."""

    def __init__(self) -> None:
        self.open = True
        self.writes: list[bytes] = []

    def write(self, batch: FrameBatch) -> bool:
        if self.open:
            self.writes.append(batch.body)
        return self.open


class GatedStore(SQLiteJobStore):
    """The real store, whose commits the test lets through all at once, as one group commit would."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.held: list[tuple[asyncio.Future, asyncio.Future]] = []

    def append_event(self, job_id, event, record):
        committed = super().append_event(job_id, event, record)
        released = asyncio.get_running_loop().create_future()
        self.held.append((committed, released))
        return released

    async def release(self) -> None:
        held, self.held = self.held, []
        for committed, _ in held:
            await committed
        for _, released in held:
            released.set_result(None)


async def _live_subscriber(channel: EventChannel, record, capacity: int = 8):
    """A config event published, then a subscriber writing to a ``RecordingSink``, caught up and live."""
    channel.append("config", {}, record)
    await channel.wait_published()
    sink = RecordingSink()
    return await _go_live(channel, sink, capacity), sink


async def _go_live(channel: EventChannel, sink=None, capacity: int = 8):
    subscriber = channel.subscribe(0, capacity)
    subscriber.sink = sink
    assert [e.event for e in await subscriber.next_events(timeout=0.05)] == ["config"]
    assert await subscriber.next_events(timeout=0.05) == []  # caught up: following live
    return subscriber


def test_a_live_subscriber_is_written_directly_one_write_per_commit_group(tmp_path):
    async def scenario():
        async with event_channel(tmp_path, GatedStore) as (channel, record):
            channel.append("config", {}, record)
            await channel.store.release()
            await channel.wait_published()
            sink = RecordingSink()
            subscriber = await _go_live(channel, sink)
            task = asyncio.create_task(subscriber.next_events(timeout=5))
            await asyncio.sleep(0.01)
            frames = [channel.append("batch", {"i": i}, record).frame for i in range(5)]
            await channel.store.release()  # the five commit together
            await channel.wait_published()
            frames.append(channel.append("epoch", {"epoch": 0}, record).frame)
            await channel.store.release()
            await channel.wait_published()
            woken = task.done()
            task.cancel()
            return sink.writes, frames, woken

    writes, frames, woken = asyncio.run(scenario())
    assert writes == [b"".join(frames[:5]), frames[5]]  # one write per group, frames in order
    assert not woken  # the stream task slept through both


def test_a_full_socket_queues_for_the_task_which_gets_all_queued_at_once(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            subscriber, sink = await _live_subscriber(channel, record, capacity=64)
            sink.open = False  # above its high-water mark
            queued = [channel.append("batch", {"i": i}, record) for i in range(3)]
            await channel.wait_published()
            handed = await subscriber.next_events(timeout=5)
            sink.open = True  # drained; the task has written what it was handed
            after = channel.append("batch", {"i": 3}, record)  # the task holds events: queued
            await channel.wait_published()
            handed_next = await subscriber.next_events(timeout=5)
            waiting = asyncio.create_task(subscriber.next_events(timeout=5))  # asking again: all written
            await asyncio.sleep(0.01)
            direct = channel.append("batch", {"i": 4}, record)  # so this one goes straight to the socket
            await channel.wait_published()
            woken = waiting.done()
            waiting.cancel()
            return queued, handed, after, handed_next, direct, sink.writes, woken

    queued, handed, after, handed_next, direct, writes, woken = asyncio.run(scenario())
    assert [e.seq for e in handed] == [e.seq for e in queued]
    assert [e.seq for e in handed_next] == [after.seq]
    assert writes == [direct.frame] and not woken


def test_a_subscriber_whose_socket_stays_full_skips_batches_but_never_epochs_or_the_end(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            subscriber, sink = await _live_subscriber(channel, record, capacity=8)
            sink.open = False
            for epoch in range(3):
                for batch in range(20):
                    channel.append("batch", {"epoch": epoch, "batch": batch}, record)
                channel.append("epoch", {"epoch": epoch}, record)
            channel.append("completed", {}, record)
            await channel.wait_published()
            received = await subscriber.next_events(timeout=5)
            return subscriber, received, sink.writes

    subscriber, received, writes = asyncio.run(scenario())
    names = [e.event for e in received]
    assert writes == [] and names.count("epoch") == 3 and names[-1] == "completed"
    assert len(received) <= 8 + 4 and subscriber.dropped == 60 - names.count("batch")
    assert subscriber.ended


def test_a_heartbeat_is_due_only_after_a_silence_even_when_the_task_sleeps(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            subscriber, sink = await _live_subscriber(channel, record)
            loop = asyncio.get_running_loop()
            started = loop.time()
            waiting = asyncio.create_task(subscriber.next_events(timeout=0.3))
            for i in range(6):  # an event every 0.1 s, each written directly
                await asyncio.sleep(0.1)
                channel.append("batch", {"i": i}, record)
                await channel.wait_published()
            last_publish = loop.time()
            assert await waiting == []
            return loop.time() - started, loop.time() - last_publish, len(sink.writes)

    waited, quiet, writes = asyncio.run(scenario())
    assert writes == 6
    assert waited >= 0.6 + 0.25 and quiet >= 0.25  # not 0.3 s after the wait began: after the silence


def test_the_terminal_event_through_the_sink_ends_the_subscriber(tmp_path):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            subscriber, sink = await _live_subscriber(channel, record)
            waiting = asyncio.create_task(subscriber.next_events(timeout=5))
            await asyncio.sleep(0.01)
            stopped = channel.append("stopped", {"epoch": 0, "forced": False}, record)
            await channel.wait_published()
            return await waiting, subscriber.ended, channel.subscriber_count, sink.writes, stopped

    handed, ended, count, writes, stopped = asyncio.run(scenario())
    assert handed == [] and ended and count == 0 and writes == [stopped.frame]


class TickingSink(RecordingSink):
    """A ``RecordingSink`` that also records the loop turn (``Ticker.turn``) of each write."""

    def __init__(self, ticker: "Ticker") -> None:
        super().__init__()
        self.ticker = ticker
        self.turns: list[int] = []

    def write(self, batch: FrameBatch) -> bool:
        self.turns.append(self.ticker.turn)
        return super().write(batch)


class Ticker:
    """Counts event-loop turns: a task that yields once a turn."""

    def __init__(self) -> None:
        self.turn = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.turn += 1

    def stop(self) -> None:
        self._task.cancel()


async def _live_subscribers(channel: EventChannel, record, count: int, ticker: Ticker):
    channel.append("config", {}, record)
    await channel.store.release()
    await channel.wait_published()
    sinks = [TickingSink(ticker) for _ in range(count)]
    waiting = [asyncio.create_task((await _go_live(channel, sink)).next_events(timeout=5)) for sink in sinks]
    await asyncio.sleep(0.01)  # every stream task asleep, as a live stream's is
    return sinks, waiting


def test_a_sweep_gives_the_loop_back_every_chunk_and_a_commit_landing_mid_sweep_joins_it(tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setattr(events, "SWEEP_CHUNK", 2)

    async def scenario():
        async with event_channel(tmp_path, GatedStore) as (channel, record):
            ticker = Ticker()
            sinks, waiting = await _live_subscribers(channel, record, 8, ticker)
            first = channel.append("batch", {"i": 0}, record).frame
            second = channel.append("batch", {"i": 1}, record).frame
            (first_commit, first_done), (second_commit, second_done) = channel.store.held
            await first_commit
            await second_commit
            first_done.set_result(None)  # the first commits alone: its sweep starts
            while not any(sink.writes for sink in sinks):
                await asyncio.sleep(0)
            second_done.set_result(None)  # the second lands while the first is on its way
            await channel.wait_published()
            ticker.stop()
            assert not any(task.done() for task in waiting)  # every write went past the sleeping tasks
            return sinks, first, second

    sinks, first, second = asyncio.run(scenario())
    for sink in sinks:  # each got both, in order, each event once
        assert b"".join(sink.writes) == first + second
    merged = [sink for sink in sinks if sink.writes == [first + second]]
    visited_before = [sink for sink in sinks if sink.writes == [first, second]]
    # the subscribers the first sweep had not reached got both events in one write; the ones it had
    # reached got the second in the next pass; fewer writes than one per event and subscriber
    assert merged and visited_before and len(merged) + len(visited_before) == 8
    # two subscribers a loop turn: the first event's writes spread over at least four turns
    assert len({sink.turns[0] for sink in sinks}) >= 4


class TurningSet(set):
    """A set whose iteration order reverses at each pass over it, as a Python set's order may change when
    it grows or shrinks: the sweep must not depend on the order it happens to have."""

    passes = 0

    def __iter__(self):
        TurningSet.passes += 1
        members = list(super().__iter__())
        return iter(members if TurningSet.passes % 2 else members[::-1])


def test_a_pass_goes_to_the_subscribers_furthest_behind_first(tmp_path, monkeypatch):
    """Three commits land one after another during a sweep of 40 subscribers (2 a loop turn): after the
    first pass some subscribers are at the first event, some at the second, the rest at the third. The
    next pass writes to those holding the oldest event first, whatever order the set gives."""
    monkeypatch.setattr(events, "SWEEP_CHUNK", 2)

    async def scenario():
        async with event_channel(tmp_path, GatedStore) as (channel, record):
            ticker = Ticker()
            sinks, waiting = await _live_subscribers(channel, record, 40, ticker)
            channel._subscribers = TurningSet(channel._subscribers)
            frames = [channel.append("batch", {"i": i}, record).frame for i in range(3)]
            held = channel.store.held
            for committed, _ in held:
                await committed
            for index, (_, done) in enumerate(held):
                done.set_result(None)  # the first starts the sweep; each next one lands mid-pass
                while sum(bool(sink.writes) for sink in sinks) < 2 + 6 * index:
                    await asyncio.sleep(0)
            await channel.wait_published()
            ticker.stop()
            return sinks, frames

    sinks, (first, second, third) = asyncio.run(scenario())
    assert all(b"".join(sink.writes) == first + second + third for sink in sinks)
    at_first = [sink for sink in sinks if sink.writes == [first, second + third]]
    at_second = [sink for sink in sinks if sink.writes == [first + second, third]]
    assert len(at_first) >= 2 and at_second  # positions differed when the second pass began
    assert max(sink.turns[1] for sink in at_first) <= min(sink.turns[1] for sink in at_second)


def test_the_terminal_event_goes_to_every_subscriber_in_one_turn_and_so_does_a_delete(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "SWEEP_CHUNK", 2)

    async def scenario(end):
        async with event_channel(tmp_path / end, GatedStore) as (channel, record):
            ticker = Ticker()
            sinks, waiting = await _live_subscribers(channel, record, 8, ticker)
            if end == "completed":
                last = channel.append("completed", {}, record).frame
                await channel.store.release()
                await channel.wait_published()
            else:  # the job is deleted just after an event's sweep began: the event still reaches all
                last = channel.append("batch", {"i": 0}, record).frame
                await channel.store.release()
                while not any(sink.writes for sink in sinks):
                    await asyncio.sleep(0)
                reached = sum(bool(sink.writes) for sink in sinks)
                channel.delete()
                assert 0 < reached < len(sinks)  # deleted mid-sweep
            await asyncio.wait(waiting, timeout=5)  # the woken tasks end their subscribers
            ticker.stop()
            return sinks, last

    for end in ("completed", "deleted"):
        (tmp_path / end).mkdir()
        sinks, last = asyncio.run(scenario(end))
        assert all(sink.writes == [last] for sink in sinks), end
        if end == "completed":
            assert len({sink.turns[0] for sink in sinks}) == 1  # no loop turn between the first and last


def test_a_stream_whose_write_raises_is_ended_and_the_sweep_goes_on(tmp_path, caplog):
    class BrokenSink(RecordingSink):
        def write(self, batch: FrameBatch) -> bool:
            raise ValueError("a bug in one stream's writer")

    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            channel.append("config", {}, record)
            await channel.wait_published()
            sinks = [RecordingSink(), BrokenSink(), RecordingSink()]
            subscribers = [await _go_live(channel, sink) for sink in sinks]
            frame = channel.append("batch", {"i": 0}, record).frame
            await channel.wait_published()
            return sinks, subscribers, frame

    sinks, subscribers, frame = asyncio.run(scenario())
    assert sinks[0].writes == sinks[2].writes == [frame]
    assert subscribers[1].ended and not subscribers[0].ended and not subscribers[2].ended
    assert "writing to a stream failed" in caplog.text


# -- through the stream handler, on real sockets

def _stream_app(channel: EventChannel) -> web.Application:
    """The real stream routes; the job manager is the only stand-in (it hands out the one channel)."""
    app = web.Application()
    app[api.SETTINGS] = SimpleNamespace(subscriber_buffer=64, send_timeout_s=60.0, heartbeat_s=15.0)
    app[api.JOB_MANAGER] = SimpleNamespace(channel=lambda job_id: channel)
    app[stream.OPEN_STREAMS] = weakref.WeakSet()
    app.add_routes(stream.routes())
    return app


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_live_frames_reach_the_socket_whole_and_in_order(tmp_path, version):
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            replayed = [channel.append("config", {}, record)]
            await channel.wait_published()
            server = TestServer(_stream_app(channel))
            await server.start_server()
            try:
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(f"GET /api/training/stream/job1 HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                while channel.subscriber_count == 0:  # replayed the config event, now following live
                    await asyncio.sleep(0.01)
                live = [channel.append("batch", {"i": i}, record) for i in range(300)]
                live.append(channel.append("completed", {}, record))
                await channel.wait_published()
                async with asyncio.timeout(10):
                    body = await reader.read()  # until the server ends the response
                writer.close()
                return head, body, replayed + live
            finally:
                await server.close()

    head, body, events = asyncio.run(scenario())
    frames = b"".join(e.frame for e in events)
    if version == "1.1":
        assert b"transfer-encoding: chunked" in head.lower()
        body, rest = _unchunk(body)
        assert rest == b""
    assert re.sub(rb": ping\n\n", b"", body) == frames


def _unchunk(body: bytes) -> tuple[bytes, bytes]:
    """(the payload of an HTTP/1.1 chunked body up to its last chunk, what follows it)"""
    out, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return b"".join(out), body[end + 4:]
        out.append(body[end + 2:end + 2 + size])
        assert body[end + 2 + size:end + 4 + size] == b"\r\n"
        pos = end + 4 + size


def test_a_stalled_client_holds_a_bounded_buffer_and_skips_batch_events(tmp_path):
    """A client that never reads, small socket buffers at both ends: the server's socket fills, the sink
    stops writing, the task waits on the drain, and what the server holds for it stays bounded."""
    async def scenario():
        async with event_channel(tmp_path) as (channel, record):
            channel.append("config", {}, record)
            await channel.wait_published()
            app = _stream_app(channel)
            server = TestServer(app)
            await server.start_server()
            sock = socket.socket()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
                await asyncio.get_running_loop().sock_sendall(
                    sock, b"GET /api/training/stream/job1 HTTP/1.1\r\nHost: x\r\n\r\n")
                while channel.subscriber_count == 0:
                    await asyncio.sleep(0.01)
                (subscriber,) = app[stream.OPEN_STREAMS]
                transport = subscriber.sink._protocol.transport
                # loopback would otherwise grow the kernel's send buffer to megabytes before the socket fills
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                padding = "x" * 1000
                largest_buffer = 0
                for i in range(2000):  # 2 MB of batch events, a few at a time, as a job sends them
                    channel.append("batch", {"i": i, "pad": padding}, record)
                    if i % 10 == 9:
                        await channel.wait_published()
                        await asyncio.sleep(0)
                        largest_buffer = max(largest_buffer, transport.get_write_buffer_size())
                channel.append("epoch", {"epoch": 0}, record)
                await channel.wait_published()
                return largest_buffer, subscriber.dropped, transport.is_closing()
            finally:
                sock.close()
                await server.close()

    largest_buffer, dropped, dropped_client = asyncio.run(scenario())
    assert not dropped_client  # slow, not gone: --send-timeout (60 s here) has not passed
    assert dropped > 1000  # most of the 2 MB never left the server: its batch events were skipped
    # the transport's 64 KiB high-water mark plus what one write put over it (the events here are 1 KB)
    assert largest_buffer <= 64 * 1024 + 32 * 1024
