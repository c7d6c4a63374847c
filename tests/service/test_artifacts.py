"""Checkpoints through the HTTP API, on a real server with real workers: checkpoint events and the job
record, downloads, ``snnmon evaluate`` on a download, NIR export (and 422 for a cell NIR cannot
express), resume of a stopped job, fine-tune and its architecture check, DELETE removing the files."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import aiohttp
import pytest
from safetensors.numpy import load_file

from snnmon_client import get_json, post_json, read_stream, start_job, wait_for_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TINY = {"dataset": "synthetic", "hidden": [16], "timesteps": 5, "batch_size": 128, "lr": 0.005,
        "epochs": 3, "seed": 4242, "device": "cpu"}
FINAL_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory("--max-concurrent", "2", "--cpu-threads", "1")


@pytest.fixture(scope="module")
def finished_job(server):
    """A 3-epoch job run to the end: (job id, its events, its record)."""
    async def run():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **TINY)
            stream = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}", timeout=300)
            _, record = await get_json(session, f"{server.base_url}/api/training/status/{job_id}")
            return job_id, stream.events, record
    return asyncio.run(run())


def events_named(events, name):
    return [e["data"] for e in events if e["event"] == name]


async def fetch(session, url):
    async with session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


def test_checkpoint_events_and_the_record_list_the_artifacts(server, finished_job):
    job_id, events, record = finished_job
    assert record["status"] == "completed"
    checkpoints = events_named(events, "checkpoint")
    assert [c["epoch"] for c in checkpoints if c["which"] == "last"] == [0, 1, 2]
    best_epoch = max(events_named(events, "epoch"), key=lambda e: e["val_accuracy"])["epoch"]
    assert [c for c in checkpoints if c["which"] == "best"][-1]["epoch"] == best_epoch
    assert record["artifacts"]["last"]["epoch"] == 2 and record["artifacts"]["best"]["epoch"] == best_epoch
    folder = server.data_dir / "jobs" / job_id
    assert record["disk_bytes"] == sum(p.stat().st_size for p in folder.iterdir()) > 0


def test_download_loads_and_evaluates_to_the_final_accuracy(server, finished_job, tmp_path):
    job_id, events, record = finished_job

    async def download():
        async with aiohttp.ClientSession() as session:
            base = f"{server.base_url}/api/training/jobs/{job_id}/checkpoint"
            return await fetch(session, base + "?which=last"), await fetch(session, base + "?which=best"), \
                await fetch(session, base + "?which=worst")
    (status, headers, body), (best_status, best_headers, _), (bad_status, _, bad) = asyncio.run(download())
    assert status == 200 and best_status == 200
    assert headers["Content-Disposition"] == f'attachment; filename="snnmon-{job_id}-last-epoch3.safetensors"'
    assert f"snnmon-{job_id}-best-epoch" in best_headers["Content-Disposition"]
    assert bad_status == 400 and json.loads(bad)["fields"] == {"which": "best or last"}
    path = tmp_path / "last.safetensors"
    path.write_bytes(body)
    assert load_file(path)["fcs.0.weight"].shape == (16, 784)
    out = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", str(path), "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["val_accuracy"] == record["final_metrics"]["val_accuracy"]
    assert result["val_loss"] == pytest.approx(record["final_metrics"]["val_loss"], rel=1e-6)


def test_nir_export_and_no_checkpoint_answers(server, finished_job, tmp_path):
    import nir

    job_id, _, _ = finished_job

    async def run():
        async with aiohttp.ClientSession() as session:
            export = await fetch(session, f"{server.base_url}/api/training/jobs/{job_id}/export?format=nir")
            other = await fetch(session, f"{server.base_url}/api/training/jobs/{job_id}/export?format=onnx")
            # a job stopped before its first epoch ends has no checkpoint, and nothing to resume
            early = await start_job(session, server.base_url, **{**TINY, "epochs": 1, "seed": 1})
            await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": early})
            await wait_for_status(session, server.base_url, early, lambda s: s == "stopped", timeout=120)
            missing = await fetch(session, f"{server.base_url}/api/training/jobs/{early}/checkpoint")
            resume = await post_json(session, f"{server.base_url}/api/training/start", {"resume_from": early})
            unknown = await fetch(session, f"{server.base_url}/api/training/jobs/nope/checkpoint")
            return export, other, missing, resume, unknown
    export, other, missing, resume, unknown = asyncio.run(run())
    status, headers, body = export
    assert status == 200 and headers["Content-Disposition"].endswith(f'snnmon-{job_id}-best.nir"')
    (tmp_path / "net.nir").write_bytes(body)
    graph = nir.read(tmp_path / "net.nir")
    assert isinstance(graph.nodes["lifs.0"], nir.LIF) and "reset" in graph.metadata
    assert other[0] == 400
    assert missing[0] == 404 and json.loads(missing[2])["error"] == "no_checkpoint"
    assert resume[0] == 400 and "no checkpoint" in resume[1]["fields"]["resume_from"]
    assert unknown[0] == 404 and json.loads(unknown[2])["error"] == "unknown_job"


def test_resume_of_a_stopped_job_runs_only_the_remaining_epochs(server, finished_job):
    reference_id, _, reference = finished_job

    async def run():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **TINY)  # the same run as the reference
            stopped = asyncio.Event()

            async def stop_after_first_checkpoint(frame_event):
                if frame_event["event"] == "checkpoint" and not stopped.is_set():
                    stopped.set()
                    await post_json(session, f"{server.base_url}/api/training/stop", {"job_id": job_id})

            tasks = []
            first = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}", timeout=300,
                                      on_frame=lambda f: tasks.append(asyncio.ensure_future(
                                          stop_after_first_checkpoint(f.json()))))
            await asyncio.gather(*tasks)
            status, body = await post_json(session, f"{server.base_url}/api/training/start",
                                           {"resume_from": job_id})
            assert status == 202, body
            resumed = await read_stream(session, f"{server.base_url}/api/training/stream/{body['job_id']}",
                                        timeout=300)
            _, record = await get_json(session, f"{server.base_url}/api/training/status/{body['job_id']}")
            bad = await post_json(session, f"{server.base_url}/api/training/start",
                                  {"resume_from": reference_id})
            extra = await post_json(session, f"{server.base_url}/api/training/start",
                                    {"resume_from": job_id, "lr": 0.01})
            return first.events, resumed.events, record, bad, extra
    first, resumed, record, bad, extra = asyncio.run(run())
    assert first[-1]["event"] == "stopped"
    finished_epochs = [e["epoch"] for e in events_named(first, "epoch")]
    assert finished_epochs and finished_epochs[-1] < 2
    assert [e["epoch"] for e in events_named(resumed, "epoch")] == list(range(finished_epochs[-1] + 1, 3))
    assert record["status"] == "completed" and record["resumed_from"] == first[0]["data"]["job_id"]
    assert record["config"] == reference["config"]
    for key in FINAL_KEYS:  # fixed seed, CPU: as if it had never stopped
        assert record["final_metrics"][key] == reference["final_metrics"][key], key
    assert bad[0] == 400 and "completed" in bad[1]["fields"]["resume_from"]
    assert extra[0] == 400 and "own config" in extra[1]["fields"]["lr"]


def test_fine_tune_starts_from_the_weights_and_checks_the_architecture(server, finished_job):
    job_id, _, reference = finished_job

    async def run():
        async with aiohttp.ClientSession() as session:
            start = f"{server.base_url}/api/training/start"
            status, body = await post_json(session, start, {**TINY, "epochs": 1, "seed": TINY["seed"],
                                                            "init_from": {"job_id": job_id, "which": "best"}})
            assert status == 202, body
            tuned = await read_stream(session, f"{server.base_url}/api/training/stream/{body['job_id']}",
                                      timeout=300)
            _, record = await get_json(session, f"{server.base_url}/api/training/status/{body['job_id']}")
            mismatch = await post_json(session, start, {**TINY, "hidden": [8],
                                                        "init_from": {"job_id": job_id}})
            malformed = await post_json(session, start, {**TINY, "init_from": job_id})
            return tuned.events, record, mismatch, malformed
    events, record, mismatch, malformed = asyncio.run(run())
    assert record["init_from"] == {"job_id": job_id, "which": "best"}
    assert events_named(events, "batch")[0]["accuracy"] > 0.5  # chance is 0.1
    assert mismatch[0] == 400 and mismatch[1]["error"] == "invalid_config"
    assert "fcs.0.weight is [16, 784] in the checkpoint but [8, 784] here" in mismatch[1]["fields"]["init_from"]
    assert malformed[0] == 400 and "job_id" in malformed[1]["fields"]["init_from"]


def test_alif_job_is_not_exportable_and_delete_removes_the_files(server):
    async def run():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **{**TINY, "epochs": 1, "cell_type": "ALIFCell"})
            await wait_for_status(session, server.base_url, job_id, lambda s: s == "completed", timeout=300)
            export = await fetch(session, f"{server.base_url}/api/training/jobs/{job_id}/export?format=nir")
            folder = server.data_dir / "jobs" / job_id
            existed = folder.is_dir()
            async with session.delete(f"{server.base_url}/api/training/jobs/{job_id}") as response:
                deleted = response.status
            return export, existed, deleted, folder.exists()
    (status, _, body), existed, deleted, still_there = asyncio.run(run())
    assert status == 422
    answer = json.loads(body)
    assert answer["error"] == "not_exportable" and answer["cell"] == "ALIFCell" and "adaptive" in answer["reason"]
    assert existed and deleted == 204 and not still_there
