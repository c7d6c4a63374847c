"""``GET /metrics`` scraped from a real server and read with prometheus-client's own parser; the JSON log."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from snnmon_client import read_stream, small_job, start_job

TOKEN = "metrics-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(session: aiohttp.ClientSession, base_url: str, headers: dict | None = None) -> dict:
    async with session.get(f"{base_url}/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(await response.text())


def test_metrics_move_as_a_job_runs_and_need_the_token(server_factory):
    server = server_factory("--log-format", "json", env={"SNNMON_TOKEN": TOKEN})

    async def scenario():
        async with aiohttp.ClientSession(headers=AUTH) as session:
            async with aiohttp.ClientSession() as anonymous:
                async with anonymous.get(f"{server.base_url}/metrics") as response:
                    assert response.status == 401
            before = await scrape(session, server.base_url)
            assert value(before, "snnmon_worker_exits_total", reason="completed") == 0
            job_id = await start_job(session, server.base_url, **small_job(epochs=3))
            during: list[dict] = []
            scraping: list[asyncio.Task] = []

            def on_frame(frame):
                if frame.id is not None and frame.json()["event"] == "batch" and not scraping:
                    scraping.append(asyncio.ensure_future(scrape(session, server.base_url)))

            result = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}",
                                       on_frame=on_frame)
            during.append(await scraping[0])
            async with asyncio.timeout(30):  # the terminal event comes before the worker has exited
                while value(after := await scrape(session, server.base_url), "snnmon_worker_exits_total",
                            reason="completed") == 0:
                    await asyncio.sleep(0.1)
            return job_id, result, before, during[0], after

    job_id, result, before, during, after = asyncio.run(scenario())
    events = [event["event"] for event in result.events]
    assert events[-1] == "completed"

    # while it ran: its speed and epoch, and the stream that was reading it
    assert value(during, "snnmon_job_samples_per_second", job_id=job_id) > 0
    assert value(during, "snnmon_job_epoch", job_id=job_id) == 0
    assert value(during, "snnmon_jobs_running") == 1
    assert value(during, "snnmon_sse_subscribers") >= 1

    # afterwards: counters moved by exactly what happened
    assert value(after, "snnmon_jobs", status="completed") == 1
    assert value(after, "snnmon_jobs_running") == 0 and value(after, "snnmon_jobs_queued") == 0
    assert value(after, "snnmon_sse_subscribers") == 0
    assert (job_id,) not in {labels for (name, labels) in after if name == "snnmon_job_epoch"}
    for name in ("batch", "epoch", "config", "completed"):
        assert value(after, "snnmon_events_published_total", event=name) == events.count(name), name
    assert value(after, "snnmon_worker_exits_total", reason="completed") == 1
    assert value(after, "snnmon_worker_exits_total", reason="crashed") == 0
    assert value(after, "snnmon_http_requests_total", route="/api/training/start", method="POST",
                 status="202") == 1
    assert value(after, "snnmon_http_requests_total", route="/metrics", method="GET", status="401") == 1
    assert value(after, "snnmon_http_request_duration_seconds_count", route="/api/training/start",
                 method="POST") == 1
    assert value(after, "snnmon_store_commit_seconds_count") > value(before, "snnmon_store_commit_seconds_count")
    assert value(after, "snnmon_batch_events_skipped_total") == 0

    # --log-format json: every line an object; the job's lines carry its id
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    about_job = [line for line in lines if line.get("job_id") == job_id]
    assert any("queued" in line["message"] for line in about_job)
    assert any(line["logger"] == "aiohttp.access" and "/stream/" in line["message"] for line in about_job)
    assert TOKEN not in server.log_text()
    non_json = [line for line in server.log_text().splitlines()
                if line.strip() and not line.startswith("{") and not line.startswith("snnmon: serving on")]
    assert non_json == []


def test_metrics_open_serves_metrics_without_the_token(server_factory):
    server = server_factory("--metrics-open", env={"SNNMON_TOKEN": TOKEN})

    async def scenario():
        async with aiohttp.ClientSession() as anonymous:
            scraped = await scrape(anonymous, server.base_url)
            async with anonymous.get(f"{server.base_url}/api/training/jobs") as response:
                return scraped, response.status

    scraped, api_status = asyncio.run(scenario())
    assert value(scraped, "snnmon_jobs", status="queued") == 0
    assert api_status == 401
