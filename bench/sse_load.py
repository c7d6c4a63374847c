"""SSE load on a real ``snnmon serve``: many subscribers on live jobs, stalled clients, and the replay of a
long finished job. Used before and after a change (``--repo`` picks the checkout whose server runs) and by
``tests/service/test_sse_load.py``.

    python bench/sse_load.py live --subscribers 1000                      # one job, 1,000 subscribers
    python bench/sse_load.py live --jobs 10 --subscribers 2000 --stalled 100
    python bench/sse_load.py replay --events 10000                        # one client, a finished job
    python bench/sse_load.py live --subscribers 1000 --profile /tmp/serve.prof   # the server under cProfile

The clients are raw asyncio protocols in ``--client-procs`` processes (uvloop where installed): each reads
the HTTP/1.1 response, undoes the chunked transfer coding and takes each frame's id and event name with
one regular expression over what arrived (it does not decode the frame's JSON data, as a dashboard
would: that cost is the client's), so the client costs about a microsecond a frame and the figures are
the server's. Latency of an event to a client is measured twice: from the server numbering it (its debug
log line ``numbered ... t=`` against the client's ``time.time()`` when it parsed the frame), and from
the worker's emit (``emitted=``, the worker's ``time.monotonic()``, against the client's; one machine,
so one clock). Only events numbered after every client had connected count (the rest were replayed).
A stalled client connects with a 4 KiB receive buffer and never reads (on loopback the kernel still
takes megabytes into the server's send buffer before the server's socket counts as full).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
READY_LINE = re.compile(r"snnmon: serving on http://([\d.]+):(\d+)")
NUMBERED = re.compile(r"numbered job=(\w+) seq=(\d+) event=(\w+) t=([\d.]+)(?: mono=[\d.]+ emitted=([\d.]+|nan))?")
PUBLISHED = re.compile(r"published job=(\w+) seq=(\d+) t=([\d.]+)(?: subscribers=(\d+) fan_out_ms=([\d.]+))?")
# Since the sweeping fan-out: one line per sweep (it may carry several publishes), its offers (one write to
# each subscriber whose socket takes it), its time, and the server thread's CPU time in it.
SWEPT = re.compile(r"swept job=(\w+) seq=(\d+) subscribers=(\d+) offers=(\d+) sweep_ms=([\d.]+) cpu_ms=([\d.]+)"
                   r"(?: t=([\d.]+))?")
COVERED = re.compile(r"covered job=(\w+) seq=(\d+) t=([\d.]+)")
# A numbered frame as the server writes it (orjson puts "event" first); heartbeats and comments have no id.
FRAME = re.compile(rb'id: (\d+)\ndata: {"event":"(\w+)"[^\n]*\n\n')
CONNECT_AT_ONCE = 100  # connections opened concurrently (aiohttp's listen backlog is 128)
STREAM_TIMEOUT_S = 600  # a client process gives up on its streams after this long
SETTLE_S = 0.5  # an event counts as live for a client numbered this long after its response began


# ``snnmon serve`` under cProfile (event-loop thread): the server leaves by os._exit, so dump the stats there.
PROFILED_SERVE = """
import cProfile, os, sys
profile, path, leave = cProfile.Profile(), sys.argv[1], os._exit
def dump_then_exit(code):
    profile.disable()
    profile.dump_stats(path)
    leave(code)
