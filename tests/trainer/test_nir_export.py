"""NIR export: the graph read back equals the one written, weights are the trained tensors, and an
independent numpy simulation of the graph (tests/trainer/nir_reference.py, from NIR's definitions)
reproduces the trained network's output spikes under the reset convention the graph declares, and
differs under NIR's own reset-to-v_reset (the documented difference, pinned)."""

import json

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

import nir_reference  # tests/trainer, next to this file
from trainer import checkpoint, data, nir_export, train as train_module
from trainer.checkpoint import Checkpoints, TrainingState
from trainer.config import TrainConfig
from trainer.models import build_model

LIF_NET = {"epochs": 1, "hidden": [24], "timesteps": 6, "batch_size": 128, "seed": 31, "device": "cpu",
           "lr": 0.005}


def sample_inputs(config: TrainConfig, bundle, n=24) -> torch.Tensor:
    return data.encode(bundle.val_images[:n], "direct", config.timesteps, bundle.mean, bundle.std)


def exported(path, tmp_path) -> nir.NIRGraph:
    file = tmp_path / "net.nir"
    file.write_bytes(nir_export.export_checkpoint(path))
    return nir.read(file)


def check_graph(path, tmp_path, min_output_spikes):
    model, config, metadata = checkpoint.load_model(path)
    graph = exported(path, tmp_path)
    built = nir_export.to_nir(model, config, (float(metadata["input_mean"]), float(metadata["input_std"])))
    # the same graph: nodes, types, edges, parameters
    assert set(graph.nodes) == set(built.nodes)
    assert sorted(graph.edges) == sorted(built.edges)
    for name, node in built.nodes.items():
        assert type(graph.nodes[name]) is type(node), name
        for field in ("weight", "bias", "tau", "r", "v_threshold", "v_reset", "tau_syn", "tau_mem", "w_in"):
            if hasattr(node, field):
                np.testing.assert_array_equal(getattr(graph.nodes[name], field), getattr(node, field))
    # weights exactly the trained tensors
    tensors = load_file(path)
    for name, node in graph.nodes.items():
        if isinstance(node, (nir.Affine, nir.Conv2d)):
            np.testing.assert_array_equal(node.weight, tensors[f"{name}.weight"])
            np.testing.assert_array_equal(node.bias, tensors[f"{name}.bias"])
    assert json.loads(graph.metadata["config"]) == json.loads(metadata["config"])
    assert "reset by subtraction" in graph.metadata["reset"]
    neurons = [n for n in graph.nodes.values() if isinstance(n, (nir.LIF, nir.IF, nir.CubaLIF))]
    assert neurons and all(n.metadata["reset"] == "subtract" for n in neurons)

    bundle = data.load_data(config)
    inputs = sample_inputs(config, bundle)
    with torch.no_grad():
        trained = model(inputs).numpy()  # [T, B, 10]
    assert trained.sum() >= min_output_spikes
    declared = nir_reference.simulate(graph, inputs.numpy(), config.timesteps, reset="subtract")
    np.testing.assert_array_equal(declared, trained)
    nir_semantics = nir_reference.simulate(graph, inputs.numpy(), config.timesteps, reset="nir")
    assert (nir_semantics != trained).any(), "reset-to-zero no longer differs: update the docs"
    return graph


def test_lif_spiking_net_exports_and_simulates_like_the_trained_model(tmp_path):
    config = TrainConfig.from_dict(LIF_NET)
    assert train_module.train(config, lambda e, d: None, checkpoints=Checkpoints(tmp_path)) == "completed"
    graph = check_graph(tmp_path / "best.safetensors", tmp_path, min_output_spikes=100)
    assert [type(graph.nodes[n]).__name__ for n in nir_reference.chain_order(graph)] == [
        "Input", "Flatten", "Affine", "LIF", "Affine", "LIF", "Output"]
    beta = graph.nodes["lifs.0"].metadata["beta"]
    np.testing.assert_allclose(graph.nodes["lifs.0"].tau, 1 / (1 - beta))  # beta = 1 - dt/tau, dt = 1
    np.testing.assert_allclose(graph.nodes["lifs.0"].r, graph.nodes["lifs.0"].tau)  # r = tau/dt


