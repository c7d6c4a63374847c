"""Pre-started workers (issue 15): a job starts in under a second on a warm server, in a worker process
that was started before it and serves no other job; an idle worker that dies is replaced; none outlives
the server.

A worker names its process ``snnmon-idle`` once it is ready for a job and ``snnmon-job`` when its job has
arrived (``trainer.worker``), which is how these tests tell them apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import time

import aiohttp
import psutil
import pytest

from service.settings import add_serve_parser, settings_from
from snnmon_client import idle_worker_pids, read_stream, small_job, start_job, wait_gone, worker_pids

pytestmark = pytest.mark.timeout(300)

GOAL_S = 1.0  # the goal, POST -> config event, on a quiet machine (docs/benchmarks.md)
NOISY_MARGIN = 2.5  # the assertion allows this multiple: a shared 2-core machine under load
STARTS = 5  # the median of this many starts is judged
WARM_TIMEOUT_S = 120  # a pre-started worker imports torch: seconds, a minute on a loaded machine
SLOTS = 2  # --max-concurrent here, and the pre-started workers a warm server keeps (at most one per core)
LONG = {"epochs": 100, "batch_size": 16}


def _cores() -> int:
    return len(psutil.Process().cpu_affinity())


async def _warm(server, ready: int) -> set[int]:
    """Wait until no job process is left and ``ready`` pre-started workers wait for a job; their pids."""
    deadline = time.monotonic() + WARM_TIMEOUT_S
    while True:
        idle = idle_worker_pids(server.pid)
        if len(idle) >= ready and not worker_pids(server.pid):
            return idle
        assert time.monotonic() < deadline, f"not warm after {WARM_TIMEOUT_S} s: {idle}\n{server.log_text()[-2000:]}"
        await asyncio.sleep(0.1)


async def _start_until_config(session, server, **config) -> tuple[str, float, int]:
    """Start a job; (its id, seconds from sending the POST to parsing its config event, its worker pid)."""
    sent = time.monotonic()
    job_id = await start_job(session, server.base_url, **config)
    async with session.get(f"{server.base_url}/api/training/stream/{job_id}") as stream:
        async for line in stream.content:
            if line.startswith(b"data: ") and json.loads(line[6:])["event"] == "config":
                break
    seconds = time.monotonic() - sent
    (pid,) = worker_pids(server.pid)
    return job_id, seconds, pid


async def _stop(session, server, job_id: str) -> None:
    async with session.post(f"{server.base_url}/api/training/stop", json={"job_id": job_id}) as response:
        assert response.status == 200, await response.text()


def _ready_slots() -> int:
    return min(SLOTS, _cores())


def test_the_pre_started_workers_follow_the_slots_at_most_one_per_core_and_can_be_turned_off():
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))

    def workers(*argv: str, environ=None) -> int:
        return settings_from(parser.parse_args(["serve", *argv]), environ or {}).prestarted_workers()

    assert workers("--max-concurrent", "1") == 1
    assert workers("--max-concurrent", "64") == _cores()  # a core each: their start-up is seconds of CPU
    assert workers("--max-concurrent", "2", "--no-prestart") == 0
    assert workers("--max-concurrent", "2", environ={"SNNMON_PRESTART": "false"}) == 0
    assert workers("--prestart", environ={"SNNMON_PRESTART": "false"}) == min(2, _cores())  # the flag wins


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--max-concurrent", str(SLOTS))


@pytest.mark.slow
def test_a_job_starts_within_a_second_in_a_worker_started_before_it(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            starts = []
            for _ in range(STARTS):
                idle = await _warm(server, _ready_slots())
                job_id, seconds, pid = await _start_until_config(session, server, **small_job(seed=11, **LONG))
                await _stop(session, server, job_id)
                starts.append((seconds, pid, idle))
            return starts

    starts = asyncio.run(scenario())
    seconds = [s for s, _, _ in starts]
    median = statistics.median(seconds)
    print(f"\n[prestart] POST -> config event: {', '.join(f'{s:.3f}' for s in seconds)} s; median {median:.3f} s "
          f"(goal {GOAL_S} s, asserted {GOAL_S * NOISY_MARGIN} s)")
    assert all(pid in idle for _, pid, idle in starts), "a job did not get a pre-started worker"
    assert median <= GOAL_S * NOISY_MARGIN


def test_a_prestarted_worker_serves_one_job_and_exits_with_it(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            jobs = []
            for seed in (21, 22):
                idle = await _warm(server, _ready_slots())
                job_id, _, pid = await _start_until_config(session, server, **small_job(seed=seed, epochs=1))
                stream = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}")
                await wait_gone({pid}, timeout=10)  # exits with its job: never back among the idle ones
                jobs.append((pid, idle, stream.events[-1]["event"]))
            return jobs

    (first, first_idle, first_end), (second, second_idle, second_end) = asyncio.run(scenario())
    assert first_end == second_end == "completed"
    assert first in first_idle and second in second_idle and first != second
    assert first not in second_idle


def test_an_idle_worker_that_is_killed_is_replaced_and_logged_and_the_next_job_runs(server):
    async def scenario():
        async with aiohttp.ClientSession() as session:
            idle = await _warm(server, _ready_slots())
            victim = min(idle)
            psutil.Process(victim).send_signal(signal.SIGKILL)
            await wait_gone({victim}, timeout=10)  # reaped by the server
            replaced = await _warm(server, _ready_slots())  # the victim's slot has a ready worker again
            job_id = await start_job(session, server.base_url, **small_job(seed=31, epochs=1))
            stream = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}")
            return victim, replaced, stream.events

    victim, replaced, events = asyncio.run(scenario())
    assert victim not in replaced
    assert events[-1]["event"] == "completed", events[-1]
    assert f"pre-started worker {victim} ended before a job reached it (killed by SIGKILL)" in server.log_text()


def test_no_worker_outlives_the_server_stopped_or_killed(server_factory):
    stopped = server_factory("--max-concurrent", str(SLOTS))

    async def scenario():
        async with aiohttp.ClientSession() as session:
            await _warm(stopped, _ready_slots())
            await _start_until_config(session, stopped, **small_job(seed=41, **LONG))
            running = (worker_pids(stopped.pid), idle_worker_pids(stopped.pid))
            # every process the server starts until it is gone (the stopped job's slot may get a worker
            # pre-started during the shutdown; close() must end that one too)
            stopped.process.send_signal(signal.SIGTERM)
            seen = set()
            while stopped.process.poll() is None:
                seen |= _children(stopped.pid)
                await asyncio.sleep(0.02)
            stopped_gone = await wait_gone(seen, timeout=10, reaped=False)
            # killed while its pre-started workers are still importing torch: their parent watch ends them
            killed = server_factory("--max-concurrent", str(SLOTS))
            starting = await _spawned_children(killed.pid, _ready_slots())
            killed.process.kill()
            killed.process.wait(5)
            killed_gone = await wait_gone(starting, timeout=15, reaped=False)
            return running, seen, stopped_gone, starting, killed_gone

    (jobs, idle), seen, stopped_gone, starting, killed_gone = asyncio.run(scenario())
    print(f"\n[prestart] SIGTERM: all {len(seen)} child processes gone {stopped_gone:.2f} s after the server "
          f"exited; SIGKILL: the {len(starting)} starting workers gone in {killed_gone:.2f} s")
    assert len(jobs) == 1 and len(idle) == _ready_slots() - 1  # a job holds a slot: one fewer waits
    assert (jobs | idle) <= seen
    assert stopped.process.returncode == 0
    log = stopped.log_text()
    assert "Traceback" not in log and "leaked" not in log, log[-3000:]
    assert "pre-started worker(s)" in log  # close() ended the idle ones


def _children(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.NoSuchProcess:
        return set()


async def _spawned_children(server_pid: int, count: int) -> set[int]:
    """The first ``count`` worker processes the server spawned (their command line names spawn_main)."""
    deadline = time.monotonic() + WARM_TIMEOUT_S  # after the server's own torch import
    while True:
        found = set()
        for child in psutil.Process(server_pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    found.add(child.pid)
            except psutil.NoSuchProcess:
                continue
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"the server started no worker in {WARM_TIMEOUT_S} s"
        await asyncio.sleep(0.05)
