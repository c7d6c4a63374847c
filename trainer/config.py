"""TrainConfig: the one validated job config, from the HTTP body (or CLI flags) to the worker unchanged.

Standard library only, so the service validates requests without importing torch. ``FIELDS`` is the
single table of defaults and bounds; the API's config schema, the CLI flags and the web form are
generated from it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from trainer import catalog

SEED_MAX = 2**32 - 1  # numpy's seed range; torch accepts it too
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step", "onecycle")
COMPILE_MODES = ("auto", "on", "off")  # trainer.compiled: the training step through torch.compile
_CUDA_DEVICE = re.compile(r"^cuda:(\d{1,2})$")


class ConfigError(ValueError):
    """A config with one or more bad fields; ``fields`` maps each field name to its reason."""

    def __init__(self, fields: dict[str, str]):
        self.fields = dict(fields)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.fields.items()))


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # "int", "float", "bool", "str", "int_list", "seed"
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    aliases: dict[str, str] | None = None  # alias -> canonical value (surrogates)
    min_len: int | None = None
    max_len: int | None = None

    def as_dict(self) -> dict:
        out = {"name": self.name, "type": self.type, "default": self.default, "help": self.help}
        for key in ("min", "max", "min_len", "max_len"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.aliases:
            out["aliases"] = dict(self.aliases)
        return out


FIELDS: tuple[Field, ...] = (
    Field("dataset", "str", "synthetic", "training data: "
          + "; ".join(f"{d.name} {'x'.join(map(str, d.input_shape))}" for d in catalog.DATASETS),
          choices=tuple(d.name for d in catalog.DATASETS)),
    Field("network", "str", "SpikingNet", "network architecture",
          choices=tuple(n.name for n in catalog.NETWORKS)),
    Field("cell_type", "str", "LIFCell", "spiking neuron cell after each layer",
          choices=tuple(c.name for c in catalog.CELLS)),
    Field("surrogate", "str", "atan_surrogate", "surrogate gradient of the spike",
          choices=tuple(s.name for s in catalog.SURROGATES),
          aliases={a: s.name for s in catalog.SURROGATES for a in s.aliases}),
    Field("epochs", "int", 10, "passes over the training set", min=1, max=100),
    Field("batch_size", "int", 64, "samples per optimiser step", min=8, max=512),
    Field("lr", "float", 0.001, "learning rate (the peak, where a schedule changes it)", min=0.0001, max=0.1),
    Field("optimizer", "str", "adam", "adam, adamw (decoupled weight decay) or sgd (momentum 0.9)",
          choices=OPTIMIZERS),
    Field("weight_decay", "float", 0.0, "weight decay (adamw: decoupled; adam, sgd: L2 added to the "
          "gradient)", min=0, max=0.5),
    Field("lr_schedule", "str", "constant", "learning rate per step after the warmup: constant, cosine "
          "(to 0 at the end), step (x0.1 at 1/2 and 3/4 of training) or onecycle (up from lr/25 over "
          "the warmup, or 30% of steps without one, then cosine down to lr/25e4)", choices=LR_SCHEDULES),
    Field("warmup_epochs", "int", 0, "epochs over which the rate rises linearly to lr (onecycle: from "
          "lr/25); fewer than epochs", min=0, max=20),
    Field("grad_clip", "float", 0.0, "largest global gradient norm; 0 turns clipping off", min=0, max=100),
    Field("timesteps", "int", 25, "simulation steps per sample", min=5, max=100),
    Field("hidden", "int_list", [128], "hidden layer sizes (SpikingNet)", min=1, max=4096,
          min_len=1, max_len=4),
    Field("learn_beta", "bool", False, "train each layer's membrane decay"),
    Field("learn_threshold", "bool", False, "train each layer's firing threshold"),
    Field("encoding", "str", "direct", "input encoding: the image as a constant current every "
          "timestep (direct), Bernoulli spikes with pixel probability (rate) or one spike per pixel, "
          "brighter pixels earlier (latency)",
          choices=("direct", "rate", "latency")),
    Field("seed", "seed", None, "random seed; empty picks one and reports it", min=0, max=SEED_MAX),
    Field("device", "str", "auto", "auto, cpu, cuda or cuda:N"),
    Field("compile", "str", "auto", "run the training step through torch.compile: on, off, or auto "
          "(CPU jobs: compile only when the job's remaining steps are estimated to win back the compile "
          "time; see docs/benchmarks.md)", choices=COMPILE_MODES),
    Field("mnist_fallback", "str", "none", "what to do when the files of mnist, fashion_mnist or kmnist "
          "are missing: fail (none) or train on synthetic data, saying so", choices=("none", "synthetic")),
)
FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_reason(f: Field, what: str = "") -> str:
    return f"must be {what}between {_fmt(f.min)} and {_fmt(f.max)} inclusive"


def _fmt(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def _check(f: Field, value: Any) -> tuple[Any, str | None]:
    """Return (normalised value, None) or (None, reason)."""
    if f.type == "bool":
        if not isinstance(value, bool):
            return None, f"must be a boolean (true or false), got {_type_name(value)}"
        return value, None
    if f.type in ("int", "seed"):
        if f.type == "seed" and value is None:
            return None, None
        if isinstance(value, float) and math.isfinite(value):  # 2.5: show it, "got number" would puzzle
            return None, f"must be an integer, got {value!r}"
        if not _is_int(value):
            return None, f"must be an integer, got {_type_name(value)}"
        if not f.min <= value <= f.max:
            return None, _range_reason(f, "an integer ")
        return value, None
    if f.type == "float":
        if not (_is_int(value) or isinstance(value, float)):
            return None, f"must be a number, got {_type_name(value)}"
        value = float(value)
        if not math.isfinite(value) or not f.min <= value <= f.max:
            return None, _range_reason(f)
        return value, None
    if f.type == "int_list":
        if not isinstance(value, list):
            return None, f"must be a list of integers, got {_type_name(value)}"
        if not f.min_len <= len(value) <= f.max_len:
            return None, f"must have {f.min_len} to {f.max_len} layers, got {len(value)}"
        for i, size in enumerate(value):
            if not _is_int(size) or not f.min <= size <= f.max:
                return None, f"layer {i}: each size must be an integer between {_fmt(f.min)} and {_fmt(f.max)}"
        return list(value), None
    # str
    if not isinstance(value, str):
        return None, f"must be a string, got {_type_name(value)}"
    if f.aliases and value in f.aliases:
        value = f.aliases[value]
    if f.name == "device":
        m = _CUDA_DEVICE.match(value)
        if value not in ("auto", "cpu", "cuda") and not m:
            return None, "must be one of auto, cpu, cuda, cuda:N"
        return value, None
    if f.choices and value not in f.choices:
        allowed = list(f.choices) + (sorted(f.aliases) if f.aliases else [])
        return None, f"unknown value {value!r}; allowed: {', '.join(allowed)}"
    return value, None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "synthetic"
    network: str = "SpikingNet"
    cell_type: str = "LIFCell"
    surrogate: str = "atan_surrogate"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.001
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    grad_clip: float = 0.0
    timesteps: int = 25
    hidden: tuple[int, ...] = (128,)
    learn_beta: bool = False
    learn_threshold: bool = False
    encoding: str = "direct"
    seed: int | None = None
    device: str = "auto"
    compile: str = "auto"
    mnist_fallback: str = "none"

    @classmethod
    def from_dict(cls, data: Any) -> "TrainConfig":
        """Validate a JSON-like mapping; raise ConfigError naming every bad field at once."""
        if not isinstance(data, dict):
            raise ConfigError({"body": f"must be a JSON object, got {_type_name(data)}"})
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        for key in data:
            if key not in FIELDS_BY_NAME:
                errors[str(key)] = f"unknown field; allowed: {', '.join(FIELDS_BY_NAME)}"
        for f in FIELDS:
            if f.name not in data:
                continue
            value, reason = _check(f, data[f.name])
            if reason:
                errors[f.name] = reason
            else:
                values[f.name] = tuple(value) if f.type == "int_list" else value
        if not errors:
            errors.update(_cross_field_errors({**_defaults(), **values}))
        if errors:
            raise ConfigError(errors)
        return cls(**values)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    def with_seed(self) -> "TrainConfig":
        """This config with a concrete seed (a random one when none was given)."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(SEED_MAX + 1))


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in FIELDS}


