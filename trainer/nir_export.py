"""Export a trained network as a NIR graph (Pedersen et al. 2024, "Neuromorphic intermediate
representation"), the interchange format that neuromorphic simulators and chips read.

Nodes: ``Input`` (one C x H x W input: an image, or an N-MNIST time bin) → ``Flatten`` → ``Affine`` →
neuron … for ``SpikingNet``; ``Conv2d`` → neuron → ``SumPool2d`` + ``Threshold(0.5)`` → … →
``Flatten`` → ``Affine`` → neuron … for ``ConvSpikingNet`` → ``Output`` (the output neurons' spikes). Weights and biases are the trained
tensors unchanged. Max pooling of 0/1 spikes is exactly "at least one spike in the window", which NIR
writes as a sum pool followed by a threshold at 0.5 (NIR has no max pool).

Discrete-time mapping (NIR neurons are continuous-time ODEs; one trained timestep is dt = 1, and a
simulator that steps them with forward Euler at dt integrates exactly like the trained cell):

- LIFCell, ``v = beta v + I``:  NIR ``LIF`` with tau = dt / (1 - beta), r = tau / dt, v_leak = 0,
  since Euler gives v + dt/tau (v_leak - v + r I) = (1 - dt/tau) v + I.
- LapicqueCell, ``v = beta v + R (1 - beta) I``: NIR ``LIF`` with tau = dt / (1 - beta), r = R.
- IFCell, ``v = v + I``: NIR ``IF`` with r = 1 / dt.
- SynapticCell and SecondOrderLIFCell, ``i = alpha i + I; v = beta v + i``: NIR ``CubaLIF`` with
  tau_syn = dt / (1 - alpha), w_in = tau_syn / dt, tau_mem = dt / (1 - beta), r = tau_mem / dt; the
  current is updated first and the membrane integrates the updated current, within one step.

Within a timestep every node updates in graph order (no delay on an edge), and a neuron's spike is
``v > v_threshold`` after integrating. The readout is the argmax of the output spike counts.

Where NIR differs, the graph says so: NIR neurons reset to ``v_reset`` after a spike, while the trained
cells subtract the threshold (``v = v - v_threshold``). The two agree whenever the membrane does not
overshoot the threshold, and differ after an overshoot. Every neuron node's metadata carries
``reset: "subtract"`` and the graph's metadata ``reset`` explains it, so a simulator that supports
reset-by-subtraction can honour it; ``tests/trainer/test_nir_export.py`` pins both behaviours. Cells
whose dynamics NIR has no node for are refused with the reason (``NotExportable``), never approximated.
"""

from __future__ import annotations

import io
import json
import os

import nir
import numpy as np
import torch

from trainer import catalog, checkpoint
from trainer.config import TrainConfig
from trainer.models import ConvSpikingNet, SNNModel, SpikingNet

DT = 1.0
RESET_NOTE = ("The trained cells reset by subtraction (v -> v - v_threshold after a spike); NIR's neuron "
              "nodes reset to v_reset. They agree while v does not overshoot v_threshold; to reproduce the "
              "trained network exactly, reset by subtracting v_threshold (node metadata reset='subtract').")
NOT_EXPRESSIBLE = {
    "ALIFCell": "its threshold adapts with a trace of its past spikes, and NIR has no adaptive-threshold "
                "neuron",
    "ExpIFCell": "its exponential upswing is not among NIR's neuron dynamics (LIF, IF and CubaLIF are linear "
                 "below threshold)",
    "AdExCell": "its exponential upswing and adaptation current are not among NIR's neuron dynamics",
    "AlphaCell": "it splits the input into rectified excitatory and inhibitory currents, which NIR's "
                 "single-current CubaLIF cannot express",
    "RecurrentLIFCell": "its recurrent weight acts on the previous step's spikes, and NIR leaves the timing "
                        "of a recurrent edge to each simulator",
}


class NotExportable(Exception):
    """The network has a cell NIR cannot express as trained; ``cell`` names it, ``reason`` says why."""

    def __init__(self, cell: str, reason: str):
        self.cell, self.reason = cell, reason
        super().__init__(f"{cell} cannot be exported to NIR: {reason}")


def export_checkpoint(path: str | os.PathLike[str]) -> bytes:
    """A checkpoint file's network as NIR HDF5 bytes (``nir.read`` loads them)."""
    model, config, metadata = checkpoint.load_model(path)
    graph = to_nir(model, config, (float(metadata["input_mean"]), float(metadata["input_std"])))
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    return buffer.getvalue()


