"""The dashboard's Train view in a real browser (Debian's Chromium, headless) against a real server
and real worker processes: form from the schema, live charts, stop, reload, curl-started jobs and a
network drop. Jobs are tiny (synthetic data, 32 hidden units, 5 timesteps) so each takes seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_page import (FAST, JOB_TIMEOUT_MS, TERMINAL, drawn_epochs, fill_form, open_dashboard, points,
                            start_from_form, wait_points, wait_status)

pytestmark = pytest.mark.timeout(240)


def test_form_has_every_schema_field_with_its_defaults(page, server):
    open_dashboard(page, server)
    status, schema = server.api("GET", "/api/training/config-schema")
    assert status == 200
    for field in schema["fields"]:
        control = page.locator(f"#field-{field['name']}")
        assert control.count() == 1, f"no control for {field['name']}"
        if field.get("choices"):
            options = control.locator("option").evaluate_all("els => els.map(e => e.value)")
            assert options == field["choices"]
        hint = page.locator(f"#field-{field['name']}-hint").text_content()
        assert field["help"] in hint
        if "min" in field and field["type"] != "int_list":
            assert str(field["min"]) in hint and str(field["max"]) in hint
    # The page sends exactly the schema's defaults when nothing is touched (seed left to the server).
    body = page.evaluate("window.snnmon.form.values()")
    expected = {f["name"]: f["default"] for f in schema["fields"] if f["name"] != "seed"}
    assert body == expected
    # A description from the catalog endpoints follows the chosen surrogate.
    page.select_option("#field-surrogate", "triangular")
    assert "Esser" in page.locator("#field-surrogate-note").text_content()


def test_train_run_shows_live_charts_until_completed(page, server, artifacts: Path):
    open_dashboard(page, server)
    job_id = start_from_form(page, {**FAST, "epochs": 2, "learn_beta": True, "learn_threshold": True})
    assert f"job={job_id}" in page.url

    # The progress bar moves with batch events while the job runs.
    page.wait_for_function("+document.querySelector('#progress').value > 0", timeout=JOB_TIMEOUT_MS)
    assert "samples/s" in page.locator("#progress-text").text_content()
    assert page.locator("#job-status").get_attribute("data-status") in ("running", "completed")
    wait_points(page, "loss", 1)
    page.screenshot(path=str(artifacts / "running.png"), full_page=True)

    wait_status(page, "completed")
    page.wait_for_function("+document.querySelector('#progress').value === 1")
    for chart in ("loss", "accuracy", "params"):
        wait_points(page, chart, 2, timeout=5_000)
        assert points(page, chart) == 2, chart
    val_points = page.evaluate("window.snnmon.charts.loss.values('val')")
    train_points = page.evaluate("window.snnmon.charts.loss.values('train')")
    assert len(val_points) == 2 and all(v > 0 for _, v in val_points + train_points)
    assert drawn_epochs(page) == [0, 1]
    accuracy = page.evaluate("window.snnmon.charts.accuracy.values('val').concat(window.snnmon.charts.accuracy.values('train'))")
    assert accuracy and all(0 <= v <= 100 for _, v in accuracy)

    # One bar per layer key (784→32→10: lifs.0 and lifs.1), each with a percentage.
    bars = page.locator("#spike-bars li")
    assert bars.count() == 2
    assert re.fullmatch(r"\d+(\.\d+)?%", bars.nth(0).locator(".bar-value").text_content())
    assert page.locator("#spike-bars .bar-key").all_text_contents() == ["lifs.0", "lifs.1"]
    # Learnable beta and threshold of both layers, with numbers.
    params = page.locator("#param-table tbody tr")
    assert params.count() == 4
    assert re.fullmatch(r"-?\d+\.\d{4}", params.nth(0).locator("td").nth(1).text_content())
    assert page.locator("#run-info [data-info=architecture]").text_content() == "784→32→10"

    # The jobs list shows the run with its best validation accuracy.
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    page.wait_for_function(
        "id => document.querySelector(`#jobs-table tr[data-job-id='${id}']`)?.dataset.status === 'completed'",
        arg=job_id, timeout=10_000)
    assert row.get_attribute("aria-current") == "true"
    assert re.fullmatch(r"\d+\.\d%", row.locator("[data-col=best]").text_content())
    page.screenshot(path=str(artifacts / "completed.png"), full_page=True)

    # Export CSV saves the job's per-epoch metrics: a header and one row per epoch, matching the chart.
    with page.expect_download() as download_info:
        page.click("#export-button")
    download = download_info.value
    assert download.suggested_filename == f"snnmon-{job_id}-metrics.csv"
    rows = Path(download.path()).read_text().strip().splitlines()
    header = rows[0].split(",")
    assert {"epoch", "train_loss", "val_loss", "val_accuracy"} <= set(header)
    assert len(rows) == 3
    val_loss = [float(r.split(",")[header.index("val_loss")]) for r in rows[1:]]
    assert val_loss == pytest.approx([v for _, v in val_points])


def test_invalid_field_shows_the_servers_reason_and_creates_no_job(page, server):
    open_dashboard(page, server)
    before = len(server.jobs())
    fill_form(page, {**FAST, "epochs": 0})
    page.click("#train-button")
    error = page.locator("#field-epochs-error")
    error.wait_for(state="visible")
    assert "between 1 and 100" in error.text_content()
    assert page.locator("#field-epochs").get_attribute("aria-invalid") == "true"
    assert len(server.jobs()) == before
    assert page.evaluate("window.snnmon.job") is None
    # Fixing the value clears the message.
    page.fill("#field-epochs", "1")
    assert error.text_content() == ""


def test_stop_ends_the_selected_job_and_train_works_again(page, server):
    open_dashboard(page, server)
    long_job = start_from_form(page, {**FAST, "epochs": 100})
    page.wait_for_function("+document.querySelector('#progress').value > 0", timeout=JOB_TIMEOUT_MS)
    page.click("#stop-button")
    wait_status(page, "stopped", timeout=20_000)
    assert page.locator("#stop-button").is_disabled()
    status, record = server.api("GET", f"/api/training/status/{long_job}")
    assert record["status"] == "stopped"

    # A new run replaces the old one's panels and stream.
    short_job = start_from_form(page, {**FAST, "epochs": 1})
    assert short_job != long_job
    # Its stream opens once the page has read the new job's record; the old one is closed.
    page.wait_for_function("id => window.snnmon.stream && window.snnmon.stream.jobId === id", arg=short_job,
                           timeout=10_000)
    wait_status(page, "completed")
    wait_points(page, "loss", 1, timeout=5_000)
    assert points(page, "loss") == 1  # a one-epoch run still shows its point


def test_queued_job_is_shown_and_stop_acts_only_on_the_selected_job(page, server):
    status, answer = server.api("POST", "/api/training/start", {**FAST, "epochs": 100})
    assert status == 202, answer
    running_job = answer["job_id"]
    open_dashboard(page, server)
    queued_job = start_from_form(page, {**FAST, "epochs": 1})
    wait_status(page, "queued", timeout=10_000)  # the server trains one job at a time here
    page.click("#stop-button")
    wait_status(page, "stopped", timeout=10_000)
    assert server.api("GET", f"/api/training/status/{queued_job}")[1]["status"] == "stopped"
    assert server.api("GET", f"/api/training/status/{running_job}")[1]["status"] not in TERMINAL


def test_failed_job_shows_its_error(page, server):
    open_dashboard(page, server)
    start_from_form(page, {**FAST, "dataset": "mnist", "mnist_fallback": "none", "epochs": 1})
    wait_status(page, "failed")
    message = page.locator("#job-error").text_content()
    assert "MNIST" in message or "mnist" in message, message
    # Whole, with its fix: the command to run and what to give it, not cut at 300 characters.
    assert "snnmon data mnist" in message and "--from PATH" in message and not message.endswith("…"), message
    assert "\n" not in message
    assert page.locator("#stop-button").is_disabled()


def test_reload_mid_run_reattaches_with_complete_charts(page, server):
    open_dashboard(page, server)
    job_id = start_from_form(page, {**FAST, "epochs": 100})
    wait_points(page, "loss", 2)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate("window.snnmon.job.jobId") == job_id
    wait_points(page, "loss", 2, timeout=10_000)  # the replay brings back what was drawn before
    replayed = points(page, "loss")
    wait_points(page, "loss", replayed + 1)  # and live epochs keep coming
    epochs = drawn_epochs(page)
    assert epochs == list(range(len(epochs))), "an epoch is missing or drawn twice"
    assert points(page, "loss") >= len(epochs)
    assert page.evaluate("window.snnmon.stream.duplicates") == 0
    assert page.locator("#job-status").get_attribute("data-status") == "running"


def test_job_started_with_curl_appears_and_can_be_watched(page, server):
    open_dashboard(page, server)
    status, answer = server.api("POST", "/api/training/start", {**FAST, "epochs": 1})
    assert status == 202, answer
    job_id = answer["job_id"]
    button = page.locator(f"#jobs-table tr[data-job-id='{job_id}'] button.job-open")
    button.wait_for(timeout=10_000)  # the list polls every 2 s
    button.click()
    assert page.evaluate("window.snnmon.job.jobId") == job_id
    assert f"job={job_id}" in page.url
    wait_status(page, "completed")
    wait_points(page, "accuracy", 1, timeout=5_000)
    assert points(page, "accuracy") == 1

    # A finished job opened later gets its whole history by replay.
    fresh = page.context.new_page()
    open_dashboard(fresh, server, f"?job={job_id}")
    wait_status(fresh, "completed", timeout=10_000)
    wait_points(fresh, "loss", 1, timeout=5_000)
    assert points(fresh, "loss") == 1
    assert fresh.locator("#progress").get_attribute("data-value") == "1.0000"


def test_stream_resumes_after_a_network_drop_without_lost_or_doubled_points(page, server, proxy):
    page.goto(f"http://127.0.0.1:{proxy.port}/")
    page.wait_for_selector("body[data-ready=true]")
    job_id = start_from_form(page, {**FAST, "epochs": 2})
    wait_points(page, "loss", 1)
    assert proxy.drop_all() > 0
    wait_status(page, "completed")
    wait_points(page, "loss", 2, timeout=5_000)
    assert drawn_epochs(page) == [0, 1]
    assert points(page, "loss") == 2
    stream = page.evaluate("({r: window.snnmon.stream.reconnects, d: window.snnmon.stream.duplicates})")
    assert stream["r"] >= 1
    resumed = [h for h in proxy.request_heads
               if f"/stream/{job_id}" in h and re.search(r"(?im)^last-event-id: *\d+|[?&]last_event_id=\d+", h)]
    assert resumed, "the reconnect did not ask to resume after the last event"
