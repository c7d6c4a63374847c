"""Every cell learns the synthetic task through the real training loop (``trainer.train.train``).

At its catalog defaults, each cell in a SpikingNet with 1 and with 3 hidden layers reaches 85%
validation accuracy within 3 epochs (issue 11); the run stops at the first epoch that gets there.

Sized for 2 CPU cores: one epoch of the 6000-sample synthetic set, small hidden layers, T = 10
(ConvSpikingNet: T = 5). Accuracies at these settings (seed 1): 0.76 to 0.95 for the cells, with the
synaptic-current cells (Alpha, SecondOrderLIF, Synaptic) lowest since their filters delay the output
within 10 steps; 0.93 for ConvSpikingNet with LIF.
"""

from __future__ import annotations

import pytest

from trainer import catalog
from trainer.config import TrainConfig
from trainer.train import train

pytestmark = pytest.mark.slow


def epoch_events(**fields) -> list[dict]:
    """Train on the synthetic set on the CPU; return the ``epoch`` events (the run must complete)."""
    config = TrainConfig.from_dict({"dataset": "synthetic", "epochs": 1, "batch_size": 64, "seed": 1,
                                    "device": "cpu", **fields})
    events: list[tuple[str, dict]] = []
    end = train(config, lambda name, data: events.append((name, data)), allow_download=False)
    assert end == "completed", events[-1]
    return [data for name, data in events if name == "epoch"]


def initial_snapshot(cell_type: str) -> dict[str, float]:
    defaults = catalog.cell_param_defaults(cell_type)
    if cell_type == "LapicqueCell":
        defaults["beta"] = 1 - defaults["dt"] / defaults["tau"]
    return defaults


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cell_type", [c.name for c in catalog.CELLS])
def test_every_cell_learns_with_its_dynamics_trained(cell_type):
    learnable = catalog.CELLS_BY_NAME[cell_type].learnable
    [epoch] = epoch_events(cell_type=cell_type, hidden=[32], timesteps=10, lr=0.005,
                           **{f"learn_{what}": True for what in learnable})
    assert epoch["val_accuracy"] >= 0.6
    assert set(epoch["layer_spike_rates"]) == {"lifs.0", "lifs.1"}
    assert all(0 < rate < 1 for rate in epoch["layer_spike_rates"].values())

    start = initial_snapshot(cell_type)
    assert set(epoch["param_snapshot"]) == {f"lifs.{i}.{what}" for i in (0, 1) for what in learnable}
    for key, value in epoch["param_snapshot"].items():
        what = key.rsplit(".", 1)[1]
        assert (0 < value < 1) if what == "beta" else value > 0, key
        assert abs(value - start[what]) > 1e-5, f"{key} did not move from {start[what]}"


@pytest.mark.timeout(420)
def test_conv_spiking_net_with_lif_reaches_90_percent_in_one_epoch():
    *_, epoch = epoch_events(network="ConvSpikingNet", cell_type="LIFCell", timesteps=5, lr=0.002, epochs=1)
    assert epoch["val_accuracy"] >= 0.9
    assert set(epoch["layer_spike_rates"]) == {"lif1", "lif2", "lif3", "lif4"}
    # fixed dynamics are reported unchanged
    assert epoch["param_snapshot"] == {f"lif{i}.{what}": value for i in range(1, 5)
                                       for what, value in (("beta", 0.9), ("threshold", 1.0))}


TARGET = 0.85


@pytest.mark.timeout(600)  # one to three epochs; seconds each on a quiet 2-core machine
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("cell_type", [c.name for c in catalog.CELLS])
def test_every_cell_reaches_85_percent_within_3_epochs_at_its_defaults(cell_type, depth):
    # The cell's own defaults and the config's (lr 1e-3, batch 64, direct input); hidden layers of 32
    # and T = 10 keep the 20 runs within a few minutes.
    config = TrainConfig.from_dict({"cell_type": cell_type, "hidden": [32] * depth, "timesteps": 10,
                                    "epochs": 3, "seed": 1, "device": "cpu"})
    accuracies: list[float] = []

    def record(name: str, data: dict) -> None:
        if name == "epoch":
            accuracies.append(data["val_accuracy"])
        assert name != "error", data

    train(config, record, should_stop=lambda: bool(accuracies) and accuracies[-1] >= TARGET,
          allow_download=False)
    print(f"{cell_type} x{depth}: val accuracy by epoch {[round(a, 3) for a in accuracies]}")
    assert max(accuracies) >= TARGET, accuracies