def to_nir(model: SNNModel, config: TrainConfig, input_stats: tuple[float, float]) -> nir.NIRGraph:
    for key, cell in model.spiking_layers().items():
        name = type(cell).__name__
        if name in NOT_EXPRESSIBLE:
            raise NotExportable(name, NOT_EXPRESSIBLE[name])
    if isinstance(model, SpikingNet):
        nodes = _spiking_net_nodes(model)
    elif isinstance(model, ConvSpikingNet):
        nodes = _conv_net_nodes(model)
    else:
        raise NotExportable(type(model).__name__, "no NIR mapping is written for this network")
    names = list(nodes)
    nodes = {"input": nir.Input(input_type={"input": np.array(model.input_shape)}), **nodes,
             "output": nir.Output(output_type={"output": np.array([model.n_classes])})}
    edges = list(zip(["input", *names], [*names, "output"]))
    mean, std = input_stats
    if catalog.DATASETS_BY_NAME[config.dataset].kind == "events":
        encoding = "event frames: the ON/OFF events of each of the timesteps' time bins, one frame per timestep"
    elif config.encoding == "direct":
        encoding = ("the image normalised as (pixel/255 - input_mean)/input_std, the same input at every "
                    "timestep")
    else:
        encoding = "Bernoulli spikes with probability pixel/255, drawn anew at every timestep"
    return nir.NIRGraph(nodes, edges, metadata={
        "source": "snnmon", "config": json.dumps(config.to_dict()), "dt": DT,
        "timesteps": config.timesteps, "encoding": config.encoding, "input": encoding,
        "input_mean": mean, "input_std": std,
        "readout": f"argmax over the {model.n_classes} outputs of their spike counts over the timesteps",
        "discretisation": "forward Euler at dt per timestep; nodes update in graph order, edges have "
                          "no delay; CubaLIF updates its current before its membrane",
        "reset": RESET_NOTE,
    })


def _affine(layer: torch.nn.Linear) -> nir.Affine:
    return nir.Affine(weight=_array(layer.weight), bias=_array(layer.bias))


def _conv(layer: torch.nn.Conv2d, input_hw: tuple[int, int]) -> nir.Conv2d:
    return nir.Conv2d(input_shape=input_hw, weight=_array(layer.weight), stride=layer.stride,
                      padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                      bias=_array(layer.bias))


def _spike_max_pool(cell_shape: tuple[int, int, int]) -> list[tuple[str, nir.NIRNode]]:
    """max_pool2d(2) of 0/1 spikes = (sum over the 2x2 window) > 0.5 (floor mode, as torch's)."""
    channels, height, width = cell_shape
    return [("pool", nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                   padding=np.array([0, 0]))),
            ("any_spike", nir.Threshold(threshold=np.full((channels, height // 2, width // 2), 0.5,
                                                          dtype=np.float32)))]


def _spiking_net_nodes(model: SpikingNet) -> dict[str, nir.NIRNode]:
    nodes = {"flatten": nir.Flatten(input_type={"input": np.array(model.input_shape)}, start_dim=0)}
    for i, (fc, cell) in enumerate(zip(model.fcs, model.lifs)):
        nodes[f"fcs.{i}"] = _affine(fc)
        nodes[f"lifs.{i}"] = _neuron(cell)
    return nodes


def _conv_net_nodes(model: ConvSpikingNet) -> dict[str, nir.NIRNode]:
    # 1x28x28: conv 24x24, pool 12x12, conv 8x8, pool 4x4; 2x34x34: 30, 15, 11, 5
    _, height, width = model.input_shape
    pooled1 = (model.lif1.shape[1] // 2, model.lif1.shape[2] // 2)
    pooled2 = (model.lif2.shape[0], model.lif2.shape[1] // 2, model.lif2.shape[2] // 2)
    nodes = {"conv1": _conv(model.conv1, (height, width)), "lif1": _neuron(model.lif1)}
    nodes.update({f"{name}1": node for name, node in _spike_max_pool(model.lif1.shape)})
    nodes.update({"conv2": _conv(model.conv2, pooled1), "lif2": _neuron(model.lif2)})
    nodes.update({f"{name}2": node for name, node in _spike_max_pool(model.lif2.shape)})
    nodes["flatten"] = nir.Flatten(input_type={"input": np.array(pooled2)}, start_dim=0)
    nodes.update({"fc1": _affine(model.fc1), "lif3": _neuron(model.lif3),
                  "fc2": _affine(model.fc2), "lif4": _neuron(model.lif4)})
    return nodes


@torch.no_grad()
def _neuron(cell) -> nir.NIRNode:
    """The NIR node whose Euler step at DT is the cell's step (module docstring); per-neuron arrays."""
    name = type(cell).__name__

    def full(value: float) -> np.ndarray:
        return np.full(cell.shape, value, dtype=np.float64)

    threshold = float(cell.threshold())
    metadata = {"cell": name, "reset": "subtract", "v_threshold": threshold}
    if name == "IFCell":
        return nir.IF(r=full(1 / DT), v_threshold=full(threshold), v_reset=full(0.0), metadata=metadata)
    beta = float(cell.beta())
    metadata["beta"] = beta
    tau_mem = DT / (1 - beta)
    if name in ("LIFCell", "LapicqueCell"):
        r = cell.values["R"] if name == "LapicqueCell" else tau_mem / DT
        return nir.LIF(tau=full(tau_mem), r=full(r), v_leak=full(0.0), v_threshold=full(threshold),
                       v_reset=full(0.0), metadata=metadata)
    if name in ("SynapticCell", "SecondOrderLIFCell"):
        alpha = cell.values["alpha"]
        metadata["alpha"] = alpha
        tau_syn = DT / (1 - alpha)
        return nir.CubaLIF(tau_syn=full(tau_syn), tau_mem=full(tau_mem), r=full(tau_mem / DT),
                           v_leak=full(0.0), v_threshold=full(threshold), v_reset=full(0.0),
                           w_in=full(tau_syn / DT), metadata=metadata)
    raise NotExportable(name, "no NIR mapping is written for this cell")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").numpy().copy()
