"""Retention, deletion and the metrics export against a real server with ``--keep-jobs 2``.

Three tiny jobs run one after another: the oldest is pruned with its events (also from the SQLite file).
The newest one's metrics come back as JSON rows and as CSV, both equal to its streamed epoch events.
Deleting: a finished job 204 (then 404), an unknown one 404, a running one 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import sqlite3

import aiohttp
import pytest

from snnmon_client import get_json, post_json, read_stream, small_job, start_job, wait_for_status

pytestmark = pytest.mark.timeout(120)

TINY = {"hidden": [16]}  # with 1 epoch, or 2 for the job whose metrics are exported
LONG = {"hidden": [16], "epochs": 100, "batch_size": 16}


@pytest.fixture(scope="module")
def server(server_factory):
    # one torch thread: the CPU is shared, and oversubscribed OpenMP threads crawl
    return server_factory("--keep-jobs", "2", "--max-concurrent", "1", "--cpu-threads", "1")


@pytest.fixture(scope="module")
def three_jobs(server):
    """Three tiny jobs, each followed to its end before the next starts; their ids and streams."""
    async def run():
        async with aiohttp.ClientSession() as session:
            ids, streams = [], []
            for seed, epochs in ((41, 1), (42, 1), (43, 2)):
                job_id = await start_job(session, server.base_url, **small_job(seed=seed, epochs=epochs, **TINY))
                streams.append(await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}"))
                ids.append(job_id)
            return ids, streams

    return asyncio.run(run())


def call(server, method: str, path: str) -> tuple[int, object, dict]:
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.request(method, server.base_url + path) as response:
                body = await response.read()
                kind = response.headers.get("Content-Type", "")
                payload = (await response.json()) if kind.startswith("application/json") else body.decode()
                return response.status, payload, dict(response.headers)

    return asyncio.run(go())


def stored_event_count(server, job_id: str) -> int:
    database = f"file:{server.data_dir / 'jobs.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(database, uri=True)) as connection:
        return connection.execute("SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]


def test_the_oldest_finished_job_is_pruned_with_its_events(server, three_jobs):
    (oldest, middle, newest), streams = three_jobs
    assert all(stream.events[-1]["event"] == "completed" for stream in streams)
    status, jobs, _ = call(server, "GET", "/api/training/jobs")
    assert status == 200 and [job["job_id"] for job in jobs] == [newest, middle]
    for path in (f"/api/training/status/{oldest}", f"/api/training/stream/{oldest}",
                 f"/api/training/jobs/{oldest}/metrics"):
        status, body, _ = call(server, "GET", path)
        assert status == 404 and body["error"] == "unknown_job", path
    assert stored_event_count(server, oldest) == 0
    assert stored_event_count(server, newest) == len(streams[2].events)
    assert "pruned 1 finished job(s) beyond --keep-jobs 2" in server.log_text()


def test_metrics_export_as_json_and_csv(server, three_jobs):
    newest, stream = three_jobs[0][2], three_jobs[1][2]
    epochs = [event["data"] for event in stream.events if event["event"] == "epoch"]
    assert len(epochs) == 2

    status, body, headers = call(server, "GET", f"/api/training/jobs/{newest}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body["job_id"] == newest and body["status"] == "completed"
    assert body["epochs"] == [{key: epoch[key] for key in (
        "epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "epoch_s",
        "layer_spike_rates", "param_snapshot")} for epoch in epochs]

    status, text, headers = call(server, "GET", f"/api/training/jobs/{newest}/metrics?format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == f'attachment; filename="snnmon-{newest}-metrics.csv"'
    rows = list(csv.DictReader(io.StringIO(text)))
    header = text.split("\r\n", 1)[0].split(",")
    assert header == ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "epoch_s",
                      "spike_rate.lifs.0", "spike_rate.lifs.1", "param.lifs.0.beta", "param.lifs.0.threshold",
                      "param.lifs.1.beta", "param.lifs.1.threshold"]
    assert len(rows) == len(epochs)
    for row, epoch in zip(rows, epochs):
        assert int(row["epoch"]) == epoch["epoch"]
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "epoch_s"):
            assert float(row[key]) == epoch[key]  # shortest round-trip floats: exactly the streamed numbers
        for layer, rate in epoch["layer_spike_rates"].items():
            assert float(row[f"spike_rate.{layer}"]) == rate
        for name, value in epoch["param_snapshot"].items():
            assert float(row[f"param.{name}"]) == value

    status, body, _ = call(server, "GET", f"/api/training/jobs/{newest}/metrics?format=xml")
    assert status == 400 and body["fields"] == {"format": "json or csv"}


def test_delete_a_finished_job_an_unknown_one_and_a_running_one(server, three_jobs):
    newest, middle = three_jobs[0][2], three_jobs[0][1]
    status, body, _ = call(server, "DELETE", f"/api/training/jobs/{middle}")
    assert status == 204 and body == ""
    for method, path in (("DELETE", f"/api/training/jobs/{middle}"), ("GET", f"/api/training/status/{middle}"),
                         ("GET", f"/api/training/stream/{middle}"), ("DELETE", "/api/training/jobs/nope")):
        status, body, _ = call(server, method, path)
        assert status == 404 and body["error"] == "unknown_job", (method, path)
    assert stored_event_count(server, middle) == 0

    async def running_job():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **small_job(seed=44, **LONG))
            async with session.delete(f"{server.base_url}/api/training/jobs/{job_id}") as response:
                refused = response.status, await response.json()
            await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": job_id})
            await wait_for_status(session, server.base_url, job_id, lambda s: s == "stopped")
            async with session.delete(f"{server.base_url}/api/training/jobs/{job_id}") as response:
                deleted = response.status
            _, jobs = await get_json(session, f"{server.base_url}/api/training/jobs")
            return job_id, refused, deleted, jobs

    job_id, (status, body), deleted, jobs = asyncio.run(running_job())
    assert status == 409 and body["error"] == "job_active" and body["status"] in ("queued", "starting", "running")
    assert deleted == 204
    assert [job["job_id"] for job in jobs] == [newest]
