"""``GET /api/openapi.json``: the API as an OpenAPI 3.1 document, built from the tables the code runs on.

Nothing here restates a rule by hand: the start body's schema comes from ``trainer.config.FIELDS`` (the
same table ``/config-schema``, the CLI and the web form are built from), the job record's from the
``JobRecord`` dataclass, each error status's ``error`` codes from the ``service.errors`` hierarchy, and
the list of operations from the app's own routes (a test checks that every API route is documented).
A schemathesis run against a live server (``tests/service/test_openapi_fuzz.py``) holds the server to it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from aiohttp import web

from service import artifacts, errors, metadata, metrics
from service.store import STATUSES, JobRecord
from trainer import config as train_config

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
JSON = "application/json"


def _field_schema(field: train_config.Field) -> dict[str, Any]:
    bounds = {key: value for key, value in (("minimum", field.min), ("maximum", field.max)) if value is not None}
    if field.type == "bool":
        schema: dict[str, Any] = {"type": "boolean"}
    elif field.type == "int":
        schema = {"type": "integer", **bounds}
    elif field.type == "seed":
        schema = {"type": ["integer", "null"], **bounds}
    elif field.type == "float":
        schema = {"type": "number", **bounds}
    elif field.type == "int_list":
        schema = {"type": "array", "items": {"type": "integer", **bounds},
                  "minItems": field.min_len, "maxItems": field.max_len}
    elif field.name == "device":
        cuda = train_config._CUDA_DEVICE.pattern.removeprefix("^").removesuffix("$").replace(r"\d", "[0-9]")
        schema = {"type": "string", "pattern": f"^(auto|cpu|cuda|{cuda})$"}
    else:
        schema = {"type": "string"}
        if field.choices is not None:
            schema["enum"] = [*field.choices, *sorted(field.aliases or {})]
    return {**schema, "description": field.help, "default": field.default}


def train_config_schema() -> dict[str, Any]:
    """TrainConfig as JSON Schema; the rule between fields (learn flags a cell has) is only in the prose."""
    return {
        "type": "object",
        "description": "Every field is optional (its default is used). Unknown fields are rejected; "
                       "learn_beta / learn_threshold must name something the cell has.",
        "properties": {field.name: _field_schema(field) for field in train_config.FIELDS},
        "additionalProperties": False,
    }


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
               tuple: "array"}


def _json_type(annotation: Any) -> list[str] | None:
    """JSON types for a field annotation (``float | None`` -> number, integer, null); None: anything."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_json_type(arg) for arg in typing.get_args(annotation)]
        if any(part is None for part in parts):
            return None
        return sorted({name for part in parts for name in part})
    if annotation is type(None):
        return ["null"]
    base = _JSON_TYPES.get(origin or annotation)
    if base is None:
        return None
    return ["integer", "number"] if base == "number" else [base]  # a float field may hold 1 as 1


def job_record_schema() -> dict[str, Any]:
    hints = typing.get_type_hints(JobRecord)
    properties: dict[str, Any] = {}
    for field in dataclasses.fields(JobRecord):
        kinds = _json_type(hints[field.name])
        properties[field.name] = {} if kinds is None else {"type": kinds[0] if len(kinds) == 1 else kinds}
    properties["status"] = {"type": "string", "enum": list(STATUSES)}
    required = [field.name for field in dataclasses.fields(JobRecord)
                if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    return {"type": "object", "properties": properties, "required": [*required, "status"]}


def _error_classes() -> list[type[errors.ServiceError]]:
    found, todo = [], [errors.ServiceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def error_codes_by_status() -> dict[int, list[str]]:
    """Every ``error`` code the service answers with, by HTTP status, from the ``service.errors`` hierarchy."""
    codes: dict[int, set[str]] = {}
    for cls in _error_classes():
        codes.setdefault(cls.status, set()).add(cls.code)
    return {status: sorted(names) for status, names in sorted(codes.items())}


def _error_schema(codes: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string", "enum": codes}, "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "the reason for each bad field (at most 20; more_fields counts the rest)"},
        "more_fields": {"type": "integer"},
    }}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# Errors any API request may get: a bad body or parameter, a missing token, a cross-site browser request, a
