"""Checkpoints: what a run keeps after every epoch, and how a run starts from one.

A run directory holds

- ``last.safetensors``: the model's weights after the latest finished epoch;
- ``best.safetensors``: the weights of the epoch with the highest validation accuracy so far;
- ``last.state.pt``: everything a resume needs, in one file: the weights again, the optimiser's (and LR
  scheduler's) state, the random generators' states, the epoch, step and best accuracy so far.

The safetensors files are what users download: tensors named as in ``model.state_dict()``, and string
metadata (``format``, ``format_version``, ``config`` as JSON, ``epoch``, ``step``, ``metrics`` as JSON,
``input_mean``/``input_std``: the pixel normalisation the model was trained with). A fresh model built
from the ``config`` metadata loads them strictly (``load_model``). The resume state stays in a separate
file, so a download holds only the network.

Every file is written to a temporary name in the same directory, flushed to disk, then renamed over the
old one: a crash (or a SIGKILL) mid-write leaves the previous file intact. Runs in the training process
(the worker or ``snnmon train --save``); the service only reads the files.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from trainer.config import TrainConfig

FORMAT = "snnmon-checkpoint"
FORMAT_VERSION = 1
WEIGHT_FILES = {"best": "best.safetensors", "last": "last.safetensors"}
STATE_FILE = "last.state.pt"

Emit = Callable[[str, dict], None]


class CheckpointError(Exception):
    """A checkpoint that is missing, not ours, or does not fit the model; the message says which."""


@dataclass
class TrainingState:
    """What the loop owns and a checkpoint captures; ``generators`` by name ("shuffle", "encode")."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    input_stats: tuple[float, float]  # (mean, std) of pixel/255 the direct encoding normalises with
    scheduler: Any = None  # anything with state_dict()/load_state_dict(), stepped per optimiser step
    best_val_accuracy: float | None = None
    device: str = "cpu"


