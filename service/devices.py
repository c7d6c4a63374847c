"""Which device each job gets, decided in the server process without initialising CUDA.

Counting GPUs: ``torch.cuda.device_count()`` may create a CUDA driver context in the caller (unless
PyTorch's NVML check is enabled), and a server that holds one wastes GPU memory and breaks forked
helpers. So the server asks NVML (``libnvidia-ml.so.1``, shipped with the driver) through ctypes, which
reads the driver's device list without a CUDA context, and honours ``CUDA_VISIBLE_DEVICES`` the way
CUDA does (entries up to the first invalid one; empty or ``-1`` hides every GPU). No driver library
means no usable GPU. Workers inherit the same environment, so index N here is ``cuda:N`` there.

Placement: ``auto`` takes the GPU with the fewest of this server's jobs (lowest index on a tie), or the
CPU when there is no GPU; ``cuda`` the same among GPUs only; ``cuda:N`` exactly that GPU.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections import Counter

from service.errors import InvalidConfig

_VISIBLE_ENTRY = re.compile(r"^(\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$")


def visible_gpu_count() -> int:
    """GPUs a worker of this server can use; never initialises CUDA in this process."""
    return count_visible(_nvml_device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def count_visible(installed: int, cuda_visible_devices: str | None) -> int:
    """How many of ``installed`` GPUs a process sees under this ``CUDA_VISIBLE_DEVICES``."""
    if installed == 0 or cuda_visible_devices is None:
        return installed
    entries = []
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        if not _VISIBLE_ENTRY.match(entry) or (entry.isdigit() and int(entry) >= installed):
            break  # CUDA ignores this entry and everything after it (so "-1" hides all)
        entries.append(entry)
    return min(len(entries), installed)


def _nvml_device_count() -> int:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    count = ctypes.c_uint(0)
    try:
        if nvml.nvmlInit_v2() != 0:
            return 0
        try:
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return 0
        finally:
            nvml.nvmlShutdown()
    except AttributeError:  # a driver library without these symbols
        return 0
    return int(count.value)


class DevicePool:
    """Assigns devices to starting jobs and counts the jobs on each; event-loop thread only."""

    def __init__(self, gpu_count: int):
        self.gpu_count = gpu_count
        self._load: Counter[str] = Counter()

    def check(self, requested: str) -> None:
        """Raise InvalidConfig now, at submission, for a device this server can never provide."""
        if requested in ("auto", "cpu"):
            return
        if self.gpu_count == 0:
            raise InvalidConfig({"device": f"{requested} requested but this server has no CUDA GPU; "
                                           "use auto or cpu"})
        index = _cuda_index(requested)
        if index is not None and index >= self.gpu_count:
            raise InvalidConfig({"device": f"{requested} does not exist; this server has "
                                           f"{self.gpu_count} GPU(s): cuda:0 to cuda:{self.gpu_count - 1}"})

    def acquire(self, requested: str) -> str:
        self.check(requested)
        if requested == "cpu" or (requested == "auto" and self.gpu_count == 0):
            device = "cpu"
        elif (index := _cuda_index(requested)) is not None:
            device = f"cuda:{index}"
        else:  # auto or cuda, with GPUs: the least loaded one
            device = min((f"cuda:{i}" for i in range(self.gpu_count)), key=lambda d: self._load[d])
        self._load[device] += 1
        return device

    def release(self, device: str) -> None:
        self._load[device] -= 1
        if self._load[device] <= 0:
            del self._load[device]

    def load(self) -> dict[str, int]:
        return dict(self._load)


def _cuda_index(requested: str) -> int | None:
    if requested.startswith("cuda:"):
        return int(requested.split(":", 1)[1])
    return None
