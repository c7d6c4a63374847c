"""The remote commands: ``snnmon submit``, ``watch``, ``jobs``, ``stop`` and ``metrics`` drive a server's
HTTP API from scripts (curl still works; these are shorter and have exit codes).

``--server`` defaults to ``$SNNMON_SERVER``, else http://127.0.0.1:8080; the token comes from
``$SNNMON_TOKEN`` (never a flag: flags show in ``ps``). ``submit`` takes every train flag (the same table,
``trainer.console.add_config_arguments``); the server validates them, and its per-field reasons are
printed against the flag names. Following a job (``submit --watch``, ``watch``) prints what ``snnmon
train`` prints (or ``--json`` lines) and, after a dropped connection, reconnects with ``Last-Event-ID``,
so no event is lost or repeated.

Exit codes (``trainer.console``): 0 completed (or the command succeeded), 1 failed (or the server could
not be reached), 2 bad usage (a bad flag, an unknown job, a missing or wrong token), 3 stopped, 130
detached or aborted by Ctrl-C. With ``submit --watch`` a first Ctrl-C stops the job (it ends
``stopped``, exit 3), a second one detaches; ``watch`` detaches at the first.

Standard library only (urllib): no event loop, and ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

from service.store import STATUSES
from trainer import console

DEFAULT_SERVER = "http://127.0.0.1:8080"
REQUEST_TIMEOUT_S = 30.0
# The server sends a heartbeat after 15 s of silence; four missed ones mean the connection is dead.
STREAM_IDLE_TIMEOUT_S = 60.0
# After a dropped stream: reconnect at once, then back off to this, giving up after RECONNECT_FOR_S.
RECONNECT_MAX_DELAY_S = 5.0
RECONNECT_FOR_S = 120.0
TERMINAL = ("completed", "stopped", "error")


class RemoteError(Exception):
    """A command that cannot go on; ``exit_code`` says why (1: the server, 2: the usage)."""

    def __init__(self, message: str, exit_code: int = console.EXIT_FAILED,
                 fields: dict[str, str] | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.fields = fields or {}


class Client:
    """The server's HTTP API, with the token when there is one."""

    def __init__(self, server: str, token: str | None):
        self.server = server.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> bytes:
        return self._call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return json.loads(self._call("POST", path, json.dumps(body).encode()))

    def open_stream(self, job_id: str, after_seq: int) -> http.client.HTTPResponse:
        headers = {"Accept": "text/event-stream"}
        if after_seq:
            headers["Last-Event-ID"] = str(after_seq)
        return self._open("GET", f"/api/training/stream/{urllib.parse.quote(job_id)}", None, headers,
                          STREAM_IDLE_TIMEOUT_S)

    def _call(self, method: str, path: str, data: bytes | None = None) -> bytes:
        with self._open(method, path, data, {"Content-Type": "application/json"} if data else {},
                        REQUEST_TIMEOUT_S) as response:
            return response.read()

    def _open(self, method: str, path: str, data: bytes | None, headers: dict[str, str],
              timeout: float) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={**self._headers, **headers})
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self.server}: {reason}") from None


def _api_error(exc: urllib.error.HTTPError) -> RemoteError:
    try:
        body = json.loads(exc.read())
    except ValueError:
        body = {}
    message = body.get("message") or f"HTTP {exc.code} {exc.reason}"
    if exc.code == 401:
        hint = "set SNNMON_TOKEN to the server's token" if body.get("error") == "unauthorized" else ""
        return RemoteError(f"{message}{'; ' + hint if hint else ''}", console.EXIT_BAD_USAGE)
    if exc.code == 400 or exc.code == 404:
        return RemoteError(message, console.EXIT_BAD_USAGE, body.get("fields"))
    return RemoteError(message)


