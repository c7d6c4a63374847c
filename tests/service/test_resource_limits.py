"""Jobs bounded by memory and by progress, on a real server with real workers (issue 10, items 1 and 7).

Faults come from the worker's test-only hook (``SNNMON_TEST_FAULT``, see ``trainer/worker.py``): ``hog``
grows by 64 MiB every 50 ms after its first batch; ``hang`` sends nothing more after its first batch.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from snnmon_client import get_json, post_json, read_stream, small_job, start_job, wait_gone, worker_pids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

HOG_SEED, HANG_SEED = 5151, 5252
LIMIT = "1536M"  # above a small job's estimate (~1.1 GiB) and its real peak; the hog passes it in seconds
STALL_S = 3  # counted from the worker's first event (its start-up has minutes): only the hang stalls
ISSUE_CONFIG = {"hidden": [4096, 4096, 4096, 4096], "batch_size": 512, "timesteps": 100}


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--job-memory-limit", LIMIT, "--stop-grace", "1", "--kill-grace", "1",
                          env={"SNNMON_TEST_FAULT": f"hog:{HOG_SEED}"})


@pytest.fixture(scope="module")
def stall_server(server_factory):
    return server_factory("--stall-timeout", str(STALL_S), "--stall-action", "kill",
                          env={"SNNMON_TEST_FAULT": f"hang:{HANG_SEED}"})


def test_a_job_over_the_budget_is_refused_naming_estimate_budget_and_fields(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            refused = await post_json(session, f"{server.base_url}/api/training/start", ISSUE_CONFIG)
            smaller = await post_json(session, f"{server.base_url}/api/training/start",
                                      {"hidden": [1024], "batch_size": 512, "timesteps": 100})
            _, jobs = await get_json(session, f"{server.base_url}/api/training/jobs")
            return refused, smaller, jobs

    (status, body), (_, smaller), jobs = asyncio.run(scenario())
    assert status == 400 and body["error"] == "job_too_large", body
    assert body["budget_bytes"] == 1536 << 20
    assert body["estimate_bytes"] > 8 << 30 and body["estimate"]["total"] == body["estimate_bytes"]
    assert list(body["fields"]) == ["batch_size", "timesteps", "hidden"]
    assert "GiB" in body["message"] and "1.50 GiB" in body["message"] and "--job-memory-limit" in body["message"]
    assert "even its minimum does not fit" in body["fields"]["batch_size"]  # its 850 MB of weights and Adam
    largest = int(smaller["fields"]["batch_size"].removeprefix("at most ").split()[0])
    assert smaller["error"] == "job_too_large" and 8 <= largest < 512, smaller
    assert smaller["fields"]["timesteps"].startswith("at most ")
    assert jobs == []  # nothing was queued


def test_the_default_budget_comes_from_the_machine_and_max_concurrent(server_factory):
    """No flag: the budget is (machine memory - the server's reserve) / --max-concurrent."""
    from service import memory

    expected = memory.cpu_job_budget(0, 64)
    defaulted = server_factory("--max-concurrent", "64")

    async def scenario():
        async with aiohttp.ClientSession() as session:
            # as wide as the config allows: no machine of this kind has the hundreds of GiB it needs
            too_big = {"hidden": [4096] * 4, "batch_size": 512, "timesteps": 100, "network": "ConvSpikingNet",
                       "cell_type": "AlphaCell", "encoding": "rate"}
            return await post_json(session, f"{defaulted.base_url}/api/training/start", too_big)

    status, body = asyncio.run(scenario())
    assert status == 400 and body["budget_bytes"] == expected, body


def test_a_worker_past_its_memory_limit_is_killed_and_fails(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            before = worker_pids(server.pid)
            job_id = await start_job(session, server.base_url, **small_job(seed=HOG_SEED, epochs=50))
            stream = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}")
            await wait_gone(worker_pids(server.pid) - before, timeout=10)
            _, record = await get_json(session, f"{server.base_url}/api/training/status/{job_id}")
            return stream.events, record

    events, record = asyncio.run(scenario())
    last = events[-1]
    assert last["event"] == "error" and record["status"] == "failed"
    message = last["data"]["message"]
    assert message.startswith("exceeded its memory limit (") and message.endswith(" GiB of 1.50 GiB)"), message
    used = float(message.removeprefix("exceeded its memory limit (").split(" GiB")[0])
    assert 1.5 < used < 4  # read every 0.5 s while it grows by ~1.3 GiB/s (slower on a loaded machine)
    assert record["memory_limit_bytes"] == 1536 << 20
    assert record["peak_rss_bytes"] > 1536 << 20
    assert record["memory_estimate_bytes"] < 1536 << 20
    assert "exceeded its memory limit" in server.log_text()


def test_a_silent_worker_gets_a_warning_then_with_kill_fails_no_progress(stall_server):
    base = stall_server.base_url

    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, base, **small_job(seed=HANG_SEED, epochs=50))
            stream = await read_stream(session, f"{base}/api/training/stream/{job_id}")
            _, record = await get_json(session, f"{base}/api/training/status/{job_id}")
            return stream.events, record

    events, record = asyncio.run(scenario())
    names = [event["event"] for event in events]
    assert names[-2:] == ["warning", "error"], names
    assert "batch" in names  # it made progress first; the stall is the silence after it
    warning = events[-2]["data"]
    assert warning["kind"] == "stall" and warning["message"].startswith("no progress for ")
    assert events[-1]["data"] == {"message": f"no progress for {STALL_S} s"}
    assert record["status"] == "failed" and record["error"] == f"no progress for {STALL_S} s"


def test_stall_warn_only_keeps_the_job_running(server_factory):
    warn = server_factory("--stall-timeout", str(STALL_S), "--stop-grace", "1", "--kill-grace", "1",
                          env={"SNNMON_TEST_FAULT": f"hang:{HANG_SEED}"})

    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, warn.base_url, **small_job(seed=HANG_SEED, epochs=50))
            url = f"{warn.base_url}/api/training/stream/{job_id}"
            warned = asyncio.Event()

            def on_frame(frame):
                if frame.id is not None and frame.json()["event"] == "warning":
                    warned.set()

            follower = asyncio.create_task(read_stream(session, url, on_frame=on_frame))
            await asyncio.wait_for(warned.wait(), 90)
            await asyncio.sleep(1.0)
            _, record = await get_json(session, f"{warn.base_url}/api/training/status/{job_id}")
            await post_json(session, f"{warn.base_url}/api/training/stop", {"job_id": job_id})
            stream = await follower
            return record, stream.events

    record, events = asyncio.run(scenario())
    assert record["status"] == "running"  # warned, not ended
    assert [e["event"] for e in events].count("warning") == 1
    assert events[-1]["event"] == "stopped"
