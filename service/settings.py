"""Server settings: one frozen ``Settings``, filled from ``snnmon serve`` flags and ``SNNMON_*`` variables.

``OPTIONS`` is the single table: each row is a flag, its environment variable, its type, its default and
why the default is what it is. A flag given on the command line beats the variable, which beats the
default. This module imports neither aiohttp nor torch, so ``snnmon --help`` stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"  # loopback: put a reverse proxy (deploy/nginx.conf) in front for others
    port: int = 8080
    max_concurrent: int = 2  # jobs training at once; more wait as "queued" (2 cores: one each)
    stop_grace_s: float = 5.0  # after a stop, time for the worker to finish its batch before SIGTERM
    kill_grace_s: float = 3.0  # after SIGTERM, time before SIGKILL
    data_dir: str | None = None  # MNIST directory; None: the trainer's default (XDG data dir)
    allow_download: bool = True  # same default as `snnmon train`
    heartbeat_s: float = 15.0  # a heartbeat event after this much silence on a stream (design: 15 s)
    max_body_bytes: int = 64 * 1024  # a TrainConfig is well under 1 KiB; larger bodies get 413
    subscriber_buffer: int = 256  # live events a slow SSE subscriber may lag before batch events drop
    send_timeout_s: float = 60.0  # a stream write stalled this long means the client is gone
    cpu_threads: int = 0  # torch threads per CPU job; 0: the machine's cores / max_concurrent
    log_level: str = "info"  # for snnmon's own loggers; "debug" also logs each event's numbering time

    def threads_per_cpu_job(self) -> int:
        if self.cpu_threads > 0:
            return self.cpu_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.max_concurrent)


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


@dataclass(frozen=True)
class Option:
    field: str  # Settings field
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None

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
    Option("data_dir", "--data-dir", str, "MNIST data directory for jobs", "DIR"),
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
        shown = f"default {default}" if default is not None else "default: the trainer's"
        help_text = f"{option.help} ({shown}; env {option.env})"
        if option.parse is _bool:
            parser.add_argument(option.flag, dest=option.field, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.field, type=_argparse_type(option.parse),
                                default=None, metavar=option.metavar, help=help_text)
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
            try:
                values[option.field] = option.parse(environ[option.env])
            except ValueError as exc:
                raise ValueError(f"{option.env}={environ[option.env]!r}: {exc}") from None
    return dataclasses.replace(Settings(), **values)


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"snnmon serve: error: {exc}", file=sys.stderr)
        return 2
    from service import server

    return server.serve(settings)
