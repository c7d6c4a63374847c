"""Cold and warm compile time of the training step, each in a fresh process, as a server's jobs pay it.

Runs the default network (784→128→10 LIF, T=25, batch 64, synthetic data) for one epoch with
``compile on`` through ``trainer.train.train``, twice, each in a new Python process sharing one new
data directory: the first compiles with an empty ``<data_dir>/compile-cache`` (cold), the second finds
the first one's kernels there (warm). Reports each job's ``train_step.compile_s`` (the first compiled
call, compile included), its epoch's training samples/s, the CPU seconds of the whole job, and the
record ``compile=auto`` reads.

    .venv/bin/python bench/compile_check.py [--threads 2] [--jobs 2] [--config '{"hidden": [256]}']
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

JOB = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from trainer.config import TrainConfig
from trainer.train import train
out = {}
def emit(event, data):
    if event == "batch":
        out["samples_per_s"] = data["samples_per_s"]
    if event == "epoch":
        out["train_step"] = data["train_step"]
train(TrainConfig.from_dict(json.loads(sys.argv[1])), emit, data_dir=sys.argv[2])
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="jobs in sequence: the first cold, the rest warm")
    parser.add_argument("--config", default="{}", help="TrainConfig fields over the defaults, as JSON")
    args = parser.parse_args()
    config = {"dataset": "synthetic", "epochs": 1, "seed": 0, "device": "cpu", **json.loads(args.config),
              "compile": "on"}
    repo = Path(__file__).resolve().parents[1]
    data_dir = tempfile.mkdtemp(prefix="compile-check-")
    for index in range(args.jobs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([sys.executable, "-c", JOB, json.dumps(config), data_dir, str(args.threads)],
                              cwd=repo, capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of the whole job (import, compile with its C++ compiler runs, one epoch): on a
        # shared machine the wall-clock compile time says as much about the neighbours as about the compile
        cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"job {index + 1} ({'cold' if index == 0 else 'warm'} cache): compile "
              f"{result['train_step']['compile_s']:.1f} s, epoch {result['samples_per_s']:,.0f} samples/s "
              f"(compile included), job CPU time {cpu_s:.1f} s", flush=True)
    records = json.loads((Path(data_dir) / "compile-cache" / "compile-times.json").read_text())
    print("record:", json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
