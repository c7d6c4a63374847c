"""``GET /api/training/stream/{job_id}`` (also ``/api/training/{job_id}/stream``): a job's events as SSE.

Frames are ``id: <seq>`` + ``data: {"event", "data"}`` with no ``event:`` line, written as the bytes the
channel encoded once. A client gets every event after ``Last-Event-ID`` (the header, else the
``last_event_id`` query parameter; none means from the first), then live ones, a heartbeat event after
``heartbeat_s`` of silence, and the end of the response after the terminal event. An unknown job is a
404 JSON answer, never a stream. A client that goes away ends its handler quietly. Every line ends in
LF, aiohttp-sse's own keep-alive comments too.

Once a stream is live, the job's channel writes each new batch of frames straight to the socket
(``TransportSink``) while the socket is below its high-water mark; the handler's task only writes the
replay, heartbeats, and what queued up while the socket was full (``FrameStreamResponse.send_frames``,
which waits for the drain, at most ``send_timeout_s``, then drops the client).

``Last-Event-ID`` is ASCII digits only (no sign, no ``_``, no other script's digits), at most
``MAX_EVENT_ID``: anything else is a 400 before the stream starts.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp_sse import EventSourceResponse

from service.api import JOB_MANAGER, SETTINGS
from service.errors import BadRequest
from service.events import FrameBatch, Subscriber, heartbeat_frame

log = logging.getLogger("snnmon.stream")

# Streams open now, so shutdown can end them instead of waiting for their clients.
OPEN_STREAMS = web.AppKey("open_streams", weakref.WeakSet)
STREAM_DRAIN_S = 1.0  # at shutdown, time for open streams to send their jobs' terminal events
# Event ids are a job's event count: far below this, which JavaScript (the dashboard) and SQLite both hold.
MAX_EVENT_ID = 2**53 - 1
_MAX_EVENT_ID_DIGITS = len(str(MAX_EVENT_ID))


class FrameStreamResponse(EventSourceResponse):
    """An SSE response that writes frames already encoded (aiohttp-sse's ``send`` encodes each call)."""

    def __init__(self, *, send_timeout: float, ping_interval: float):
        super().__init__(send_timeout=send_timeout, ping_interval=ping_interval, sep="\n")
        self.frame_timeout = send_timeout
        self._writer: AbstractStreamWriter | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._writer = await super().prepare(request)
        return self._writer

    async def send_frame(self, frame: bytes, request: web.Request) -> None:
        await self.send_frames((frame,), request)

    async def send_frames(self, frames: "tuple[bytes, ...] | list[bytes]", request: web.Request) -> None:
        """Write the frames as one write; wait for the drain only above the socket's high-water mark."""
        try:
            async with asyncio.timeout(self.frame_timeout):
                await self.write(frames[0] if len(frames) == 1 else b"".join(frames))
                # aiohttp drains after every 64 KiB it wrote itself; the sink's writes bypass its count, so
                # wait here whenever the socket is above its high-water mark: a stalled client's buffer
                # stays bounded and its frames queue (and batch events drop) in its subscriber
                protocol = getattr(self._writer, "protocol", None)
                if protocol is not None and protocol.writing_paused:
                    await self._writer.drain()
        except TimeoutError:
            # a stalled peer never drains its buffer: drop it rather than wait on it
            self.stop_streaming()
            if request.transport is not None:
                request.transport.abort()
            raise


class TransportSink:
    """A live stream's socket, written by the channel without the stream's task (``service.events.FrameSink``).

    It writes only while the transport is below its high-water mark (aiohttp's protocol is not paused), so
    a slow client's frames queue in its subscriber's bounded buffer instead, as before. The bytes are the
    batch's, shared by every subscriber: chunk-framed once when the response is chunked (HTTP/1.1)."""

    __slots__ = ("_protocol", "_chunked")

    def __init__(self, writer: AbstractStreamWriter):
        self._protocol = writer.protocol  # type: ignore[attr-defined]  # aiohttp's StreamWriter
        self._chunked = writer.chunked  # type: ignore[attr-defined]

    def write(self, batch: FrameBatch) -> bool:
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or protocol.writing_paused or transport.is_closing():
            return False  # full or gone: the task writes (and waits, or learns the client left)
        try:
            transport.write(batch.http_chunk if self._chunked else batch.body)
        except (RuntimeError, OSError):  # closed under us (uvloop raises): the task finds out
            return False
        return True


def last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID")
    source = "Last-Event-ID header"
    if raw is None:
        raw, source = request.query.get("last_event_id"), "last_event_id"
    if raw is None or not raw.strip():
        return 0
    text = raw.strip()
    # str.isdigit() and int() also take "+3", "1_0" and other scripts' digits: only ASCII 0-9 here
    if (not text.isascii() or not text.isdigit() or len(text) > _MAX_EVENT_ID_DIGITS
            or int(text) > MAX_EVENT_ID):
        raise BadRequest(f"{source} must be an event id: ASCII digits, at most {MAX_EVENT_ID}, got {raw[:40]!r}",
                         fields={"last_event_id": f"ASCII digits 0-9, at most {MAX_EVENT_ID}"})
    return int(text)


async def stream(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    job_id = request.match_info["job_id"]
    after_seq = last_event_id(request)  # a bad id: 400 before any stream starts
    channel = request.app[JOB_MANAGER].channel(job_id)  # UnknownJob: 404 before any stream starts
    subscriber = channel.subscribe(after_seq, settings.subscriber_buffer)
    request.app[OPEN_STREAMS].add(subscriber)
    # aiohttp-sse sets Cache-Control: no-cache and X-Accel-Buffering: no (nginx passes frames at once)
    response = FrameStreamResponse(send_timeout=settings.send_timeout_s, ping_interval=settings.heartbeat_s)
    try:
        if request.transport is None:  # gone before the first byte (aiohttp-sse asserts a transport)
            raise ConnectionResetError("client disconnected")
        writer = await response.prepare(request)
        if writer is not None and _plain_stream(response, writer):
            subscriber.sink = TransportSink(writer)
        async with response:
            await _pump(subscriber, response, request, settings.heartbeat_s)
    except (ConnectionError, TimeoutError) as exc:
        log.debug("job %s: stream client gone (%s)", job_id, type(exc).__name__)
    finally:
        subscriber.close()
        if subscriber.dropped:
            log.info("job %s: a slow stream client skipped %d batch events", job_id, subscriber.dropped)
    return response


def _plain_stream(response: web.StreamResponse, writer: AbstractStreamWriter) -> bool:
    """The sink writes the frames as they are: only into an uncompressed response, through aiohttp's own
    writer (whose protocol says when the socket is full)."""
    return not response.compression and hasattr(writer, "protocol") and hasattr(writer, "chunked")


async def _pump(subscriber: Subscriber, response: FrameStreamResponse, request: web.Request,
                heartbeat_s: float) -> None:
    while True:
        events = await subscriber.next_events(heartbeat_s)
        if not events and subscriber.ended:
            return  # the terminal event went out (maybe through the sink), shutdown, or joined past the end
        await response.send_frames([event.frame for event in events] or [heartbeat_frame()], request)
        if subscriber.ended:
            return  # the terminal event went out: the response ends


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/training/stream/{job_id}", stream, allow_head=False),
        web.get("/api/training/{job_id}/stream", stream, allow_head=False),
    ]


async def end_open_streams(app: web.Application) -> None:
    """on_shutdown, after the jobs are stopped: every stream of a live job has its terminal event coming.
    Give the streams ``STREAM_DRAIN_S`` to hand it out, then end the rest (replays still under way);
    their clients reconnect with Last-Event-ID to the next server, which has the whole history."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_DRAIN_S
    while any(not subscriber.ended for subscriber in app[OPEN_STREAMS]) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for subscriber in list(app[OPEN_STREAMS]):
        subscriber.close()
