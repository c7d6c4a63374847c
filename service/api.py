"""The JSON endpoints under ``/api/training/`` (catalog, config schema, start, stop, status, jobs and their
filters, run metadata (PATCH), delete, metrics export per epoch or per step) and the health checks
``/healthz`` and ``/readyz``.

Handlers raise ``service.errors``; the app's one middleware turns those into JSON error responses.
Request bodies are parsed whatever their Content-Type (``curl -d`` sends form-encoded), and must be
JSON objects.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from service import artifacts, metrics
from service.errors import (BadEncoding, BadRequest, InvalidJSON, NotReady, PayloadTooLarge, RequestTimeout,
                            capped_fields)
from service.jobs import JobManager
from service.settings import Settings
from service.store import JobStore
from trainer import catalog
from trainer import config as train_config

SETTINGS = web.AppKey("settings", Settings)
JOB_MANAGER = web.AppKey("job_manager", JobManager)
STORE = web.AppKey("store", JobStore)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_json(request: web.Request) -> Any:
    settings = request.app[SETTINGS]
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = settings.max_body_bytes
        raise PayloadTooLarge(f"request body is larger than {limit} bytes", limit=limit) from None
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {settings.body_timeout_s:g} s") from None
    except web.RequestPayloadError:  # aiohttp's decompression (or chunk framing) failed
        raise BadEncoding(f"the request body is not valid {encoding[:20]!r} data; send it uncompressed "
                          "or as valid gzip/deflate") from None
    if not raw.strip():
        if encoding != "identity" and request.content_length:
            raise BadEncoding(f"the {encoding[:20]!r} request body decompresses to nothing; send a JSON object")
        raise InvalidJSON("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None


async def surrogates(request: web.Request) -> web.Response:
    return json_response([{**spec.as_dict(), "available": True} for spec in catalog.SURROGATES])


async def cell_types(request: web.Request) -> web.Response:
    """Cells first, then networks; every one listed is implemented (a trainer test checks it)."""
    specs = (*catalog.CELLS, *catalog.NETWORKS)
    return json_response([{**spec.as_dict(), "available": True} for spec in specs])


async def config_schema(request: web.Request) -> web.Response:
    return json_response(train_config.schema())


async def start(request: web.Request) -> web.Response:
    manager = request.app[JOB_MANAGER]
    body, origin = await artifacts.split_start_options(manager, request.app[SETTINGS], await read_json(request))
    record = await manager.submit(body, origin)
    return json_response({"job_id": record.job_id, "status": record.status}, status=202)


async def stop(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object: {"job_id": "..."}',
                         fields={"body": "must be a JSON object"})
    fields = {str(key): "unknown field; allowed: job_id" for key in body if key != "job_id"}
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        fields["job_id"] = "required: the job id string that /start returned"
    if fields:
        shown, more = capped_fields(fields)
        extra = {"more_fields": more} if more else {}
        raise BadRequest("; ".join(f"{k}: {v}" for k, v in shown.items()) + (f"; and {more} more" if more else ""),
                         fields=shown, **extra)
    record = request.app[JOB_MANAGER].stop(job_id)
    return json_response({"job_id": record.job_id, "status": record.status})


async def status(request: web.Request) -> web.Response:
    return json_response(request.app[JOB_MANAGER].record(request.match_info["job_id"]).to_dict())


async def jobs(request: web.Request) -> web.Response:
    """Job records, newest first; ``?status=`` (comma-separated), ``?tag=`` (repeatable), ``?q=`` filter."""
    return json_response([record.to_dict() for record in request.app[JOB_MANAGER].find(request.query)])


async def update_job(request: web.Request) -> web.Response:
    """PATCH a job's name, tags or notes; answers the whole updated record."""
    record = request.app[JOB_MANAGER].update(request.match_info["job_id"], await read_json(request))
    return json_response(record.to_dict())


async def delete_job(request: web.Request) -> web.Response:
    """A finished job and its events; 409 while it runs."""
    await request.app[JOB_MANAGER].delete(request.match_info["job_id"])
    return web.Response(status=204)


async def job_metrics(request: web.Request) -> web.Response:
    """Per-epoch (``?level=epoch``, the default) or per-batch-event (``?level=step``) metrics: JSON by
    default, ``?format=csv`` as a file download."""
    wanted = request.query.get("format", "json")
    if wanted not in ("json", "csv"):
        raise BadRequest(f"format must be json or csv, got {wanted[:20]!r}", fields={"format": "json or csv"})
    level = request.query.get("level", "epoch")
    if level not in metrics.LEVELS:
        raise BadRequest(f"level must be epoch or step, got {level[:20]!r}", fields={"level": "epoch or step"})
    manager = request.app[JOB_MANAGER]
    job_id = request.match_info["job_id"]
    if level == "step":
        record, batches = await manager.batch_rows(job_id)
        body = metrics.steps_as_json(record, batches) if wanted == "json" else metrics.steps_as_csv(batches)
    else:
        record, epochs = await manager.epoch_rows(job_id)
        body = metrics.as_json(record, epochs) if wanted == "json" else metrics.as_csv(epochs)
    if wanted == "json":
        return json_response(body)
    return web.Response(text=body, content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{metrics.csv_filename(record.job_id, level)}"'})


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and answering."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for work: the job store is open and writes succeed, and the server is not shutting down.
    After a failed write, each call tries one small write, so readiness returns once there is room again."""
    manager = request.app.get(JOB_MANAGER)
    if manager is None or manager.shutting_down:
        raise NotReady("the server is shutting down" if manager else "the server is starting")
    if not request.app[STORE].healthy and not await request.app[STORE].probe():
        raise NotReady("the job store is not open, or a write to it failed (see the server log)")
    return json_response({"status": "ready"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/api/training/surrogates", surrogates),
        web.get("/api/training/cell-types", cell_types),
        web.get("/api/training/config-schema", config_schema),
        web.post("/api/training/start", start),
        web.post("/api/training/stop", stop),
        web.get("/api/training/status/{job_id}", status),
        web.get("/api/training/jobs", jobs),
        web.get("/api/training/jobs/{job_id}", status),
        web.patch("/api/training/jobs/{job_id}", update_job),
        web.delete("/api/training/jobs/{job_id}", delete_job),
        web.get("/api/training/jobs/{job_id}/metrics", job_metrics),
    ]
