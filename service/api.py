"""The JSON endpoints under ``/api/training/`` (catalog, config schema, start, stop, status, jobs, delete,
metrics export) and the health checks ``/healthz`` and ``/readyz``.

Handlers raise ``service.errors``; the app's one middleware turns those into JSON error responses.
Request bodies are parsed whatever their Content-Type (``curl -d`` sends form-encoded), and must be
JSON objects.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service import metrics
from service.errors import BadRequest, InvalidJSON, NotReady, PayloadTooLarge
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
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        raise PayloadTooLarge(f"request body is larger than {limit} bytes", limit=limit) from None
    if not raw.strip():
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
    record = await request.app[JOB_MANAGER].submit(await read_json(request))
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
        raise BadRequest("; ".join(f"{k}: {v}" for k, v in fields.items()), fields=fields)
    record = request.app[JOB_MANAGER].stop(job_id)
    return json_response({"job_id": record.job_id, "status": record.status})


async def status(request: web.Request) -> web.Response:
    return json_response(request.app[JOB_MANAGER].record(request.match_info["job_id"]).to_dict())


async def jobs(request: web.Request) -> web.Response:
    """Every job record, newest first."""
    return json_response([record.to_dict() for record in request.app[JOB_MANAGER].records()])


async def delete_job(request: web.Request) -> web.Response:
    """A finished job and its events; 409 while it runs."""
    await request.app[JOB_MANAGER].delete(request.match_info["job_id"])
    return web.Response(status=204)


async def job_metrics(request: web.Request) -> web.Response:
    """Per-epoch metrics: JSON by default, ``?format=csv`` as a file download."""
    wanted = request.query.get("format", "json")
    if wanted not in ("json", "csv"):
        raise BadRequest(f"format must be json or csv, got {wanted[:20]!r}", fields={"format": "json or csv"})
    record, epochs = await request.app[JOB_MANAGER].epoch_rows(request.match_info["job_id"])
    if wanted == "json":
        return json_response(metrics.as_json(record, epochs))
    return web.Response(text=metrics.as_csv(epochs), content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{metrics.csv_filename(record.job_id)}"'})


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
        web.delete("/api/training/jobs/{job_id}", delete_job),
        web.get("/api/training/jobs/{job_id}/metrics", job_metrics),
    ]
