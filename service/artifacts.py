"""What training leaves behind, as the service sees it: each job's checkpoint folder, the start options
that begin a job from another job's checkpoint, and the download and export endpoints.

A job's folder is ``DATA_DIR/jobs/<job_id>/`` (``trainer.checkpoint`` writes it, in the worker):
``best.safetensors``, ``last.safetensors`` and ``last.state.pt``. Deleting a job (DELETE or
``--keep-jobs``) deletes its folder.

Start options (keys of the POST /api/training/start body that are not TrainConfig fields):

- ``"resume_from": job_id`` continues a stopped or failed job (also one interrupted by a restart) from
  its last finished epoch, with that job's own config; only ``device`` may be given with it.
- ``"init_from": {"job_id": ..., "which": "best"|"last"}`` starts a new config from those weights; the
  network must have the same tensors of the same shapes.

A bad option is answered like a bad config field: 400 ``invalid_config`` with a reason per key.
Runs in the server's event loop; anything that imports torch (the architecture check, the NIR export)
runs in the default executor, on the CPU.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from service.errors import BadRequest, InvalidConfig, NoCheckpoint, NotExportable, UnknownJob
from service.settings import Settings
from trainer.config import FIELDS_BY_NAME, ConfigError, TrainConfig

START_OPTIONS = ("resume_from", "init_from")
WHICH = ("best", "last")
WEIGHT_FILE = "{which}.safetensors"
RESUME_STATE = "last.state.pt"  # trainer.checkpoint.STATE_FILE (not imported: it imports torch)
RESUMABLE = ("stopped", "failed")
EXPORT_FORMATS = ("nir",)


def jobs_dir(settings: Settings) -> Path:
    return settings.resolved_data_dir() / "jobs"


def job_dir(settings: Settings, job_id: str) -> Path:
    return jobs_dir(settings) / job_id


def weights_path(settings: Settings, job_id: str, which: str) -> Path:
    return job_dir(settings, job_id) / WEIGHT_FILE.format(which=which)


def disk_usage(directory: Path) -> int:
    """Bytes of the files in a job's folder (0 when it has none)."""
    try:
        return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())
    except FileNotFoundError:
        return 0


def remove_job_files(settings: Settings, job_id: str) -> None:
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)


# -- start options

@dataclass(frozen=True)
class StartOrigin:
    """Where a new job starts from: nothing, another job's last state, or another job's weights."""

    resumed_from: str | None = None
    init_from: dict[str, str] | None = None


async def split_start_options(manager: Any, settings: Settings, body: Any) -> tuple[Any, StartOrigin]:
    """The body without the start options (for a resume: the resumed job's config), and the origin.
    Raises InvalidConfig naming each bad option (and bad config fields found on the way)."""
    if not isinstance(body, dict) or not any(key in body for key in START_OPTIONS):
        return body, StartOrigin()
    body = dict(body)
    resume_from = body.pop("resume_from", None)
    init_from = body.pop("init_from", None)
    if resume_from is not None and init_from is not None:
        raise InvalidConfig({"resume_from": "give resume_from or init_from, not both",
                             "init_from": "give resume_from or init_from, not both"})
    if resume_from is not None:
        return _resume_body(manager, settings, body, resume_from), StartOrigin(resumed_from=resume_from)
    origin = _init_origin(manager, settings, init_from)
    config_body = {key: value for key, value in body.items() if key in FIELDS_BY_NAME}
    try:
        config = TrainConfig.from_dict(config_body)
    except ConfigError as exc:
        raise InvalidConfig(exc.fields) from None
    path = weights_path(settings, origin.init_from["job_id"], origin.init_from["which"])
    reason = await asyncio.get_running_loop().run_in_executor(None, _architecture_mismatch, config, path)
    if reason:
        raise InvalidConfig({"init_from": f"the network differs from job {origin.init_from['job_id']}'s: {reason}"})
    return body, origin


def _resume_body(manager: Any, settings: Settings, body: dict, job_id: Any) -> dict:
    if not isinstance(job_id, str) or not job_id:
        raise InvalidConfig({"resume_from": "must be the id (a string) of a stopped or failed job"})
    record = _source_record(manager, "resume_from", job_id)
    if record.status not in RESUMABLE:
        raise InvalidConfig({"resume_from": f"job {job_id} is {record.status}; only a stopped or failed job "
                                            "can be resumed"})
    if not (job_dir(settings, job_id) / RESUME_STATE).is_file():
        raise InvalidConfig({"resume_from": f"job {job_id} has no checkpoint: it ended before finishing "
                                            "its first epoch"})
    extra = [key for key in body if key in FIELDS_BY_NAME and key != "device"]
    if extra:
        raise InvalidConfig({key: "a resumed job keeps its own config; only device may be given with "
                                  "resume_from" for key in extra})
    config = dict(record.config)
    if "device" in body:
        config["device"] = body.pop("device")
    return {**body, **config}


