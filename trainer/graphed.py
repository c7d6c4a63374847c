"""The whole training step captured as one CUDA graph: forward, loss, backward, clip, optimiser step.

At batch 64 a step is a few hundred small kernels that the GPU finishes in a fraction of the time the
host takes to launch them; replaying a captured graph launches them all at once. What a graph needs:

- fixed shapes and addresses: a full batch is copied into static input tensors and the graph replayed;
  any other shape (the epoch's last, partial batch) runs ``EagerStep``, on the same parameters and
  optimiser state, so the trajectory is the same;
- no host sync inside: the LIF recurrence reads beta and the threshold from device memory
  (``trainer.fused`` and ``trainer.triton_lif``), clipping keeps its norm on the device, and Adam runs
  with ``capturable=True`` (its step counts on the device);
- a learning rate that can change between replays: the scheduler keeps setting each param group's
  ``lr`` (a float, as everywhere else); before a replay it is written into a 0-dim device tensor that
  the captured optimiser step reads (it was the group's ``lr`` during capture only).

The first ``WARMUP_STEPS`` full batches run eagerly on a side stream (lazy initialisation: optimiser
state, cuBLAS handles, Triton compiles), then the next one is captured and replayed; every one of them
is a real optimiser step. The optimiser's ``capturable`` flag is set only while this step runs, so a
checkpoint saved between steps loads into any job, CPU included. SGD is not captured (its step takes
the learning rate as a host number), and a capture that fails falls back to eager steps for the rest of
the job, with the reason logged and kept in ``fallback_reason``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.config import TrainConfig
from trainer.optim import clip_gradients
from trainer.step import EagerStep

log = logging.getLogger(__name__)
WARMUP_STEPS = 3  # eager full batches before the capture (PyTorch's CUDA graph notes use 3)


def supports(optimizer: torch.optim.Optimizer, device: str) -> bool:
    """Whether a job on ``device`` with this optimiser can run graphed steps."""
    return (device.startswith("cuda") and torch.cuda.is_available()
            and isinstance(optimizer, torch.optim.Adam))  # AdamW is an Adam


class GraphedStep:
    """``step(inputs, labels) -> (loss [], counts [B, classes])`` replaying one captured CUDA graph."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, device: str):
        self.model, self.optimizer, self.grad_clip = model, optimizer, config.grad_clip
        self.batch_size = config.batch_size
        self.device = torch.device(device)
        self.eager = EagerStep(model, optimizer, config)
        self.warm_steps = 0
        self.side_stream: torch.cuda.Stream | None = None  # for the warm-up steps, as PyTorch's notes advise
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback_reason: str | None = None
        self.lrs = [torch.zeros((), device=self.device) for _ in optimizer.param_groups]  # read by the graph
        # cells keep their last spike counts as attributes; a replay refreshes the captured tensors only
        self.cells = [m for m in model.modules() if hasattr(m, "last_spike_counts")]
        for state in optimizer.state.values():  # a resumed job: capturable Adam keeps its step on the device
            if "step" in state:
                state["step"] = state["step"].to(self.device, torch.float32)

    @property
    def graphed(self) -> bool:
        """True once full batches replay the captured graph."""
        return self.graph is not None

    def __call__(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if labels.shape[0] != self.batch_size or self.fallback_reason is not None:
            with self._capturable():
                return self.eager(inputs, labels)
        if self.graph is None:
            if self.warm_steps < WARMUP_STEPS:
                self.warm_steps += 1
                return self._side_stream_step(inputs, labels)
            self._try_capture(inputs, labels)
            if self.graph is None:
                return self(inputs, labels)
        if inputs.shape != self.static_inputs.shape or inputs.dtype != self.static_inputs.dtype:
            with self._capturable():
                return self.eager(inputs, labels)
        self.static_inputs.copy_(inputs)
        self.static_labels.copy_(labels)
        for lr, group in zip(self.lrs, self.optimizer.param_groups):
            lr.fill_(group["lr"])  # this step's rate, as the scheduler set it
        with torch.cuda.device(self.device):  # the graph's GPU, whichever is current in this process
            self.graph.replay()
        for cell, (counts, rate) in zip(self.cells, self.cell_outputs):
            cell.last_spike_counts, cell.last_spike_rate = counts, rate
        # copies: the static outputs are overwritten by the next replay, the caller may still hold these
        return self.static_loss.clone(), self.static_counts.clone()

    def _side_stream_step(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        stream = self.side_stream = self.side_stream or torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.device(self.device), torch.cuda.stream(stream), self._capturable():
            out = self.eager(inputs, labels)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out

    def _try_capture(self, inputs: Tensor, labels: Tensor) -> None:
        try:
            self._capture(inputs, labels)
        except RuntimeError as exc:  # an op that syncs or allocates on the host: run eagerly instead
            self.graph = None
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed, training eagerly: %s", self.fallback_reason)
            self.optimizer.zero_grad(set_to_none=True)

    def _capture(self, inputs: Tensor, labels: Tensor) -> None:
        self.static_inputs, self.static_labels = inputs.clone(), labels.clone()
        for lr, group in zip(self.lrs, self.optimizer.param_groups):
            lr.fill_(group["lr"])
        self.optimizer.zero_grad(set_to_none=True)  # gradients allocated inside the graph, at fixed addresses
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with (torch.cuda.device(self.device), self._capturable(), self._tensor_lr(),
              torch.cuda.graph(graph, capture_error_mode="thread_local")):
            counts = self.model(self.static_inputs).sum(0)  # [B, classes]
            loss = F.cross_entropy(counts, self.static_labels)
            loss.backward()
            clip_gradients(self.model, self.grad_clip)
            self.optimizer.step()
        self.static_loss, self.static_counts = loss.detach(), counts.detach()
        self.cell_outputs = [(cell.last_spike_counts, cell.last_spike_rate) for cell in self.cells]
        self.graph = graph

    def _capturable(self) -> contextlib.AbstractContextManager[None]:
        """Adam's capturable mode (step counts and bias corrections on the device, no host sync)."""
        return self._groups_set("capturable", [True] * len(self.optimizer.param_groups))

    def _tensor_lr(self) -> contextlib.AbstractContextManager[None]:
        """Each group's lr is its device tensor while the optimiser step is captured."""
        return self._groups_set("lr", self.lrs)

    @contextlib.contextmanager
    def _groups_set(self, key: str, values) -> Iterator[None]:
        """Each param group's ``key`` set to its value from ``values``, and restored on the way out."""
        groups = self.optimizer.param_groups
        saved = [group.get(key) for group in groups]
        for group, value in zip(groups, values):
            group[key] = value
        try:
            yield
        finally:
            for group, value in zip(groups, saved):
                group[key] = value
