"""The dashboard against a server that needs a token, in a real browser (Debian's Chromium, headless).

The page loads without the token (its files are open), asks for the token once when the API answers
401, keeps it for the tab, and trains and streams a job with it: fetches carry ``Authorization:
Bearer``, the EventSource carries ``?access_token=``, which the server's log shows redacted.
"""

from __future__ import annotations


import pytest

pytestmark = pytest.mark.timeout(180)

TOKEN = "dashboard-token-4a7c9e"
JOB_TIMEOUT_MS = 120_000


def test_the_dashboard_asks_for_the_token_once_and_streams_with_it(server_factory, browser):
    server = server_factory("--cpu-threads", "1", "--no-allow-download", env={"SNNMON_TOKEN": TOKEN})
    context = browser.new_context()
    context.set_default_timeout(30_000)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        page.goto(server.base_url + "/")
        page.wait_for_selector("#token-dialog[open]")  # the catalog requests got 401
        page.fill("#token-input", TOKEN)
        page.click("#token-dialog button[value=ok]")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector("#field-epochs")
        assert page.evaluate("sessionStorage.getItem('snnmon.token')") == TOKEN

        for name, value in {"epochs": "1", "hidden": "16", "timesteps": "5", "batch_size": "256"}.items():
            page.fill(f"#field-{name}", value)
        page.click("#train-button")
        page.wait_for_function("window.snnmon.job && window.snnmon.job.jobId")
        page.wait_for_selector("#job-status[data-status=completed]", timeout=JOB_TIMEOUT_MS)
        job_id = page.evaluate("window.snnmon.job.jobId")
        page.wait_for_function("(window.snnmon.charts.loss.data[0] || []).length >= 1", timeout=10_000)

        page.reload()  # the token is kept for the tab: no second prompt
        page.wait_for_selector("body[data-ready=true]")
        assert not page.locator("#token-dialog[open]").count()
    finally:
        context.close()
    assert not page_errors, page_errors
    log = server.log_text()
    assert f"/api/training/stream/{job_id}?access_token=[redacted]" in log
    assert TOKEN not in log
