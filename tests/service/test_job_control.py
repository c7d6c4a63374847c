"""Stopping jobs and surviving faults, with real spawned workers.

Faults are injected with the worker's test-only hook: ``SNNMON_TEST_FAULT`` in the server's
environment (``fault:seed`` pairs, see ``trainer/worker.py``), so only jobs with those seeds misbehave:
``hang`` blocks after its first batch with SIGTERM ignored; ``raise`` raises after its config event.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from backends import backend_flags  # noqa: F401  (every test here runs on both backends)
from snnmon_client import get_json, post_json, read_stream, small_job, start_job, wait_for_status, wait_gone

pytestmark = pytest.mark.timeout(120)

STOP_GRACE_S = 1.0
KILL_GRACE_S = 3.0  # the default: a stuck worker is SIGKILLed grace + 3 s after the stop
HANG_SEED, RAISE_SEED = 4242, 4343
LONG = {"epochs": 100, "batch_size": 16}  # minutes of training: ends only when stopped or killed


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--max-concurrent", "2", "--stop-grace", str(STOP_GRACE_S),
                          "--kill-grace", str(KILL_GRACE_S),
                          env={"SNNMON_TEST_FAULT": f"hang:{HANG_SEED},raise:{RAISE_SEED}"})


class Follower:
    """Follows one job's stream in the background; ``first_batch`` is set when a batch arrives."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, job_id: str):
        self.first_batch = asyncio.Event()
        self.ended_at: float | None = None
        self.task = asyncio.create_task(self._follow(session, f"{base_url}/api/training/stream/{job_id}"))

    async def _follow(self, session, url):
        result = await read_stream(session, url, on_frame=self._on_frame)
        self.ended_at = time.monotonic()
        return result

    def _on_frame(self, frame) -> None:
        if frame.id is not None and frame.json()["event"] == "batch":
            self.first_batch.set()

    async def events(self) -> list[dict]:
        return (await self.task).events


async def _start_and_follow(session, server, **config) -> tuple[str, Follower, set[int]]:
    """Start a job, wait for its first batch event; return its id, its stream and its new worker pid."""
    before = server.job_pids()
    job_id = await start_job(session, server.base_url, **config)
    follower = Follower(session, server.base_url, job_id)
    await asyncio.wait_for(follower.first_batch.wait(), 60)
    pids = server.job_pids() - before
    assert len(pids) == 1, pids
    return job_id, follower, pids


async def _stop(session, server, job_id: str) -> dict:
    status, body = await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": job_id})
    assert status == 200, body
    return body


