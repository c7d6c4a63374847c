"""CORS for a Studio frontend served from another origin: an allow-list, no wildcard unless asked for.

Only origins given with ``--cors-origin`` (or ``SNNMON_CORS_ORIGIN``) get CORS headers; a request from
any other origin is served as usual but without them, so the browser keeps its answer from the page.
A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is answered here,
before the token check (browsers never send credentials on a preflight): 204 with the methods and
headers the API uses. From another origin it is 403. ``*`` in the list allows every origin; responses
then say ``*``. No cookies are involved (the token is a header), so credentials are never allowed.

The headers are added in ``on_response_prepare``, so they reach error answers and event streams too
(a stream's headers are sent before its handler returns).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable

from aiohttp import web

from service.errors import Forbidden

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOWED_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSED_HEADERS = "Content-Disposition, WWW-Authenticate"  # the CSV export's file name; the 401 challenge
MAX_AGE_S = 600  # browsers may reuse a preflight answer this long


class OriginPolicy:
    def __init__(self, origins: Iterable[str]):
        self.origins = frozenset(origins)
        self.any = "*" in self.origins

    def allowed_origin(self, request: web.BaseRequest) -> str | None:
        """The Access-Control-Allow-Origin value for this request, or None (no CORS headers)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if self.any:
            return "*"
        return origin if origin.lower() in self.origins else None

    def middleware(self):
        @web.middleware
        async def answer_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
                return await handler(request)
            if self.allowed_origin(request) is None:
                raise Forbidden(f"origin {request.headers.get('Origin', '(none)')[:100]!r} may not call this "
                                "API from a browser; the server's --cors-origin list names those that may")
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_S),
            })

        return answer_preflight

    async def add_headers(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """on_response_prepare: CORS headers for an allowed origin, on every kind of response."""
        if not self.any:
            response.headers.add("Vary", "Origin")  # a cache must not hand one origin's answer to another
        allowed = self.allowed_origin(request)
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
