"""The documented ConvSpikingNet recipe for >= 99.3% on MNIST (docs/benchmarks.md): its first steps are
on track. The full run (8 epochs) took 80 minutes on this 2-core CPU (docs/benchmarks.md) and is not part of CI.

Reads the shared MNIST copy like ``test_mnist_accuracy.py`` and skips, saying so, where it is absent.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch

from trainer import mnist, train as train_module
from trainer.config import TrainConfig

# The shared read-only copy beside the checkout; SNNMON_TEST_MNIST points elsewhere (a git worktree).
SHARED_MNIST = Path(os.environ.get("SNNMON_TEST_MNIST")
                    or Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist")

# The recipe, as written in docs/benchmarks.md ("ConvSpikingNet to 99.3%").
RECIPE = {"dataset": "mnist", "network": "ConvSpikingNet", "cell_type": "LIFCell", "surrogate": "atan",
          "timesteps": 10, "batch_size": 64, "epochs": 8, "optimizer": "adamw", "lr": 0.001,
          "weight_decay": 0.01, "lr_schedule": "cosine", "warmup_epochs": 0, "seed": 3}
STEPS = 30  # of the first epoch's 938
# Measured (docs/benchmarks.md): training accuracy over the first 30 steps 0.531 (loss 1.38), from 0.11
# at step 1; a run that is not learning stays near chance (0.1). The bar leaves room for another CPU.
ON_TRACK = 0.4


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 15 s on a quiet 2-core machine; 12 minutes at load average 15
def test_conv_recipe_first_steps_are_on_track(monkeypatch):
    missing = [name for name in mnist.FILES if name not in mnist.locate(SHARED_MNIST)]
    if missing:
        pytest.skip(f"real MNIST not available: {', '.join(missing)} not found in {SHARED_MNIST}")
    monkeypatch.setattr(train_module, "BATCH_EVENT_INTERVAL_S", 0.0)  # every step's lr and accuracy
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    batches: list[dict] = []
    started = time.perf_counter()
    try:
        outcome = train_module.train(
            TrainConfig.from_dict(RECIPE), lambda name, data: batches.append(data) if name == "batch" else None,
            should_stop=lambda: len(batches) >= STEPS, device="cpu", data_dir=SHARED_MNIST, allow_download=False)
    finally:
        torch.set_num_threads(previous_threads)
    assert outcome == "stopped" and len(batches) == STEPS
    total = RECIPE["epochs"] * batches[0]["n_batches"]
    for step, batch in enumerate(batches):  # cosine from 1e-3 over all 8 epochs, no warmup
        assert batch["lr"] == pytest.approx(0.0005 * (1 + math.cos(math.pi * step / total)), rel=1e-9)
    accuracy = batches[-1]["accuracy"]
    print(f"recipe: training accuracy over the first {STEPS} steps {accuracy:.4f}, "
          f"loss {batches[-1]['loss']:.4f}, {time.perf_counter() - started:.0f} s")
    assert accuracy >= ON_TRACK


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.timeout(3600)
def test_conv_recipe_reaches_99_3_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the recipe's 8 ConvSpikingNet epochs take over an hour on a CPU")
    missing = [name for name in mnist.FILES if name not in mnist.locate(SHARED_MNIST)]
    if missing:
        pytest.skip(f"real MNIST not available: {', '.join(missing)} not found in {SHARED_MNIST}")
    epochs: list[float] = []
    outcome = train_module.train(
        TrainConfig.from_dict(RECIPE),
        lambda name, data: epochs.append(data["val_accuracy"]) if name == "epoch" else None,
        device="cuda", data_dir=SHARED_MNIST, allow_download=False)
    print(f"recipe on {torch.cuda.get_device_name()}: val accuracy by epoch {[round(a, 4) for a in epochs]}")
    assert outcome == "completed" and epochs[-1] >= 0.993, epochs
