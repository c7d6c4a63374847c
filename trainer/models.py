"""The two networks, built from a TrainConfig: fully connected ``SpikingNet`` and ``ConvSpikingNet``.

Multi-step layout (as SpikingJelly's multi-step mode): stateless layers (Linear, Conv, pooling) run once
over all T x B samples, and only the neuron cells loop over time. The input shape (C, H, W) and the class
count come from the dataset's row in ``trainer.catalog`` (1x28x28 images, 2x34x34 N-MNIST frames).
Inputs are either direct, ``[B, C, H, W]`` (the image is the same current every step: the first layer
runs once on B rows and its output is broadcast over T without a copy), or a sequence ``[T, B, C, H, W]``
(rate-encoded spikes, event frames). Both networks return output spikes ``[T, B, n_classes]``; the loss
and accuracy use their counts over T.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.nn import functional as F

from trainer import catalog, surrogates
from trainer.cells import CELL_CLASSES, LIFCell, RecurrentLIFCell, SpikingCell
from trainer.config import TrainConfig

IMAGE_SHAPE = (1, 28, 28)  # the default input (synthetic and the MNIST family)
N_CLASSES = 10


def _over_time(layer: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a stateless layer to [T, B, ...] as one batch of T*B rows; returns [T, B, ...]."""
    out = layer(x.flatten(0, 1))
    return out.unflatten(0, x.shape[:2])


class SNNModel(nn.Module):
    """What the training loop relies on: the input convention, the cells by key, the reports."""

    def __init__(self, timesteps: int, learn_beta: bool, learn_threshold: bool,
                 input_shape: tuple[int, int, int] = IMAGE_SHAPE, n_classes: int = N_CLASSES):
        super().__init__()
        self.timesteps = timesteps
        self.input_shape, self.n_classes = tuple(input_shape), n_classes
        self.learned = [name for name, on in (("beta", learn_beta), ("threshold", learn_threshold)) if on]

    def _input_current(self, x: Tensor, first_layer: Callable[[Tensor], Tensor]) -> Tensor:
        """[B, C, H, W] (direct) or [T, B, C, H, W] (rate, events) -> the first layer's output [T, B, ...]."""
        if x.dim() == 4 and tuple(x.shape[1:]) == self.input_shape:
            out = first_layer(x)  # [B, ...], computed once
            return out.expand(self.timesteps, *out.shape)  # a view: the same current every step
        if x.dim() == 5 and tuple(x.shape[2:]) == self.input_shape:
            return _over_time(first_layer, x)
        shape = ", ".join(map(str, self.input_shape))
        raise ValueError(f"expected input [B, {shape}] or [T, B, {shape}], got {list(x.shape)}")

    def spiking_layers(self) -> dict[str, SpikingCell]:
        """Cells in forward order, keyed as in the events ("lifs.0" or "lif1")."""
        return {name: m for name, m in self.named_modules() if isinstance(m, SpikingCell)}

    def param_snapshot(self) -> dict[str, float]:
        """{"lifs.0.beta": 0.9, "lifs.0.threshold": 1.0, ...}: constrained values, learned or not."""
        return {f"{key}.{name}": value for key, cell in self.spiking_layers().items()
                for name, value in cell.snapshot().items()}

    def model_info(self) -> dict:
        """Counts for the ``config`` event; ``learnable_dynamics`` lists what the learn_* flags train."""
        cells = self.spiking_layers().values()
        return {
            "total_params": sum(p.numel() for p in self.parameters()),
            "trainable_params": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "spiking_cells": len(cells),
            "cell_types": list(dict.fromkeys(type(c).__name__ for c in cells)),
            "learnable_dynamics": list(self.learned),
        }


