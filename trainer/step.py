"""One optimiser step on one batch, the unit a faster path replaces: ``build_train_step(...)``.

The loop in ``trainer.train`` calls ``step(inputs, labels)`` once per batch and gets back the batch's
loss and output spike counts, detached and still on the device (it sums them without a host sync). What
happens inside (eager autograd, a compiled graph, a captured CUDA graph) is chosen here, once per job;
every variant must give the same loss trajectory as ``EagerStep`` for a seeded run, to float rounding.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.config import TrainConfig
from trainer.optim import clip_gradients


class TrainStep(Protocol):
    def __call__(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Forward, loss, backward, clip, ``optimizer.step()``; returns (loss [], counts [B, classes])."""


class EagerStep:
    """Plain autograd: the reference every other step is tested against."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.model, self.optimizer, self.grad_clip = model, optimizer, config.grad_clip

    def __call__(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        counts = self.model(inputs).sum(0)  # [B, classes] spike counts over T
        loss = F.cross_entropy(counts, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.model, self.grad_clip)
        self.optimizer.step()
        return loss.detach(), counts.detach()


def build_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                     device: str, *, remaining_steps: int = 0, data_dir=None,
                     should_stop: Callable[[], bool] = lambda: False) -> TrainStep:
    """The step this job runs: the eager one (faster paths plug in here, chosen per device and config).

    ``remaining_steps``: optimiser steps the job has left (what ``compile=auto`` weighs a compile
    against); ``data_dir``: where the compile cache lives (``trainer.compiled``); ``should_stop``: what
    a compile polls, so that a stop does not wait for it."""
    if config.compile == "on" or (config.compile == "auto" and device == "cpu"):
        from trainer import compiled

        return compiled.CompilingStep(model, optimizer, config, remaining_steps=remaining_steps,
                                      key=compiled.shape_key(config, device),
                                      records=compiled.CompileRecords(compiled.cache_dir_for(data_dir)),
                                      should_stop=should_stop)
    from trainer import graphed  # builds on EagerStep, so imported here rather than at the top

    if graphed.supports(optimizer, device):  # CUDA and Adam/AdamW: the whole step as one CUDA graph
        return graphed.GraphedStep(model, optimizer, config, device)
    return EagerStep(model, optimizer, config)