def test_conv_spiking_net_exports_and_simulates_like_the_trained_model(tmp_path):
    # a few optimiser steps on one batch (a CPU epoch of the conv net would take a minute)
    config = TrainConfig.from_dict({**LIF_NET, "network": "ConvSpikingNet"})
    torch.manual_seed(config.seed)
    bundle = data.load_data(config)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)  # a large step: the outputs start spiking
    images = data.encode(bundle.train_images[:64], "direct", config.timesteps, bundle.mean, bundle.std)
    for _ in range(3):
        loss = F.cross_entropy(model(images).sum(0), bundle.train_labels[:64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = TrainingState(model, optimizer, {}, (bundle.mean, bundle.std))
    Checkpoints(tmp_path).save(config, state, 0, 3, {"val_accuracy": 0.0}, lambda e, d: None)
    graph = check_graph(tmp_path / "last.safetensors", tmp_path, min_output_spikes=20)
    assert [type(graph.nodes[n]).__name__ for n in nir_reference.chain_order(graph)] == [
        "Input", "Conv2d", "LIF", "SumPool2d", "Threshold", "Conv2d", "LIF", "SumPool2d", "Threshold",
        "Flatten", "Affine", "LIF", "Affine", "LIF", "Output"]


@pytest.mark.parametrize("cell, node, drive", [("IFCell", nir.IF, 4), ("LapicqueCell", nir.LIF, 60),
                                                ("SynapticCell", nir.CubaLIF, 4),
                                                ("SecondOrderLIFCell", nir.CubaLIF, 4)])
def test_other_expressible_cells_map_exactly(cell, node, drive):
    config = TrainConfig.from_dict({**LIF_NET, "cell_type": cell, "learn_threshold": True})
    torch.manual_seed(3)
    model = build_model(config).eval()
    with torch.no_grad():  # larger weights, so that an untrained network spikes in every layer
        for fc in model.fcs:  # (Lapicque's input gain is R dt/tau = 1/20)
            fc.weight.mul_(drive)
    bundle = data.synthetic_dataset(config.seed, 64, 32)
    inputs = sample_inputs(config, bundle)
    graph = nir_export.to_nir(model, config, (bundle.mean, bundle.std))
    assert isinstance(graph.nodes["lifs.0"], node)
    with torch.no_grad():
        trained = model(inputs).numpy()
    assert trained.sum() > 0
    np.testing.assert_array_equal(nir_reference.simulate(graph, inputs.numpy(), config.timesteps,
                                                         reset="subtract"), trained)


@pytest.mark.parametrize("cell, why", [("ALIFCell", "adaptive-threshold"), ("AdExCell", "exponential upswing"),
                                        ("ExpIFCell", "exponential"), ("AlphaCell", "rectified"),
                                        ("RecurrentLIFCell", "recurrent")])
def test_cells_nir_cannot_express_are_refused_with_the_reason(cell, why):
    config = TrainConfig.from_dict({**LIF_NET, "cell_type": cell})
    with pytest.raises(nir_export.NotExportable, match=why) as caught:
        nir_export.to_nir(build_model(config), config, (0.0, 1.0))
    assert caught.value.cell == cell


def test_an_event_dataset_conv_net_maps_exactly():
    """N-MNIST's 2x34x34 frames, one per timestep: other conv and pool sizes (30, 15, 11, 5)."""
    config = TrainConfig.from_dict({**LIF_NET, "network": "ConvSpikingNet", "dataset": "nmnist"})
    torch.manual_seed(5)
    model = build_model(config).eval()
    with torch.no_grad():  # larger weights, so that an untrained network spikes in every layer
        for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
            layer.weight.mul_(3)
    frames = (torch.rand(config.timesteps, 4, 2, 34, 34, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    graph = nir_export.to_nir(model, config, (0.0, 1.0))
    assert list(graph.nodes["flatten"].input_type["input"]) == [64, 5, 5]
    with torch.no_grad():
        trained = model(frames).numpy()
    assert trained.sum() > 0
    np.testing.assert_array_equal(nir_reference.simulate(graph, frames.numpy(), config.timesteps,
                                                         reset="subtract"), trained)
