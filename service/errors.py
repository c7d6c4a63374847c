"""The service's errors, each with the HTTP status and JSON ``error`` code a client sees.

    ServiceError (500 internal_error)
    ├── BadRequest (400 bad_request)
    │   ├── InvalidJSON (400 invalid_json)
    │   ├── InvalidConfig (400 invalid_config, with ``fields``)
    │   ├── JobTooLarge (400 job_too_large: the memory estimate, the budget, the fields to reduce)
    │   └── BadEncoding (400 bad_encoding: a compressed body that does not decompress)
    ├── Unauthorized (401 unauthorized, with a WWW-Authenticate: Bearer header)
    ├── Forbidden (403 forbidden)
    │   └── CrossSite (403 cross_site: a state change from another site's page)
    ├── NotFound (404 not_found)
    │   ├── UnknownJob (404 unknown_job)
    │   └── NoCheckpoint (404 no_checkpoint)
    ├── MethodNotAllowed (405 method_not_allowed)
    ├── RequestTimeout (408 request_timeout)
    ├── JobActive (409 job_active)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── MisdirectedRequest (421 misdirected_request: a Host this server does not answer to)
    ├── NotExportable (422 not_exportable, with ``cell`` and ``reason``)
    └── ServiceUnavailable (503 service_unavailable)
        ├── ShuttingDown (503 shutting_down)
        ├── NotReady (503 not_ready)
        ├── StoreUnavailable (503 store_unavailable: the job store cannot write, e.g. the disk is full)
        └── TooManyConnections (503 too_many_connections: written by the connection gate, not a handler)

Handlers raise these; one middleware (``service.app``) turns them into ``{"error", "message", ...}``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}  # sent with the JSON error response

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class BadEncoding(BadRequest):
    code = "bad_encoding"


# An answer names at most this many bad fields (and how many more there were), so a body of many
# unknown keys cannot make its answer many times larger than itself.
MAX_FIELD_REASONS = 20


def capped_fields(fields: dict[str, str]) -> tuple[dict[str, str], int]:
    """The first ``MAX_FIELD_REASONS`` field reasons (names cut to 100 characters), and how many were left out."""
    shown = {name[:100]: reason for name, reason in list(fields.items())[:MAX_FIELD_REASONS]}
    return shown, max(0, len(fields) - MAX_FIELD_REASONS)


class InvalidConfig(BadRequest):
    """A TrainConfig with bad fields; ``fields`` maps each to its reason (from ``ConfigError``), at most
    ``MAX_FIELD_REASONS`` of them; ``more_fields`` counts the rest."""

    code = "invalid_config"

    def __init__(self, fields: dict[str, str]):
        shown, more = capped_fields(fields)
        message = "; ".join(f"{name}: {reason}" for name, reason in shown.items())
        if more:
            message += f"; and {more} more"
            super().__init__(f"invalid config: {message}", fields=shown, more_fields=more)
        else:
            super().__init__(f"invalid config: {message}", fields=shown)


class JobTooLarge(BadRequest):
    """A job whose estimated peak memory is over the per-job budget (``service.memory``)."""

    code = "job_too_large"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, invalid: bool):
        super().__init__(message)
        # RFC 6750: a wrong token is "invalid_token"; a missing one gets the bare challenge
        self.headers = {"WWW-Authenticate": 'Bearer realm="snnmon", error="invalid_token"' if invalid
                        else 'Bearer realm="snnmon"'}


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class CrossSite(Forbidden):
    code = "cross_site"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class UnknownJob(NotFound):
    code = "unknown_job"

    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}", job_id=job_id)


class NoCheckpoint(NotFound):
    """The job exists but has not written the checkpoint asked for (yet)."""

    code = "no_checkpoint"


class NotExportable(ServiceError):
    """The network uses a cell the export format cannot express the same way."""

    status = 422
    code = "not_exportable"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ServiceError):
    status = 408
    code = "request_timeout"
    headers = {"Connection": "close"}


class JobActive(ServiceError):
    status = 409
    code = "job_active"

    def __init__(self, job_id: str, status: str):
        super().__init__(f"job {job_id} is {status}; stop it and wait for it to end first",
                         job_id=job_id, status=status)


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class MisdirectedRequest(ServiceError):
    status = 421
    code = "misdirected_request"


class ServiceUnavailable(ServiceError):
    status = 503
    code = "service_unavailable"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class NotReady(ServiceUnavailable):
    code = "not_ready"


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class TooManyConnections(ServiceUnavailable):
    code = "too_many_connections"
