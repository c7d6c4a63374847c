"""Test helpers: an SSE parser over the raw bytes of a response, HTTP helpers for the API, and a look
at the server's worker processes.

The parser follows the WHATWG event-stream rules (lines end in CRLF, LF or CR; ``:`` starts a comment;
``field: value`` with one optional space; a blank line dispatches; an event without data is not
dispatched), so the tests check the bytes the server writes, not a library's reading of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from service.events import EventChannel
from service.sqlite_store import SQLiteJobStore
from service.store import JobRecord

TERMINAL = ("completed", "stopped", "error")
# A numbered frame exactly as the server writes it: orjson puts a whole event on one line.
RAW_FRAME = re.compile(rb"id: \d+\ndata: [^\n]*\n\n")
JOB_PROCESS_NAME, IDLE_PROCESS_NAME = "snnmon-job", "snnmon-idle"  # as trainer.worker names its process


@dataclass
class Frame:
    id: str | None  # this frame's id field (None: no id line)
    event_field: str | None  # an ``event:`` line (the server must never send one)
    data: str
    received_at: float  # time.time() when the frame was complete

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._id: str | None = None
        self._event: str | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        frames = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return frames
            line, self._buffer = self._buffer[:cut[0]], self._buffer[cut[1]:]
            frame = self._line(line.decode("utf-8"))
            if frame is not None:
                frames.append(frame)

    def _line(self, line: str) -> Frame | None:
        if line == "":
            frame = None
            if self._data:
                frame = Frame(self._id, self._event, "\n".join(self._data), time.time())
            self._data, self._id, self._event = [], None, None
            return frame
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        return None


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the first line, start of the next), or None while the line is incomplete."""
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            return index, index + 1
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return None  # CR at the end: the LF of a CRLF may be in the next chunk
            return index, index + (2 if buffer[index + 1] == 0x0A else 1)
    return None


@dataclass
class StreamResult:
    status: int
    headers: dict[str, str]
    frames: list[Frame] = field(default_factory=list)
    ended: bool = False  # the server closed the response

    @property
    def events(self) -> list[dict[str, Any]]:
        """The numbered events (heartbeats excluded), each with its ``seq`` added."""
        return [{**frame.json(), "seq": int(frame.id)} for frame in self.frames if frame.id is not None]

    @property
    def heartbeats(self) -> list[Frame]:
        return [f for f in self.frames if f.id is None and f.json()["event"] == "heartbeat"]


async def read_stream(session: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None,
                      on_frame: Callable[[Frame], None] | None = None,
                      timeout: float = 120.0) -> StreamResult:
    """Read a whole stream (until the server ends it) through the parser above."""
    parser = SSEParser()
    async with asyncio.timeout(timeout):
        async with session.get(url, headers=headers) as response:
            result = StreamResult(response.status, dict(response.headers))
            if response.status != 200:
                return result
            async for chunk in response.content.iter_any():
                for frame in parser.feed(chunk):
                    result.frames.append(frame)
                    if on_frame is not None:
                        on_frame(frame)
            result.ended = True
    return result


async def read_raw_frames(session: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None,
                          on_frame: Callable[[bytes], None] | None = None,
                          timeout: float = 120.0) -> list[bytes]:
    """The numbered frames of a stream as the exact bytes received (for byte-for-byte comparisons);
    anything else on the wire (a heartbeat, a comment) is left out."""
    pending, frames = b"", []
    async with asyncio.timeout(timeout):
        async with session.get(url, headers=headers) as response:
            assert response.status == 200, await response.text()
            async for chunk in response.content.iter_any():
                pending += chunk
                while (cut := pending.find(b"\n\n")) >= 0:  # every frame and heartbeat ends in a blank line
                    block, pending = pending[:cut + 2], pending[cut + 2:]
                    match = RAW_FRAME.search(block)  # after any comment lines (a ping) in the block
                    if match is not None and match.end() == len(block):
                        frames.append(match.group())
                        if on_frame is not None:
                            on_frame(match.group())
    return frames


async def post_json(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, data=json.dumps(body).encode()) as response:
        return response.status, await response.json(content_type=None)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def start_job(session: aiohttp.ClientSession, base_url: str, **config: Any) -> str:
    status, body = await post_json(session, f"{base_url}/api/training/start", config)
    assert status == 202, body
    return body["job_id"]


async def wait_for_status(session: aiohttp.ClientSession, base_url: str, job_id: str,
                          accept: Callable[[str], bool], timeout: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            _, record = await get_json(session, f"{base_url}/api/training/status/{job_id}")
            if accept(record["status"]):
                return record
            await asyncio.sleep(0.05)


def small_job(**overrides: Any) -> dict[str, Any]:
    """A job that trains in seconds on one core: the synthetic set, one narrow layer, few timesteps."""
    return {"dataset": "synthetic", "epochs": 2, "hidden": [32], "timesteps": 5, "batch_size": 128,
            **overrides}


def worker_pids(server_pid: int) -> set[int]:
    """The server's job processes: its children named ``snnmon-job`` (``trainer.worker`` names a worker
    so once it has its job). Left out: pre-started workers still waiting for a job (``snnmon-idle``, or
    the interpreter's name while they start) and multiprocessing's resource tracker. A worker that is
    exiting, or has exited and is not yet reaped, keeps its name, so it still counts."""
    return _children_named(server_pid, JOB_PROCESS_NAME)


def idle_worker_pids(server_pid: int) -> set[int]:
    """The server's pre-started workers that are ready and waiting for a job (named ``snnmon-idle``)."""
    return _children_named(server_pid, IDLE_PROCESS_NAME)


def _children_named(server_pid: int, name: str) -> set[int]:
    import psutil

    pids = set()
    for child in psutil.Process(server_pid).children():
        try:
            if child.name() == name:
                pids.add(child.pid)
        except psutil.NoSuchProcess:  # reaped meanwhile
            continue
    return pids


def ray_actor_pids() -> set[int]:
    """The live processes of this machine's Ray actors that run jobs (``service.ray_backend.JobActor``;
    Ray names an actor's process after its class). Exited ones, not yet reaped by Ray, do not count."""
    import psutil

    pids = set()
    for process in psutil.process_iter(["name", "status"]):
        name, status = process.info["name"] or "", process.info["status"]
        if name.startswith("ray::JobActor") and status != psutil.STATUS_ZOMBIE:
            pids.add(process.pid)
    return pids


async def wait_gone(pids: set[int], timeout: float, *, reaped: bool = True) -> float:
    """Seconds until none of ``pids`` runs any more. ``reaped``: exited and reaped by the server (a
    zombie still counts); otherwise a zombie counts as gone (an orphan's reaper may be slow or absent)."""
    import psutil

    def running(pid: int) -> bool:
        try:
            status = psutil.Process(pid).status()
            return reaped or status != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while any(running(pid) for pid in pids):
            await asyncio.sleep(0.05)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def event_channel(tmp_path, store_class=None):
    """An ``EventChannel`` for job "job1" on a real store in ``tmp_path`` (SQLite unless given)."""
    store = (store_class or SQLiteJobStore)(tmp_path)
    await store.open()
    record = JobRecord("job1", {})
    store.put_job(record)
    try:
        yield EventChannel("job1", store), record
    finally:
        await store.close()
