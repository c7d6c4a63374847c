"""How much memory a job will need, judged from its config alone, and how much one job may have.

Standard library only: the service admits or refuses a job without importing torch. Runs in the server
process (``estimate_job_memory`` also in ``bench/memory_calibration.py``).

The estimate of a CPU job's peak resident memory is a sum of terms (bytes):

- ``baseline``: the worker process itself: Python, torch and the trainer imported, Adam's first step taken;
- ``dataset``: the training data as the trainer holds it (uint8 arrays), with what building it costs;
- ``parameters``: four float32 copies of every parameter (weights, gradients, Adam's two moments);
- ``activations``: one batch's step: what autograd keeps for backpropagation through time, T x B x (floats
  each layer's cell keeps per neuron and step, ``CELL_KEPT_FLOATS``, plus the conv maps and pooling
  indices), and the transient gradients of the widest layer during the backward pass; or the validation
  batch (max(B, 256) samples, no graph) when that is larger.

On a GPU the same parameters, activations and the data's uint8 arrays live in device memory, next to the
CUDA context (that variant is not calibrated yet: no GPU was at hand).
The constants are calibrated against measured peaks (``bench/memory_calibration.py``, docs/benchmarks.md;
``tests/service/test_memory_estimate.py`` keeps the estimate within 30% of them).

The budget: ``--job-memory-limit`` when given; else the machine's memory (the smaller of RAM and this
cgroup's limit), less what the server itself needs, shared by ``--max-concurrent`` jobs; for a GPU job,
the GPU's memory shared by the jobs that may run on it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from trainer import catalog
from trainer.config import FIELDS_BY_NAME, TrainConfig

MIB = 1 << 20
GIB = 1 << 30
FLOAT = 4  # bytes: every activation and parameter is float32

# Measured: a fresh worker's peak with the tiniest config and no data (torch 2.14 CUDA build, CPU job).
# A bare ``import torch`` peaks at 510 to 690 MiB on the same machine and code, day to day (what the
# process keeps resident of torch's mapped libraries varies with the kernel's memory state); Adam's
# first step and one validation batch add ~150 and ~130 MiB. 660 MiB keeps every quick config within 30%
# of its peak in both states (docs/benchmarks.md, "Memory admission").
WORKER_BASELINE_BYTES = 660 * MIB
# By the dataset's kind (trainer.catalog.DATASETS): building the synthetic set (7,000 images) peaks at
# ~170 MiB of float temporaries; loading MNIST's 70,000 uint8 images (55 MB) from gzip measured ~15 MiB
# less (Fashion-MNIST and KMNIST have the same sizes); N-MNIST holds 4 bytes per event, about 1.1 GB for
# the full set (science-datasets' bench/nmnist_loading.py; not measured here).
DATASET_BYTES = {"generated": 170 * MIB, "idx": 155 * MIB, "events": 1200 * MIB}
CUDA_CONTEXT_BYTES = 600 * MIB  # device memory a CUDA context and torch's kernels take before any tensor
# Floats autograd keeps per neuron and timestep for one layer's cell (counted with saved-tensor hooks):
# the fused LIF recurrence keeps h and the spikes; per-step cells keep their states, the pre-spike input
# and the stacked output. The second number is with learn_beta or learn_threshold on.
CELL_KEPT_FLOATS: dict[str, tuple[float, float]] = {
    "LIFCell": (2.0, 2.0), "IFCell": (2.0, 2.0), "LapicqueCell": (2.0, 3.0),
    "ALIFCell": (3.0, 4.0), "ExpIFCell": (4.0, 7.0), "AdExCell": (4.0, 7.0), "AlphaCell": (4.0, 6.0),
    "SecondOrderLIFCell": (2.0, 4.0), "SynapticCell": (2.0, 4.0), "RecurrentLIFCell": (3.25, 4.25),
}
UNKNOWN_CELL_KEPT = (7.0, 8.0)  # a cell added to the catalog but not measured here: assume the costliest
# Transient floats per neuron and timestep of the widest layer during its backward pass (the incoming
# gradient, the surrogate's temporaries, the gradient it returns): fitted to the measured peaks.
BACKWARD_TRANSIENT_FLOATS = 3.5
# A per-step cell's backward (autograd over each step's graph) holds far more: every step's gradients until
# the stack and unbind backward gather them, and each step's temporaries; fitted the same way.
PER_STEP_BACKWARD_TRANSIENT_FLOATS = 18.0
FUSED_CELLS = frozenset({"LIFCell", "IFCell", "LapicqueCell"})  # one autograd node over T (trainer.fused)
# Validation runs without a graph: its widest layer holds h and the spikes at once (a per-step cell: its
# states, the steps' spikes and their stack, about what it keeps in training); rate input: noise and spikes.
EVAL_TRANSIENT_FLOATS = 2.0
# AlphaCell splits its input into [T, 2, B, ...] (both halves and their stack alive at once): measured.
EVAL_FLOATS_BY_CELL = {"AlphaCell": 6.0}
EVAL_MIN_BATCH = 256  # trainer.train.evaluate uses max(batch_size, 256)

CONV_CHANNELS, CONV_KERNEL, CONV_FC = (32, 64), 5, 128  # ConvSpikingNet (trainer.models)

# What the server keeps for itself when the budget is derived from the machine: its own torch import
# (for torch.multiprocessing), the SQLite caches, the streams' buffers.
SERVER_RESERVE_BYTES = 1536 * MIB
GPU_USABLE_FRACTION = 0.9  # of a GPU's memory: the rest for fragmentation in torch's caching allocator


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's expected peak memory on its device, by term (bytes)."""

    baseline: int
    dataset: int
    parameters: int
    activations: int

    @property
    def total(self) -> int:
        return self.baseline + self.dataset + self.parameters + self.activations

    def as_dict(self) -> dict[str, int]:
        return {"baseline": self.baseline, "dataset": self.dataset, "parameters": self.parameters,
                "activations": self.activations, "total": self.total}


