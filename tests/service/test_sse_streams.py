"""Two real jobs trained at once, each followed by three SSE subscribers (plus one that drops and
reconnects mid-run): the streams match the design, every subscriber of a job gets the identical,
gap-free sequence, late and resuming subscribers get exactly what they lack, and the job records agree.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import aiohttp
import pytest

from backends import backend_flags  # noqa: F401  (every test here runs on both backends)
from snnmon_client import (TERMINAL, Frame, SSEParser, get_json, read_stream, small_job, start_job)

pytestmark = pytest.mark.timeout(180)

SUBSCRIBERS = 3
DROP_AFTER = 4  # numbered events the reconnecting subscriber reads before it hangs up


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--max-concurrent", "2", "--heartbeat", "1")


async def _read_with_reconnect(session: aiohttp.ClientSession, url: str) -> tuple[list[Frame], list[Frame]]:
    """Read DROP_AFTER events, hang up, then reconnect with Last-Event-ID and read to the end."""
    first: list[Frame] = []
    parser = SSEParser()
    async with session.get(url) as response:
        async for chunk in response.content.iter_any():
            first += [f for f in parser.feed(chunk) if f.id is not None]
            if len(first) >= DROP_AFTER:
                break
    rest = await read_stream(session, url, headers={"Last-Event-ID": first[-1].id})
    return first, [f for f in rest.frames if f.id is not None]


@pytest.fixture(scope="module")
def run(server):
    """Start two jobs, follow each with SUBSCRIBERS streams; return everything the client saw."""
    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_ids = [await start_job(session, server.base_url, **small_job(seed=seed)) for seed in (11, 12)]
            urls = {job: [f"{server.base_url}/api/training/stream/{job}",
                          f"{server.base_url}/api/training/{job}/stream"] for job in job_ids}
            readers = {job: [asyncio.create_task(read_stream(session, urls[job][i % 2]))
                             for i in range(SUBSCRIBERS)] for job in job_ids}
            reconnecting = asyncio.create_task(_read_with_reconnect(session, urls[job_ids[0]][0]))
            streams = {job: await asyncio.gather(*tasks) for job, tasks in readers.items()}
            records = {job: (await get_json(session, f"{server.base_url}/api/training/status/{job}"))[1]
                       for job in job_ids}
            _, jobs_list = await get_json(session, f"{server.base_url}/api/training/jobs")
            return job_ids, streams, await reconnecting, records, jobs_list

    job_ids, streams, reconnect, records, jobs_list = asyncio.run(scenario())
    return {"ids": job_ids, "streams": streams, "reconnect": reconnect, "records": records,
            "jobs": jobs_list}


def test_stream_follows_the_design(run):
    for job_id in run["ids"]:
        result = run["streams"][job_id][0]
        assert result.status == 200 and result.ended
        assert result.headers["Content-Type"].startswith("text/event-stream")
        assert result.headers["Cache-Control"] == "no-cache"
        assert result.headers["X-Accel-Buffering"] == "no"
        assert all(frame.event_field is None for frame in result.frames)  # no "event:" lines
        events = result.events
        names = [e["event"] for e in events]
        assert names[0] == "config" and names[-1] == "completed"
        assert names.count("epoch") == 2 and names.count("config") == 1
        assert not set(names) & set(TERMINAL) - {"completed"}
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        first_epoch = names.index("epoch")
        assert first_epoch > 1 and set(names[1:first_epoch]) == {"batch"}

        config = events[0]["data"]
        assert config["job_id"] == job_id and config["device"] == "cpu" and config["dataset"] == "synthetic"
        assert config["architecture"] == "784→32→10" and config["n_train"] > 0 and config["n_val"] > 0
        assert {"total_params", "trainable_params", "spiking_cells", "cell_types",
                "learnable_dynamics"} <= set(config["model_info"])
        assert config["config"]["hidden"] == [32] and config["seed"] == config["config"]["seed"]
        batch = events[1]["data"]
        # the seed's fields, unchanged, plus the step-level ones (additive: the Studio frontend ignores them)
        assert set(batch) == {"epoch", "batch", "n_batches", "loss", "accuracy", "samples_per_s",
                              "step", "batch_loss", "batch_accuracy", "lr"}
        epoch = events[first_epoch]["data"]
        assert epoch["epoch"] == 0 and set(epoch["layer_spike_rates"]) == {"lifs.0", "lifs.1"}
        assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "param_snapshot",
                "epoch_s"} <= set(epoch)
        assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy",
                "duration_s"} <= set(events[-1]["data"])


def test_every_subscriber_of_a_job_gets_the_identical_sequence(run):
    for job_id in run["ids"]:
        streams = run["streams"][job_id]
        reference = [(f.id, f.data) for f in streams[0].frames if f.id is not None]
        for other in streams[1:]:
            assert [(f.id, f.data) for f in other.frames if f.id is not None] == reference
    # the two jobs' streams are their own
    first, second = (run["streams"][job][0].events for job in run["ids"])
    assert first[0]["data"]["job_id"] != second[0]["data"]["job_id"]


def test_reconnect_mid_run_with_last_event_id_gets_exactly_the_missing_events(run):
    before, after = run["reconnect"]
    full = [(f.id, f.data) for f in run["streams"][run["ids"][0]][0].frames if f.id is not None]
    assert len(before) == DROP_AFTER
    assert [(f.id, f.data) for f in before + after] == full


def test_heartbeats_fill_the_silence_and_carry_no_id(run):
    # subscribers joined while the workers were still importing torch: seconds of silence
    beats = [b for job in run["ids"] for stream in run["streams"][job] for b in stream.heartbeats]
    assert beats
    for beat in beats:
        payload = beat.json()
        assert beat.id is None and set(payload) == {"event", "data"} and isinstance(payload["data"]["ts"], float)


def test_status_and_jobs_list_agree_with_the_stream(run):
    for job_id in run["ids"]:
        events = run["streams"][job_id][0].events
        record = run["records"][job_id]
        epochs = [e["data"] for e in events if e["event"] == "epoch"]
        assert record["job_id"] == job_id and record["status"] == "completed"
        assert record["device"] == "cpu" and record["epoch"] == 1 and record["epochs"] == 2
        assert record["config"] == events[0]["data"]["config"]
        assert record["final_metrics"] == events[-1]["data"]
        assert record["last_metrics"] == epochs[-1]
        assert record["best_val_accuracy"] == max(e["val_accuracy"] for e in epochs)
        assert record["error"] is None and record["forced"] is False
        assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert [r["job_id"] for r in run["jobs"]] == list(reversed(run["ids"]))  # newest first
    assert {r["job_id"]: r for r in run["jobs"]} == run["records"]


def _stream(server, job_id: str, **kwargs):
    async def go():
        async with aiohttp.ClientSession() as session:
            return await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}", **kwargs)

    return asyncio.run(go())


def test_a_subscriber_after_completion_gets_the_full_replay(server, run):
    job_id = run["ids"][1]
    replay = _stream(server, job_id)
    assert replay.ended
    assert [(f.id, f.data) for f in replay.frames] == [
        (f.id, f.data) for f in run["streams"][job_id][0].frames if f.id is not None]


def test_last_event_id_header_or_query_resumes_after_it(server, run):
    job_id = run["ids"][0]
    full = run["streams"][job_id][0].events
    k = len(full) // 2
    by_header = _stream(server, job_id, headers={"Last-Event-ID": str(k)}).events
    assert by_header == full[k:]
    by_query = asyncio.run(_query(server, f"/api/training/stream/{job_id}?last_event_id={k + 1}"))
    assert by_query.events == full[k + 1:]
    # a browser's automatic reconnect sends the header on the URL it had: the header wins
    both = asyncio.run(_query(server, f"/api/training/{job_id}/stream?last_event_id=1",
                              headers={"Last-Event-ID": str(len(full) - 1)}))
    assert both.events == full[-1:]
    at_end = _stream(server, job_id, headers={"Last-Event-ID": str(len(full))})
    assert at_end.ended and at_end.events == []


async def _query(server, path: str, headers=None):
    async with aiohttp.ClientSession() as session:
        return await read_stream(session, server.base_url + path, headers=headers)


def test_bad_last_event_id_is_400(server, run):
    async def go():
        async with aiohttp.ClientSession() as session:
            url = f"{server.base_url}/api/training/stream/{run['ids'][0]}"
            async with session.get(url, headers={"Last-Event-ID": "abc"}) as response:
                return response.status, await response.json()

    status, body = asyncio.run(go())
    assert status == 400 and body["error"] == "bad_request" and "Last-Event-ID" in body["message"]


def test_clients_that_hang_up_abruptly_cost_nothing(server, run):
    """Raw sockets that reset the connection before, during and after the response headers."""
    host, port = server.base_url.removeprefix("http://").split(":")
    request = (f"GET /api/training/stream/{run['ids'][0]} HTTP/1.1\r\nHost: {host}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def hang_up(read_bytes: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        if read_bytes:
            await reader.read(read_bytes)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        writer.close()

    async def go():
        await asyncio.gather(*(hang_up(n) for n in (0, 10, 200, 1000) * 5))
        await asyncio.sleep(0.5)

    asyncio.run(go())
    replay = _stream(server, run["ids"][0])
    assert replay.ended and len(replay.events) == len(run["streams"][run["ids"][0]][0].events)
    assert "Traceback" not in server.log_text() and "Error handling request" not in server.log_text()


def test_the_server_shuts_down_cleanly(server, run):
    """Last in this module: SIGTERM ends the server at once, with nothing leaked and no traceback."""
    started = time.monotonic()
    server.stop()
    assert server.process.returncode == 0 and time.monotonic() - started < 5
    log = server.log_text()
    assert "Traceback" not in log and "leaked" not in log
