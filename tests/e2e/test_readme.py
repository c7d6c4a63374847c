"""The README's pasteable shell blocks, run as a user pastes them, against live servers.

A block whose info string is ``sh paste`` is meant to be pasted into a shell next to a running ``make
run``; ``sh paste-token`` into a shell that has exported the server's ``SNNMON_TOKEN``. All of them run
in order in one bash (``set -euo pipefail``), in a scratch folder whose ``.venv`` is this test's virtual
environment, with ``PATH`` as it was (so ``snnmon`` works only after the README's ``source
.venv/bin/activate``) and this checkout's code first on ``PYTHONPATH``. The only change to the text:
``http://127.0.0.1:8080`` becomes the test server's address (and ``SNNMON_SERVER`` names it, for snnmon's
commands, whose default is that address). Blocks that install, serve or download
(``make run``, ``snnmon serve``, ``snnmon data mnist --download``) are plain ``sh`` and are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```sh (paste|paste-token)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DOCUMENTED_SERVER = "http://127.0.0.1:8080"
TOKEN = "readme-token-8d2f4b61"
# What an answer says when a pasted command did not do what the README claims it does.
FAILURE_SIGNS = ('"error":"unauthorized"', '"error":"unknown_job"', '"error":"not_found"',
                 '"error":"invalid_json"', '"error":"bad_request"', "command not found", "Traceback")


def pasteable_blocks() -> list[tuple[str, str]]:
    return [(kind, body) for kind, body in BLOCK.findall(README.read_text())]


def test_the_readme_has_pasteable_blocks_for_each_server_kind():
    kinds = [kind for kind, _ in pasteable_blocks()]
    assert kinds.count("paste") >= 3 and "paste-token" in kinds


def test_the_pasteable_blocks_work_against_a_live_server(server_factory, tmp_path):
    open_server = server_factory("--cpu-threads", "1")
    token_server = server_factory("--cpu-threads", "1", env={"SNNMON_TOKEN": TOKEN})
    # snnmon's commands default to http://127.0.0.1:8080: here SNNMON_SERVER stands for that address
    script = ["set -euo pipefail", f"export SNNMON_SERVER={open_server.base_url}"]
    token_exported = False
    for kind, body in pasteable_blocks():
        if kind == "paste-token" and not token_exported:
            script.append(f"export SNNMON_TOKEN={shlex.quote(TOKEN)}   # the user's export, as the README says")
            script.append(f"export SNNMON_SERVER={token_server.base_url}")
            token_exported = True
        server = token_server if kind == "paste-token" else open_server
        script.append(body.replace(DOCUMENTED_SERVER, server.base_url))
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SNNMON_") and key not in ("VIRTUAL_ENV", "PYTHONHOME")}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["PYTHONPATH"] = str(ROOT)
    env["SNNMON_DATA_DIR"] = str(tmp_path / "data")  # `snnmon train` reads nothing from it (synthetic)
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for sign in FAILURE_SIGNS:
        assert sign not in output, f"{sign!r} in the output:\n{output[-4000:]}"
    # what the blocks should have produced, from start to end
    assert "completed in" in done.stdout  # snnmon train and snnmon watch
    assert '"event":"completed"' in done.stdout  # the curl stream
    assert '"error":"invalid_config"' in done.stdout  # the documented error example
    assert list(work.glob("snnmon-*-metrics.csv"))  # curl -OJ saved the export
    assert "snnmon_jobs{" in done.stdout  # /metrics with the token