def _init_origin(manager: Any, settings: Settings, init_from: Any) -> StartOrigin:
    form = 'must be {"job_id": "...", "which": "best" or "last"}'
    if not isinstance(init_from, dict) or set(init_from) - {"job_id", "which"} \
            or not isinstance(init_from.get("job_id"), str):
        raise InvalidConfig({"init_from": form})
    which = init_from.get("which", "best")
    if which not in WHICH:
        raise InvalidConfig({"init_from": f"which must be best or last, got {str(which)[:20]!r}"})
    job_id = init_from["job_id"]
    _source_record(manager, "init_from", job_id)
    if not weights_path(settings, job_id, which).is_file():
        raise InvalidConfig({"init_from": f"job {job_id} has no {which} checkpoint yet"})
    return StartOrigin(init_from={"job_id": job_id, "which": which})


def _source_record(manager: Any, option: str, job_id: str):
    try:
        return manager.record(job_id)
    except UnknownJob:
        raise InvalidConfig({option: f"no job with id {job_id[:40]!r}"}) from None


def _architecture_mismatch(config: TrainConfig, path: Path) -> str | None:
    """In an executor thread: build the config's network on the CPU and compare tensor shapes."""
    from trainer import checkpoint
    from trainer.models import build_model

    try:
        shapes = checkpoint.tensor_shapes(path)
    except Exception as exc:  # replaced or removed since: say so rather than fail the request
        return f"its checkpoint cannot be read ({type(exc).__name__})"
    return checkpoint.architecture_mismatch(build_model(config), shapes)


# -- endpoints

def _which(request: web.Request) -> str:
    which = request.query.get("which", "best")
    if which not in WHICH:
        raise BadRequest(f"which must be best or last, got {which[:20]!r}", fields={"which": "best or last"})
    return which


def _existing_weights(request: web.Request, which: str) -> tuple[Any, Path]:
    from service.api import JOB_MANAGER, SETTINGS  # service.api imports this module

    record = request.app[JOB_MANAGER].record(request.match_info["job_id"])
    path = weights_path(request.app[SETTINGS], record.job_id, which)
    if not path.is_file():
        raise NoCheckpoint(f"job {record.job_id} has no {which} checkpoint yet (one is written after each "
                           "finished epoch)", job_id=record.job_id, which=which)
    return record, path


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


async def download_checkpoint(request: web.Request) -> web.StreamResponse:
    """The job's best or last weights as a safetensors file."""
    which = _which(request)
    record, path = _existing_weights(request, which)
    epoch = (record.artifacts.get(which) or {}).get("epoch")
    suffix = f"-epoch{epoch + 1}" if isinstance(epoch, int) else ""
    # A checkpoint written meanwhile replaces the file by rename: the open file is still the old one.
    return web.FileResponse(path, headers={
        **_attachment(f"snnmon-{record.job_id}-{which}{suffix}.safetensors"),
        "Content-Type": "application/octet-stream"})


async def export(request: web.Request) -> web.Response:
    """The job's network (best weights unless ?which=last) in an interchange format: NIR (HDF5)."""
    wanted = request.query.get("format", "nir")
    if wanted not in EXPORT_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {wanted[:20]!r}",
                         fields={"format": ", ".join(EXPORT_FORMATS)})
    which = _which(request)
    record, path = _existing_weights(request, which)
    body = await asyncio.get_running_loop().run_in_executor(None, _nir_bytes, path)
    return web.Response(body=body, content_type="application/x-hdf5",
                        headers=_attachment(f"snnmon-{record.job_id}-{which}.nir"))


def _nir_bytes(path: Path) -> bytes:
    from trainer import nir_export

    try:
        return nir_export.export_checkpoint(path)
    except nir_export.NotExportable as exc:
        raise NotExportable(str(exc), cell=exc.cell, reason=exc.reason) from None


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/training/jobs/{job_id}/checkpoint", download_checkpoint),
        web.get("/api/training/jobs/{job_id}/export", export),
    ]
