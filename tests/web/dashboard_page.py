"""Helpers shared by the dashboard tests: open the page, fill and submit the form, and read back what
the charts draw (through ``window.snnmon``, the page's own read-back object)."""

from __future__ import annotations

FAST = {"dataset": "synthetic", "hidden": [32], "timesteps": 5, "batch_size": 256, "device": "cpu"}
TERMINAL = {"completed", "stopped", "failed"}
JOB_TIMEOUT_MS = 120_000  # a few epochs of a tiny net, on a CPU shared with other test runs


def open_dashboard(page, server, query: str = ""):
    page.goto(server.url + "/" + query)
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#field-epochs")


def fill_form(page, values: dict) -> None:
    for name, value in values.items():
        control = page.locator(f"#field-{name}")
        kind = control.evaluate("el => el.tagName === 'SELECT' ? 'select' : el.type")
        if kind == "checkbox":
            control.set_checked(bool(value))
        elif kind == "select":
            control.select_option(str(value))
        else:
            control.fill(", ".join(map(str, value)) if isinstance(value, list) else str(value))


def start_from_form(page, values: dict) -> str:
    """Fill the form, press Train and return the id of the job the page now watches."""
    previous = page.evaluate("window.snnmon.job && window.snnmon.job.jobId")
    fill_form(page, values)
    page.click("#train-button")
    page.wait_for_function("prev => window.snnmon.job && window.snnmon.job.jobId !== prev", arg=previous)
    return page.evaluate("window.snnmon.job.jobId")


# Epoch-end points a chart draws: its validation series, or (parameters) its first series.
EPOCH_POINTS = """c => { const chart = window.snnmon.charts[c];
  const role = chart.lines.some(l => l.role === 'val') ? 'val' : (chart.lines[0] || {}).role;
  return role ? chart.count(role) : 0; }"""


def points(page, chart: str) -> int:
    return page.evaluate(f"({EPOCH_POINTS})('{chart}')")


def wait_points(page, chart: str, n: int, timeout: int = JOB_TIMEOUT_MS) -> None:
    page.wait_for_function(f"([c, n]) => ({EPOCH_POINTS})(c) >= n", arg=[chart, n], timeout=timeout)


def drawn_epochs(page) -> list[int]:
    """0-based epochs of the watched run, in the order they were drawn."""
    return page.evaluate("window.snnmon.runs[0].epochs.map(e => e.epoch)")


def wait_status(page, status: str, timeout: int = JOB_TIMEOUT_MS) -> None:
    page.wait_for_selector(f"#job-status[data-status={status}]", timeout=timeout)