@dataclass
class Checkpoints:
    """Where this run writes (``directory``) and what it starts from (``resume_from``: a run directory
    to continue; ``init_from``: a weights file to fine-tune from). ``before_replace(path)`` runs between
    writing a temporary file and renaming it (the crash tests kill the process there)."""

    directory: Path | None = None
    resume_from: Path | None = None
    init_from: Path | None = None
    before_replace: Callable[[Path], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("directory", "resume_from", "init_from"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    # -- start of a run

    def restore(self, config: TrainConfig, state: TrainingState, emit: Emit) -> int:
        """Load what this run starts from into ``state``; return the first epoch to run (0-based)."""
        if self.resume_from is not None:
            return self._resume(config, state, emit)
        if self.init_from is not None:
            weights, _ = read_weights(self.init_from)
            load_weights(state.model, weights, self.init_from)
        return 0

    def _resume(self, config: TrainConfig, state: TrainingState, emit: Emit) -> int:
        path = self.resume_from / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"nothing to resume in {self.resume_from}: {STATE_FILE} is missing")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path} has format version {saved.get('format_version')}, "
                                  f"this version reads {FORMAT_VERSION}")
        load_weights(state.model, saved["model"], path)
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None and saved.get("scheduler") is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"])
        if state.device.startswith("cuda") and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], state.device)
        for name, generator in state.generators.items():
            generator.set_state(rng[name])
        state.best_val_accuracy = saved["best_val_accuracy"]
        # the run carries on in its own directory: it starts with the best weights it had so far
        best = self.resume_from / WEIGHT_FILES["best"]
        if self.directory is not None and best.is_file():
            target = self.directory / WEIGHT_FILES["best"]
            self.directory.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, best.read_bytes(), self.before_replace)
            emit("checkpoint", {"which": "best", "epoch": int(read_metadata(best)["epoch"]),
                                "bytes": target.stat().st_size})
        return saved["epoch"] + 1

    # -- end of each epoch

    def save(self, config: TrainConfig, state: TrainingState, epoch: int, step: int,
             metrics: dict[str, float], emit: Emit) -> None:
        """Write ``last`` (and ``best`` when the validation accuracy improved); one event per file."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        improved = (state.best_val_accuracy is None
                    or metrics["val_accuracy"] > state.best_val_accuracy)
        if improved:
            state.best_val_accuracy = metrics["val_accuracy"]
        weights = {name: tensor.detach().to("cpu").contiguous()
                   for name, tensor in state.model.state_dict().items()}
        _atomic_write(self.directory / STATE_FILE, _state_bytes(state, weights, epoch, step, metrics),
                      self.before_replace)
        blob = save_safetensors(weights, metadata={
            "format": FORMAT, "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config.to_dict()), "epoch": str(epoch), "step": str(step),
            "metrics": json.dumps(metrics), "input_mean": repr(state.input_stats[0]),
            "input_std": repr(state.input_stats[1]),
        })
        for which in ("last", "best") if improved else ("last",):
            _atomic_write(self.directory / WEIGHT_FILES[which], blob, self.before_replace)
            emit("checkpoint", {"which": which, "epoch": epoch, "bytes": len(blob)})


def _state_bytes(state: TrainingState, weights: dict[str, torch.Tensor], epoch: int, step: int,
                 metrics: dict[str, float]) -> bytes:
    rng = {name: generator.get_state() for name, generator in state.generators.items()}
    rng["torch"] = torch.get_rng_state()
    rng["cuda"] = torch.cuda.get_rng_state(state.device) if state.device.startswith("cuda") else None
    buffer = io.BytesIO()
    torch.save({
        "format_version": FORMAT_VERSION, "epoch": epoch, "step": step, "metrics": metrics,
        "best_val_accuracy": state.best_val_accuracy, "model": weights,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "rng": rng,
    }, buffer)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes, before_replace: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that a reader only ever sees the old file or the whole new one."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(path)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


# -- reading checkpoints (also in the service process: CPU only)

def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a checkpoint file, checked to be ours (reads only the header)."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # safetensors raises its own error types for a file that is not one
        raise CheckpointError(f"{path} is not a safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an snnmon checkpoint (no format={FORMAT} metadata)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path} has format version {metadata.get('format_version')}, "
                              f"this version reads {FORMAT_VERSION}")
    return metadata


def tensor_shapes(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Each tensor's shape, from the file's header (no tensor is read)."""
    with safe_open(str(path), framework="numpy") as handle:
        return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    metadata = read_metadata(path)
    return load_safetensors(Path(path).read_bytes()), metadata


def config_of(metadata: dict[str, str]) -> TrainConfig:
    return TrainConfig.from_dict(json.loads(metadata["config"]))


def architecture_mismatch(model: torch.nn.Module, shapes: dict[str, list[int]]) -> str | None:
    """Why ``model`` cannot load weights of these shapes (missing, extra or resized tensors), or None."""
    own = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = [f"{name} is {shapes[name]} in the checkpoint but {own[name]} here"
                for name in own if name in shapes and shapes[name] != own[name]]
    missing = sorted(set(own) - set(shapes))
    extra = sorted(set(shapes) - set(own))
    if missing:
        problems.append(f"the checkpoint lacks {', '.join(missing)}")
    if extra:
        problems.append(f"the checkpoint has {', '.join(extra)}, which this network does not")
    return "; ".join(problems) or None


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Any) -> None:
    reason = architecture_mismatch(model, {name: list(t.shape) for name, t in weights.items()})
    if reason:
        raise CheckpointError(f"the weights in {source} do not fit this network: {reason}")
    model.load_state_dict(weights, strict=True)


def load_model(path: str | os.PathLike[str], device: str = "cpu"):
    """(model in eval mode, its TrainConfig, the file's metadata) from a checkpoint file."""
    from trainer.models import build_model

    weights, metadata = read_weights(path)
    config = config_of(metadata)
    model = build_model(config)
    load_weights(model, weights, path)
    return model.to(device).eval(), config, metadata

