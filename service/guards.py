"""Cross-site guards: which ``Host`` this server answers to, and which browser requests may change state.

A web page cannot read this server's answers without CORS, but it can still *send* to it: a form or a
``fetch`` with a ``text/plain`` body goes out without a preflight, and DNS rebinding points a name the
page controls at 127.0.0.1, so the page becomes same-origin with the server. Two middlewares close that:

- ``host_middleware``: the ``Host`` header must name a loopback host, the address the server is bound to
  (any IP literal when bound to every interface: rebinding needs a name), or one given with
  ``--allowed-host`` (the proxy's name). Else 421, before anything is read or run.
- ``cross_site_middleware``: a state-changing request (POST, PUT, PATCH, DELETE) with ``Sec-Fetch-Site:
  cross-site``, or with an ``Origin`` that is neither the server's own (the ``Host`` it was sent to) nor in
  the ``--cors-origin`` list, gets 403. A browser's body must be declared JSON (that forces a preflight
  from other origins); a body of another type is taken only from a request without ``Origin`` and
  ``Sec-Fetch-*`` headers, which is what ``curl -d`` sends: 415 otherwise.

``--allowed-host`` names carry no port: a rebinding page uses the server's own port anyway. An
``Origin``'s port is compared with the ``Host``'s when the ``Host`` names one (nginx's ``$host`` does not).
"""

from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from service.cors import OriginPolicy
from service.errors import CrossSite, MisdirectedRequest, UnsupportedMediaType
from service.settings import Settings, is_loopback

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json",)
WILDCARD_BINDS = ("", "0.0.0.0", "::")


def host_name(host_header: str) -> str:
    """``example.org:8080`` -> ``example.org``; ``[::1]:8080`` -> ``::1``; lower case, no trailing dot."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    def __init__(self, settings: Settings):
        self.bound = host_name(settings.host) if settings.host else ""
        self.any_ip = settings.host.strip("[] ") in WILDCARD_BINDS
        self.allowed = frozenset(settings.allowed_hosts)
        self.any = "*" in self.allowed

    def answers_to(self, name: str) -> bool:
        if self.any or name in self.allowed or name == self.bound:
            return True
        if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
            return True
        if _is_ip_literal(name):
            return is_loopback(name) or self.any_ip
        return False

    def middleware(self):
        @web.middleware
        async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
            header = request.headers.get("Host")
            if header is not None and not self.answers_to(host_name(header)):
                raise MisdirectedRequest(
                    f"this server does not answer to the host {header[:100]!r}; it answers to loopback "
                    "names, its bound address and the names given with --allowed-host (a proxy's name)")
            return await handler(request)

        return check_host


def _is_browser(request: web.BaseRequest) -> bool:
    return "Origin" in request.headers or any(name.lower().startswith("sec-fetch-") for name in request.headers)


def _own_origin(request: web.BaseRequest, origin: str) -> bool:
    parts = urlsplit(origin.strip().lower())
    host = request.headers.get("Host")
    if parts.scheme not in ("http", "https") or not parts.hostname or host is None:
        return False  # "null" (a sandboxed or file: page) is nobody's own origin
    if host_name(parts.netloc) != host_name(host):
        return False
    host_port = _port(host)  # a proxy may pass its name without the port: then only names are compared
    try:
        origin_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return host_port is None or host_port == origin_port


def _port(host_header: str) -> int | None:
    tail = host_header.strip().rpartition("]")[2] if "]" in host_header else host_header
    _, colon, port = tail.rpartition(":")
    return int(port) if colon and port.isdigit() else None


def cross_site_middleware(origins: OriginPolicy | None):
    @web.middleware
    async def check_cross_site(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in STATE_CHANGING:
            origin = request.headers.get("Origin")
            if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site" and (
                    origin is None or origins is None or origins.allowed_origin(request) is None):
                raise CrossSite("a page on another site may not change anything here (Sec-Fetch-Site: "
                                "cross-site); the server's --cors-origin list names the origins that may")
            if origin is not None and not _own_origin(request, origin) and (
                    origins is None or origins.allowed_origin(request) is None):
                raise CrossSite(f"origin {origin[:100]!r} may not change anything here; the server's "
                                "--cors-origin list names the origins that may")
            if request.body_exists and _is_browser(request) and request.content_type not in JSON_TYPES:
                raise UnsupportedMediaType(
                    f"a browser must send the body as application/json, not {request.content_type!r}",
                    allowed=list(JSON_TYPES))
        return await handler(request)

    return check_cross_site
