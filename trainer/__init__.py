"""Spiking-network trainer: config, surrogate gradients, neuron cells, models, data, training loop, worker.

This package never imports aiohttp; ``trainer.config`` and ``trainer.catalog`` import only the standard
library so the service can validate requests without importing torch.
"""
