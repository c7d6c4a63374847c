"""Server settings: one frozen ``Settings``, filled from ``snnmon serve`` flags and ``SNNMON_*`` variables.

``OPTIONS`` is the single table: each row is a flag, its environment variable, its type, its default and
why the default is what it is. A flag given on the command line beats the variable, which beats the
default. A repeatable flag (``--cors-origin``) reads its variable as a comma-separated list. This module
imports neither aiohttp nor torch, so ``snnmon --help`` stays quick.

Access: with no token, ``run_serve`` refuses (exit code 2) to listen anywhere but loopback unless
``--insecure`` says something in front of it already decides who gets in.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"  # loopback: put a reverse proxy (deploy/nginx.conf) in front for others
    port: int = 8080
    max_concurrent: int = 2  # jobs training at once; more wait as "queued" (2 cores: one each)
    stop_grace_s: float = 5.0  # after a stop, time for the worker to finish its batch before SIGTERM
    kill_grace_s: float = 3.0  # after SIGTERM, time before SIGKILL
    data_dir: str | None = None  # MNIST files and the job history; None: the trainer's default (XDG data dir)
    allow_download: bool = True  # same default as `snnmon train`
    heartbeat_s: float = 15.0  # a heartbeat event after this much silence on a stream (design: 15 s)
    max_body_bytes: int = 64 * 1024  # a TrainConfig is well under 1 KiB; larger bodies get 413
    subscriber_buffer: int = 256  # live events a slow SSE subscriber may lag before batch events drop
    send_timeout_s: float = 60.0  # a stream write stalled this long means the client is gone
    cpu_threads: int = 0  # torch threads per CPU job; 0: the machine's cores / max_concurrent
    log_level: str = "info"  # for snnmon's own loggers; "debug" also logs each event's numbering time
    keep_jobs: int = 1000  # finished jobs kept (with their events) before the oldest are deleted
    token: str | None = None  # bearer token every /api/ request must carry; None: no check
    insecure: bool = False  # allow a non-loopback host without a token (a proxy in front checks access)
    cors_origins: tuple[str, ...] = ()  # origins (scheme://host[:port]) whose pages may call the API; "*": any
    job_memory_limit: int = 0  # bytes one job may use; 0: machine memory / max_concurrent (a GPU job: its GPU's)
    stall_timeout_s: float = 600.0  # a worker silent this long gets a warning event (an epoch of MNIST: minutes)
    stall_action: str = "warn"  # "warn": only the warning; "kill": the job also ends failed
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback and the bound address; "*": any
    header_timeout_s: float = 20.0  # a new connection must send its first request's headers this soon
    # idle time allowed between requests on a connection (and for a later request's headers): longer than
    # nginx's upstream keep-alive (60 s), so the proxy closes first and never reuses a closing connection
    keepalive_timeout_s: float = 75.0
    body_timeout_s: float = 30.0  # a request body (a config is under 1 KiB) must arrive this soon
    max_connections: int = 0  # open connections served at once, beyond them a 503; 0: from the descriptor limit
    metrics_open: bool = False  # /metrics without the token (a scraper on a private network)
    log_format: str = "plain"  # "json": one JSON object a line, for log collectors
    prestart: bool = True  # a worker per free job slot (at most one per core) started ahead: a job starts in < 1 s
    backend: str = "process"  # "process": a spawned process per job here; "ray": a Ray actor per job on a cluster
    ray_address: str | None = None  # the Ray cluster (auto, ray://host:port, host:port); None: a local instance
    # "full": every commit is fsynced, so a committed (and so possibly sent) event survives a power cut;
    # "normal": no fsync per commit (WAL), a server crash still loses nothing committed, a power cut may lose
    # the last commits; about 7 ms less p99 latency for 1,000 SSE subscribers (docs/benchmarks.md)
    store_sync: str = "full"

    def resolved_data_dir(self) -> Path:
        """The data directory: ``data_dir``, else the trainer's default (``$SNNMON_DATA_DIR``, XDG)."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        from trainer.mnist import default_data_dir  # standard library only at import

        return default_data_dir()

    def threads_per_cpu_job(self) -> int:
        if self.cpu_threads > 0:
            return self.cpu_threads
        return max(1, _cores() // self.max_concurrent)

    def prestarted_workers(self) -> int:
        """The most workers kept started ahead: one per job slot, at most one per core (each spends
        seconds of CPU importing torch and then holds about 0.65 GiB while it waits)."""
        return min(self.max_concurrent, _cores()) if self.prestart else 0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be an integer, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535 (0 picks a free port)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _log_level(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return lowered


def _log_format(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("plain", "json"):
        raise ValueError("must be plain or json")
    return lowered


def _backend(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("process", "ray"):
        raise ValueError("must be process or ray")
    return lowered


def _ray_address(text: str) -> str:
    address = text.strip()
    if not address or any(ch.isspace() for ch in address):
        raise ValueError(f"must be auto, ray://host:port or host:port, got {text!r}")
    return address


def _token(text: str) -> str:
    token = text.strip()
    if not token or any(ch.isspace() or not ch.isprintable() or not ch.isascii() for ch in token):
        raise ValueError("must be printable ASCII without spaces (it travels in a header and a URL)")
    return token


def _size(text: str) -> int:
    """Bytes from "12G", "512MiB", "1.5GB" or "2147483648"; 0 means: derive it from the machine."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"must be a size like 8G, 512M or 0 (derive it from the machine), got {text!r}")
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b"))


def _stall_action(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("warn", "kill"):
        raise ValueError("must be warn or kill")
    return lowered


def _store_sync(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("full", "normal"):
        raise ValueError("must be full or normal")
    return lowered


def _origin(text: str) -> str:
    origin = text.strip().rstrip("/").lower()
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise ValueError(f"must be an origin like https://studio.example.org[:port] (or *), got {text!r}")
    return origin


def _host_name(text: str) -> str:
    """A Host name as ``--allowed-host`` takes it: lower case, no port; an IPv6 address without brackets."""
    name = text.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
    if name == "*":
        return name
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            pass
    elif name and not any(ch in name for ch in "/@?#\\ ") and name.isascii():
        return name
    raise ValueError(f"must be a host name or address without a port (or *), got {text!r}")


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach (``""`` means every interface)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[] ")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to a public address


@dataclass(frozen=True)
class Option:
    field: str  # Settings field
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    repeat: bool = False  # the flag may be given again; its variable is a comma-separated list
    shown_default: str | None = None  # what --help says when the default needs words

    @property
    def env(self) -> str:
        return "SNNMON_" + self.flag.removeprefix("--").replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", str, "interface to listen on", "HOST"),
    Option("port", "--port", _port, "TCP port (0 picks a free one and logs it)", "PORT"),
    Option("max_concurrent", "--max-concurrent", _positive_int, "jobs that train at once", "N"),
    Option("stop_grace_s", "--stop-grace", _positive_float,
           "seconds a stopped worker gets before SIGTERM", "S"),
    Option("kill_grace_s", "--kill-grace", _positive_float, "seconds after SIGTERM before SIGKILL", "S"),
    Option("data_dir", "--data-dir", str,
           "data directory: MNIST files, and the job history (jobs.sqlite3) kept across restarts", "DIR"),
    Option("allow_download", "--allow-download", _bool, "download MNIST when its files are missing"),
    Option("heartbeat_s", "--heartbeat", _positive_float,
           "seconds of silence on a stream before a heartbeat event", "S"),
    Option("max_body_bytes", "--max-body-bytes", _positive_int, "largest request body accepted", "N"),
    Option("subscriber_buffer", "--subscriber-buffer", _positive_int,
           "live events a slow stream client may lag before batch events are skipped for it", "N"),
    Option("send_timeout_s", "--send-timeout", _positive_float,
           "seconds a stalled stream write may take before the client is dropped", "S"),
    Option("cpu_threads", "--cpu-threads", _non_negative_int,
           "torch threads per CPU job (0: cores / max-concurrent)", "N"),
    Option("log_level", "--log-level", _log_level, "debug, info, warning or error", "LEVEL"),
    Option("keep_jobs", "--keep-jobs", _positive_int,
           "jobs kept in the history; beyond it the oldest finished ones are deleted", "N"),
    Option("token", "--token", _token,
           "bearer token required on every /api/ request (prefer the variable: flags show in ps)", "TOKEN",
           shown_default="none"),
    Option("insecure", "--insecure", _bool, "listen on a non-loopback host without a token"),
    Option("cors_origins", "--cors-origin", _origin,
           "an origin allowed to call the API from a browser (repeatable; * allows any)", "ORIGIN",
           repeat=True, shown_default="none"),
    Option("job_memory_limit", "--job-memory-limit", _size,
           "memory one job may use (e.g. 8G): larger jobs are refused, a worker that grows past it is ended",
           "SIZE", shown_default="0: the machine's memory / max-concurrent; a GPU job: its GPU's memory"),
    Option("stall_timeout_s", "--stall-timeout", _positive_float,
           "seconds a worker may send no event before the job gets a warning event (before its first event: "
           "at least 300 s, for its start-up)", "S"),
    Option("stall_action", "--stall-action", _stall_action,
           "what a stall does besides the warning: warn (nothing more) or kill (the job ends failed)", "ACTION"),
    Option("allowed_hosts", "--allowed-host", _host_name,
           "a Host name this server answers to besides loopback names and its bound address, e.g. the "
           "proxy's name (repeatable; * allows any)", "NAME", repeat=True, shown_default="none"),
    Option("header_timeout_s", "--header-timeout", _positive_float,
           "seconds a new connection gets to send its first request's headers", "S"),
    Option("keepalive_timeout_s", "--keepalive-timeout", _positive_float,
           "seconds a connection may stay idle between requests (and send a later request's headers)", "S"),
    Option("body_timeout_s", "--body-timeout", _positive_float,
           "seconds a request body may take to arrive before a 408", "S"),
    Option("max_connections", "--max-connections", _non_negative_int,
           "connections served at once; beyond them new ones get a 503 (0: the descriptor limit less a reserve)",
           "N", shown_default="0"),
    Option("metrics_open", "--metrics-open", _bool,
           "serve /metrics without the token (it needs the token like /api/ otherwise)"),
    Option("log_format", "--log-format", _log_format,
           "plain, or json (one object a line, with job_id where there is one)", "FORMAT"),
    Option("prestart", "--prestart", _bool,
           "keep a worker process started ahead (torch imported, nothing of a job) for each free job slot, "
           "at most one per core, so a job starts in under a second; each serves one job and holds about "
           "0.65 GiB while it waits"),
    Option("backend", "--backend", _backend,
           "where jobs run: process (a worker process per job on this machine) or ray (a Ray actor per job "
           "on a cluster; needs the ray extra)", "BACKEND"),
    Option("ray_address", "--ray-address", _ray_address,
           "with --backend ray: the cluster to use (auto, ray://host:port or host:port)", "ADDRESS",
           shown_default="none: start a local Ray instance"),
    Option("store_sync", "--store-sync", _store_sync,
           "full (each commit of the job history is fsynced: committed events survive a power cut) or "
           "normal (no fsync per commit: a server crash loses nothing committed, a power cut may lose the "
           "last commits; lower stream latency)", "MODE"),
)


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="run the HTTP API, the SSE streams and the dashboard",
        description="Serve the training API and dashboard. Every flag can also be set with the "
                    "SNNMON_* environment variable named in its help; a flag beats its variable.",
    )
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.field)
        shown = (f"default: {option.shown_default}" if option.shown_default is not None
                 else f"default {default}" if default is not None else "default: the trainer's")
        env = f"env {option.env}, comma-separated" if option.repeat else f"env {option.env}"
        help_text = f"{option.help} ({shown}; {env})"
        if option.parse is _bool:
            parser.add_argument(option.flag, dest=option.field, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.field, type=_argparse_type(option.parse),
                                default=None, metavar=option.metavar, help=help_text,
                                action="append" if option.repeat else "store")
    parser.set_defaults(handler=run_serve)
    return parser


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse shows an ArgumentTypeError's own message (a ValueError gets a generic one)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def settings_from(args: argparse.Namespace | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Flags beat ``SNNMON_*`` variables, which beat the defaults; a bad variable raises ValueError."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = getattr(args, option.field, None) if args is not None else None
        if given is not None:
            values[option.field] = given
        elif environ.get(option.env, "") != "":
            raw = environ[option.env]
            try:
                values[option.field] = ([option.parse(item) for item in raw.split(",") if item.strip()]
                                        if option.repeat else option.parse(raw))
            except ValueError as exc:
                shown = "***" if option.field == "token" else raw  # never echo a secret
                raise ValueError(f"{option.env}={shown!r}: {exc}") from None
        if option.repeat and option.field in values:
            values[option.field] = tuple(dict.fromkeys(values[option.field]))  # in order, once each
    return dataclasses.replace(Settings(), **values)


def access_problem(settings: Settings) -> str | None:
    """Why this server must not start as configured, or None."""
    if settings.token is None and not settings.insecure and not is_loopback(settings.host):
        shown = settings.host or "every interface"
        return (f"refusing to listen on {shown} without an access token: anyone who can reach it could "
                "start jobs and read every job's history. Set --token (or SNNMON_TOKEN), listen on "
                "127.0.0.1 behind a reverse proxy (deploy/nginx.conf), or pass --insecure if something in "
                "front of this server already decides who gets in")
    return None


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"snnmon serve: error: {exc}", file=sys.stderr)
        return 2
    problem = access_problem(settings)
    if problem is not None:
        print(f"snnmon serve: error: {problem}", file=sys.stderr)
        return 2
    if settings.backend == "ray":
        from service.ray_backend import INSTALL_HINT, ray_installed

        if not ray_installed():
            print(f"snnmon serve: error: --backend ray needs Ray, which is not installed: {INSTALL_HINT}",
                  file=sys.stderr)
            return 2
    from service import server

    return server.serve(settings)
