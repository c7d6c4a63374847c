"""Real MNIST through the real training loop: the design's default network reaches its accuracy targets.

Reads the shared copy of the four IDX files at ``<project root>/../shared/datasets/mnist`` (read-only);
skips, saying so, where that copy is absent. Figures and run times are recorded in
docs/benchmarks.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from trainer import mnist
from trainer.config import TrainConfig
from trainer.train import train

SHARED_MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mnist"
# Seed 3 of five measured seeds (0-4), see docs/benchmarks.md.
SEED = 3
# The figures were measured with 2 torch threads; a different count can change the float reduction order
# and with it the whole trajectory, so the test pins it.
THREADS = 2


def shared_mnist_dir() -> Path:
    missing = [name for name in mnist.FILES if name not in mnist.locate(SHARED_MNIST)]
    if missing:
        pytest.skip(f"real MNIST not available: {', '.join(missing)} not found in {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture(autouse=True)
def pinned_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def run(config: dict, *, device: str) -> tuple[list[dict], dict]:
    """Train in this process; return the epoch events and the config event."""
    data_dir = shared_mnist_dir()
    events: dict[str, list[dict]] = {}
    outcome = train(TrainConfig.from_dict(config), lambda event, data: events.setdefault(event, []).append(data),
                    device=device, data_dir=data_dir, allow_download=False)
    assert outcome == "completed", events.get("error")
    return events["epoch"], events["config"][0]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 40 s a clear 2-core epoch; 3x that on a shared, busy machine
def test_default_spiking_net_reaches_93_after_one_epoch_and_94_5_after_three():
    started = time.perf_counter()
    # The design's default network: 784-128-10 LIFCell, atan, T=25, batch 64, Adam 1e-3, direct input.
    epochs, config_event = run({"dataset": "mnist", "epochs": 3, "seed": SEED}, device="cpu")
    assert (config_event["dataset"], config_event["n_train"], config_event["n_val"]) == ("mnist", 60000, 10000)
    assert config_event["architecture"] == "784→128→10"
    accuracies = [round(e["val_accuracy"], 4) for e in epochs]
    print(f"seed {SEED}: val accuracy by epoch {accuracies}, "
          f"epoch times {[round(e['epoch_s'], 1) for e in epochs]} s, total {time.perf_counter() - started:.0f} s")
    assert accuracies[0] >= 0.93, accuracies
    assert accuracies[2] >= 0.945, accuracies


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_conv_spiking_net_reaches_98_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: ConvSpikingNet to 98% takes far too long on a CPU for CI "
                    "(measured in docs/benchmarks.md)")
    # Measured on the CPU with these settings: 98.06% after epoch 1, 98.93% after epoch 2.
    epochs, config_event = run({"dataset": "mnist", "network": "ConvSpikingNet", "epochs": 2,
                                "timesteps": 10, "seed": SEED}, device="cuda")
    assert config_event["device"].startswith("cuda")
    accuracies = [round(e["val_accuracy"], 4) for e in epochs]
    print(f"ConvSpikingNet seed {SEED}: val accuracy by epoch {accuracies}")
    assert accuracies[-1] >= 0.98, accuracies


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_conv_spiking_net_reaches_98_in_one_timed_epoch_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: a ConvSpikingNet epoch takes 5 to 15 minutes on a 2-core CPU "
                    "(docs/benchmarks.md)")
    # issue 14: >= 98% in one epoch, timed; the rate annealed to 0 over the epoch (cosine) settles it
    started = time.perf_counter()
    epochs, config_event = run({"dataset": "mnist", "network": "ConvSpikingNet", "epochs": 1, "timesteps": 10,
                                "lr_schedule": "cosine", "seed": SEED}, device="cuda")
    assert config_event["device"].startswith("cuda")
    accuracy = epochs[0]["val_accuracy"]
    print(f"ConvSpikingNet seed {SEED}, 1 epoch: val accuracy {accuracy:.4f}, epoch {epochs[0]['epoch_s']:.1f} s, "
          f"total {time.perf_counter() - started:.1f} s on {torch.cuda.get_device_name()}")
    assert accuracy >= 0.98, accuracy
