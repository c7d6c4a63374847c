"""Static checks on the dashboard's files: no HTML built from strings, nothing loaded from the network."""

from __future__ import annotations

import json
import re
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "web"
SOURCES = [WEB / "index.html", *sorted((WEB / "static").glob("*.js")), *sorted((WEB / "static").glob("*.css"))]


def test_sources_exist():
    names = {p.name for p in SOURCES}
    assert {"index.html", "app.js", "api.js", "charts.js", "form.js", "jobs.js", "monitor.js", "stream.js", "style.css"} <= names


def test_no_markup_is_built_from_strings():
    # Server text (job errors, config values, layer keys) goes in with textContent only.
    for path in SOURCES:
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in text, f"{path.name} uses {sink}"


def test_nothing_is_loaded_from_another_origin():
    for path in SOURCES:
        urls = re.findall(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", path.read_text(), flags=re.I)
        assert not urls, f"{path.name} refers to {urls}"


def test_uplot_is_pinned_in_package_and_lock_file():
    package = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    version = package["dependencies"]["uplot"]
    assert lock["packages"]["node_modules/uplot"]["version"] == version
