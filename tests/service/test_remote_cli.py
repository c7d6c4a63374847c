"""``snnmon submit/watch/jobs/stop/metrics`` as a script runs them, against a real server with a token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "remote-cli-token-0123456789"
SMALL = ("--hidden", "32", "--timesteps", "5", "--batch-size", "128", "--device", "cpu")


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(env={"SNNMON_TOKEN": TOKEN})


def snnmon(server_url: str | None, *args: str, token: str | None = TOKEN, timeout: float = 180):
    env = {key: value for key, value in os.environ.items() if key not in ("SNNMON_TOKEN", "SNNMON_SERVER")}
    if token is not None:
        env["SNNMON_TOKEN"] = token
    if server_url is not None:
        env["SNNMON_SERVER"] = server_url
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_bad_flags_get_the_servers_reasons_and_exit_2(server):
    done = snnmon(server.base_url, "submit", "--epochs", "0", "--timesteps", "2.5", "--surrogate", "nope")
    assert done.returncode == 2, done.stderr
    assert "snnmon submit: --epochs: must be an integer between 1 and 100 inclusive" in done.stderr
    assert "snnmon submit: --timesteps: must be an integer, got 2.5" in done.stderr
    assert "--surrogate: unknown value 'nope'" in done.stderr
    no_token = snnmon(server.base_url, "jobs", token=None)
    assert no_token.returncode == 2 and "SNNMON_TOKEN" in no_token.stderr
    unknown = snnmon(server.base_url, "watch", "000000000000")
    assert unknown.returncode == 2 and "000000000000" in unknown.stderr
    unreachable = snnmon("http://127.0.0.1:9", "jobs")  # the discard port: nothing listens
    assert unreachable.returncode == 1 and "cannot reach http://127.0.0.1:9" in unreachable.stderr


def test_submit_watch_prints_like_train_and_the_other_commands_see_the_job(server):
    done = snnmon(None, "submit", "--server", server.base_url, "--epochs", "2", *SMALL, "--seed", "7", "--watch")
    assert done.returncode == 0, done.stderr
    assert "epoch 1: train loss" in done.stdout and "epoch 2: train loss" in done.stdout
    assert "completed in" in done.stdout and "seed 7" in done.stdout
    job_id = done.stderr.split("job ", 1)[1].split()[0]

    listed = snnmon(server.base_url, "jobs", "--status", "completed", "--json")
    assert listed.returncode == 0 and job_id in [record["job_id"] for record in json.loads(listed.stdout)]
    assert json.loads(snnmon(server.base_url, "jobs", "--status", "queued", "--json").stdout) == []
    table = snnmon(server.base_url, "jobs")
    assert table.stdout.startswith("JOB") and f"{job_id}  completed" in table.stdout

    csv = snnmon(server.base_url, "metrics", job_id, "--format", "csv")
    assert csv.returncode == 0
    rows = csv.stdout.strip().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 3
    assert [row["epoch"] for row in json.loads(snnmon(server.base_url, "metrics", job_id).stdout)["epochs"]] == [0, 1]


def test_a_stopped_job_exits_3(server):
    submitted = snnmon(server.base_url, "submit", "--epochs", "50", *SMALL)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    stopped = snnmon(server.base_url, "stop", job_id)
    assert stopped.returncode == 0 and stopped.stdout.split()[0] == job_id
    watched = snnmon(server.base_url, "watch", job_id, "--json")
    assert watched.returncode == 3, watched.stderr
    assert json.loads(watched.stdout.splitlines()[-1])["event"] == "stopped"


class CuttingProxy:
    """A TCP proxy that cuts its first connection after ``cut_after`` bytes of the answer and passes
    later ones whole; it keeps every request's head, to see the Last-Event-ID of the reconnect."""

    def __init__(self, upstream_port: int, cut_after: int):
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            limit = self.cut_after if not self.requests else None
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            head = client.recv(65536)
            self.requests.append(head)
            upstream.sendall(head)
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(upstream: socket.socket, client: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while chunk := upstream.recv(65536):
                if limit is not None and sent + len(chunk) >= limit:
                    client.sendall(chunk[:limit - sent])
                    break
                client.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()


def test_watch_resumes_with_last_event_id_after_a_dropped_connection(server):
    submitted = snnmon(server.base_url, "submit", "--epochs", "2", *SMALL, "--watch", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stderr.split("job ", 1)[1].split()[0]
    direct = snnmon(server.base_url, "watch", job_id, "--json")
    port = int(server.base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=1500)  # the headers and a few frames, then the middle of one
    try:
        resumed = snnmon(f"http://127.0.0.1:{proxy.port}", "watch", job_id, "--json")
    finally:
        proxy.close()
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after event" in resumed.stderr
    assert resumed.stdout == direct.stdout  # every event once, in order
    assert len(proxy.requests) >= 2 and b"last-event-id: " in proxy.requests[1].lower()
