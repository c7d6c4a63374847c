"""The server's log: plain lines for a terminal, or ``--log-format json`` for a log collector.

JSON: one object a line on stderr, ``{"ts", "level", "logger", "message"}`` plus ``job_id`` where the
line is about a job, and ``exception`` (the traceback as one string) where there is one. A line is
about a job when its call passed ``extra={"job_id": ...}`` (the access log does, for a job's URLs), or
when its format starts ``"job %s"``, the convention every job message here follows, whose first
argument is then the job id.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = job_id_of(record)
        if job_id is not None:
            line["job_id"] = job_id
        if record.exc_info:
            # exc_text: the traceback as a filter left it (service.redact takes secrets out of it)
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def job_id_of(record: logging.LogRecord) -> str | None:
    given = getattr(record, "job_id", None)
    if given is not None:
        return str(given)
    if isinstance(record.msg, str) and record.msg.startswith("job %s") and isinstance(record.args, tuple) \
            and record.args:
        return str(record.args[0])
    return None


def configure(level: str, log_format: str = "plain") -> None:
    """Route every logger to stderr: snnmon's at ``level``, everything else at INFO (WARNING and up when
    ``level`` is warning or error)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("snnmon").setLevel(level.upper())
    if level in ("warning", "error"):
        root.setLevel(level.upper())
