"""A server killed with SIGKILL mid-run, started again on the same data directory, has lost nothing.

Two real jobs: one that finished and one still training when the server was killed. After the restart
both are listed with their status and config; the finished one replays byte for byte as it streamed;
the interrupted one is failed, "interrupted by server restart", and its replay holds every event a client
received before the kill, followed by that error event. A third start changes nothing.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from snnmon_client import get_json, read_raw_frames, start_job, wait_gone, worker_pids

pytestmark = pytest.mark.timeout(150)

TINY = {"dataset": "synthetic", "hidden": [16], "timesteps": 5, "batch_size": 128, "epochs": 1}
LONG = {**TINY, "epochs": 100, "batch_size": 16}  # minutes of training: still running when killed
RECEIVED_BEFORE_KILL = 6  # numbered events the client has of the running job when the server dies


def _event(frame: bytes) -> dict:
    return json.loads(frame.split(b"data: ", 1)[1])


def _seq(frame: bytes) -> int:
    return int(frame.split(b"\n", 1)[0].removeprefix(b"id: "))


def test_history_survives_a_killed_server(server_factory, tmp_path):
    data_dir = tmp_path / "data"
    first = server_factory("--data-dir", str(data_dir), "--max-concurrent", "2", "--cpu-threads", "1")

    async def run_and_kill():
        async with aiohttp.ClientSession() as session:
            url = first.base_url + "/api/training/stream/"
            finished = await start_job(session, first.base_url, **TINY, seed=7)
            running = await start_job(session, first.base_url, **LONG, seed=8)
            finished_frames = await read_raw_frames(session, url + finished)
            _, finished_record = await get_json(session, f"{first.base_url}/api/training/status/{finished}")

            received: list[bytes] = []
            enough = asyncio.Event()

            def on_frame(frame: bytes) -> None:
                received.append(frame)
                if len(received) >= RECEIVED_BEFORE_KILL:
                    enough.set()

            follower = asyncio.create_task(read_raw_frames(session, url + running, on_frame=on_frame))
            await asyncio.wait_for(enough.wait(), 60)
            workers = worker_pids(first.pid)
            first.process.kill()  # SIGKILL: no shutdown code runs at all
            first.process.wait(5)
            with pytest.raises(aiohttp.ClientError):  # the stream breaks off without a terminal event
                await follower
            await wait_gone(workers, timeout=15, reaped=False)  # workers exit when their server dies
            return finished, running, finished_frames, finished_record, list(received)

    finished, running, finished_frames, finished_record, received = asyncio.run(run_and_kill())
    assert _event(finished_frames[-1])["event"] == "completed"
    assert len(received) >= RECEIVED_BEFORE_KILL

    def look(server):
        async def go():
            async with aiohttp.ClientSession() as session:
                url = server.base_url + "/api/training/stream/"
                _, jobs = await get_json(session, server.base_url + "/api/training/jobs")
                replays = {job: await read_raw_frames(session, url + job, timeout=30)
                           for job in (finished, running)}
                resumed = await read_raw_frames(session, url + running,
                                                headers={"Last-Event-ID": str(_seq(received[-1]))})
                return jobs, replays, resumed

        return asyncio.run(go())

    second = server_factory("--data-dir", str(data_dir))
    jobs, replays, resumed = look(second)
    by_id = {record["job_id"]: record for record in jobs}
    assert [record["job_id"] for record in jobs] == [running, finished]  # newest first, as before

    # the finished job: the same record, and a replay identical byte for byte
    assert by_id[finished] == finished_record
    assert replays[finished] == finished_frames

    # the interrupted job: failed with the reason; nothing a client received is missing
    record = by_id[running]
    assert record["status"] == "failed" and record["error"] == "interrupted by server restart"
    assert record["config"] == _event(received[0])["data"]["config"] and record["config"]["seed"] == 8
    assert record["finished_at"] is not None and record["finished_at"] >= record["started_at"]
    replay = replays[running]
    assert replay[:len(received)] == received
    assert [_seq(frame) for frame in replay] == list(range(1, len(replay) + 1))
    assert _event(replay[-1]) == {"event": "error", "data": {"message": "interrupted by server restart"}}
    assert resumed == replay[len(received):]  # a client reconnecting with Last-Event-ID gets the rest
    log = second.log_text()
    assert "restored 2 job(s), 1 of them unfinished" in log and "Traceback" not in log
    second.stop()
    assert second.process.returncode == 0

    # a further restart finds nothing left to interrupt and changes nothing
    third = server_factory("--data-dir", str(data_dir))
    again_jobs, again_replays, _ = look(third)
    assert again_jobs == jobs and again_replays == replays
    assert "restored 2 job(s), 0 of them unfinished" in third.log_text()