def add_remote_parsers(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=None, metavar="URL",
                        help=f"the snnmon server (default: $SNNMON_SERVER, else {DEFAULT_SERVER}); the "
                             "token comes from $SNNMON_TOKEN")
    codes = "Exit code 0 completed, 1 failed, 2 bad usage, 3 stopped."

    submit = subparsers.add_parser(
        "submit", parents=[common], help="start a job on a server (every train flag)",
        description="Start a job on a server; prints its id, or follows it with --watch. " + codes)
    console.add_config_arguments(submit)
    submit.add_argument("--watch", action="store_true",
                        help="follow the job like snnmon train (Ctrl-C stops it; again detaches)")
    submit.add_argument("--json", action="store_true", help="JSON output (event lines with --watch)")
    submit.set_defaults(handler=run_submit)

    watch = subparsers.add_parser("watch", parents=[common], help="follow a job on a server",
                                  description="Follow a job's events until it ends (Ctrl-C detaches). " + codes)
    watch.add_argument("job_id", metavar="JOB")
    watch.add_argument("--json", action="store_true", help="print the events as JSON lines")
    watch.set_defaults(handler=run_watch)

    jobs = subparsers.add_parser("jobs", parents=[common], help="list a server's jobs, newest first")
    jobs.add_argument("--status", choices=STATUSES, default=None, help="only jobs with this status")
    jobs.add_argument("--json", action="store_true", help="the job records as a JSON list")
    jobs.set_defaults(handler=run_jobs)

    stop = subparsers.add_parser("stop", parents=[common], help="stop a job on a server")
    stop.add_argument("job_id", metavar="JOB")
    stop.set_defaults(handler=run_stop)

    metrics = subparsers.add_parser("metrics", parents=[common], help="a job's per-epoch metrics")
    metrics.add_argument("job_id", metavar="JOB")
    metrics.add_argument("--format", choices=("json", "csv"), default="json", help="default json")
    metrics.set_defaults(handler=run_metrics)


def _client(args: argparse.Namespace) -> Client:
    server = args.server or os.environ.get("SNNMON_SERVER") or DEFAULT_SERVER
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteError(f"--server must be a URL like {DEFAULT_SERVER}, got {server!r}", console.EXIT_BAD_USAGE)
    return Client(server, os.environ.get("SNNMON_TOKEN") or None)


def _command(handler):
    """Run a command; a RemoteError becomes its message on stderr and its exit code."""
    def run(args: argparse.Namespace) -> int:
        name = args.command
        try:
            return handler(args)
        except RemoteError as exc:
            if exc.fields:
                console.print_field_errors(name, exc.fields)
            else:
                print(f"snnmon {name}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"\nsnnmon {name}: interrupted", file=sys.stderr)
            return console.EXIT_ABORTED

    return run


@_command
def run_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    answer = client.post("/api/training/start", console.config_values(args))
    job_id = answer["job_id"]
    if not args.watch:
        print(json.dumps(answer) if args.json else job_id, flush=True)
        return console.EXIT_COMPLETED
    print(f"job {job_id} on {client.server}", file=sys.stderr, flush=True)
    return follow(client, job_id, json_lines=args.json, stop_on_interrupt=True)


@_command
def run_watch(args: argparse.Namespace) -> int:
    return follow(_client(args), args.job_id, json_lines=args.json, stop_on_interrupt=False)


@_command
def run_jobs(args: argparse.Namespace) -> int:
    records = json.loads(_client(args).get("/api/training/jobs"))
    if args.status is not None:
        records = [record for record in records if record.get("status") == args.status]
    if args.json:
        print(json.dumps(records))
        return console.EXIT_COMPLETED
    print(f"{'JOB':<12}  {'STATUS':<9}  {'DATASET':<9}  {'NETWORK':<22}  {'EPOCH':>7}  {'BEST VAL':>8}  CREATED")
    for record in records:
        config = record.get("config") or {}
        network = f"{config.get('cell_type', '?')} {'x'.join(str(n) for n in config.get('hidden', []))}"
        epoch = record.get("epoch")
        shown_epoch = f"{epoch + 1 if epoch is not None else '-'}/{record.get('epochs', '?')}"
        best = record.get("best_val_accuracy")
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("created_at") or 0))
        print(f"{record['job_id']:<12}  {record['status']:<9}  {config.get('dataset', '?'):<9}  {network:<22}  "
              f"{shown_epoch:>7}  {'-' if best is None else f'{best:.4f}':>8}  {created}")
    return console.EXIT_COMPLETED