# slow body, a body too large or of the wrong type for a browser, a foreign Host, a server that is full or
# on its way down.
COMMON_ERRORS = (400, 401, 403, 404, 408, 413, 415, 421, 503)
JOB_ID_PATTERN = "^[0-9a-f]{12}$"  # service.jobs: uuid4().hex[:12]; any other id is simply an unknown job (404)
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
          "description": "the id /start returned"}
LAST_EVENT_ID = {"type": "string", "pattern": "^[0-9]{1,16}$",
                 "description": "resume after this event id (ASCII digits, at most 2^53 - 1)"}


def run_metadata_schema(min_properties: int = 0) -> dict[str, Any]:
    """name, tags, notes (service.metadata): in the start body, and the PATCH body."""
    return {"type": "object", "minProperties": min_properties, "additionalProperties": False, "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": metadata.NAME_MAX, "pattern": "^[^\\x00-\\x1f\\x7f]*\\S[^\\x00-\\x1f\\x7f]*$"},
        "tags": {"type": "array", "maxItems": metadata.TAGS_MAX, "items": {
            "type": "string", "minLength": 1, "maxLength": metadata.TAG_MAX, "pattern": "^[^,\\x00-\\x1f\\x7f]*\\S[^,\\x00-\\x1f\\x7f]*$"}},
        "notes": {"type": "string", "maxLength": metadata.NOTES_MAX},
    }}


def start_options_schema() -> dict[str, Any]:
    """resume_from / init_from (service.artifacts): where a job's weights come from."""
    return {
        "resume_from": {"type": "string", "description": "continue this stopped or failed job from its last "
                                                         "checkpoint, with its own config (only device may change)"},
        "init_from": {"type": "object", "required": ["job_id"], "additionalProperties": False,
                      "description": "fine-tune: start from this job's weights (the same architecture)",
                      "properties": {"job_id": {"type": "string"},
                                     "which": {"type": "string", "enum": list(artifacts.WHICH)}}},
    }


def start_body_schema() -> dict[str, Any]:
    """TrainConfig's fields plus the run metadata and the start options, which the service splits off
    before validating them."""
    config = train_config_schema()
    return {**config, "properties": {**config["properties"], **run_metadata_schema()["properties"],
                                     **start_options_schema()}}


WHICH = {"name": "which", "in": "query", "schema": {"type": "string", "enum": list(artifacts.WHICH)},
         "description": "best (the default) or last"}

JOB_FILTERS = [
    {"name": "status", "in": "query", "schema": {"type": "string"},
     "description": f"comma-separated statuses: {', '.join(STATUSES)}"},
    {"name": "tag", "in": "query", "schema": {"type": "string"}, "description": "a tag the job has (repeatable)"},
    {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "text in name, tags, notes or id"},
]


def _operation(summary: str, ok: dict[int, dict[str, Any]], *, parameters: list | None = None,
               body: dict[str, Any] | None = None, extra_errors: tuple[int, ...] = (),
               tag: str = "training") -> dict[str, Any]:
    responses = {str(status): answer for status, answer in ok.items()}
    for status in (*COMMON_ERRORS, *extra_errors):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    return operation