os._exit = dump_then_exit
sys.argv = ["snnmon", *sys.argv[2:]]
from service.cli import main
profile.enable()
main()
"""


def child_process_names(pid: int) -> list[str]:
    """The names (comm) of a process's children: ``snnmon-idle`` for a ready pre-started worker, ``snnmon-job``
    for one running a job (``trainer.worker``)."""
    import psutil

    names = []
    for child in psutil.Process(pid).children():
        try:
            names.append(child.name())
        except psutil.NoSuchProcess:
            pass
    return names


# -- the server under test ------------------------------------------------------------------------------

@dataclass
class Server:
    repo: Path
    data_dir: Path
    flags: tuple[str, ...] = ()
    profile: Path | None = None
    process: subprocess.Popen | None = None
    host: str = ""
    port: int = 0
    warm_workers: int = 0  # pre-started workers (``snnmon-idle``) to wait for before a measurement

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def start(self) -> "Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        serve = ["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir),
                 "--log-level", "debug", *self.flags]
        if self.profile:
            command = [sys.executable, "-c", PROFILED_SERVE, str(self.profile), *serve]
        else:
            command = [sys.executable, "-m", "service.cli", *serve]
        env = {**os.environ, "PYTHONPATH": str(self.repo)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.repo, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = READY_LINE.search(self.log_text())
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                self._wait_warm(deadline + 60)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"snnmon serve did not start:\n{self.log_text()}")

    def _wait_warm(self, deadline: float) -> None:
        """Until the pre-started workers have imported torch: a warm server, whose first seconds' CPU is
        not shared with those imports (a measurement taken then is the imports')."""
        while time.monotonic() < deadline:
            if child_process_names(self.process.pid).count("snnmon-idle") >= self.warm_workers:
                return
            time.sleep(0.1)
        print(f"warning: the server's {self.warm_workers} pre-started workers were not ready in time",
              file=sys.stderr)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_s(self) -> tuple[float, float]:
        """(user, system) CPU seconds the server process has used."""
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user, times.system

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


async def _request(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP/1.1 request with ``Connection: close`` (the control calls; the streams use ``StreamClient``)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    payload = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    raw = await reader.read()
    writer.close()
    if not raw:
        raise ConnectionError(f"{method} {path}: the server closed the connection without an answer")
    head, _, content = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():
        content = _unchunk(content)
    return status, (json.loads(content) if content.strip() else None)


def _unchunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2:end + 2 + size])
        pos = end + 4 + size


def small_job(**overrides: Any) -> dict[str, Any]:
    """A job that trains in seconds on one core: about 10 batch events a second plus an epoch event."""
    return {"dataset": "synthetic", "epochs": 2, "hidden": [32], "timesteps": 5, "batch_size": 128, **overrides}


async def start_job(server: Server, **config: Any) -> str:
    status, body = await _request(server, "POST", "/api/training/start", config)
    assert status == 202, body
    return body["job_id"]


async def stop_job(server: Server, job_id: str) -> None:
    await _request(server, "POST", "/api/training/stop", {"job_id": job_id})


async def wait_running(server: Server, job_id: str, timeout: float = 300) -> None:
    """Until the job's worker has sent its config event (a cold start imports torch: seconds)."""
    async with asyncio.timeout(timeout):
        while (await _request(server, "GET", f"/api/training/status/{job_id}"))[1]["status"] != "running":
            await asyncio.sleep(0.1)


