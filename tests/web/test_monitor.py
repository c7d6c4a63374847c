"""The monitor's depth in a real browser against a real server: step-level curves from the first batch
event, smoothing, log scale, zoom and x axes, comparing runs (charts, config table, URL), the runs
table (sort, filter, delete) and the layout at laptop and phone sizes. Screenshots go to
test-artifacts/web/.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from dashboard_page import FAST, JOB_TIMEOUT_MS, open_dashboard, wait_status

pytestmark = pytest.mark.timeout(300)

LRS = (0.001, 0.003, 0.01)  # three runs that differ only in lr


def stored_events(server, job_id: str) -> list[dict]:
    """Every event of a finished job, as the stream replays it (the stream ends after the terminal one)."""
    with urllib.request.urlopen(f"{server.url}/api/training/stream/{job_id}", timeout=30) as response:
        body = response.read().decode()
    frames = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    return [f for f in frames if f["event"] != "heartbeat"]


def wait_jobs(server, job_ids, statuses=frozenset({"completed"}), timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        records = {r["job_id"]: r for r in server.jobs()}
        if all(records[j]["status"] in statuses for j in job_ids):
            return
        failed = [records[j].get("error") for j in job_ids if records[j]["status"] == "failed"]
        assert not failed, failed
        assert time.monotonic() < deadline, f"jobs not done in {timeout_s} s: {[records[j]['status'] for j in job_ids]}"
        time.sleep(0.3)


def start(server, **config) -> str:
    status, answer = server.api("POST", "/api/training/start", {**FAST, **config})
    assert status == 202, answer
    return answer["job_id"]


@pytest.fixture(scope="module")
def lr_runs(server) -> list[str]:
    """Three finished two-epoch runs with the same seed, differing only in lr."""
    ids = [start(server, epochs=2, lr=lr, seed=7, hidden=[24], name=f"lr {lr}") for lr in LRS]
    wait_jobs(server, ids)
    return ids


def chart_lines(page, chart: str) -> list[dict]:
    return page.evaluate(f"window.snnmon.charts.{chart}.lines.map(l => ({{label: l.label, run: l.run, role: l.role, "
                         f"stroke: l.stroke, dash: l.dash}}))")


def test_step_points_appear_before_the_first_epoch_and_match_the_batch_events(page, server, artifacts):
    # Batch 8 on the synthetic set: 750 batches an epoch, so the first epoch takes a while; 100 timesteps,
    # so a while even on a quiet machine (at 25 the epoch ended before the stop landed in one full run)
    job_id = start(server, epochs=3, batch_size=8, timesteps=100)
    open_dashboard(page, server, f"?job={job_id}")
    page.wait_for_function("window.snnmon.charts.loss.count('train') >= 20", timeout=JOB_TIMEOUT_MS)
    early = page.evaluate("({drawn: window.snnmon.charts.loss.count('train'), epochs: window.snnmon.runs[0].epochs.length,"
                          " acc: window.snnmon.charts.accuracy.count('train')})")
    assert early["epochs"] == 0, "the first epoch ended too soon to show step points before it"
    assert early["drawn"] >= 20 and early["acc"] == early["drawn"]
    page.screenshot(path=str(artifacts / "single-run-mid-training.png"))

    server.api("POST", "/api/training/stop", {"job_id": job_id})
    wait_status(page, "stopped", timeout=30_000)
    stored = stored_events(server, job_id)
    assert not [e for e in stored if e["event"] == "epoch"], "the first epoch ended before the stop landed"
    batches = [e["data"] for e in stored if e["event"] == "batch"]
    page.wait_for_function("n => window.snnmon.charts.loss.count('train') === n", arg=len(batches), timeout=5_000)
    # One point per batch event, at its step (counted from epoch and batch where the event has no step).
    steps = [b.get("step", b["epoch"] * b["n_batches"] + b["batch"] + 1) for b in batches]
    assert [x for x, _ in page.evaluate("window.snnmon.charts.loss.values('train')")] == steps
    # A job stopped in its first epoch still shows its curve: nothing at epoch level, all at step level.
    assert page.evaluate("window.snnmon.charts.loss.count('val')") == 0

    # Steps CSV: one row per batch event, the documented header.
    with page.expect_download() as download_info:
        page.click("#export-steps-button")
    download = download_info.value
    assert download.suggested_filename == f"snnmon-{job_id}-step-metrics.csv"
    rows = Path(download.path()).read_text().strip().splitlines()
    assert rows[0].split(",") == ["step", "epoch", "batch_loss", "batch_accuracy", "lr", "samples_per_s"]
    assert [int(r.split(",")[0]) for r in rows[1:]] == steps


@pytest.mark.slow
def test_compared_runs_overlay_highlight_lr_and_survive_a_reload(page, server, lr_runs, artifacts):
    first, second, third = lr_runs
    open_dashboard(page, server)
    for job_id in (first, second):
        page.locator(f"#jobs-table tr[data-job-id='{job_id}'] input.compare-pick").check()
    page.wait_for_function("window.snnmon.comparison && window.snnmon.comparison.length === 2")
    assert f"compare={first}%2C{second}" in page.url or f"compare={first},{second}" in page.url

    def check_comparison(ids):
        page.wait_for_function("n => window.snnmon.charts.loss.count('val') > 0 && "
                               "window.snnmon.runs.every(r => r.epochs.length === 2) && window.snnmon.runs.length === n",
                               arg=len(ids), timeout=15_000)
        labels = page.evaluate("Object.fromEntries(window.snnmon.runs.map(r => [r.jobId, r.label]))")
        assert labels == {job_id: f"lr {LRS[lr_runs.index(job_id)]}" for job_id in ids}  # legend by run name
        for chart in ("loss", "accuracy", "spikes"):
            lines = chart_lines(page, chart)
            assert {line["run"] for line in lines} == set(ids), chart
            for line in lines:  # every series is named after its run
                assert line["label"].startswith(labels[line["run"]] + " "), (chart, line)
        trains = [line for line in chart_lines(page, "loss") if line["role"] == "train"]
        assert len(trains) == len(ids)
        assert len({t["stroke"] for t in trains}) == len(ids) and len({json.dumps(t["dash"]) for t in trains}) == len(ids)
        page.wait_for_function("n => document.querySelectorAll('#compare-table thead th').length === n + 1", arg=len(ids))
        differing = page.locator("#compare-table tr.differs").evaluate_all("rows => rows.map(r => r.dataset.field)")
        assert differing == ["lr"]
        best = page.locator("#compare-table tr[data-result='best val acc'] td").all_text_contents()
        assert len(best) == len(ids) and all(text.endswith("%") for text in best)

    check_comparison([first, second])
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate("window.snnmon.comparison") == [first, second]
    check_comparison([first, second])
    for job_id in (first, second):
        assert page.locator(f"#jobs-table tr[data-job-id='{job_id}'] input.compare-pick").is_checked()

    page.locator(f"#jobs-table tr[data-job-id='{third}'] input.compare-pick").check()
    page.wait_for_function("window.snnmon.comparison && window.snnmon.comparison.length === 3")
    check_comparison([first, second, third])
    page.wait_for_timeout(300)  # one animation frame for the last redraw
    page.screenshot(path=str(artifacts / "compare-3-runs.png"), full_page=True)


def test_smoothing_log_scale_zoom_and_x_axes(page, server, lr_runs):
    job_id = lr_runs[0]
    open_dashboard(page, server, f"?job={job_id}")
    wait_status(page, "completed", timeout=15_000)
    page.wait_for_function("window.snnmon.charts.loss.count('val') === 2 && "
                           "window.snnmon.charts.loss.count('train') === window.snnmon.runs[0].batches.loss.length")
    raw = page.evaluate("window.snnmon.runs[0].batches.loss.slice()")

    def set_smoothing(weight):
        page.evaluate("w => { const s = document.querySelector('#smoothing'); s.value = String(w);"
                      " s.dispatchEvent(new Event('input')); }", weight)
        page.wait_for_function("w => +document.querySelector('#smoothing-value').textContent === w", arg=weight)
        page.wait_for_timeout(100)  # the redraw happens in the next animation frame

    def drawn(role):
        return [v for _, v in page.evaluate(f"window.snnmon.charts.loss.values('{role}')")]

    set_smoothing(0)
    assert drawn("train") == pytest.approx(raw)
    assert "train raw" not in page.evaluate("window.snnmon.charts.loss.labels")
    set_smoothing(0.9)
    smoothed = drawn("train")
    expected, mean = [], 0.0
    for t, value in enumerate(raw, start=1):  # EMA with start-up bias correction
        mean = 0.9 * mean + 0.1 * value
        expected.append(mean / (1 - 0.9 ** t))
    assert smoothed == pytest.approx(expected)
    assert smoothed != pytest.approx(raw)
    assert drawn("train-raw") == pytest.approx(raw), "the raw series is kept (faint) behind the smoothed one"
    assert page.evaluate("window.snnmon.runs[0].batches.loss") == raw, "smoothing changed the data"

    page.check("#log-loss")
    page.wait_for_function("window.snnmon.charts.loss.view.log === true")
    assert page.evaluate("window.snnmon.charts.accuracy.view.log") is False
    page.uncheck("#log-loss")
    page.wait_for_function("window.snnmon.charts.loss.view.log === false")

    full = page.evaluate("window.snnmon.charts.loss.view")
    box = page.locator("#chart-loss .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    zoomed = page.evaluate("window.snnmon.charts.loss.view")
    assert zoomed["zoomed"] and full["min"] < zoomed["min"] < zoomed["max"] < full["max"]
    page.mouse.dblclick(box["x"] + box["width"] / 2, y)
    reset = page.evaluate("window.snnmon.charts.loss.view")
    assert not reset["zoomed"] and (reset["min"], reset["max"]) == pytest.approx((full["min"], full["max"]))

    page.select_option("#x-axis", "epoch")
    page.wait_for_function("window.snnmon.charts.loss.values('val').map(p => p[0]).join() === '1,2'")
    xs = page.evaluate("window.snnmon.charts.loss.data[0]")
    assert 0 < xs[0] and xs[-1] == pytest.approx(2)
    page.select_option("#x-axis", "time")
    page.wait_for_function("window.snnmon.charts.loss.plot.axes[0].label === 'time (s)'")
    times = [x for x, _ in page.evaluate("window.snnmon.charts.loss.values('train')")]
    assert times == sorted(times) and times[0] > 0
    page.select_option("#x-axis", "step")


def test_runs_table_sorts_filters_and_deletes_with_confirmation(page, server, lr_runs):
    failed = start(server, dataset="mnist", mnist_fallback="none", epochs=1)
    wait_jobs(server, [failed], {"failed"})
    open_dashboard(page, server)
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{failed}']")
    lr_cells = "ids => ids.map(id => document.querySelector(`#jobs-table tr[data-job-id='${id}'] [data-col=lr]`).textContent)"

    def order(ids):
        rows = page.locator("#jobs-table tbody tr:not([hidden])").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
        return [r for r in rows if r in ids]

    page.click("#jobs-table th[data-sort=lr] button")
    assert order(lr_runs) == list(lr_runs)  # ascending lr: 0.001, 0.003, 0.01
    assert page.evaluate(lr_cells, list(lr_runs)) == ["0.001", "0.003", "0.01"]
    page.click("#jobs-table th[data-sort=lr] button")
    assert order(lr_runs) == list(reversed(lr_runs))

    page.fill("#jobs-filter", "failed")
    page.wait_for_function("document.querySelector('#jobs-table').dataset.shown === '1'")
    assert page.locator("#jobs-table tbody tr:not([hidden])").get_attribute("data-job-id") == failed
    page.fill("#jobs-filter", "")

    # Delete asks first; cancelling keeps the run, accepting removes it here and on the server.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click(f"#jobs-table tr[data-job-id='{failed}'] .job-delete")
    assert server.api("GET", f"/api/training/status/{failed}")[0] == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#jobs-table tr[data-job-id='{failed}'] .job-delete")
    page.wait_for_selector(f"#jobs-table tr[data-job-id='{failed}']", state="detached", timeout=10_000)
    assert server.api("GET", f"/api/training/status/{failed}")[0] == 404


@pytest.mark.parametrize("width,height", [(1366, 768), (1920, 1080)])
def test_train_button_and_job_status_show_without_scrolling(browser, server, lr_runs, artifacts, width, height):
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        tab = context.new_page()
        open_dashboard(tab, server, f"?job={lr_runs[0]}")
        wait_status(tab, "completed", timeout=15_000)
        for selector in ("#train-button", "#job-status", "#stop-button"):
            box = tab.locator(selector).bounding_box()
            assert box and 0 <= box["y"] and box["y"] + box["height"] <= height, (selector, box)
        assert tab.evaluate("window.scrollY") == 0
        # Room for ten runs before the table scrolls.
        room = tab.evaluate("""() => {
            const scroll = document.querySelector('#jobs-table').closest('.table-scroll');
            const row = document.querySelector('#jobs-table tbody tr');
            const head = document.querySelector('#jobs-table thead');
            return (parseFloat(getComputedStyle(scroll).maxHeight) - head.offsetHeight) / row.offsetHeight; }""")
        assert room >= 10, room
        tab.screenshot(path=str(artifacts / f"laptop-{width}x{height}.png"))
    finally:
        context.close()


def test_phone_link_opens_at_the_job(browser, server, lr_runs, artifacts):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    try:
        tab = context.new_page()
        open_dashboard(tab, server, f"?job={lr_runs[1]}")
        wait_status(tab, "completed", timeout=15_000)
        tab.wait_for_function("window.snnmon.charts.loss.count('val') === 2")
        heading = tab.locator("#monitor-heading").bounding_box()
        assert 0 <= heading["y"] < 844 / 2, heading
        assert tab.locator("#job-status").is_visible()
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390 + 1, "the page scrolls sideways"
        tab.wait_for_timeout(300)
        tab.screenshot(path=str(artifacts / "phone-job.png"))
    finally:
        context.close()


def test_a_silent_layer_warning_shows_on_the_job_and_in_its_record(page, server, artifacts):
    # Lapicque with one latency spike per pixel at 5 timesteps leaves the output layer (lifs.1) silent
    # from the first epoch (measured: silent fraction 0.9, warned).
    job_id = start(server, epochs=1, cell_type="LapicqueCell", hidden=[16], timesteps=5, batch_size=256,
                   seed=5, encoding="latency")
    open_dashboard(page, server, f"?job={job_id}")
    wait_status(page, "completed")
    row = page.locator("#spike-bars li[data-layer='lifs.1']")
    row.wait_for(timeout=10_000)
    assert "warn" in row.get_attribute("class") and row.get_attribute("data-warning") == "silent_layer"
    assert "lifs.1" in row.locator(".layer-warning").text_content()
    assert "silent" in row.locator(".layer-silent").text_content()
    assert row.locator(".histogram-bin").count() == 20
    assert "warn" not in page.locator("#spike-bars li[data-layer='lifs.0']").get_attribute("class")
    shown = page.locator("#job-warnings li").all_text_contents()
    assert any("lifs.1" in text and "silent" in text for text in shown), shown
    record = server.api("GET", f"/api/training/status/{job_id}")[1]
    assert [(w["kind"], w.get("layer")) for w in record.get("warnings", [])] == [("silent_layer", "lifs.1")]
    page.locator("#spike-bars").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "silent-layer-warning.png"))


def test_name_tags_and_notes_edited_in_place_survive_a_restart_and_the_filter_finds_the_tag(
        browser, server_factory, tmp_path):
    data_dir = tmp_path / "data"
    flags = ("--data-dir", str(data_dir), "--no-allow-download")
    first = server_factory(*flags)
    url = first.base_url.rstrip("/")
    # Jobs that fail at once (no MNIST here) are finished runs to edit, at no training cost.
    body = json.dumps({**FAST, "dataset": "mnist", "mnist_fallback": "none"}).encode()

    def start_failing() -> str:
        request = urllib.request.Request(url + "/api/training/start", method="POST", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["job_id"]

    job_id, other = start_failing(), start_failing()

    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        tab = context.new_page()
        tab.goto(f"{url}/?job={job_id}")
        tab.wait_for_selector("body[data-ready=true]")
        wait_status(tab, "failed")
        row = f"#jobs-table tr[data-job-id='{job_id}']"
        tab.dblclick(f"{row} [data-col=name]")
        tab.fill(f"{row} input.editing", "baseline run")
        tab.press(f"{row} input.editing", "Enter")
        tab.wait_for_function("s => document.querySelector(s).textContent === 'baseline run'", arg=f"{row} .job-open")
        tab.dblclick(f"{row} [data-col=tags]")
        tab.fill(f"{row} input.editing", "sweep-7, mnist")
        tab.press(f"{row} input.editing", "Enter")
        tab.wait_for_function("s => document.querySelector(s).textContent === 'sweep-7, mnist'", arg=f"{row} [data-col=tags]")
        tab.click("#job-meta summary")
        tab.fill("#meta-notes", "no MNIST files on this machine")
        tab.click("#meta-save")
        tab.wait_for_selector("#meta-saved:text('saved')")
    finally:
        context.close()

    first.stop()
    second = server_factory(*flags)
    url = second.base_url.rstrip("/")
    with urllib.request.urlopen(f"{url}/api/training/status/{job_id}", timeout=10) as response:
        record = json.loads(response.read())
    assert (record["name"], record["tags"], record["notes"]) == ("baseline run", ["sweep-7", "mnist"],
                                                                 "no MNIST files on this machine")
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        tab = context.new_page()
        tab.goto(f"{url}/")
        tab.wait_for_selector(f"#jobs-table tr[data-job-id='{other}']")
        tab.fill("#jobs-filter", "sweep-7")
        tab.wait_for_function("document.querySelector('#jobs-table').dataset.shown === '1'")
        assert tab.locator("#jobs-table tbody tr:not([hidden])").get_attribute("data-job-id") == job_id
        assert tab.locator(f"#jobs-table tr[data-job-id='{job_id}'] .job-open").text_content() == "baseline run"
    finally:
        context.close()
