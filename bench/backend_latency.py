"""Job start latency and event latency of the two job backends, through a real ``snnmon serve``.

- start latency: POST /api/training/start answered -> the job's ``config`` event read by an SSE client
  (what a user waits for before anything shows; includes starting the worker and importing torch);
- event latency: the trainer's ``emit`` of a ``batch`` event -> the client has read that frame (worker ->
  server -> numbering and store -> stream). The emit time is stamped by wrapping
  ``trainer.worker._Emitter.__call__`` in a ``sitecustomize`` module this script puts on the servers'
  PYTHONPATH, which every job process loads: a spawned worker inherits the variable, a Ray actor gets it
  through its runtime environment. Nothing in the service changes for it.

For each backend the script starts a server (the Ray one on a local ``ray.cluster_utils.Cluster`` with a
100 MiB object store), runs one unmeasured warm-up job, then ``--jobs`` small synthetic jobs one after
another, each followed from its POST on; it prints each backend's medians and 95th percentiles.

    .venv/bin/python bench/backend_latency.py --jobs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
READY_LINE = re.compile(r"snnmon: serving on (http://\S+)")
JOB = {"dataset": "synthetic", "epochs": 1, "hidden": [32], "timesteps": 5, "batch_size": 32, "device": "cpu"}
STAMP = '''
import time
from trainer import worker

_emit = worker._Emitter.__call__


def _stamped(self, event, data):
    return _emit(self, event, {**data, "bench_emitted_at": time.time()})


worker._Emitter.__call__ = _stamped
'''


def start_server(workdir: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    (workdir / "stamp").mkdir()
    (workdir / "stamp" / "sitecustomize.py").write_text(STAMP)
    path = os.pathsep.join(filter(None, [str(workdir / "stamp"), str(REPO), os.environ.get("PYTHONPATH")]))
    log = open(workdir / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", "0", "--data-dir",
                                str(workdir / "data"), "--cpu-threads", "1", *flags], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = READY_LINE.search((workdir / "server.log").read_text(errors="replace"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server did not start:\n{(workdir / 'server.log').read_text(errors='replace')}")


async def one_job(session: aiohttp.ClientSession, base_url: str, seed: int) -> tuple[float, list[float]]:
    """(POST answered -> config event read, [batch emit -> read] for each batch event) in seconds."""
    async with session.post(f"{base_url}/api/training/start", json={**JOB, "seed": seed}) as response:
        posted = time.time()
        job_id = (await response.json())["job_id"]
    start_latency, event_latencies = None, []
    async with session.get(f"{base_url}/api/training/stream/{job_id}") as stream:
        async for line in stream.content:
            if not line.startswith(b"data: "):
                continue
            now = time.time()
            message = json.loads(line[6:])
            if message["event"] == "config" and start_latency is None:
                start_latency = now - posted
            elif message["event"] == "batch":
                event_latencies.append(now - message["data"]["bench_emitted_at"])
            elif message["event"] in ("completed", "stopped", "error"):
                if message["event"] != "completed":
                    raise SystemExit(f"job {job_id} ended {message}")
                break
    return start_latency, event_latencies


async def measure(base_url: str, jobs: int) -> tuple[list[float], list[float]]:
    async with aiohttp.ClientSession() as session:
        await one_job(session, base_url, seed=1)  # warm-up: imports and caches, not measured
        starts, events = [], []
        for index in range(jobs):
            start, latencies = await one_job(session, base_url, seed=100 + index)
            starts.append(start)
            events += latencies
    return starts, events


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_backend(name: str, jobs: int) -> tuple[list[float], list[float]]:
    cluster = None
    flags = ["--backend", name]
    if name == "ray":
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        from ray.cluster_utils import Cluster

        for attempt in range(3):  # Ray gives a node 30 s to start: not always enough on a loaded machine
            try:
                cluster = Cluster(initialize_head=True, head_node_args={
                    "num_cpus": 2, "object_store_memory": 100 << 20, "include_dashboard": False})
                break
            except Exception as exc:
                print(f"ray cluster did not start ({exc}); retrying", file=sys.stderr)
        else:
            raise SystemExit("ray cluster did not start three times")
        flags += ["--ray-address", cluster.address]
    with tempfile.TemporaryDirectory() as tmp:
        process, base_url = start_server(Path(tmp), flags)
        try:
            return asyncio.run(measure(base_url, jobs))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            if cluster is not None:
                cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="measured jobs per backend (after one warm-up)")
    parser.add_argument("--backend", choices=("process", "ray", "both"), default="both")
    args = parser.parse_args()
    names = ("process", "ray") if args.backend == "both" else (args.backend,)
    print(f"{args.jobs} jobs per backend, one at a time: {JOB}; load average {os.getloadavg()[0]:.1f}")
    print("| backend | start: POST -> config, median (p95) | event: emit -> client, median (p95), n |")
    print("| --- | --- | --- |")
    for name in names:
        starts, events = run_backend(name, args.jobs)
        print(f"| {name} | {statistics.median(starts):.2f} s ({percentile(starts, 0.95):.2f} s) | "
              f"{statistics.median(events) * 1e3:.1f} ms ({percentile(events, 0.95) * 1e3:.1f} ms), "
              f"{len(events)} |", flush=True)


if __name__ == "__main__":
    main()
