"""Slow clients cannot hold the server (issue 10, item 5), measured with 1,100 idle connections on loopback.

The server starts with a soft descriptor limit of 1,024 (systemd's default) and raises it to the hard
limit; it serves at most ``--max-connections`` (1,000 here) at once and answers the rest with a clean
503; a connection that does not send its first request's headers within ``--header-timeout`` is closed
(also with a far longer ``--keepalive-timeout``), one idle after a request within ``--keepalive-timeout``;
a body that does not arrive within ``--body-timeout`` gets 408; an event stream open across all of it
keeps its heartbeats.
The figures are printed (run with ``-s``) and quoted in the issue note.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time

import aiohttp
import pytest

from snnmon_client import SSEParser, small_job, start_job, wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CAP = 1000
IDLE = 1100
HEADER_TIMEOUT_S = 6.0  # longer than a loaded machine takes to accept the whole burst
BODY_TIMEOUT_S = 2.0
HEARTBEAT_S = 0.5
KEEPALIVE_S = 60.0  # longer than the test: only --header-timeout may close the idle connections
SYSTEMD_SOFT_LIMIT = 1024


@pytest.fixture(scope="module")
def server(server_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + 300:
        pytest.skip(f"the hard open-file limit is {hard}: this test needs {IDLE + 300} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_SOFT_LIMIT, hard))  # the server inherits it
    try:
        started = server_factory("--max-connections", str(CAP), "--header-timeout", str(HEADER_TIMEOUT_S),
                                 "--body-timeout", str(BODY_TIMEOUT_S), "--heartbeat", str(HEARTBEAT_S),
                                 "--keepalive-timeout", str(KEEPALIVE_S),
                                 "--max-concurrent", "1", "--cpu-threads", "1", "--stop-grace", "1")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    raised = max(soft, IDLE + 300) if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))  # this process holds 1,100 sockets too
    yield started
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soft_descriptor_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    return int(line.split()[3])


def test_the_server_raises_its_descriptor_limit_to_the_hard_one(server):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert _soft_descriptor_limit(server.pid) == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    assert f"at most {CAP} connections at once" in server.log_text()


async def _idle_connection(host: str, port: int, index: int, results: list) -> None:
    """Connect; every other one sends half a request. Record (how it ended, seconds it stayed open)."""
    opened = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        results.append(("connect failed: " + type(exc).__name__, 0.0))
        return
    if index % 2:
        writer.write(b"GET /api/training/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S * 4):
            data = await reader.read()
        kind = "503" if data.startswith(b"HTTP/1.1 503") else "closed" if not data else "other"
    except TimeoutError:
        kind = "still open"
    except ConnectionResetError:
        kind = "reset"
    results.append((kind, time.monotonic() - opened, data[-200:] if kind == "503" else b""))
    writer.close()


async def _follow(url: str, heartbeats: list[float], stop: asyncio.Event) -> None:
    parser = SSEParser()
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            while not stop.is_set():
                chunk = await response.content.readany()
                if not chunk:
                    return
                heartbeats += [time.monotonic() for frame in parser.feed(chunk)
                               if json.loads(frame.data)["event"] == "heartbeat"]


def test_1100_idle_connections_get_a_clean_503_beyond_the_cap_and_are_dropped_after_the_header_timeout(server):
    host, port = server.base_url.removeprefix("http://").split(":")

    async def scenario():
        async with aiohttp.ClientSession() as session:
            running = await start_job(session, server.base_url, **small_job(epochs=100))
            queued = await start_job(session, server.base_url, **small_job())  # waits: its stream only beats
            heartbeats: list[float] = []
            stop = asyncio.Event()
            follower = asyncio.create_task(_follow(f"{server.base_url}/api/training/stream/{queued}", heartbeats,
                                                   stop))
            await asyncio.sleep(HEARTBEAT_S * 2)
            results: list = []
            started = time.monotonic()
            idle = [asyncio.create_task(_idle_connection(host, int(port), i, results)) for i in range(IDLE)]
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as fresh:  # while the cap is full: the clean 503
                async with fresh.get(f"{server.base_url}/healthz") as response:
                    full = (response.status, await response.json(content_type=None))
            await asyncio.gather(*idle)
            all_dropped_s = time.monotonic() - started
            async with aiohttp.ClientSession() as fresh:
                t0 = time.monotonic()
                async with fresh.get(f"{server.base_url}/healthz") as response:
                    after = (response.status, time.monotonic() - t0)
            await asyncio.sleep(HEARTBEAT_S * 3)
            beats_during = [t for t in heartbeats if t > started]
            stream_open = not follower.done()
            stop.set()
            follower.cancel()
            await session.post(f"{server.base_url}/api/training/stop", data=json.dumps({"job_id": running}))
            await wait_for_status(session, server.base_url, running, lambda s: s in ("stopped", "completed"), 30)
            return results, full, after, all_dropped_s, [started, *beats_during], stream_open

    results, full, after, all_dropped_s, beats, stream_open = asyncio.run(scenario())
    gaps = [later - earlier for earlier, later in zip(beats, beats[1:])]
    kinds: dict[str, list[float]] = {}
    for kind, seconds, *_ in results:
        kinds.setdefault(kind, []).append(seconds)
    summary = {kind: (len(times), round(min(times), 2), round(max(times), 2)) for kind, times in kinds.items()}
    print(f"\n{IDLE} idle connections, cap {CAP}, header timeout {HEADER_TIMEOUT_S} s: "
          f"{summary} (count, min s, max s); healthz while full: {full[0]}; all gone after "
          f"{all_dropped_s:.1f} s; healthz after: {after[0]} in {after[1] * 1000:.0f} ms; "
          f"stream heartbeats meanwhile: {len(beats) - 1}, longest gap {max(gaps, default=0):.1f} s")
    refused = kinds.get("503", [])
    dropped = kinds.get("closed", [])
    # the stream holds a slot too; a burst accepted in one loop turn may pass the cap by a few dozen
    assert IDLE - CAP - 50 <= len(refused) <= IDLE - CAP + 20, summary
    assert len(refused) + len(dropped) == IDLE, summary
    assert max(refused) < HEADER_TIMEOUT_S, summary  # answered at once, not after a wait
    assert all(HEADER_TIMEOUT_S * 0.8 <= t <= HEADER_TIMEOUT_S + 10 for t in dropped), summary
    assert all(data.endswith(b"}") and b'"too_many_connections"' in data for kind, _, data in results
               if kind == "503")
    assert full[0] == 503 and full[1]["error"] == "too_many_connections", full
    assert after[0] == 200, after
    # the stream stayed open through it all and kept beating (late only while the server accepted the burst)
    assert stream_open and beats[-1] > beats[0] + all_dropped_s, beats
    assert max(gaps) < HEADER_TIMEOUT_S, gaps  # a loaded server accepting the burst delays a beat, never ends it


def test_a_body_that_does_not_arrive_gets_408(server):
    host, port = server.base_url.removeprefix("http://").split(":")

    async def scenario():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /api/training/stop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"jo")
        t0 = time.monotonic()
        async with asyncio.timeout(BODY_TIMEOUT_S + 15):
            data = await reader.read()
        writer.close()
        return data, time.monotonic() - t0

    data, seconds = asyncio.run(scenario())
    print(f"\nslow body: 408 and connection closed after {seconds:.1f} s")
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"request_timeout"' in data
    assert BODY_TIMEOUT_S * 0.8 <= seconds <= BODY_TIMEOUT_S + 10


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(server_factory):
    keepalive_s = 2.0
    quick = server_factory("--keepalive-timeout", str(keepalive_s), "--header-timeout", "30")
    host, port = quick.base_url.removeprefix("http://").split(":")

    async def scenario():
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
        t0 = time.monotonic()
        async with asyncio.timeout(keepalive_s + 15):
            rest = await reader.read()
        writer.close()
        return head, rest, time.monotonic() - t0

    head, rest, seconds = asyncio.run(scenario())
    print(f"\nidle keep-alive connection closed after {seconds:.1f} s")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert keepalive_s * 0.8 <= seconds <= keepalive_s + 10
