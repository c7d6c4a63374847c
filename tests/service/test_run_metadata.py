"""Issue 12's API against real servers: run metadata at start and by PATCH (surviving a restart), the
job-list filters, warnings in the job record, and ``metrics?level=step`` equal to the stored batch events.

One job trains (LapicqueCell at 5 steps: its output layer stays silent, so it warns); a second is
started to get a default name. Then the first server stops and a second one opens the same data dir.
"""

from __future__ import annotations

import asyncio
import csv
import io

import aiohttp
import pytest

from service import metrics
from snnmon_client import get_json, post_json, read_stream, small_job, start_job, wait_for_status

pytestmark = pytest.mark.timeout(180)

SILENT = small_job(cell_type="LapicqueCell", hidden=[16], epochs=1, batch_size=256, seed=5)


def request(server, method: str, path: str, body=None) -> tuple[int, object, dict]:
    async def go():
        async with aiohttp.ClientSession() as session:
            kwargs = {} if body is None else {"json": body}
            async with session.request(method, server.base_url + path, **kwargs) as response:
                kind = response.headers.get("Content-Type", "")
                payload = (await response.json()) if kind.startswith("application/json") else await response.text()
                return response.status, payload, dict(response.headers)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metadata-data")


@pytest.fixture(scope="module")
def first(server_factory, data_dir):
    """The first server, one finished job with metadata and its stream, one with a default name."""
    server = server_factory("--data-dir", str(data_dir), "--max-concurrent", "1", "--cpu-threads", "1")

    async def run():
        async with aiohttp.ClientSession() as session:
            job_id = await start_job(session, server.base_url, **SILENT, name="  silent lapicque ",
                                     tags=["baseline", "lapicque", "Baseline"], notes="first try\nT=5")
            stream = await read_stream(session, f"{server.base_url}/api/training/stream/{job_id}")
            other = await start_job(session, server.base_url, **small_job(epochs=1, hidden=[8], seed=6))
            await wait_for_status(session, server.base_url, other, lambda s: s in ("completed", "failed"))
            return job_id, stream, other

    job_id, stream, other = asyncio.run(run())
    return server, job_id, stream, other


def test_start_takes_name_tags_notes_and_names_a_run_by_default(first):
    server, job_id, stream, other = first
    assert stream.ended and stream.events[-1]["event"] == "completed"
    _, record, _ = request(server, "GET", f"/api/training/status/{job_id}")
    assert record["name"] == "silent lapicque"
    assert record["tags"] == ["baseline", "lapicque"]  # trimmed, duplicates (any case) dropped
    assert record["notes"] == "first try\nT=5"
    assert "name" not in record["config"] and "tags" not in record["config"]
    _, other_record, _ = request(server, "GET", f"/api/training/status/{other}")
    assert other_record["name"] == "SpikingNet-LIFCell-atan-1" and other_record["tags"] == []


def test_bad_metadata_and_bad_config_are_reported_together(first):
    server = first[0]
    before = len(request(server, "GET", "/api/training/jobs")[1])
    status, body, _ = request(server, "POST", "/api/training/start",
                              {**small_job(), "lr": 5, "tags": "baseline", "name": "x" * 101, "notes": 3})
    assert status == 400 and body["error"] == "invalid_config"
    assert set(body["fields"]) == {"lr", "tags", "name", "notes"}
    assert "list" in body["fields"]["tags"] and "100" in body["fields"]["name"]
    status, body, _ = request(server, "POST", "/api/training/start", {**small_job(), "tags": ["a,b"]})
    assert status == 400 and "comma" in body["fields"]["tags"]
    assert len(request(server, "GET", "/api/training/jobs")[1]) == before  # nothing was queued


def test_warnings_are_kept_in_the_job_record(first):
    server, job_id, stream, _ = first
    streamed = [e["data"] for e in stream.events if e["event"] == "warning"]
    assert streamed and streamed[0]["kind"] == "silent_layer" and streamed[0]["layer"] == "lifs.1"
    _, record, _ = request(server, "GET", f"/api/training/status/{job_id}")
    assert record["warnings"] == streamed