def _cross_field_errors(values: dict[str, Any]) -> dict[str, str]:
    """Rules that involve more than one field: learn flags that mean nothing for the chosen cell, an
    encoding or fallback that means nothing for the chosen dataset, a warmup that would not end before
    training does."""
    errors = {}
    if values["warmup_epochs"] and values["warmup_epochs"] >= values["epochs"]:
        errors["warmup_epochs"] = (f"must be fewer than epochs ({values['epochs']}), got "
                                   f"{values['warmup_epochs']}")
    dataset = catalog.DATASETS_BY_NAME[values["dataset"]]
    if dataset.kind == "events" and values["encoding"] != "direct":
        errors["encoding"] = (f"{dataset.name} is recorded as events, binned into timesteps frames that are "
                              f"the input as they are; encoding must be direct")
    if values["mnist_fallback"] != "none" and dataset.input_shape != catalog.DATASETS_BY_NAME["synthetic"].input_shape:
        errors["mnist_fallback"] = (f"synthetic data cannot stand in for {dataset.name} (input "
                                    f"{'x'.join(map(str, dataset.input_shape))}); must be none")
    learnable = catalog.CELLS_BY_NAME[values["cell_type"]].learnable
    for flag, what in (("learn_beta", "beta"), ("learn_threshold", "threshold")):
        if values[flag] and what not in learnable:
            errors[flag] = (f"{values['cell_type']} has no learnable {what}; "
                            f"cells with one: {', '.join(c.name for c in catalog.CELLS if what in c.learnable)}")
    return errors


def schema() -> dict:
    """The config schema the API serves and the web form and CLI are built from; ``datasets`` gives each
    dataset choice's input shape, class count and sizes (from ``trainer.catalog``)."""
    return {"fields": [f.as_dict() for f in FIELDS], "datasets": [d.as_dict() for d in catalog.DATASETS]}