@_command
def run_stop(args: argparse.Namespace) -> int:
    answer = _client(args).post("/api/training/stop", {"job_id": args.job_id})
    print(f"{answer['job_id']} {answer['status']}")
    return console.EXIT_COMPLETED


@_command
def run_metrics(args: argparse.Namespace) -> int:
    job = urllib.parse.quote(args.job_id)
    body = _client(args).get(f"/api/training/jobs/{job}/metrics?format={args.format}")
    sys.stdout.write(body.decode("utf-8"))
    if not body.endswith(b"\n"):
        sys.stdout.write("\n")
    return console.EXIT_COMPLETED


def follow(client: Client, job_id: str, *, json_lines: bool, stop_on_interrupt: bool) -> int:
    """Print a job's events until its terminal one; the exit code says how it ended."""
    reporter = console.JsonLines() if json_lines else console.ProgressReporter()
    interrupts = 0

    def on_sigint(signum, frame):
        nonlocal interrupts
        interrupts += 1
        if not stop_on_interrupt or interrupts > 1:
            reporter.close()
            console.abort()
        print(f"\nstopping job {job_id} (Ctrl-C again to detach; the job still stops)", file=sys.stderr)
        try:
            client.post("/api/training/stop", {"job_id": job_id})
        except RemoteError as exc:
            print(f"snnmon: could not stop {job_id}: {exc}", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        for name, data in events(client, job_id):
            reporter(name, data)
            if name in TERMINAL:
                return console.EXIT_CODES[name]
    finally:
        signal.signal(signal.SIGINT, previous)
        reporter.close()
    raise RemoteError(f"the stream of job {job_id} ended without its final event")


def events(client: Client, job_id: str) -> Iterator[tuple[str, dict]]:
    """A job's numbered events, from the first; a dropped connection resumes after the last one seen."""
    after_seq = 0
    failing_since: float | None = None
    delay = 0.0
    while True:
        try:
            with client.open_stream(job_id, after_seq) as response:
                failing_since, delay = None, 0.0
                for seq, event in _frames(response):
                    if seq is None:
                        continue  # a heartbeat
                    after_seq = seq
                    yield event["event"], event["data"]
                    if event["event"] in TERMINAL:
                        return
        except RemoteError as exc:
            if exc.exit_code != console.EXIT_FAILED:
                raise  # unknown job, bad token: reconnecting will not help
            problem = str(exc)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # dropped mid-stream
            problem = f"{type(exc).__name__}: {exc}"
        else:
            problem = "the server closed the stream"
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > RECONNECT_FOR_S:
            raise RemoteError(f"lost the stream of job {job_id} for {RECONNECT_FOR_S:.0f} s: {problem}")
        print(f"snnmon: stream interrupted ({problem}); resuming after event {after_seq}", file=sys.stderr)
        time.sleep(delay)
        delay = min(RECONNECT_MAX_DELAY_S, max(0.25, delay * 2))


def _frames(response: http.client.HTTPResponse) -> Iterator[tuple[int | None, dict]]:
    """(seq, {"event", "data"}) per SSE frame; seq None for a frame without ``id:`` (a heartbeat)."""
    seq: int | None = None
    data: list[str] = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield seq, json.loads("\n".join(data))
            seq, data = None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                seq = int(value)
            elif name == "data":
                data.append(value)
    raise ConnectionResetError("the connection closed before the job's final event")