def test_step_metrics_equal_the_stored_batch_events(first):
    server, job_id, stream, _ = first
    batches = [e["data"] for e in stream.events if e["event"] == "batch"]
    assert len(batches) >= 2 and all("step" in b and "lr" in b for b in batches)
    expected = [{column: b[column] for column in metrics.STEP_COLUMNS} for b in batches]
    status, body, _ = request(server, "GET", f"/api/training/jobs/{job_id}/metrics?level=step")
    assert status == 200 and body["job_id"] == job_id and body["steps"] == expected
    status, text, headers = request(server, "GET", f"/api/training/jobs/{job_id}/metrics?level=step&format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert f"snnmon-{job_id}-step-metrics.csv" in headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["step", "epoch", "batch_loss", "batch_accuracy", "lr", "samples_per_s"]
    assert [[float(x) for x in row] for row in rows[1:]] == [[float(r[c]) for c in rows[0]] for r in expected]
    # the epoch level stays the default
    status, body, _ = request(server, "GET", f"/api/training/jobs/{job_id}/metrics")
    assert status == 200 and len(body["epochs"]) == 1
    status, body, _ = request(server, "GET", f"/api/training/jobs/{job_id}/metrics?level=batchwise")
    assert status == 400 and "level" in body["fields"]


def test_patch_validates_and_changes_metadata(first):
    server, job_id, _, other = first
    path = f"/api/training/jobs/{job_id}"
    status, body, _ = request(server, "PATCH", path, {"name": "", "tags": "x", "colour": "red"})
    assert status == 400 and set(body["fields"]) == {"name", "tags", "colour"}
    assert request(server, "PATCH", path, {})[0] == 400
    assert request(server, "PATCH", path, {"notes": "n" * 10_001})[0] == 400
    assert request(server, "PATCH", "/api/training/jobs/nope", {"name": "x"})[0] == 404
    status, record, _ = request(server, "PATCH", path, {"name": "renamed run", "tags": ["keep", "lif-t5"]})
    assert status == 200 and record["name"] == "renamed run" and record["tags"] == ["keep", "lif-t5"]
    assert record["notes"] == "first try\nT=5"  # fields left out are left as they were
    status, record, _ = request(server, "PATCH", path, {"notes": "silent output layer"})
    assert status == 200 and record["notes"] == "silent output layer" and record["name"] == "renamed run"


def find(server, query: str) -> list[str]:
    status, body, _ = request(server, "GET", f"/api/training/jobs{query}")
    assert status == 200, body
    return [record["job_id"] for record in body]


def test_job_list_filters(first):
    server, job_id, _, other = first
    request(server, "PATCH", f"/api/training/jobs/{job_id}", {"tags": ["keep", "lif-t5"]})
    assert find(server, "") == [other, job_id]
    assert find(server, "?tag=KEEP") == [job_id]
    assert find(server, "?tag=keep&tag=nothing") == []
    assert find(server, "?status=completed") == [other, job_id]
    assert find(server, "?status=running,queued") == []
    assert find(server, "?q=atan-1") == [other]
    assert find(server, f"?q={job_id[:6]}") == [job_id]
    status, body, _ = request(server, "GET", "/api/training/jobs?status=done")
    assert status == 400 and "completed" in body["fields"]["status"]


def test_patched_metadata_survives_a_restart(first, server_factory, data_dir):
    server, job_id, _, _ = first
    request(server, "PATCH", f"/api/training/jobs/{job_id}",
            {"name": "kept across restarts", "tags": ["persisted"], "notes": "written before the restart"})
    _, before, _ = request(server, "GET", f"/api/training/status/{job_id}")
    server.stop()
    second = server_factory("--data-dir", str(data_dir))
    _, after, _ = request(second, "GET", f"/api/training/status/{job_id}")
    assert {k: after[k] for k in ("name", "tags", "notes", "warnings")} == \
           {k: before[k] for k in ("name", "tags", "notes", "warnings")}
    assert after["name"] == "kept across restarts"
    assert find(second, "?tag=persisted") == [job_id]
    # a new job's default name counts on from the restored ones
    async def start_one():
        async with aiohttp.ClientSession() as session:
            status, body = await post_json(session, f"{second.base_url}/api/training/start",
                                           small_job(epochs=1, hidden=[8]))
            assert status == 202, body
            new = body["job_id"]
            request_stop = await post_json(session, f"{second.base_url}/api/training/stop", {"job_id": new})
            assert request_stop[0] == 200
            await wait_for_status(session, second.base_url, new, lambda s: s in ("stopped", "completed", "failed"))
            return (await get_json(session, f"{second.base_url}/api/training/status/{new}"))[1]

    assert asyncio.run(start_one())["name"] == "SpikingNet-LIFCell-atan-2"
