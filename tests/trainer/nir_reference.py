"""An independent reference simulator for NIR graphs, in numpy, written from the node definitions in
NIR's documentation (``nir.ir``: each node's equations) and nothing of this project's cells.

Time is discrete: each continuous-time neuron ODE is stepped with forward Euler at the graph's ``dt``;
within one step the nodes update in graph order (edges carry no delay). Neurons (LIF, IF, CubaLIF)
spike when ``v > v_threshold`` and then set ``v = v_reset``, as NIR defines them; ``reset="subtract"``
instead subtracts ``v_threshold`` (the convention the graph's metadata declares for the trained cells).
Arrays are float64; shapes carry a leading batch dimension B that NIR's node shapes leave out.
"""

from __future__ import annotations

import nir
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def chain_order(graph: nir.NIRGraph) -> list[str]:
    """Node names from the Input to the Output (the exported graphs are chains)."""
    successor = dict(graph.edges)
    name = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))
    order = [name]
    while name in successor:
        name = successor[name]
        order.append(name)
    return order


def simulate(graph: nir.NIRGraph, inputs: np.ndarray, timesteps: int, *, reset: str = "nir") -> np.ndarray:
    """inputs [B, C, H, W] fed at every step, or one per step [T, B, C, H, W] -> output spikes
    [T, B, n_outputs]."""
    dt = float(graph.metadata.get("dt", 1.0))
    order = chain_order(graph)
    state: dict[str, dict[str, np.ndarray]] = {}
    outputs = []
    sequence = inputs.ndim == 5
    for t in range(timesteps):
        x = (inputs[t] if sequence else inputs).astype(np.float64)
        for name in order[1:]:
            node = graph.nodes[name]
            if isinstance(node, nir.Output):
                outputs.append(x)
                break
            x = _step(node, x, state.setdefault(name, {}), dt, reset)
    return np.stack(outputs)


def _step(node: nir.NIRNode, x: np.ndarray, state: dict, dt: float, reset: str) -> np.ndarray:
    if isinstance(node, nir.Flatten):
        assert node.start_dim == 0 and node.end_dim == -1
        return x.reshape(x.shape[0], -1)
    if isinstance(node, nir.Affine):  # y = W x + b
        return x @ node.weight.astype(np.float64).T + node.bias
    if isinstance(node, nir.Conv2d):
        return _conv2d(node, x)
    if isinstance(node, nir.SumPool2d):
        return _sum_pool(node, x)
    if isinstance(node, nir.Threshold):  # Heaviside(x - threshold)
        return (x > node.threshold).astype(np.float64)
    if isinstance(node, nir.LIF):  # tau dv/dt = (v_leak - v) + R I
        v = state.get("v", np.zeros_like(x))
        v = v + dt / node.tau * (node.v_leak - v + node.r * x)
        return _fire(node, v, state, reset)
    if isinstance(node, nir.IF):  # dv/dt = R I
        v = state.get("v", np.zeros_like(x))
        v = v + dt * node.r * x
        return _fire(node, v, state, reset)
    if isinstance(node, nir.CubaLIF):  # tau_syn dI/dt = -I + w_in S;  tau_mem dv/dt = (v_leak - v) + R I
        current = state.get("i", np.zeros_like(x))
        current = current + dt / node.tau_syn * (-current + node.w_in * x)
        state["i"] = current
        v = state.get("v", np.zeros_like(x))
        v = v + dt / node.tau_mem * (node.v_leak - v + node.r * current)
        return _fire(node, v, state, reset)
    raise TypeError(f"reference simulator has no {type(node).__name__} node")


def _fire(node: nir.NIRNode, v: np.ndarray, state: dict, reset: str) -> np.ndarray:
    spikes = v > node.v_threshold
    if reset == "nir":
        state["v"] = np.where(spikes, node.v_reset, v)
    elif reset == "subtract":
        state["v"] = v - spikes * node.v_threshold
    else:
        raise ValueError(reset)
    return spikes.astype(np.float64)


def _conv2d(node: nir.Conv2d, x: np.ndarray) -> np.ndarray:
    """Cross-correlation as in NIR's Conv2d: x [B, C_in, H, W], weight [C_out, C_in, kH, kW]."""
    assert tuple(node.stride) == (1, 1) and tuple(node.dilation) == (1, 1) and node.groups == 1
    pad_h, pad_w = node.padding
    x = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    windows = sliding_window_view(x, node.weight.shape[2:], axis=(2, 3))  # [B, C_in, H', W', kH, kW]
    out = np.einsum("bchwij,ocij->bohw", windows, node.weight.astype(np.float64))
    return out + node.bias.astype(np.float64)[None, :, None, None]


def _sum_pool(node: nir.SumPool2d, x: np.ndarray) -> np.ndarray:
    assert not np.any(node.padding)
    kernel, stride = tuple(node.kernel_size), tuple(node.stride)
    windows = sliding_window_view(x, kernel, axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
    return windows.sum(axis=(-2, -1))
