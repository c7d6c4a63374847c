"""A full disk under the job history loses no acknowledged job and shows no client an event that was not
saved (issue 10, item 2), on a real server with real workers.

Where the machine allows it (root, mount permitted) the data directory is a small tmpfs filled to the
last page; elsewhere the server's file-size limit (RLIMIT_FSIZE, set from outside with prlimit) is
lowered to the size of its files, so every write that grows one fails with EFBIG, which SQLite reports
as a full disk too. The test prints which ran.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import subprocess
from pathlib import Path

import aiohttp
import pytest

from snnmon_client import get_json, post_json, read_raw_frames, small_job, start_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TMPFS_SIZE = "8m"  # the schema and a few jobs' events fit; a filler file takes the rest
LONG = {"epochs": 100, "batch_size": 16}  # trains for minutes: still running when the disk fills


class TmpfsDisk:
    """A real small filesystem, filled to its last page by a file, and emptied again."""

    how = "a real 8 MiB tmpfs, filled to the last page"

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    @classmethod
    def mount(cls, path: Path) -> "TmpfsDisk | None":
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(path)],
                              capture_output=True)
        return cls(path) if done.returncode == 0 else None

    def fill(self, server_pid: int) -> None:
        chunk = b"\0" * 4096
        with open(self.filler, "wb", buffering=0) as out:
            while True:
                try:
                    out.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    return

    def free(self, server_pid: int) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


class FileSizeLimit:
    """An injected failure: the server may not grow any file past its current size."""

    how = "an injected write failure (the server's RLIMIT_FSIZE lowered to its files' size; mount refused)"

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def fill(self, server_pid: int) -> None:
        largest = max(entry.stat().st_size for entry in self.path.iterdir())
        _, hard = resource.prlimit(server_pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server_pid, resource.RLIMIT_FSIZE, (largest, hard))

    def free(self, server_pid: int) -> None:
        _, hard = resource.prlimit(server_pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server_pid, resource.RLIMIT_FSIZE, (hard, hard))

    def unmount(self) -> None:
        pass


@pytest.fixture
def disk(tmp_path):
    disk = TmpfsDisk.mount(tmp_path / "data") or FileSizeLimit(tmp_path / "data")
    print(f"\ndisk full by: {disk.how}")
    yield disk
    disk.unmount()


async def _until(check, timeout: float = 60.0, interval: float = 0.1):
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
    return result


def test_disk_full_refuses_new_jobs_never_sends_an_unsaved_event_and_recovers(disk, server_factory):
    server = server_factory("--data-dir", str(disk.path), "--stop-grace", "1")
    base = server.base_url
    try:
        async def while_full():
            async with aiohttp.ClientSession() as session:
                job_id = await start_job(session, base, **small_job(seed=7, **LONG))
                received: list[bytes] = []
                batches = asyncio.Event()
                stream = asyncio.create_task(read_raw_frames(
                    session, f"{base}/api/training/stream/{job_id}",
                    on_frame=lambda frame: (received.append(frame), b'"batch"' in frame and batches.set())))
                await asyncio.wait_for(batches.wait(), 60)
                disk.fill(server.pid)
                await asyncio.wait_for(stream, 30)  # the server ends the stream by itself

                async def failed():
                    _, record = await get_json(session, f"{base}/api/training/status/{job_id}")
                    return record if record["status"] == "failed" else None

                record = await _until(failed)
                refused = await post_json(session, f"{base}/api/training/start", small_job(seed=8))
                async with session.get(f"{base}/readyz") as response:
                    ready_while_full = response.status
                disk.free(server.pid)
                async with session.get(f"{base}/readyz") as response:
                    ready_after = response.status
                accepted = await start_job(session, base, **small_job(seed=9))
                return job_id, received, record, refused, ready_while_full, ready_after, accepted

        job_id, received, record, refused, ready_full, ready_after, accepted = asyncio.run(while_full())
    finally:
        server.stop()
    log = server.log_text()

    assert b'"event":"config"' in received[0] and len(received) >= 2
    assert not any(b'"completed"' in frame or b'"error"' in frame for frame in received)
    assert record["error"].startswith("its events could not be saved (")
    assert "database or disk is full" in record["error"]
    status, body = refused
    assert status == 503 and body["error"] == "store_unavailable", body
    assert (ready_full, ready_after) == (503, 200)
    assert "database or disk is full" in log and "cannot rollback" not in log
    assert "writes succeed again" in log
    assert "Traceback" not in log

    # After a restart: both acknowledged jobs are there, and every event the client saw is stored as sent.
    again = server_factory("--data-dir", str(disk.path))
    try:
        async def after_restart():
            async with aiohttp.ClientSession() as session:
                _, jobs = await get_json(session, f"{again.base_url}/api/training/jobs")
                replay = await read_raw_frames(session, f"{again.base_url}/api/training/stream/{job_id}")
                return jobs, replay

        jobs, replay = asyncio.run(after_restart())
    finally:
        again.stop()
    assert {job_id, accepted} <= {job["job_id"] for job in jobs}
    assert replay[:len(received)] == received  # same seqs, same bytes: no seq was numbered twice
    assert b'"error"' in replay[-1]  # and the stream ends
    assert os.path.exists(disk.path / "jobs.sqlite3")