async def metric(server: Server, name: str) -> float:
    """A counter's value from /metrics (0 when absent)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    raw = (await reader.read()).decode(errors="replace")
    writer.close()
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([\d.e+]+)$", raw, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# -- the clients ---------------------------------------------------------------------------------------

class StreamClient(asyncio.Protocol):
    """One SSE stream on a raw socket. Records each numbered frame's seq, event name and arrival times."""

    def __init__(self, request: bytes, done: asyncio.Future | None):
        self._request = request
        self._done = done
        self._buffer = bytearray()  # bytes not yet unchunked
        self._frames = bytearray()  # unchunked body not yet split into frames
        self._head_done = False
        self._chunked = False
        self.transport: asyncio.Transport | None = None
        self.connected_at = 0.0
        self.seqs: list[int] = []
        self.names: list[bytes] = []
        self.wall: list[float] = []
        self.mono: list[float] = []
        self.ended = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._head_done:
            cut = self._buffer.find(b"\r\n\r\n")
            if cut < 0:
                return
            head = bytes(self._buffer[:cut]).lower()
            self._chunked = b"transfer-encoding: chunked" in head
            del self._buffer[:cut + 4]
            self._head_done = True
            self.connected_at = time.time()
        if self._chunked:
            self._unchunk()
        else:
            self._frames += self._buffer
            self._buffer.clear()
        self._split()

    def _unchunk(self) -> None:
        buffer, pos = self._buffer, 0
        while True:
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(buffer[pos:end], 16)
            if size == 0:
                self._finish()
                break
            if len(buffer) < end + 4 + size:
                break
            self._frames += buffer[end + 2:end + 2 + size]
            pos = end + 4 + size
        del buffer[:pos]

    def _split(self) -> None:
        frames = self._frames
        last = frames.rfind(b"\n\n")
        if last < 0:
            return
        wall, mono = time.time(), time.monotonic()
        found = FRAME.findall(frames, 0, last + 2)
        self.seqs += [int(seq) for seq, _ in found]
        self.names += [event for _, event in found]  # bytes
        self.wall += [wall] * len(found)
        self.mono += [mono] * len(found)
        del frames[:last + 2]

    def _finish(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _open(host: str, port: int, path: str, *, stalled: bool) -> tuple[StreamClient, asyncio.Future]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's fills
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    _, client = await loop.create_connection(lambda: StreamClient(request, done), sock=sock)
    if stalled:
        client.transport.pause_reading()
    return client, done


async def _client_main(host: str, port: int, paths: list[str], stalled: list[bool], conn) -> None:
    clients: list[tuple[StreamClient, asyncio.Future]] = []
    for start in range(0, len(paths), CONNECT_AT_ONCE):
        clients += await asyncio.gather(*(_open(host, port, path, stalled=stall) for path, stall
                                          in zip(paths[start:start + CONNECT_AT_ONCE], stalled[start:])))
    conn.send(("connected", time.time()))
    live = [done for (client, done), stall in zip(clients, stalled) if not stall]
    await asyncio.wait_for(asyncio.gather(*live), timeout=STREAM_TIMEOUT_S)
    for (client, _), stall in zip(clients, stalled):
        if stall:
            client.transport.abort()
    conn.send(("results", [(c.seqs, c.names, c.wall, c.mono, c.ended, c.connected_at) for c, _ in clients]))


def client_process(host: str, port: int, paths: list[str], stalled: list[bool], conn) -> None:
    """Runs in a client process: opens its streams, reads them to their end, sends back what it saw."""
    _raise_fd_limit()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_client_main(host, port, paths, stalled, conn))


@dataclass
class Clients:
    processes: list = field(default_factory=list)
    pipes: list = field(default_factory=list)
    paths: list = field(default_factory=list)

    @classmethod
    def start(cls, server: Server, paths: list[str], stalled: list[bool], procs: int) -> "Clients":
        ctx = multiprocessing.get_context("spawn")
        clients = cls()
        for index in range(procs):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=client_process, args=(server.host, server.port, paths[index::procs],
                                                               stalled[index::procs], child), daemon=True)
            process.start()
            clients.processes.append(process)
            clients.pipes.append(parent)
            clients.paths.append(paths[index::procs])
        return clients

    def wait_connected(self, timeout: float) -> float:
        """Seconds since the epoch when the last client process had all its streams open."""
        times = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("the clients did not connect in time")
            times.append(pipe.recv()[1])
        return max(times)

    def results(self, timeout: float) -> list[tuple]:
        procs = len(self.pipes)
        out: list = [None] * sum(len(paths) for paths in self.paths)
        for index, pipe in enumerate(self.pipes):
            if not pipe.poll(timeout + 30):
                raise TimeoutError("the streams did not end in time")
            out[index::procs] = pipe.recv()[1]  # the streams were dealt out round-robin
        for process in self.processes:
            process.join(10)
        return out


# -- measurements --------------------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else math.nan


def numbered_events(log_text: str) -> dict[str, dict[int, tuple[str, float, float]]]:
    """job -> seq -> (event, numbered at (Unix s), emitted at (worker's monotonic s, nan when absent))."""
    jobs: dict[str, dict[int, tuple[str, float, float]]] = {}
    for job, seq, name, t, emitted in NUMBERED.findall(log_text):
        jobs.setdefault(job, {})[int(seq)] = (name, float(t), float(emitted) if emitted else math.nan)
    return jobs