def _paths() -> dict[str, Any]:
    record = _json(_ref("JobRecord"), "the job record")
    listing = {"type": "array", "items": {"type": "object", "required": ["name"],
                                          "properties": {"name": {"type": "string"}}}}
    stream = _operation(
        "the job's events as Server-Sent Events: every event after Last-Event-ID, then live ones",
        {200: {"description": "an event stream; frames are id: <seq> and data: {event, data}",
               "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
        parameters=[JOB_ID, {"name": "Last-Event-ID", "in": "header", "schema": LAST_EVENT_ID},
                    {"name": "last_event_id", "in": "query", "schema": LAST_EVENT_ID},
                    {"name": "access_token", "in": "query", "schema": {"type": "string"},
                     "description": "the token, for EventSource (it cannot send headers)"}])
    return {
        "/healthz": {"get": _operation("the process answers", {200: _json(
            {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}, "alive")},
            tag="health")},
        "/readyz": {"get": _operation("ready for work: store healthy, not shutting down", {200: _json(
            {"type": "object", "required": ["status"], "properties": {"status": {"const": "ready"}}}, "ready")},
            tag="health")},
        "/metrics": {"get": _operation("the service's metrics in the Prometheus text format", {200: {
            "description": "Prometheus exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            tag="health")},
        "/api/openapi.json": {"get": _operation("this document", {200: _json({"type": "object"}, "OpenAPI 3.1")})},
        "/api/training/surrogates": {"get": _operation("the surrogate gradients", {200: _json(listing, "surrogates")})},
        "/api/training/cell-types": {"get": _operation("the neuron cells, then the networks",
                                                       {200: _json(listing, "cells and networks")})},
        "/api/training/config-schema": {"get": _operation(
            "every TrainConfig field: type, default, bounds, choices",
            {200: _json({"type": "object", "required": ["fields"]}, "the config fields")})},
        "/api/training/start": {"post": _operation(
            "start a training job", {202: _json({"type": "object", "required": ["job_id", "status"], "properties": {
                "job_id": {"type": "string"}, "status": {"type": "string", "enum": list(STATUSES)}}}, "accepted")},
            body=start_body_schema())},
        "/api/training/stop": {"post": _operation(
            "stop a job (idempotent on a finished one)", {200: _json(
                {"type": "object", "required": ["job_id", "status"]}, "the job's status now")},
            body={"type": "object", "required": ["job_id"], "properties": {"job_id": {"type": "string"}},
                  "additionalProperties": False})},
        "/api/training/status/{job_id}": {"get": _operation("a job record", {200: record}, parameters=[JOB_ID])},
        "/api/training/jobs": {"get": _operation("job records, newest first, filtered", {200: _json(
            {"type": "array", "items": _ref("JobRecord")}, "job records")}, parameters=JOB_FILTERS)},
        "/api/training/jobs/{job_id}": {
            "get": _operation("a job record", {200: record}, parameters=[JOB_ID]),
            "patch": _operation("change a job's name, tags or notes", {200: record}, parameters=[JOB_ID],
                                body=run_metadata_schema(min_properties=1)),
            "delete": _operation("delete a finished job and its events", {204: {"description": "deleted"}},
                                 parameters=[JOB_ID], extra_errors=(409,)),
        },
        "/api/training/jobs/{job_id}/metrics": {"get": _operation(
            "per-epoch (level=epoch) or per-batch-event (level=step) metrics, as JSON or as a CSV download",
            {200: {"description": "the metrics", "content": {
                JSON: {"schema": {"type": "object", "required": ["job_id", "status"]}},
                "text/csv": {"schema": {"type": "string"}}}}},
            parameters=[JOB_ID, {"name": "format", "in": "query", "schema": {"type": "string",
                                                                              "enum": ["json", "csv"]}},
                        {"name": "level", "in": "query", "schema": {"type": "string", "enum": list(metrics.LEVELS)}}])},
        "/api/training/jobs/{job_id}/checkpoint": {"get": _operation(
            "the job's best or last weights as a safetensors download",
            {200: {"description": "a safetensors file", "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
            parameters=[JOB_ID, WHICH])},
        "/api/training/jobs/{job_id}/export": {"get": _operation(
            "the job's network (best weights unless which=last) as a NIR graph (HDF5)",
            {200: {"description": "a NIR file", "content": {
                "application/x-hdf5": {"schema": {"type": "string", "format": "binary"}}}}},
            parameters=[JOB_ID, WHICH, {"name": "format", "in": "query",
                                        "schema": {"type": "string", "enum": list(artifacts.EXPORT_FORMATS)}}],
            extra_errors=(422,))},
        "/api/training/stream/{job_id}": {"get": stream},
        "/api/training/{job_id}/stream": {"get": stream},
    }


@functools.cache
def document() -> dict[str, Any]:
    by_status = error_codes_by_status()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "SNN Training Monitor", "version": API_VERSION,
                 "description": "Train spiking neural networks and follow them live over SSE. Every error is "
                                "JSON {error, message, ...}."},
        "paths": _paths(),
        "components": {
            "schemas": {"TrainConfig": train_config_schema(), "JobRecord": job_record_schema()},
            "responses": {f"Error{status}": _json(_error_schema(codes), f"error: {', '.join(codes)}")
                          for status, codes in by_status.items() if status >= 400 and status != 500},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "only when the server runs with --token"}},
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    from service.api import json_response  # api imports the job manager; keep this module light

    return json_response(document())


def routes() -> list[web.RouteDef]:
    return [web.get("/api/openapi.json", openapi_json)]
