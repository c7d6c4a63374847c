"""Job start latency: POST /api/training/start until the job's ``config`` event reaches a stream client.

Starts two ``snnmon serve`` processes on this machine, one with ``--prestart`` (the default: a worker
per free slot started ahead) and one with ``--no-prestart`` (a fresh process spawned per job, as before
issue 15), each with its default flags otherwise. Each round starts one default job (the synthetic set,
784→128→10 LIF, T=25, one epoch, on the CPU) on each server, alternating which goes first, and stops it
once its config event has arrived. Before every start the bench waits until both servers are warm: no job
running and, with ``--prestart``, every pre-started worker ready (named ``snnmon-idle``).

    .venv/bin/python bench/job_start.py [--rounds 5]

``--breakdown`` instead runs, in this process, what a pre-started worker does before its job
(``trainer.worker.prepare_for_jobs``) and then one job up to its config event under cProfile, and prints
where that time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from sse_load import child_process_names  # bench/ is on sys.path: this script's own folder

REPO = Path(__file__).resolve().parent.parent
READY_LINE = re.compile(r"snnmon: serving on (http://\S+)")
JOB = {"dataset": "synthetic", "epochs": 1, "device": "cpu"}  # the rest default: 784→128→10 LIF, T=25, batch 64
WARM_TIMEOUT_S = 120  # a pre-started worker imports torch: seconds, more on a loaded machine


class Server:
    def __init__(self, flag: str, workdir: Path):
        self.flag = flag
        self.log_path = workdir / f"server{flag}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", "0", flag,
                 "--data-dir", str(workdir / f"data{flag}")],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while not (match := READY_LINE.search(self.log_path.read_text())):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"server {flag} did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.url = match.group(1)

    def process_names(self) -> list[str]:
        return child_process_names(self.process.pid)

    async def warm(self) -> None:
        """No job process left, and (with --prestart) both slots' workers ready."""
        wanted = 2 if self.flag == "--prestart" else 0  # --max-concurrent's default
        deadline = time.monotonic() + WARM_TIMEOUT_S
        while True:
            names = self.process_names()
            if "snnmon-job" not in names and names.count("snnmon-idle") == wanted:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.flag} not warm after {WARM_TIMEOUT_S} s: {names}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def time_one_start(session: aiohttp.ClientSession, server: Server) -> float:
    """Seconds from sending the POST to parsing the job's config event on its stream; then stop the job."""
    started = time.monotonic()
    async with session.post(f"{server.url}/api/training/start", data=json.dumps(JOB)) as response:
        assert response.status == 202, await response.text()
        job_id = (await response.json())["job_id"]
    seconds = None
    async with session.get(f"{server.url}/api/training/stream/{job_id}") as stream:
        async for line in stream.content:
            if line.startswith(b"data: ") and json.loads(line[6:])["event"] == "config":
                seconds = time.monotonic() - started
                break
    async with session.post(f"{server.url}/api/training/stop", data=json.dumps({"job_id": job_id})) as response:
        assert response.status == 200, await response.text()
    return seconds


async def compare(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="snnmon-job-start-") as workdir:
        servers = [Server("--prestart", Path(workdir)), Server("--no-prestart", Path(workdir))]
        results: dict[str, list[float]] = {server.flag: [] for server in servers}
        try:
            async with aiohttp.ClientSession() as session:
                for round_index in range(rounds):
                    order = servers if round_index % 2 == 0 else servers[::-1]
                    for server in order:
                        for each in servers:
                            await each.warm()
                        await asyncio.sleep(1.0)  # the other server's last job has fully left the CPU
                        seconds = await time_one_start(session, server)
                        results[server.flag].append(seconds)
                        print(f"round {round_index + 1} {server.flag:13s} POST -> config {seconds:.3f} s",
                              flush=True)
        finally:
            for server in servers:
                server.stop()
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for flag, values in results.items():
        print(f"{flag:13s} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    ratio = statistics.median(results["--no-prestart"]) / statistics.median(results["--prestart"])
    print(f"ratio of the medians: {ratio:.1f}x")


def breakdown() -> None:
    """What a pre-started worker has done before its job, and the job up to its config event, profiled."""
    import cProfile
    import pstats

    from trainer import worker

    started, cpu = time.perf_counter(), time.process_time()
    worker.prepare_for_jobs()
    print(f"prepare_for_jobs (before the job arrives): {time.perf_counter() - started:.2f} s wall, "
          f"{time.process_time() - cpu:.2f} s CPU")
    config_at = {}
    profile = cProfile.Profile()

    def emit(event, data):
        if event == "config":
            profile.disable()  # the profile ends at the config event
        config_at.setdefault(event, (time.perf_counter(), time.process_time()))

    spec = {"job_id": "bench", "config": {**JOB, "seed": 1}, "device": "cpu", "cpu_threads": 1,
            "data_dir": None, "allow_download": False}
    started, cpu = time.perf_counter(), time.process_time()
    profile.enable()
    worker.execute_job(spec, emit, should_stop=lambda: "config" in config_at)
    wall_at, cpu_at = config_at["config"]
    print(f"job arrived -> config event: {wall_at - started:.3f} s wall, {cpu_at - cpu:.3f} s CPU (1 thread, "
          f"as with --max-concurrent 2 on 2 cores); load average {os.getloadavg()[0]:.1f}")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(r"trainer/(data|models|optim|train|worker)", 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true", help="profile one job's start in this process")
    args = parser.parse_args()
    if args.breakdown:
        breakdown()
    else:
        asyncio.run(compare(args.rounds))


if __name__ == "__main__":
    main()
