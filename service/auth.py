"""Access control for a server behind a proxy: one bearer token, and an access log that never shows it.

With ``--token`` / ``SNNMON_TOKEN`` set, every request under ``/api/`` needs ``Authorization: Bearer
<token>``. A browser's ``EventSource`` cannot send headers, so the stream endpoints also take
``?access_token=<token>``; nothing else does, so the token travels in URLs only where it must. Tokens
are compared as SHA-256 digests with ``hmac.compare_digest``: constant time, whatever their lengths.
``/healthz``, ``/readyz`` and the dashboard's files stay open (the page must load to ask for a token).

``RedactingAccessLogger`` replaces aiohttp's access log line with one whose query string shows
``access_token=[redacted]``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service import stream
from service.errors import Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_PARAMETER = "access_token"
REDACTED = "[redacted]"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def token_middleware(token: str, *, protect_metrics: bool = True):
    """``protect_metrics``: ``/metrics`` needs the token too (off with ``--metrics-open``)."""
    expected = _digest(token)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.path == "/api" or request.path.startswith("/api/")
                or (protect_metrics and request.path == "/metrics")):
            _check(request, expected)
        return await handler(request)

    return require_token


def _check(request: web.Request, expected: bytes) -> None:
    is_stream = request.match_info.handler is stream.stream
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("Authorization must be 'Bearer <token>'", invalid=True)
    elif is_stream and TOKEN_PARAMETER in request.query:
        presented = request.query[TOKEN_PARAMETER]
    else:
        how = "an Authorization: Bearer <token> header" + (f" or ?{TOKEN_PARAMETER}=<token>" if is_stream else "")
        raise Unauthorized(f"this server needs an access token: send {how}", invalid=False)
    if not hmac.compare_digest(_digest(presented.strip()), expected):
        raise Unauthorized("the access token is not valid", invalid=True)


def redacted_path(request: web.BaseRequest) -> str:
    """The request's path and query, with any ``access_token`` value replaced (however it was encoded)."""
    query = request.rel_url.query
    if not any(key == TOKEN_PARAMETER for key in query):
        return request.raw_path
    shown = [(key, REDACTED if key == TOKEN_PARAMETER else value) for key, value in query.items()]
    return f"{request.rel_url.raw_path}?{urlencode(shown, safe='[]')}"


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, like aiohttp's default (remote, request line, status, size, time, agent)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', request.remote, request.method,
                         redacted_path(request), request.version.major, request.version.minor,
                         response.status, response.body_length, time,
                         request.headers.get("User-Agent", "-"), extra=_job_extra(request))


def _job_extra(request: web.BaseRequest) -> dict[str, str] | None:
    """The job a request was about, for ``--log-format json`` (service.logs)."""
    try:
        match_info = request.match_info
    except (AttributeError, AssertionError):  # a request aiohttp's parser rejected was never routed
        return None
    job_id = match_info.get("job_id") if match_info is not None else None
    return {"job_id": job_id} if job_id else None
