"""Load: 200 concurrent SSE subscribers on one job, on loopback.

A long job is streamed live to 200 subscribers for LIVE_S seconds, then stopped. Every subscriber must
receive every epoch event (and the config and terminal ones); the server's RSS must stay bounded.
Measured and printed (run with ``-s``; numbers in docs/benchmarks.md): events delivered per
second, live and in a replay, and delivery latency. Events carry no emit timestamp (the design's event
fields have none), so latency runs from the moment the service numbered the event (its
``--log-level debug`` line ``numbered job=... seq=... t=...``) to the moment the client parsed the
frame; both clocks are this machine's ``time.time()``.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time

import aiohttp
import psutil
import pytest

from snnmon_client import post_json, read_stream, small_job, start_job

SUBSCRIBERS = 200
LIVE_S = 8.0  # seconds of live training streamed to every subscriber before the job is stopped
RSS_GROWTH_LIMIT_MB = 100  # the per-subscriber state is a cursor and a bounded buffer of shared frames

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NUMBERED = re.compile(r"numbered job=(\w+) seq=(\d+) event=(\w+) t=([\d.]+)")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        samples.append(process.memory_info().rss)
        await asyncio.sleep(0.1)


async def _subscribe_all(session, url: str, count: int):
    return await asyncio.gather(*(read_stream(session, url, timeout=200) for _ in range(count)))


def test_200_subscribers_on_one_job(server_factory):
    server = server_factory("--max-concurrent", "1", "--log-level", "debug")

    async def scenario():
        connector = aiohttp.TCPConnector(limit=0)  # the default pool would cap it at 100 connections
        async with aiohttp.ClientSession(connector=connector) as session:
            # the first job only warms the server up (torch's multiprocessing imported, a worker run)
            warm = await start_job(session, server.base_url, **small_job(epochs=1, seed=1))
            await read_stream(session, f"{server.base_url}/api/training/stream/{warm}")
            baseline = psutil.Process(server.pid).memory_info().rss

            samples: list[int] = []
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(_sample_rss(server.pid, samples, stop_sampling))
            job_id = await start_job(session, server.base_url, **small_job(epochs=100, seed=2))
            url = f"{server.base_url}/api/training/stream/{job_id}"
            first_event = asyncio.Event()
            streams = [asyncio.create_task(read_stream(session, url, timeout=200,
                                                       on_frame=lambda f: f.id and first_event.set()))
                       for _ in range(SUBSCRIBERS)]
            await first_event.wait()
            await asyncio.sleep(LIVE_S)  # then stop: the measurement lasts as long on a fast machine
            await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": job_id})
            live = await asyncio.gather(*streams)

            replay_started = time.monotonic()
            replay = await _subscribe_all(session, url, SUBSCRIBERS)
            replay_s = time.monotonic() - replay_started
            stop_sampling.set()
            await sampler
            return job_id, baseline, samples, live, replay, replay_s

    job_id, baseline, samples, live, replay, replay_s = asyncio.run(scenario())

    numbered = {int(seq): (name, float(t)) for job, seq, name, t in NUMBERED.findall(server.log_text()) if job == job_id}
    expected_core = [seq for seq, (name, _) in sorted(numbered.items()) if name != "batch"]
    assert numbered and numbered[max(numbered)][0] == "stopped"
    assert sum(name == "epoch" for name, _ in numbered.values()) >= 1

    latencies, delivered, dropped = [], 0, 0
    for result in live:
        assert result.ended
        seqs = [int(f.id) for f in result.frames if f.id is not None]
        assert set(expected_core) <= set(seqs), "a subscriber missed an epoch, config or terminal event"
        assert seqs == sorted(seqs)
        dropped += len(numbered) - len(seqs)
        delivered += len(seqs)
        latencies += [f.received_at - numbered[int(f.id)][1] for f in result.frames if f.id is not None]
    for result in replay:
        assert [int(f.id) for f in result.frames if f.id is not None] == sorted(numbered)

    span = max(t for _, t in numbered.values()) - min(t for _, t in numbered.values())
    peak_growth_mb = (max(samples) - baseline) / 2**20
    replayed = sum(len(r.frames) for r in replay)
    print(f"\n[sse load] {SUBSCRIBERS} subscribers, {len(numbered)} events in {span:.1f} s of training: "
          f"{delivered} frames delivered live ({delivered / span:.0f} events/s), {dropped} batch events skipped; "
          f"latency numbering→client p50 {1000 * statistics.median(latencies):.1f} ms, "
          f"p99 {1000 * _percentile(latencies, 0.99):.1f} ms, max {1000 * max(latencies):.1f} ms; "
          f"replay of the finished job to {SUBSCRIBERS} subscribers: {replayed} frames in {replay_s:.2f} s "
          f"({replayed / replay_s:.0f} events/s); server RSS {baseline / 2**20:.0f} MiB before, "
          f"peak +{peak_growth_mb:.1f} MiB")
    assert peak_growth_mb < RSS_GROWTH_LIMIT_MB
    assert "Traceback" not in server.log_text()