class SpikingNet(SNNModel):
    """C*H*W (784) -> hidden... -> classes, a spiking cell after every Linear (keys lifs.0, lifs.1, ...)."""

    def __init__(self, hidden: tuple[int, ...], cell_cls: type[SpikingCell], spike_fn: surrogates.SpikeFn,
                 *, timesteps: int, learn_beta: bool = False, learn_threshold: bool = False,
                 input_shape: tuple[int, int, int] = IMAGE_SHAPE, n_classes: int = N_CLASSES):
        super().__init__(timesteps, learn_beta, learn_threshold, input_shape, n_classes)
        channels, height, width = self.input_shape
        self.sizes = [channels * height * width, *hidden, n_classes]
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        self.fcs = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairs)
        self.lifs = nn.ModuleList(
            cell_cls((n_out,), spike_fn, learn_beta=learn_beta, learn_threshold=learn_threshold)
            for _, n_out in pairs
        )

    def forward(self, x: Tensor) -> Tensor:
        current = self._input_current(x, lambda img: self.fcs[0](img.flatten(-3)))  # [T, B, hidden[0]]
        for i, cell in enumerate(self.lifs):
            spikes = cell(current)  # [T, B, n]
            if i + 1 < len(self.fcs):
                current = self.fcs[i + 1](spikes)  # Linear over the last dim: all T*B rows at once
        return spikes  # [T, B, 10]

    def architecture(self) -> str:
        return "→".join(str(n) for n in self.sizes)


class ConvSpikingNet(SNNModel):
    """conv 5x5 32, cell, pool 2, conv 5x5 64, cell, pool 2, fc 128, cell, fc 10, cell (keys lif1..lif4).

    Sizes for 1x28x28: 24, pool 12, 8, pool 4 (fc 1024 -> 128); for 2x34x34: 30, 15, 11, 5 (fc 1600).
    A RecurrentLIFCell config gets LIF cells after the two convolutions (a dense recurrent weight over
    32x24x24 neurons would be enormous) and recurrent cells in the two fully connected layers.
    """

    def __init__(self, cell_cls: type[SpikingCell], spike_fn: surrogates.SpikeFn, *, timesteps: int,
                 learn_beta: bool = False, learn_threshold: bool = False,
                 input_shape: tuple[int, int, int] = IMAGE_SHAPE, n_classes: int = N_CLASSES):
        super().__init__(timesteps, learn_beta, learn_threshold, input_shape, n_classes)
        conv_cell_cls = LIFCell if cell_cls is RecurrentLIFCell else cell_cls
        flags = {"learn_beta": learn_beta, "learn_threshold": learn_threshold}
        channels, height, width = self.input_shape
        conv1 = (height - 4, width - 4)  # 5x5, no padding
        conv2 = (conv1[0] // 2 - 4, conv1[1] // 2 - 4)  # after a 2x2 pool
        self.conv1 = nn.Conv2d(channels, 32, 5)
        self.lif1 = conv_cell_cls((32, *conv1), spike_fn, **flags)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.lif2 = conv_cell_cls((64, *conv2), spike_fn, **flags)
        self.fc1 = nn.Linear(64 * (conv2[0] // 2) * (conv2[1] // 2), 128)
        self.lif3 = cell_cls((128,), spike_fn, **flags)
        self.fc2 = nn.Linear(128, n_classes)
        self.lif4 = cell_cls((n_classes,), spike_fn, **flags)

    def forward(self, x: Tensor) -> Tensor:
        spikes = self.lif1(self._input_current(x, self.conv1))  # [T, B, 32, 24, 24] for 28x28 input
        spikes = self.lif2(_over_time(lambda s: self.conv2(F.max_pool2d(s, 2)), spikes))  # [T, B, 64, 8, 8]
        spikes = self.lif3(_over_time(lambda s: self.fc1(F.max_pool2d(s, 2).flatten(1)), spikes))  # [T, B, 128]
        return self.lif4(self.fc2(spikes))  # [T, B, n_classes]

    def architecture(self) -> str:
        return f"{'x'.join(map(str, self.input_shape))}→c32→c64→128→{self.n_classes}"


def build_model(config: TrainConfig) -> SNNModel:
    """The network, cell type, surrogate, sizes and learnable dynamics a (validated) config names."""
    cell_cls = CELL_CLASSES[config.cell_type]
    spike_fn = surrogates.get(config.surrogate)
    dataset = catalog.DATASETS_BY_NAME[config.dataset]
    flags = {"timesteps": config.timesteps, "learn_beta": config.learn_beta,
             "learn_threshold": config.learn_threshold, "input_shape": dataset.input_shape,
             "n_classes": dataset.n_classes}
    if config.network == "SpikingNet":
        return SpikingNet(tuple(config.hidden), cell_cls, spike_fn, **flags)
    if config.network == "ConvSpikingNet":
        return ConvSpikingNet(cell_cls, spike_fn, **flags)
    raise ValueError(f"unknown network {config.network!r}")

