"""Log lines that never hold a secret, and aiohttp's protocol errors as one line each.

``RedactingFilter`` sits on every log handler (``install``): whatever a record says, from any logger, its
message and its traceback text are rewritten before a handler formats them: the access token itself
(also percent-encoded), any ``access_token=`` value, and any ``Bearer`` credential become ``[redacted]``.
aiohttp's parser quotes the raw request in its errors (a URL over 8,190 bytes, a bad character in
``Authorization``, a bad HTTP version), so a filter is the one place that catches them all.

``ProtocolLogger`` is the logger aiohttp's connection handler writes to. A client's malformed request
or undecodable body is the client's problem: one WARNING line, no traceback. A client that hangs up is
routine: DEBUG. Anything else is ours and keeps its ERROR with the traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Iterable
from urllib.parse import quote

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

REDACTED = "[redacted]"
_CREDENTIAL = re.compile(r"(access_token=|access_token%3d|bearer\s+)[^\s&'\"\\,;]+", re.IGNORECASE)
SUMMARY_CHARS = 300  # a malformed request's log line quotes at most this much of the error


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._secrets = sorted({form for secret in secrets if secret
                                for form in (secret, quote(secret, safe=""), quote(secret))}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _CREDENTIAL.sub(lambda match: match.group(1) + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secrets: Iterable[str] = ()) -> RedactingFilter:
    """Put one filter on every handler there is now (the root's and every named logger's)."""
    redacting = RedactingFilter(secrets)
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(redacting)
    return redacting


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) and exc.message else str(exc)
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "..."


def _chain(exc: BaseException | None) -> Iterable[BaseException]:
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


class ProtocolLogger(logging.LoggerAdapter):
    """The ``logger`` of aiohttp's ``RequestHandler``: it calls ``exception()`` for every failed request."""

    def __init__(self, logger: logging.Logger):
        super().__init__(logger, {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        chain = list(_chain(exc))
        where = (msg % args) if args else str(msg)
        if any(isinstance(link, ConnectionError) for link in chain):
            self.logger.debug("%s: client went away (%s)", where, type(exc).__name__)
        elif any(isinstance(link, (HttpProcessingError, RequestPayloadError)) for link in chain):
            self.logger.warning("%s: malformed request: %s", where, _one_line(exc))
        else:
            self.logger.error(msg, *args, exc_info=exc_info, **kwargs)
