"""Peak resident memory of one training step against the service's admission estimate.

    .venv/bin/python bench/memory_calibration.py            # the calibration table (docs/benchmarks.md)
    .venv/bin/python bench/memory_calibration.py --quick    # the five small configs the test uses

Each config runs in a fresh Python process through ``trainer.train.train``, exactly as a job does,
except that every batch iterator yields only its first batch: one optimiser step, then one validation
batch (of max(batch_size, 256), as a real epoch's validation). The peak is the child's own high-water
mark of resident memory (``VmHWM`` in /proc/self/status, read as its last act), the mark the server's
watcher reads while a job runs. Not ``ru_maxrss`` from ``os.wait4``: Linux carries the parent's resident
size at fork into the child's ``ru_maxrss`` across exec, so a child of a 1.4 GiB pytest process reports
at least 1.4 GiB whatever it ran (CI failed on exactly that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.memory import GIB, estimate_job_memory  # noqa: E402  (standard library only)
from trainer.config import TrainConfig  # noqa: E402

# One step and one validation batch of a config, in the child process.
_CHILD = """
import itertools, json, os, sys
threads = int(sys.argv[2])
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
import torch
torch.set_num_threads(threads)
from trainer import data, train
from trainer.config import TrainConfig
whole = data.iterate_batches
data.iterate_batches = lambda *args, **kwargs: itertools.islice(whole(*args, **kwargs), 1)
events = []
train.train(TrainConfig.from_dict(json.loads(sys.argv[1])), lambda name, payload: events.append(name),
            device="cpu", allow_download=False)
assert events[-1] == "completed", events
"""
# Appended to every child: VmHWM belongs to the child's address space, which exec made fresh, so the
# parent's size is not in it.
_REPORT_PEAK = """
status = open("/proc/self/status").read()
print("VmHWM", int(status.split("VmHWM:")[1].split()[0]) * 1024)
"""

# Small enough for CI (seconds each on 2 cores), varied enough to exercise every term of the estimate:
# fused and per-step cells, direct and rate encoding, both networks, wide and deep layers.
QUICK_CONFIGS: tuple[dict, ...] = (
    {"hidden": [128], "batch_size": 64, "timesteps": 25},
    {"hidden": [2048], "batch_size": 64, "timesteps": 50},
    {"hidden": [512, 512], "batch_size": 64, "timesteps": 25, "cell_type": "ALIFCell", "encoding": "rate"},
    {"network": "ConvSpikingNet", "batch_size": 16, "timesteps": 5},
    {"hidden": [1024], "batch_size": 64, "timesteps": 25, "cell_type": "AlphaCell"},
)
# The table in docs/benchmarks.md: larger steps (about half an hour on a loaded 2-core machine).
FULL_CONFIGS: tuple[dict, ...] = (
    {"hidden": [128], "batch_size": 64, "timesteps": 25},
    {"hidden": [2048], "batch_size": 128, "timesteps": 100},
    {"hidden": [512, 512], "batch_size": 64, "timesteps": 50, "cell_type": "ALIFCell", "encoding": "rate"},
    {"network": "ConvSpikingNet", "batch_size": 16, "timesteps": 10},
    {"hidden": [1024], "batch_size": 64, "timesteps": 50, "cell_type": "AlphaCell"},
    {"hidden": [256], "batch_size": 32, "timesteps": 25, "cell_type": "RecurrentLIFCell"},
    {"hidden": [4096], "batch_size": 256, "timesteps": 100},
    {"hidden": [2048, 2048], "batch_size": 64, "timesteps": 50, "cell_type": "SynapticCell"},
    {"hidden": [1024], "batch_size": 128, "timesteps": 100, "cell_type": "AdExCell", "encoding": "rate"},
    {"network": "ConvSpikingNet", "batch_size": 32, "timesteps": 25, "encoding": "rate"},
    {"network": "ConvSpikingNet", "batch_size": 16, "timesteps": 25, "cell_type": "AlphaCell"},
)


def run_measured(code: str, *args: str) -> tuple[int, float]:
    """Run ``python -c code args...`` in a fresh process; its peak resident bytes and CPU seconds."""
    process = subprocess.Popen([sys.executable, "-c", code + _REPORT_PEAK, *args],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace")  # one pipe: two could fill and deadlock
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)  # for the CPU time (its ru_maxrss: see the docstring)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"measured child {args} failed:\n{output}")
    return int(output.rsplit("VmHWM", 1)[1]), usage.ru_utime + usage.ru_stime


def measure_peak_rss(config: dict, threads: int = 1) -> tuple[int, float]:
    """Peak resident bytes, and CPU seconds, of a fresh process that runs one step and one validation
    batch of ``config``."""
    return run_measured(_CHILD, json.dumps({"seed": 1, **config}), str(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the configs the test runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    args = parser.parse_args()
    print("| config | estimate | measured peak | estimate / measured | CPU s |")
    print("| --- | --- | --- | --- | --- |")
    for config in QUICK_CONFIGS if args.quick else FULL_CONFIGS:
        estimate = estimate_job_memory(TrainConfig.from_dict({"seed": 1, **config}), "cpu").total
        measured, cpu_s = measure_peak_rss(config, args.threads)
        shown = ", ".join(f"{k} {v}" for k, v in config.items())
        print(f"| {shown} | {estimate / GIB:.2f} GiB | {measured / GIB:.2f} GiB | {estimate / measured:.2f} "
              f"| {cpu_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
