"""The service's errors, each with the HTTP status and JSON ``error`` code a client sees.

    ServiceError (500 internal_error)
    ├── BadRequest (400 bad_request)
    │   ├── InvalidJSON (400 invalid_json)
    │   ├── InvalidConfig (400 invalid_config, with ``fields``)
    │   └── JobTooLarge (400 job_too_large: the memory estimate, the budget, the fields to reduce)
    ├── Unauthorized (401 unauthorized, with a WWW-Authenticate: Bearer header)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not_found)
    │   └── UnknownJob (404 unknown_job)
    ├── MethodNotAllowed (405 method_not_allowed)
    ├── JobActive (409 job_active)
    ├── PayloadTooLarge (413 payload_too_large)
    └── ServiceUnavailable (503 service_unavailable)
        ├── ShuttingDown (503 shutting_down)
        ├── NotReady (503 not_ready)
        └── StoreUnavailable (503 store_unavailable: the job store cannot write, e.g. the disk is full)

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


class InvalidConfig(BadRequest):
    """A TrainConfig with bad fields; ``fields`` maps each to its reason (from ``ConfigError``)."""

    code = "invalid_config"

    def __init__(self, fields: dict[str, str]):
        message = "; ".join(f"{name}: {reason}" for name, reason in fields.items())
        super().__init__(f"invalid config: {message}", fields=dict(fields))


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


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class UnknownJob(NotFound):
    code = "unknown_job"

    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}", job_id=job_id)


class MethodNotAllowed(ServiceError):
    status = 405
    code = "method_not_allowed"


class JobActive(ServiceError):
    status = 409
    code = "job_active"

    def __init__(self, job_id: str, status: str):
        super().__init__(f"job {job_id} is {status}; stop it and wait for it to end first",
                         job_id=job_id, status=status)


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class ServiceUnavailable(ServiceError):
    status = 503
    code = "service_unavailable"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


class NotReady(ServiceUnavailable):
    code = "not_ready"


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"
