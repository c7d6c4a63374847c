"""The app factory ``create_app(settings)``: routes, the one error middleware, and the resources the
app owns (the job manager, its store and backend), opened and closed by ``cleanup_ctx``.

State lives under ``web.AppKey``s, never in module globals, so tests and a persistent store can build
apps side by side: ``create_app(settings, store=..., backend=...)``.
"""

from __future__ import annotations

import logging
import weakref
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from service import api, static, stream
from service.backend import Backend, ProcessBackend
from service.devices import DevicePool, visible_gpu_count
from service.errors import InvalidConfig, MethodNotAllowed, NotFound, PayloadTooLarge, ServiceError
from service.jobs import JobManager
from service.settings import Settings
from service.store import JobStore, MemoryJobStore
from trainer.config import ConfigError

log = logging.getLogger("snnmon.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings, *, store: JobStore | None = None,
               backend: Backend | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[api.SETTINGS] = settings
    app[stream.OPEN_STREAMS] = weakref.WeakSet()
    app.add_routes(api.routes())
    app.add_routes(stream.routes())
    app.add_routes(static.routes())
    app.cleanup_ctx.append(_job_manager_context(store or MemoryJobStore(), backend or ProcessBackend()))
    app.on_shutdown.append(stream.end_open_streams)
    return app


def _job_manager_context(store: JobStore, backend: Backend):
    async def job_manager(app: web.Application) -> AsyncIterator[None]:
        devices = DevicePool(visible_gpu_count())
        log.info("devices: %d GPU(s) visible%s", devices.gpu_count,
                 "" if devices.gpu_count else "; jobs run on the CPU")
        manager = JobManager(app[api.SETTINGS], store, backend, devices)
        app[api.JOB_MANAGER] = manager
        backend.warm_up()
        yield
        await manager.close()

    return job_manager


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is JSON ``{"error", "message", ...}``; tracebacks stay in the log."""
    try:
        return await handler(request)
    except ServiceError as exc:
        return _error_response(exc)
    except ConfigError as exc:  # a config validated outside the job manager
        return _error_response(InvalidConfig(exc.fields))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(_from_http_exception(request, exc), headers=_allow_header(exc))
    except Exception:  # the request boundary: log it, answer 500, keep serving
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(ServiceError("internal server error; the server log has the details"))


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ServiceError:
    if exc.status == 404:
        return NotFound(f"no such endpoint: {request.method} {request.path}")
    if exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()))
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}; allowed: "
                                f"{', '.join(allowed)}", allowed=allowed)
    if exc.status == 413:
        return PayloadTooLarge(f"request body is larger than {request.app[api.SETTINGS].max_body_bytes} bytes")
    error = ServiceError(exc.reason or "request failed")
    error.status = exc.status
    error.code = (exc.reason or "error").lower().replace(" ", "_")
    return error


def _allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


def _error_response(exc: ServiceError, headers: dict[str, str] | None = None) -> web.Response:
    response = api.json_response(exc.body(), status=exc.status)
    if headers:
        response.headers.update(headers)
    return response
