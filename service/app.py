"""The app factory ``create_app(settings)``: routes, middlewares (errors, CORS preflight, token), and the
resources the app owns (the job store, the job manager, the backend), opened and closed by
``cleanup_ctx``.

State lives under ``web.AppKey``s, never in module globals, so tests can build apps side by side:
``create_app(settings, store=..., backend=...)``; by default the store is ``SQLiteJobStore`` in the
data directory.

Shutdown (``on_shutdown``, in this order): the job manager refuses new jobs and stops every job (its
terminal events are committed and sent to the open streams), then the streams that are still open are
ended. The cleanup context then closes the store.
"""

from __future__ import annotations

import logging
import weakref
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from service import api, artifacts, auth, connections, guards, openapi, static, stream
from service.backend import Backend, ProcessBackend
from service.cors import OriginPolicy
from service.devices import DevicePool, visible_gpu_count
from service.errors import InvalidConfig, MethodNotAllowed, NotFound, PayloadTooLarge, ServiceError
from service.jobs import JobManager
from service.prometheus import ServiceMetrics
from service.settings import Settings
from service.sqlite_store import SQLiteJobStore
from service.store import JobStore
from trainer.config import ConfigError

log = logging.getLogger("snnmon.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS = web.AppKey("metrics", ServiceMetrics)  # GET /metrics (service.prometheus)
# The response a handler has already started (an event stream): no error answer may follow it.
# (a RequestKey where aiohttp has them: since 3.14 a plain string key warns on every stream)
STARTED_RESPONSE = (web.RequestKey("started_response", web.StreamResponse) if hasattr(web, "RequestKey")
                    else "snnmon.started_response")


def create_app(settings: Settings, *, store: JobStore | None = None,
               backend: Backend | None = None) -> web.Application:
    metrics = ServiceMetrics()
    # outermost first: the connection's headers have arrived; errors become JSON whichever middleware or
    # handler raised them (and /metrics counts the JSON answer the client got); a foreign Host is refused
    # before anything else looks at the request
    deadlines = connections.HeaderDeadlines(settings.header_timeout_s)
    middlewares = [deadlines.middleware(), metrics.middleware, error_middleware,
                   guards.HostPolicy(settings).middleware()]
    origins = OriginPolicy(settings.cors_origins) if settings.cors_origins else None
    if origins is not None:
        middlewares.append(origins.middleware())
    middlewares.append(guards.cross_site_middleware(origins))
    if settings.token is not None:
        middlewares.append(auth.token_middleware(settings.token, protect_metrics=not settings.metrics_open))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[api.SETTINGS] = settings
    app[connections.HEADER_DEADLINES] = deadlines
    app[api.STORE] = store or SQLiteJobStore(settings.resolved_data_dir(), synchronous=settings.store_sync.upper())
    app[METRICS] = metrics
    metrics.watch(app, api.JOB_MANAGER, stream.OPEN_STREAMS)
    if hasattr(app[api.STORE], "on_commit"):
        app[api.STORE].on_commit = metrics.observe_commit
    app.router.add_get("/metrics", metrics.handler, allow_head=False)
    app[stream.OPEN_STREAMS] = weakref.WeakSet()
    app.add_routes(api.routes())
    app.add_routes(artifacts.routes())
    app.add_routes(stream.routes())
    app.add_routes(openapi.routes())
    app.add_routes(static.routes())
    app.on_response_prepare.append(_remember_started)
    if origins is not None:
        app.on_response_prepare.append(origins.add_headers)
    app.cleanup_ctx.append(_job_manager_context(backend or make_backend(settings)))
    app.on_shutdown.append(shut_down_jobs)
    app.on_shutdown.append(stream.end_open_streams)
    return app


def make_backend(settings: Settings) -> Backend:
    """The backend ``--backend`` names (Ray is imported only once the Ray backend connects)."""
    if settings.backend == "ray":
        from service.ray_backend import RayBackend

        return RayBackend(settings.ray_address)
    return ProcessBackend(slots=settings.max_concurrent, prestart=settings.prestarted_workers())


def _job_manager_context(backend: Backend):
    async def job_manager(app: web.Application) -> AsyncIterator[None]:
        store = app[api.STORE]
        stored = await store.open()  # StoreError: the server says why and does not start
        try:
            # a backend that runs jobs elsewhere (Ray) counts the GPUs there; it connects to do so
            count_gpus = getattr(backend, "gpu_count", None)
            devices = DevicePool(await count_gpus() if count_gpus is not None else visible_gpu_count())
            log.info("devices: %d GPU(s) visible%s", devices.gpu_count,
                     "" if devices.gpu_count else "; jobs run on the CPU")
            manager = JobManager(app[api.SETTINGS], store, backend, devices, metrics=app[METRICS])
            manager.restore(stored)
            app[api.JOB_MANAGER] = manager
            backend.warm_up()
            yield
            await manager.shutdown()
            await backend.close()
        finally:
            await store.close()

    return job_manager


async def shut_down_jobs(app: web.Application) -> None:
    """on_shutdown: no new jobs; every job stopped and its terminal event sent to its streams."""
    manager = app.get(api.JOB_MANAGER)
    if manager is not None:
        await manager.shutdown()


async def _remember_started(request: web.BaseRequest, response: web.StreamResponse) -> None:
    request[STARTED_RESPONSE] = response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is JSON ``{"error", "message", ...}``; tracebacks stay in the log.

    Once a handler has started its response (an event stream's headers and frames are out), an error
    cannot be answered any more: the connection is aborted, so the client sees a cut stream, never an
    HTTP answer inside the event stream."""
    try:
        return await handler(request)
    except ConnectionError as exc:  # the client went away (mid-body, mid-stream): routine
        log.debug("%s %s: client went away (%s)", request.method, request.path, type(exc).__name__)
        raise
    except Exception as exc:
        started = request.get(STARTED_RESPONSE)
        if started is None:
            return _answer(request, exc)
        if isinstance(exc, (ServiceError, ConfigError, web.HTTPException)):
            log.warning("%s %s failed after its response started (%s); connection aborted",
                        request.method, request.path, exc)
        else:
            log.exception("unhandled error in %s %s after its response started; connection aborted",
                          request.method, request.path)
        if request.transport is not None:
            request.transport.abort()
        return started


def _answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, ServiceError):
        return _error_response(exc)
    if isinstance(exc, ConfigError):  # a config validated outside the job manager
        return _error_response(InvalidConfig(exc.fields))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _error_response(_from_http_exception(request, exc), headers=_allow_header(exc))
    # the request boundary: log it, answer 500, keep serving
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
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
    response.headers.update(exc.headers)
    if headers:
        response.headers.update(headers)
    return response