async def _sample_rss(server: Server, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(server.rss())
        await asyncio.sleep(0.1)


async def run_live(server: Server, *, jobs: int, subscribers: int, stalled: int, live_s: float,
                   client_procs: int, epochs: int = 100, per_event: Path | None = None) -> dict[str, Any]:
    """``subscribers`` fast clients and ``stalled`` stalled ones, round-robin over ``jobs`` running jobs,
    for ``live_s`` seconds from the moment all are connected; then the jobs are stopped."""
    warm = await start_job(server, **small_job(epochs=1, seed=1))  # torch imported, a worker run
    _, warm_done = await _open(server.host, server.port, f"/api/training/stream/{warm}", stalled=False)
    await asyncio.wait_for(warm_done, 300)
    baseline = server.rss()

    job_ids = [await start_job(server, **small_job(epochs=epochs, seed=2 + i)) for i in range(jobs)]
    total = subscribers + stalled
    kinds = [False] * subscribers + [True] * stalled
    order = sorted(range(total), key=lambda i: (i * 7919) % total)  # stalled ones spread over the jobs
    paths = [f"/api/training/stream/{job_ids[i % jobs]}" for i in range(total)]
    stalled_flags = [kinds[order[i]] for i in range(total)]
    clients = Clients.start(server, paths, stalled_flags, client_procs)
    loop = asyncio.get_running_loop()
    connected_at = await loop.run_in_executor(None, clients.wait_connected, 300)
    for job_id in job_ids:
        await wait_running(server, job_id)
    samples: list[int] = []
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(server, samples, stop_sampling))
    cpu_before = server.cpu_s()
    await asyncio.sleep(live_s)
    cpu_after = server.cpu_s()
    stop_sampling.set()
    await sampler
    for job_id in job_ids:
        await stop_job(server, job_id)
    results = await loop.run_in_executor(None, clients.results, 120)
    skipped = await metric(server, "snnmon_batch_events_skipped_total")

    log_text = server.log_text()
    numbered = numbered_events(log_text)
    found = PUBLISHED.findall(log_text)
    published = {(job, int(seq)): float(t) for job, seq, t, _, _ in found}
    # one fan-out per group of events published together: count each group once, with all subscribers on
    fan_outs = list({(job, t): float(ms) for job, seq, t, subs, ms in found
                     if ms and job in job_ids and int(subs) >= subscribers // jobs}.values())
    swept = [(job, int(head), int(subs), int(offers), float(ms), float(cpu), float(t) if t else math.nan)
             for job, head, subs, offers, ms, cpu, t in SWEPT.findall(log_text)]
    sweeps = [(offers, ms, cpu) for job, _, subs, offers, ms, cpu, _ in swept
              if job in job_ids and subs >= subscribers // jobs]
    # The server's side alone: from numbering an event to the moment it had been offered to every subscriber
    # (written to each socket, or queued for a subscriber that is behind), before any client has had the CPU
    # to read it: the first ``covered`` line (a pass of a sweep ending) or ``swept`` line (the sweep ending)
    # at or past its seq, after its publish.
    covered = [(job, int(seq), float(t)) for job, seq, t in COVERED.findall(log_text)]
    covered += [(job, head, t) for job, head, *_, t in swept if not math.isnan(t)]
    written = []
    for job in job_ids:
        ends = sorted((t, head) for j, head, t in covered if j == job)
        for seq, (_, numbered_at, _) in numbered[job].items():
            if numbered_at < connected_at + SETTLE_S or (job, seq) not in published:
                continue
            end = next((t for t, head in ends if head >= seq and t >= published[(job, seq)]), None)
            if end is not None:
                written.append(end - numbered_at)
    fan_outs += [ms for _, ms, _ in sweeps]
    commits = [published[(job, seq)] - numbered_at for job in job_ids
               for seq, (_, numbered_at, _) in numbered[job].items()
               if numbered_at >= connected_at + SETTLE_S and (job, seq) in published]
    latencies, emit_latencies, per_event_worst = [], [], {}
    delivered, lost, not_ended = 0, 0, 0
    for index, (seqs, names, wall, mono, ended, head_at) in enumerate(results):
        if stalled_flags[index]:
            continue
        events = numbered[paths[index].rsplit("/", 1)[1]]
        if not ended:
            not_ended += 1
        lost += len(set(events) - set(seqs))
        assert seqs == sorted(seqs), "frames out of order"
        delivered += len(seqs)
        job = paths[index].rsplit("/", 1)[1]
        for seq, t_wall, t_mono in zip(seqs, wall, mono):
            _, numbered_at, emitted = events[seq]
            if numbered_at < head_at + SETTLE_S:
                continue  # maybe replayed to a client that connected after it: not a live delivery
            latencies.append(t_wall - numbered_at)
            if not math.isnan(emitted):
                emit_latencies.append(t_mono - emitted)
            key = (job, seq)
            per_event_worst[key] = max(per_event_worst.get(key, 0.0), t_wall - numbered_at)
    worst = list(per_event_worst.values())
    if per_event is not None:  # one line per live event: when it was numbered, its name, its last client
        per_event.write_text("".join(
            f"{job} {seq} {numbered[job][seq][0]} {numbered[job][seq][1]:.6f} {1000 * late:.1f}\n"
            for (job, seq), late in sorted(per_event_worst.items(), key=lambda item: numbered[item[0][0]][item[0][1]][1])))
    live_events = sum(1 for job in job_ids for (_, t, _) in numbered[job].values() if t >= connected_at + SETTLE_S)
    ms = lambda values, q: round(1000 * percentile(values, q), 1)  # noqa: E731
    return {
        "scenario": "live", "jobs": jobs, "subscribers": subscribers, "stalled": stalled,
        "client_procs": client_procs, "live_s": live_s, "live_events": live_events,
        "frames_delivered": delivered, "lost_events": lost, "streams_not_ended": not_ended,
        "batch_events_skipped": skipped,
        "latency_ms": {"p50": ms(latencies, 0.5), "p99": ms(latencies, 0.99), "max": ms(latencies, 1.0)},
        "numbered_to_published_ms": {"p50": ms(commits, 0.5), "p99": ms(commits, 0.99), "max": ms(commits, 1.0)},
        "numbered_to_written_to_all_ms": ({"p50": ms(written, 0.5), "p99": ms(written, 0.99),
                                           "max": ms(written, 1.0)} if written else None),
        "fan_out_ms": ({"p50": round(percentile(fan_outs, 0.5), 2), "p99": round(percentile(fan_outs, 0.99), 2),
                        "max": round(percentile(fan_outs, 1.0), 2), "count": len(fan_outs)} if fan_outs else None),
        # writes per published event and subscriber: 1 when every publish is its own fan-out, fewer when a
        # sweep takes the events published during it to the subscribers it has not reached yet
        "writes_per_event_per_subscriber": (round(sum(o for o, _, _ in sweeps)
                                                  / max(1, sum(job in job_ids for job, _ in published))
                                                  / subscribers * jobs, 3) if sweeps else None),
        "sweep_cpu_ms": ({"p50": round(percentile([c for _, _, c in sweeps], 0.5), 2),
                          "p99": round(percentile([c for _, _, c in sweeps], 0.99), 2)} if sweeps else None),
        "every_client_latency_ms": {"p50": ms(worst, 0.5), "p99": ms(worst, 0.99), "max": ms(worst, 1.0)},
        "emit_latency_ms": ({"p50": ms(emit_latencies, 0.5), "p99": ms(emit_latencies, 0.99),
                             "max": ms(emit_latencies, 1.0)} if emit_latencies else None),
        "server_cpu_s_during_live": {"user": round(cpu_after[0] - cpu_before[0], 2),
                                     "system": round(cpu_after[1] - cpu_before[1], 2)},
        "rss_baseline_mib": round(baseline / 2**20, 1),
        "rss_peak_growth_mib": round((max(samples) - baseline) / 2**20, 1),
        "kib_per_subscriber": round((max(samples) - baseline) / 1024 / total, 1),
        "load_average": os.getloadavg(),
    }


def store_finished_job(repo: Path, data_dir: Path, events: int) -> str:
    """A finished job of ``events`` events written straight into the data directory's job store:
    batch events with a real batch event's fields, an epoch event every 100, then ``completed``."""
    sys.path.insert(0, str(repo))
    from service.sqlite_store import SQLiteJobStore
    from service.store import JobRecord, StoredEvent

    async def write() -> None:
        store = SQLiteJobStore(data_dir)
        await store.open()
        record = JobRecord("replay", small_job(), status="completed", finished_at=time.time())
        store.put_job(record)
        for seq in range(1, events):
            if seq % 100:
                data = {"epoch": seq // 1000, "batch": seq % 1000, "n_batches": 1000, "loss": 0.1234567 + seq * 1e-7,
                        "accuracy": 0.8765432, "samples_per_s": 12345.6}
                store.append_event("replay", StoredEvent.encode(seq, "batch", data), record)
            else:
                data = {"epoch": seq // 100, "train_loss": 0.21, "val_loss": 0.23, "train_accuracy": 0.93,
                        "val_accuracy": 0.92, "layer_spike_rates": {"lifs.0": 0.08, "lifs.1": 0.05},
                        "param_snapshot": {"lifs.0.beta": 0.9}, "epoch_s": 1.5}
                store.append_event("replay", StoredEvent.encode(seq, "epoch", data), record)
        store.append_event("replay", StoredEvent.encode(events, "completed", {"duration_s": 10.0}), record)
        await store.close()

    asyncio.run(write())
    sys.path.remove(str(repo))
    return "replay"


async def run_replay(server: Server, job_id: str, events: int, repeats: int) -> dict[str, Any]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        client, done = await _open(server.host, server.port, f"/api/training/stream/{job_id}", stalled=False)
        await asyncio.wait_for(done, 120)
        elapsed = time.perf_counter() - started
        assert client.seqs == list(range(1, events + 1)), "the replay is incomplete or out of order"
        rates.append(events / elapsed)
    return {"scenario": "replay", "events": events, "events_per_s": [round(r) for r in rates],
            "median_events_per_s": round(statistics.median(rates)), "load_average": os.getloadavg()}


def profile_summary(path: Path, top: int = 25) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_callees("_fan_out|offer_batch|TransportSink.write|_pump")
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=("live", "replay"))
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose server runs (default: this one)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=0)
    parser.add_argument("--live-s", type=float, default=8.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, write its stats here")
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here")
    parser.add_argument("--per-event", type=Path,
                        help="write each live event's job, seq, name, numbering time and last client's latency (ms)")
    args = parser.parse_args(argv)

    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="sse-load-") as tmp:
        data_dir = Path(tmp) / "data"
        flags = ("--max-concurrent", str(args.jobs), "--cpu-threads", "1")
        if args.scenario == "replay":
            data_dir.mkdir()
            job_id = store_finished_job(args.repo.resolve(), data_dir, args.events)
        server = Server(args.repo.resolve(), data_dir, flags, args.profile,
                        warm_workers=min(args.jobs, os.cpu_count() or 1)).start()
        try:
            if args.scenario == "live":
                result = asyncio.run(run_live(server, jobs=args.jobs, subscribers=args.subscribers,
                                              stalled=args.stalled, live_s=args.live_s,
                                              client_procs=args.client_procs, per_event=args.per_event))
            else:
                result = asyncio.run(run_replay(server, job_id, args.events, args.repeats))
        finally:
            server.stop()
            if args.keep_log:
                args.keep_log.write_text(server.log_text())
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
    print(json.dumps(result))
    if args.profile:
        print(profile_summary(args.profile))


if __name__ == "__main__":
    main()
