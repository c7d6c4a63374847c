"""Load (issue 15): 1,000 SSE subscribers on one running job, and the replay of a finished 10,000-event
job to one client, on loopback, through ``bench/sse_load.py`` (the script the figures in
docs/benchmarks.md come from; run with ``-s`` to see them).

Live: every subscriber must receive every event (batch events too: none may be skipped at this rate),
in order, and the end of the stream; the server's memory must grow by less than ``KIB_PER_SUBSCRIBER``
a subscriber; latency from the server numbering an event to the client parsing it must stay under a
bound that fits this 2-core machine shared with other work (the goal, p99 <= 50 ms, is what the doc
reports from a quieter run). Replay: the whole job, in order, at least ``REPLAY_FLOOR`` events/s in
the best of five (the goal, >= 100,000, in the doc).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sse_load  # noqa: E402

SUBSCRIBERS = 1000
LIVE_S = 5.0
KIB_PER_SUBSCRIBER = 50  # the goal; a subscriber is a cursor, an empty buffer and its connection
LATENCY_P99_BOUND_S = 1.0  # a loaded 2-core machine; quiet runs are far below (docs/benchmarks.md)
REPLAY_EVENTS = 10_000
REPLAY_FLOOR = 20_000  # events/s, best of 5: a regression guard (the goal, 100,000, is for a quiet machine)

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_1000_subscribers_on_one_job_all_get_every_event(tmp_path):
    server = sse_load.Server(sse_load.REPO, tmp_path / "data", ("--max-concurrent", "1", "--cpu-threads", "1"))
    server.start()
    try:
        result = asyncio.run(sse_load.run_live(server, jobs=1, subscribers=SUBSCRIBERS, stalled=0,
                                               live_s=LIVE_S, client_procs=2))
    finally:
        server.stop()
    print(f"\n[sse load] {result}")
    assert result["live_events"] >= 10, "the job sent too few events to measure"
    assert result["frames_delivered"] >= SUBSCRIBERS * result["live_events"]
    assert result["lost_events"] == 0 and result["streams_not_ended"] == 0
    assert result["batch_events_skipped"] == 0
    assert result["kib_per_subscriber"] < KIB_PER_SUBSCRIBER
    assert result["latency_ms"]["p99"] < 1000 * LATENCY_P99_BOUND_S
    assert result["emit_latency_ms"] is not None  # the worker stamps its emit time
    # the server's side (numbering -> offered to every subscriber) is part of what the last client saw
    written, every_client = result["numbered_to_written_to_all_ms"], result["every_client_latency_ms"]
    assert written is not None and 0 < written["p50"] <= every_client["p50"] + 5, (written, every_client)
    assert "Traceback" not in server.log_text()


@pytest.mark.timeout(120)
def test_replay_of_a_finished_10000_event_job(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    job_id = sse_load.store_finished_job(sse_load.REPO, data_dir, REPLAY_EVENTS)
    server = sse_load.Server(sse_load.REPO, data_dir).start()
    try:
        result = asyncio.run(sse_load.run_replay(server, job_id, REPLAY_EVENTS, repeats=5))  # checks order
    finally:
        server.stop()
    print(f"\n[sse replay] {result}")
    assert max(result["events_per_s"]) >= REPLAY_FLOOR