def _dataset(config: TrainConfig) -> catalog.DatasetSpec:
    return catalog.DATASETS_BY_NAME[config.dataset]


def input_floats(config: TrainConfig) -> int:
    """Values in one sample's input at one timestep (C x H x W)."""
    return math.prod(_dataset(config).input_shape)


def _conv_sizes(config: TrainConfig) -> tuple[int, int, int, int]:
    """ConvSpikingNet's (conv1 neurons, conv2 neurons, pool1 outputs, pool2 outputs) per sample and step:
    5x5 convolutions without padding, each followed by a cell and a 2x2 max-pool."""
    _, height, width = _dataset(config).input_shape
    first = (height - CONV_KERNEL + 1, width - CONV_KERNEL + 1)
    second = (first[0] // 2 - CONV_KERNEL + 1, first[1] // 2 - CONV_KERNEL + 1)
    return (CONV_CHANNELS[0] * first[0] * first[1], CONV_CHANNELS[1] * second[0] * second[1],
            CONV_CHANNELS[0] * (first[0] // 2) * (first[1] // 2), CONV_CHANNELS[1] * (second[0] // 2) * (second[1] // 2))


def layer_neurons(config: TrainConfig) -> list[int]:
    """Neurons per spiking layer (per sample and timestep), input side first."""
    n_classes = _dataset(config).n_classes
    if config.network == "ConvSpikingNet":
        first, second, _, _ = _conv_sizes(config)
        return [first, second, CONV_FC, n_classes]
    return [*config.hidden, n_classes]


def parameter_count(config: TrainConfig) -> int:
    n_classes = _dataset(config).n_classes
    if config.network == "ConvSpikingNet":
        channels = _dataset(config).input_shape[0]
        kernel = CONV_KERNEL * CONV_KERNEL
        pooled = _conv_sizes(config)[3]
        count = (CONV_CHANNELS[0] * channels * kernel + CONV_CHANNELS[0]
                 + CONV_CHANNELS[1] * CONV_CHANNELS[0] * kernel + CONV_CHANNELS[1]
                 + pooled * CONV_FC + CONV_FC + CONV_FC * n_classes + n_classes)
        recurrent = CONV_FC ** 2 + n_classes ** 2 if config.cell_type == "RecurrentLIFCell" else 0
        return count + recurrent
    sizes = [input_floats(config), *config.hidden, n_classes]
    linear = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    recurrent = sum(n * n for n in sizes[1:]) if config.cell_type == "RecurrentLIFCell" else 0
    return linear + recurrent


def _over_time_input(config: TrainConfig) -> bool:
    """The input is [T, B, ...] (rate spikes, or event frames) rather than one image per sample."""
    return config.encoding == "rate" or _dataset(config).kind == "events"


def _cell_name(config: TrainConfig, conv_layer: bool) -> str:
    """ConvSpikingNet puts LIF cells after its convolutions when the config asks for recurrent ones."""
    return "LIFCell" if conv_layer and config.cell_type == "RecurrentLIFCell" else config.cell_type


def _cell_kept(config: TrainConfig, conv_layer: bool) -> float:
    frozen, learned = CELL_KEPT_FLOATS.get(_cell_name(config, conv_layer), UNKNOWN_CELL_KEPT)
    return learned if config.learn_beta or config.learn_threshold else frozen


def _eval_floats(config: TrainConfig, neurons: list[int], layer: int, conv: bool) -> float:
    """Floats per sample and step alive while validation runs one layer (no graph is kept)."""
    cell = _cell_name(config, conv and layer < 2)
    floats = EVAL_FLOATS_BY_CELL.get(cell, max(EVAL_TRANSIENT_FLOATS, CELL_KEPT_FLOATS.get(cell, UNKNOWN_CELL_KEPT)[0]))
    floats *= neurons[layer]
    if layer > 0 or _over_time_input(config):
        floats += neurons[layer]  # its input current, computed over all T (direct layer one: a view)
    if layer > 0:
        floats += neurons[layer - 1]  # the spikes of the layer before, alive while it runs
    return floats


def activation_bytes(config: TrainConfig) -> int:
    """The larger of one training step's and one validation batch's activations."""
    neurons = layer_neurons(config)
    conv = config.network == "ConvSpikingNet"
    kept = sum(_cell_kept(config, conv and i < 2) * n for i, n in enumerate(neurons))
    if conv:
        kept += 3 * sum(_conv_sizes(config)[2:])  # the pool outputs, with their int64 indices (two floats)
    rate_input = input_floats(config) if _over_time_input(config) else 0  # the input spikes, kept by layer one
    widest = max(range(len(neurons)), key=neurons.__getitem__)
    fused = _cell_name(config, conv and widest < 2) in FUSED_CELLS
    transient = BACKWARD_TRANSIENT_FLOATS if fused else PER_STEP_BACKWARD_TRANSIENT_FLOATS
    per_step = kept + rate_input + transient * neurons[widest]
    train = config.timesteps * config.batch_size * per_step
    eval_per_step = max(_eval_floats(config, neurons, i, conv) for i in range(len(neurons))) + 2 * rate_input
    evaluate = config.timesteps * max(config.batch_size, EVAL_MIN_BATCH) * eval_per_step
    return int(FLOAT * max(train, evaluate))


def estimate_job_memory(config: TrainConfig, device: str) -> MemoryEstimate:
    """The peak memory ``config`` will take on ``device`` ("cpu", or a GPU: device memory)."""
    on_gpu = device != "cpu"
    dataset = _dataset(config)
    held = (dataset.n_train + dataset.n_val) * input_floats(config)  # uint8 arrays: one byte a value
    return MemoryEstimate(
        baseline=CUDA_CONTEXT_BYTES if on_gpu else WORKER_BASELINE_BYTES,
        # on a GPU only the arrays (events: the codes) are on the device
        dataset=(DATASET_BYTES["events"] if dataset.kind == "events" else held) if on_gpu
        else DATASET_BYTES.get(dataset.kind, max(DATASET_BYTES.values())),
        parameters=4 * FLOAT * parameter_count(config),
        activations=activation_bytes(config),
    )


def reducible_fields(config: TrainConfig) -> list[str]:
    """The config fields whose smaller (or other) values make this job need less memory."""
    fields = ["batch_size", "timesteps"]
    if config.network == "SpikingNet":
        fields.append("hidden")
    if config.encoding == "rate" and _dataset(config).kind != "events":
        fields.append("encoding")
    if _cell_kept(config, False) > CELL_KEPT_FLOATS["LIFCell"][0]:
        fields.append("cell_type")
    if config.learn_beta or config.learn_threshold:
        fields += [name for name in ("learn_beta", "learn_threshold") if getattr(config, name)]
    if config.network == "ConvSpikingNet":
        fields.append("network")
    return fields


def largest_fitting(config: TrainConfig, device: str, field: str, budget: int) -> int | None:
    """The largest value of an integer field (batch_size, timesteps) that fits ``budget``; None if none."""
    low, high = int(FIELDS_BY_NAME[field].min), getattr(config, field)
    fits = lambda value: estimate_job_memory(dataclasses.replace(config, **{field: value}), device).total <= budget
    if not fits(low):
        return None
    while low < high:  # the estimate grows with the value: bisect for the last that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


# -- budgets


def machine_memory_bytes() -> int:
    """The memory this process's jobs may use: RAM, or this cgroup's limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
        break
    return total


def cpu_job_budget(job_memory_limit: int, max_concurrent: int) -> int:
    """What one job may use of host memory: the flag, or the machine's share per concurrent job."""
    if job_memory_limit > 0:
        return job_memory_limit
    return max(0, machine_memory_bytes() - SERVER_RESERVE_BYTES) // max_concurrent


def gpu_job_budget(job_memory_limit: int, max_concurrent: int, gpu_count: int) -> int:
    """What one job may use of a GPU: the flag, or the smallest GPU's memory shared by the jobs on it."""
    if job_memory_limit > 0:
        return job_memory_limit
    memories = gpu_memory_bytes()
    if not memories or gpu_count <= 0:
        return 0
    jobs_per_gpu = math.ceil(max_concurrent / gpu_count)
    return int(min(memories) * GPU_USABLE_FRACTION) // jobs_per_gpu


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def gpu_memory_bytes() -> list[int]:
    """Each installed GPU's memory, from NVML (the driver's library), without creating a CUDA context."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return []
    memories = []
    try:
        if nvml.nvmlInit_v2() != 0:
            return []
        try:
            count = ctypes.c_uint(0)
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return []
            for index in range(count.value):
                handle, info = ctypes.c_void_p(), _NvmlMemory()
                if (nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0
                        and nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info)) == 0):
                    memories.append(int(info.total))
        finally:
            nvml.nvmlShutdown()
    except AttributeError:  # a driver library without these symbols
        return []
    return memories


# -- what a running worker holds


def resident_bytes(pid: int) -> tuple[int, int] | None:
    """(resident now, peak resident so far) of a process, from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024  # kB
    if "VmRSS" not in values:  # a zombie: exited, not yet reaped
        return None
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


def gib(value: float, *, round_up: bool = False) -> str:
    """Bytes as GiB with two decimals, as messages show them; ``round_up`` for an amount over a limit, so
    it never reads as equal to it ("1.51 GiB of 1.50 GiB", not "1.50 GiB of 1.50 GiB")."""
    hundredths = value / GIB * 100
    return f"{(math.ceil(hundredths) if round_up else round(hundredths)) / 100:.2f} GiB"

