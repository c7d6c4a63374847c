"""Networks built from a TrainConfig: one optimiser step for every (network, cell, surrogate), shapes,
layer keys, reports and the two input encodings."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import catalog
from trainer.cells import LIFCell, RecurrentLIFCell
from trainer.config import TrainConfig
from trainer.models import ConvSpikingNet, SpikingNet, build_model

NETWORKS = [n.name for n in catalog.NETWORKS]
CELLS = [c.name for c in catalog.CELLS]
SURROGATES = [s.name for s in catalog.SURROGATES]
B, T = 4, 5


def config(**fields) -> TrainConfig:
    return TrainConfig.from_dict({"timesteps": T, "hidden": [16], "seed": 0, **fields})


def all_learnable(cell_type: str) -> dict[str, bool]:
    return {f"learn_{what}": True for what in catalog.CELLS_BY_NAME[cell_type].learnable}


def drive_every_layer(model: nn.Module, cell_type: str) -> None:
    """Scale the stateless layers' weights so that every cell spikes on a small random batch at T=5.

    At PyTorch's default init, activity fades with depth within 5 steps (and Lapicque's input gain
    R dt/tau, 0.05 before issue 11, silenced it at once); a silent layer's outgoing weights get no gradient at all.
    """
    defaults = catalog.cell_param_defaults(cell_type)
    input_gain = defaults["R"] * defaults["dt"] / defaults["tau"] if cell_type == "LapicqueCell" else 1.0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(3.0 / input_gain)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("network, cell_type, surrogate", list(itertools.product(NETWORKS, CELLS, SURROGATES)))
def test_one_training_step_changes_every_parameter(network, cell_type, surrogate):
    torch.manual_seed(0)
    model = build_model(config(network=network, cell_type=cell_type, surrogate=surrogate,
                               **all_learnable(cell_type)))
    drive_every_layer(model, cell_type)
    images = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    out = model(images)
    assert out.shape == (T, B, 10)
    loss = F.cross_entropy(out.sum(0), torch.arange(B))
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    rates = {key: cell.last_spike_rate.item() for key, cell in model.spiking_layers().items()}
    assert all(0 < r < 1 for r in rates.values()), f"every layer should spike, some not all the time: {rates}"
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("network", NETWORKS)
def test_direct_input_is_broadcast_and_matches_the_same_current_every_step(network):
    torch.manual_seed(0)
    model = build_model(config(network=network, timesteps=7))
    drive_every_layer(model, "LIFCell")
    images = torch.rand(3, 1, 28, 28)
    direct = model(images)
    repeated = model(images.expand(7, 3, 1, 28, 28))  # the rate path with a constant "spike" input
    assert direct.shape == (7, 3, 10) and direct.sum() > 0
    torch.testing.assert_close(direct, repeated)


@pytest.mark.parametrize("network", NETWORKS)
def test_rate_input_takes_its_timesteps_from_the_input(network):
    model = build_model(config(network=network))
    spikes_in = (torch.rand(9, 2, 1, 28, 28) < 0.3).float()
    assert model(spikes_in).shape == (9, 2, 10)


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 1, 28, 27), (5, 2, 1, 14, 14), (2, 784)])
def test_wrong_input_shape_is_rejected(shape):
    with pytest.raises(ValueError, match="expected input"):
        build_model(config())(torch.zeros(shape))


def test_spiking_net_keys_reports_and_counts():
    model = build_model(config(hidden=[16, 8], learn_beta=True, learn_threshold=True))
    assert isinstance(model, SpikingNet)
    assert model.architecture() == "784→16→8→10"
    assert list(model.spiking_layers()) == ["lifs.0", "lifs.1", "lifs.2"]
    assert all(isinstance(c, LIFCell) for c in model.spiking_layers().values())
    assert model.param_snapshot() == {f"lifs.{i}.{name}": value for i in range(3)
                                      for name, value in (("beta", 0.9), ("threshold", 1.0))}
    weights = (784 * 16 + 16) + (16 * 8 + 8) + (8 * 10 + 10)
    assert model.model_info() == {
        "total_params": weights + 3 * 2, "trainable_params": weights + 3 * 2, "spiking_cells": 3,
        "cell_types": ["LIFCell"], "learnable_dynamics": ["beta", "threshold"],
    }
    model.fcs[0].requires_grad_(False)
    assert model.model_info()["trainable_params"] == weights + 6 - (784 * 16 + 16)


def test_fixed_dynamics_are_reported_but_not_parameters():
    model = build_model(config(cell_type="IFCell"))
    assert model.param_snapshot() == {"lifs.0.threshold": 1.0, "lifs.1.threshold": 1.0}
    assert not [name for name, _ in model.named_parameters() if "threshold" in name or "beta" in name]
    assert model.model_info()["learnable_dynamics"] == []


def test_conv_net_keys_reports_and_counts():
    model = build_model(config(network="ConvSpikingNet", learn_threshold=True))
    assert isinstance(model, ConvSpikingNet)
    assert model.architecture() == "1x28x28→c32→c64→128→10"
    assert list(model.spiking_layers()) == ["lif1", "lif2", "lif3", "lif4"]
    assert list(model.param_snapshot()) == [f"lif{i}.{n}" for i in range(1, 5) for n in ("beta", "threshold")]
    weights = (32 * 25 + 32) + (64 * 32 * 25 + 64) + (64 * 16 * 128 + 128) + (128 * 10 + 10)
    info = model.model_info()
    assert (info["total_params"], info["spiking_cells"], info["cell_types"]) == (weights + 4, 4, ["LIFCell"])
    assert info["learnable_dynamics"] == ["threshold"]


def test_conv_net_with_recurrent_cells_uses_lif_after_the_convolutions():
    model = build_model(config(network="ConvSpikingNet", cell_type="RecurrentLIFCell"))
    layers = model.spiking_layers()
    assert [type(c) for c in layers.values()] == [LIFCell, LIFCell, RecurrentLIFCell, RecurrentLIFCell]
    assert model.model_info()["cell_types"] == ["LIFCell", "RecurrentLIFCell"]
    assert model.model_info()["total_params"] == 184586 + 128 * 128 + 10 * 10


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "ste", "triangular"])
def test_build_model_uses_the_configured_surrogate_and_cell(surrogate):
    model = build_model(config(cell_type="SynapticCell", surrogate=surrogate))
    for cell in model.spiking_layers().values():
        assert type(cell).__name__ == "SynapticCell"
        assert cell.spike_fn.name == catalog.canonical_surrogate(surrogate)
