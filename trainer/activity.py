"""Spiking activity over an epoch, per layer: the numbers behind the epoch event's ``layer_stats``.

Each cell leaves its last forward's spike count per neuron in ``last_spike_counts`` (``[*shape]``,
summed over T and B, still on the device). ``LayerActivity`` adds those up over an epoch without
reading them back, and ``stats`` turns them into per-neuron firing rates (spikes / (T x samples)) once,
at the epoch's end, with a single transfer to the host:

- ``rate``: the layer's mean firing rate (the same number as ``layer_spike_rates``);
- ``silent_fraction``: neurons that never fired in the epoch;
- ``saturated_fraction``: neurons that fired at more than ``SATURATED_RATE`` of their steps;
- ``rate_histogram``: the fraction of the layer's neurons in each of ``HISTOGRAM_BINS`` equal bins of
  the firing rate over [0, 1] (a rate of exactly 1 counts in the last bin); the fractions sum to 1.

A neuron here is one unit of the layer's output: after a convolution, one (channel, row, column).
"""

from __future__ import annotations

import torch
from torch import Tensor

HISTOGRAM_BINS = 20
SATURATED_RATE = 0.9  # firing at more than 90% of the steps: the neuron has stopped carrying information


class LayerActivity:
    """Per-neuron spike counts of every layer, summed over an epoch on the layers' device."""

    def __init__(self, layers: dict, timesteps: int):
        self.layers = layers  # {layer key: SpikingCell}, in forward order
        self.timesteps = timesteps
        self.counts: dict[str, Tensor] = {}
        self.samples = 0

    def reset(self) -> None:
        self.counts = {}
        self.samples = 0

    def add_batch(self, batch_size: int) -> None:
        """After a training forward: add each layer's spike counts (device ops only, no host sync)."""
        for key, cell in self.layers.items():
            counts = cell.last_spike_counts
            if key in self.counts:
                self.counts[key] += counts
            else:
                self.counts[key] = counts.clone()
        self.samples += batch_size

    def stats(self) -> dict[str, dict]:
        """{layer key: {rate, silent_fraction, saturated_fraction, rate_histogram[20]}} for the epoch."""
        if self.samples == 0:
            return {}
        rows = []
        for counts in self.counts.values():
            rates = counts.flatten().float() / (self.timesteps * self.samples)  # [neurons]
            n = rates.numel()
            histogram = torch.histc(rates, bins=HISTOGRAM_BINS, min=0.0, max=1.0) / n
            summary = torch.stack((rates.mean(), (rates == 0).sum() / n, (rates > SATURATED_RATE).sum() / n))
            rows.append(torch.cat((summary, histogram)))
        values = torch.stack(rows).tolist()  # the one read back: [layers, 3 + bins]
        return {
            key: {"rate": row[0], "silent_fraction": row[1], "saturated_fraction": row[2],
                  "rate_histogram": row[3:]}
            for key, row in zip(self.counts, values)
        }