def test_stop_mid_epoch_ends_stopped_and_the_process_goes_within_2s(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_id, follower, pids = await _start_and_follow(session, server, **small_job(seed=101, **LONG))
            stopped_at = time.monotonic()
            assert (await _stop(session, server, job_id))["status"] == "stopping"
            gone_after = await wait_gone(pids, timeout=15, reaped=server.reaps_workers)
            events = await follower.events()
            record = await wait_for_status(session, server.base_url, job_id, lambda s: s == "stopped")
            again = await _stop(session, server, job_id)
            return stopped_at, gone_after, follower.ended_at, events, record, again

    stopped_at, gone_after, ended_at, events, record, again = asyncio.run(scenario())
    assert gone_after <= 2.0, f"worker took {gone_after:.2f} s to exit after the stop"
    assert ended_at - stopped_at <= 2.0
    last = events[-1]
    assert last["event"] == "stopped" and last["data"] == {"epoch": 0, "forced": False}
    assert "epoch" not in [e["event"] for e in events]  # it stopped inside the first epoch
    assert record["forced"] is False and record["finished_at"] is not None
    assert again == {"job_id": record["job_id"], "status": "stopped"}  # idempotent


def test_a_stuck_worker_is_killed_and_ends_stopped_forced(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_id, follower, pids = await _start_and_follow(session, server, **small_job(seed=HANG_SEED, **LONG))
            stopped_at = time.monotonic()
            await _stop(session, server, job_id)
            events = await follower.events()
            elapsed = follower.ended_at - stopped_at
            await wait_gone(pids, timeout=5, reaped=server.reaps_workers)
            _, record = await get_json(session, f"{server.base_url}/api/training/status/{job_id}")
            return elapsed, events, record

    elapsed, events, record = asyncio.run(scenario())
    assert events[-1] == {"event": "stopped", "data": {"epoch": 0, "forced": True}, "seq": len(events)}
    assert record["status"] == "stopped" and record["forced"] is True
    if server.backend == "process":  # SIGTERM is ignored, so only the SIGKILL at grace + kill grace ends it
        assert STOP_GRACE_S + KILL_GRACE_S - 0.5 <= elapsed <= STOP_GRACE_S + KILL_GRACE_S + 2.0, elapsed
        assert "SIGKILL" in server.log_text()
    else:  # an actor has no SIGTERM: ray.kill ends it once the grace is over
        assert STOP_GRACE_S - 0.5 <= elapsed <= STOP_GRACE_S + 3.0, elapsed
        assert "killed its Ray actor" in server.log_text()


def test_a_worker_that_raises_fails_with_one_line(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **small_job(seed=RAISE_SEED))
            stream = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}")
            _, record = await get_json(session, f"{server.base_url}/api/training/status/{job_id}")
            return stream.events, record

    events, record = asyncio.run(scenario())
    assert [e["event"] for e in events] == ["config", "error"]
    message = events[-1]["data"]["message"]
    assert message == "RuntimeError: injected test fault (raise)"
    assert record["status"] == "failed" and record["error"] == message
    log = server.log_text()
    assert "Traceback" in log and "this second line must not reach clients" in log  # server side only


def test_kill_9_fails_the_job_naming_the_signal_and_others_finish(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            victim, victim_stream, pids = await _start_and_follow(session, server, **small_job(seed=201, **LONG))
            other, other_stream, _ = await _start_and_follow(session, server, **small_job(seed=202))
            os.kill(pids.pop(), signal.SIGKILL)
            victim_events = await victim_stream.events()
            other_events = await other_stream.events()
            records = [(await get_json(session, f"{server.base_url}/api/training/status/{job}"))[1]
                       for job in (victim, other)]
            return victim_events, other_events, records

    victim_events, other_events, (victim, other) = asyncio.run(scenario())
    assert victim_events[-1]["event"] == "error"
    assert "SIGKILL" in victim_events[-1]["data"]["message"]
    if server.backend == "ray":  # Ray sees a process that went away; the message names where
        assert "died on node " in victim["error"]
    assert victim["status"] == "failed" and "SIGKILL" in victim["error"]
    assert other_events[-1]["event"] == "completed" and other["status"] == "completed"


def test_the_concurrency_limit_queues_jobs_and_starts_them_in_order(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            url = server.base_url
            # earlier tests' slots are free
            await wait_gone(server.job_pids(), timeout=10, reaped=server.reaps_workers)
            a, b, c, d = [await start_job(session, url, **small_job(seed=300 + i, **LONG)) for i in range(4)]
            statuses = {job: (await get_json(session, f"{url}/api/training/status/{job}"))[1]["status"]
                        for job in (a, b, c, d)}
            # stop on a queued job cancels it
            cancelled = await _stop(session, server, d)
            d_stream = await read_stream(session, f"{url}/api/training/stream/{d}")
            await _stop(session, server, a)
            a_record = await wait_for_status(session, url, a, lambda s: s in ("stopped", "failed"))
            c_record = await wait_for_status(session, url, c, lambda s: s != "queued")
            for job in (b, c):
                await _stop(session, server, job)
            finals = [await wait_for_status(session, url, job, lambda s: s in ("stopped", "failed"), timeout=30)
                      for job in (a, b, c, d)]
            return statuses, cancelled, d_stream, a_record, c_record, finals

    statuses, cancelled, d_stream, a_record, c_record, finals = asyncio.run(scenario())
    a, b, c, d = statuses
    assert statuses[a] in ("starting", "running") and statuses[b] in ("starting", "running")
    assert statuses[c] == "queued" and statuses[d] == "queued"
    assert cancelled == {"job_id": d, "status": "stopped"}
    assert d_stream.ended and [e["event"] for e in d_stream.events] == ["stopped"]
    assert d_stream.events[0]["data"] == {"epoch": None, "forced": False}
    assert c_record["started_at"] >= a_record["finished_at"]  # c waited for a's slot
    assert [f["status"] for f in finals] == ["stopped"] * 4
    assert finals[3]["started_at"] is None and finals[3]["device"] is None  # d never ran
    assert server.job_pids() == set()


def test_workers_exit_by_themselves_when_the_server_is_killed(server_factory):
    doomed = server_factory()

    async def scenario():
        async with aiohttp.ClientSession() as session:
            _, follower, pids = await _start_and_follow(session, doomed, **small_job(seed=501, **LONG))
            doomed.process.send_signal(signal.SIGKILL)
            doomed.process.wait(5)
            with pytest.raises(aiohttp.ClientError):  # the stream breaks off: no terminal event
                await follower.task
            return await wait_gone(pids, timeout=15, reaped=False)

    assert asyncio.run(scenario()) <= 5.0
