"""Two jobs on one GPU through a real server: stopping one gives its GPU memory back, the other runs on.

Marked ``gpu``; skips with its reason where CUDA is absent. Memory is read with ``cudaMemGetInfo`` from
this test process (the device's free memory, whoever holds it), so the figure includes each worker's
CUDA context as well as its tensors: that is what a stopped job must return.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import torch

from snnmon_client import get_json, post_json, start_job, wait_for_status, worker_pids

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

# a minute or more on an H200 (two 2048-wide layers over T x B = 51,200 rows a step), so both are still
# running when measured; each holds a gigabyte or two
LONG_CUDA_JOB = {"dataset": "synthetic", "epochs": 100, "batch_size": 512, "timesteps": 100,
                 "hidden": [2048, 2048], "device": "cuda"}
RETURNED_FRACTION = 0.7  # of the stopped job's share; the allocator of the other job may still grow


def free_bytes() -> int:
    return torch.cuda.mem_get_info(0)[0]


def test_two_cuda_jobs_stop_one_and_its_memory_is_returned(server_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: measures GPU memory held by two concurrent cuda jobs")
    server = server_factory("--max-concurrent", "2")
    torch.cuda.init()
    idle = free_bytes()

    async def scenario():
        async with aiohttp.ClientSession() as session:
            first = await start_job(session, server.base_url, seed=1, **LONG_CUDA_JOB)
            second = await start_job(session, server.base_url, seed=2, **LONG_CUDA_JOB)
            for job_id in (first, second):
                await wait_for_status(session, server.base_url, job_id, lambda s: s == "running", timeout=120)
            await asyncio.sleep(5)  # both past their first batches: memory at its working level
            both = free_bytes()
            pids_before = worker_pids(server.pid)
            status, body = await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": first})
            assert status == 200, body
            await wait_for_status(session, server.base_url, first, lambda s: s == "stopped", timeout=60)
            share = (idle - both) / 2  # each job's part of what the two hold
            deadline, returned = time.monotonic() + 30, 0
            while time.monotonic() < deadline:
                returned = free_bytes() - both
                if returned >= RETURNED_FRACTION * share:
                    break
                await asyncio.sleep(0.2)
            _, other = await get_json(session, f"{server.base_url}/api/training/status/{second}")
            await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": second})
            await wait_for_status(session, server.base_url, second, lambda s: s == "stopped", timeout=60)
            return both, share, returned, other, pids_before

    both, share, returned, other, pids_before = asyncio.run(scenario())
    mib = 2 ** 20
    print(f"free {idle / mib:.0f} MiB idle, {both / mib:.0f} MiB with two jobs; the stopped job's share "
          f"{share / mib:.0f} MiB, {returned / mib:.0f} MiB returned")
    assert share > 100 * mib, "two cuda jobs should hold well over 100 MiB"
    assert returned >= RETURNED_FRACTION * share, (returned / mib, share / mib)
    assert other["status"] == "running", other
