"""Hostile and broken clients (issue 10, items 4, 6 and 7): each case the issue found, kept as a test.

Against a real server with a token: bodies that do not decompress are 400; an answer to many bad fields
stays small; malformed requests and hang-ups log one WARNING line or nothing, never a traceback; and no
log line holds the token, whatever aiohttp's parser quotes. In-process (the app on a real SQLite store,
no worker): ``Last-Event-ID`` is strict and checked before a stream starts; an error in the middle of a
replay cuts the connection and never writes an HTTP answer into the stream; a symlink loop in the
static folder is a 404; every line a stream writes ends in LF.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import zlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service import static
from service.app import create_app, error_middleware
from service.settings import Settings
from service.sqlite_store import SQLiteJobStore
from service.store import JobRecord, StoredEvent
from service.stream import MAX_EVENT_ID, FrameStreamResponse

pytestmark = pytest.mark.timeout(60)

TOKEN = "Tok-7f3a9c-hostile-secret_42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--cpu-threads", "1", env={"SNNMON_TOKEN": TOKEN})


def post(server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, int]:
    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         auto_decompress=False) as session:
            async with session.post(server.base_url + path, data=body, headers={**AUTH, **headers}) as response:
                raw = await response.read()
                return response.status, json.loads(raw), len(raw)

    return asyncio.run(go())


def raw_exchange(server, request: bytes, *, close_after_send: bool = False, timeout: float = 10.0) -> bytes:
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        if close_after_send:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


@pytest.mark.parametrize("encoding, body", [
    ("deflate", b"garbage, not deflate"),
    ("gzip", b"garbage, not gzip"),
    ("gzip", gzip.compress(b"")[:10]),  # a gzip header and nothing after it: decompresses to nothing
])
def test_a_body_that_does_not_decompress_is_a_clear_400(server, encoding, body):
    status, answer, _ = post(server, "/api/training/stop", body, {"Content-Encoding": encoding})
    assert status == 400, answer
    assert answer["error"] == "bad_encoding" and encoding in answer["message"]


def test_a_compressed_body_that_decompresses_is_read(server):
    body = json.dumps({"job_id": "no-such-job"}).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        status, answer, _ = post(server, "/api/training/stop", packed, {"Content-Encoding": encoding})
        assert status == 404 and answer["error"] == "unknown_job", (encoding, answer)


@pytest.mark.parametrize("path", ["/api/training/start", "/api/training/stop"])
def test_an_answer_names_at_most_20_bad_fields(server, path):
    request = json.dumps({f"k{i}": 1 for i in range(2000)}).encode()
    status, answer, size = post(server, path, request, {"Content-Type": "application/json"})
    assert status == 400, answer
    assert len(answer["fields"]) == 20 and answer["more_fields"] >= 1980
    assert size < 2 * len(request), (size, len(request))


def test_malformed_requests_and_hang_ups_log_one_warning_line_and_never_the_token(server):
    before = len(server.log_text().splitlines())
    pad = "a" * 9000
    raw_exchange(server, f"GET /api/training/stream/x?access_token={TOKEN}&pad={pad} HTTP/1.1\r\n"
                         "Host: 127.0.0.1\r\n\r\n".encode())  # a URL over 8,190 bytes
    raw_exchange(server, f"GET /api/training/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Bearer {TOKEN}\x01\r\n\r\n".encode())  # a bad character in a header
    raw_exchange(server, f"GET /api/training/jobs?access_token={TOKEN} HTTP/9.x\r\n"
                         "Host: 127.0.0.1\r\n\r\n".encode())  # a bad HTTP version
    raw_exchange(server, f"POST /api/training/stop HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Length: 1000\r\n\r\n{\"job_id\"".encode(), close_after_send=True)  # hang-up
    raw_exchange(server, f"POST /api/training/stop HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Encoding: deflate\r\nContent-Length: 7\r\n\r\ngarbage".encode())
    assert post(server, "/api/training/stop", b"{}", {})[0] == 400  # the server still answers
    asyncio.run(asyncio.sleep(0.3))  # the log lines of the last requests
    lines = server.log_text().splitlines()[before:]
    text = "\n".join(lines)
    assert TOKEN not in text and TOKEN[:12] not in text, text
    assert "Traceback" not in text and " ERROR " not in text, text
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 4, text  # the three malformed requests and the undecodable body, one line each
    assert all("malformed request" in line for line in warnings), text


def test_the_token_in_any_log_line_from_any_logger_is_redacted():
    import logging

    from service.redact import RedactingFilter

    secret = "se/cret+T0ken"
    redacting = RedactingFilter([secret])
    for message, args in ((f"plain {secret} and %s", ("se%2Fcret%2BT0ken",)),
                          ("GET /x?access_token=%s&a=1", ("whatever-value",)),
                          ("Authorization: %s", ("Bearer anything.at-all",))):
        record = logging.LogRecord("any.logger", logging.ERROR, __file__, 1, message, args, None)
        try:
            raise ValueError(f"quoted {secret}")
        except ValueError as exc:
            record.exc_info = (type(exc), exc, exc.__traceback__)
        redacting.filter(record)
        shown = logging.Formatter().format(record)
        assert secret not in shown and "se%2Fcret" not in shown and "whatever-value" not in shown, shown
        assert "anything.at-all" not in shown and "[redacted]" in shown, shown


# -- in-process: the app on a real SQLite store holding one finished job

class _NoWorkers:
    """The backend seam: these tests start no job."""

    def warm_up(self) -> None:
        pass

    async def submit(self, spec):
        raise AssertionError("no job is started here")

    async def close(self) -> None:
        pass


class _ReplayFailsAfterFirstPage(SQLiteJobStore):
    """A store whose second replay read fails, as a full or broken disk would."""

    reads = 0

    async def events_after(self, job_id: str, after_seq: int, limit: int) -> list[StoredEvent]:
        type(self).reads += 1
        if after_seq > 0:
            raise RuntimeError("disk I/O error")
        return await super().events_after(job_id, after_seq, limit)


async def _store_finished_job(data_dir: Path, events: int) -> None:
    store = SQLiteJobStore(data_dir)
    await store.open()
    record = JobRecord("done", {"epochs": 1}, status="completed", finished_at=1.0)
    for seq in range(1, events + 1):
        store.append_event("done", StoredEvent.encode(seq, "batch", {"epoch": 0, "batch": seq}), record)
    store.append_event("done", StoredEvent.encode(events + 1, "completed", {"duration_s": 1.0}), record)
    await store.close()


async def _serve(tmp_path: Path, store_class=SQLiteJobStore) -> TestServer:
    settings = Settings(data_dir=str(tmp_path), heartbeat_s=0.2)
    server = TestServer(create_app(settings, store=store_class(tmp_path), backend=_NoWorkers()))
    await server.start_server()
    return server


@pytest.mark.parametrize("value", [str(2**63), str(2**64 + 5), str(MAX_EVENT_ID + 1), "1_0", "+3", "-1", "3.0",
                                   "\u0663", "1\u0660", "0x10", "9" * 40])
def test_a_bad_last_event_id_is_a_400_before_any_stream(tmp_path, value):
    async def scenario():
        await _store_finished_job(tmp_path, 3)
        server = await _serve(tmp_path)
        try:
            async with aiohttp.ClientSession() as session:
                for kind, url, headers in (
                        ("header", server.make_url("/api/training/stream/done"), {"Last-Event-ID": value}),
                        ("query", server.make_url("/api/training/stream/done").with_query(last_event_id=value), {})):
                    async with session.get(url, headers=headers) as response:
                        body = await response.json(content_type=None)
                        assert response.status == 400, (kind, body)
                        assert response.content_type == "application/json"
                        assert body["error"] == "bad_request" and "last_event_id" in body["fields"]
                async with session.get(server.make_url("/api/training/stream/done"),
                                       headers={"Last-Event-ID": str(MAX_EVENT_ID)}) as response:
                    assert response.status == 200 and await response.read() == b""  # past the end: nothing
                async with session.get(server.make_url("/api/training/stream/done"),
                                       headers={"Last-Event-ID": "2"}) as response:
                    assert (await response.read()).startswith(b"id: 3\n")
        finally:
            await server.close()

    asyncio.run(scenario())


def test_an_error_mid_replay_cuts_the_stream_and_never_writes_an_answer_into_it(tmp_path, caplog):
    async def scenario():
        await _store_finished_job(tmp_path, 300)  # more than one replay page (256)
        server = await _serve(tmp_path, _ReplayFailsAfterFirstPage)
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /api/training/stream/done HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(10):
                data = await reader.read()  # until the server cuts the connection
            writer.close()
            return data
        finally:
            await server.close()

    data = asyncio.run(scenario())
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    assert b"id: 256\n" in data and b"id: 257\n" not in data
    assert b"HTTP/1.1 500" not in data and b"internal_error" not in data
    assert not data.endswith(b"0\r\n\r\n")  # no proper end of the chunked body: the client sees a cut
    assert "connection aborted" in caplog.text


def test_a_symlink_loop_in_the_static_folder_is_a_404(tmp_path):
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "loop").symlink_to(tmp_path / "static" / "loop")
    (tmp_path / "static" / "a").symlink_to(tmp_path / "static" / "b")
    (tmp_path / "static" / "b").symlink_to(tmp_path / "static" / "a")
    (tmp_path / "static" / "ok.js").write_text("1;")

    async def scenario():
        app = web.Application(middlewares=[error_middleware])
        app.add_routes(static.routes(tmp_path))
        server = TestServer(app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                statuses = {}
                for name in ("loop", "a", "loop/x", "ok.js"):
                    async with session.get(server.make_url(f"/static/{name}")) as response:
                        statuses[name] = response.status
                        if response.status == 404:
                            assert (await response.json())["error"] == "not_found"
                return statuses
        finally:
            await server.close()

    assert asyncio.run(scenario()) == {"loop": 404, "a": 404, "loop/x": 404, "ok.js": 200}


def test_every_stream_line_ends_in_lf_keep_alive_comments_too():
    async def handler(request: web.Request) -> web.StreamResponse:
        response = FrameStreamResponse(send_timeout=5, ping_interval=0.1)  # aiohttp-sse's own pings
        await response.prepare(request)
        await asyncio.sleep(0.35)
        await response.send_frame(b"id: 1\ndata: {}\n\n", request)
        return response

    async def scenario():
        app = web.Application()
        app.router.add_get("/s", handler)
        server = TestServer(app)
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(server.make_url("/s")) as response:
                    return await response.read()
        finally:
            await server.close()

    body = asyncio.run(scenario())
    assert b": ping\n\n" in body and b"id: 1\ndata: {}\n\n" in body, body
    assert b"\r" not in body, body


def test_json_log_lines_carry_the_redacted_traceback():
    import io
    import logging

    from service.logs import JsonFormatter
    from service.redact import RedactingFilter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter([TOKEN]))
    logger = logging.getLogger("test.json.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad header: Authorization: Bearer {TOKEN}")
        except ValueError:
            logger.exception("request with %s failed", f"access_token={TOKEN}")
    finally:
        logger.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert TOKEN not in out.getvalue() and "[redacted]" in line["message"] and "[redacted]" in line["exception"]
    assert "Traceback" in line["exception"]
