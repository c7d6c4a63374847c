"""The dashboard's checkpoint actions in a real browser: the download buttons deliver the best and last
weights and the NIR graph; Resume on a stopped job continues it from its last finished epoch; the
form's "Fine-tune from" starts a job from another job's weights."""

from __future__ import annotations

import nir
import pytest
from safetensors.numpy import load_file

from test_dashboard import JOB_TIMEOUT_MS, open_dashboard, start_from_form, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TINY = {"dataset": "synthetic", "hidden": [16], "timesteps": 5, "batch_size": 256, "device": "cpu", "seed": 11}
# Epochs of a few seconds: the Stop click must land after the first checkpoint (seen through the jobs poll,
# every 2 s) and before the job ends; TINY's whole run can finish before that on a quiet machine.
SLOW = {**TINY, "hidden": [64], "timesteps": 25, "batch_size": 8}


def download(page, button: str, tmp_path):
    with page.expect_download() as info:
        page.click(button)
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return path


def test_download_buttons_resume_and_fine_tune(page, server, tmp_path):
    open_dashboard(page, server)
    for button in ("#download-best", "#download-last", "#download-nir", "#resume-button"):
        assert page.locator(button).is_disabled()
    job_id = start_from_form(page, {**SLOW, "epochs": 3})
    # the first checkpoint enables the downloads (the jobs poll brings the record's artifacts)
    page.wait_for_selector("#download-best:not([disabled])", timeout=JOB_TIMEOUT_MS)
    page.click("#stop-button")
    wait_status(page, "stopped")
    page.wait_for_selector("#resume-button:not([disabled])", timeout=10_000)

    best = download(page, "#download-best", tmp_path)
    last = download(page, "#download-last", tmp_path)
    graph_file = download(page, "#download-nir", tmp_path)
    assert best.name.startswith(f"snnmon-{job_id}-best-epoch") and best.suffix == ".safetensors"
    assert last.name.startswith(f"snnmon-{job_id}-last-epoch")
    assert load_file(last)["fcs.0.weight"].shape == (64, 784)
    graph = nir.read(graph_file)
    assert isinstance(graph.nodes["lifs.0"], nir.LIF)

    stopped = server.api("GET", f"/api/training/status/{job_id}")[1]
    page.click("#resume-button")
    page.wait_for_function("id => window.snnmon.job && window.snnmon.job.jobId !== id", arg=job_id)
    resumed_id = page.evaluate("window.snnmon.job.jobId")
    wait_status(page, "completed")
    resumed = server.api("GET", f"/api/training/status/{resumed_id}")[1]
    assert resumed["resumed_from"] == job_id and resumed["config"] == stopped["config"]
    assert resumed["artifacts"]["last"]["epoch"] == 2  # epochs counted on, to the configured 3
    assert page.locator("#resume-button").is_disabled()  # a completed job has nothing to resume

    # "Fine-tune from" lists jobs with checkpoints; the started job names its origin
    page.wait_for_selector(f"#fine-tune-job option[value='{resumed_id}']", state="attached", timeout=10_000)
    page.select_option("#fine-tune-job", resumed_id)
    page.select_option("#fine-tune-which", "last")
    tuned_id = start_from_form(page, {**SLOW, "batch_size": 256, "epochs": 1})  # SLOW's layers, fewer steps
    tuned = server.api("GET", f"/api/training/status/{tuned_id}")[1]
    assert tuned["init_from"] == {"job_id": resumed_id, "which": "last"}
