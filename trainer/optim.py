"""The training recipe: optimiser, learning-rate schedule with warmup, gradient clipping.

``build_optimizer(model, config)`` and ``build_scheduler(optimizer, config, steps_per_epoch)`` are all
the training loop calls; the scheduler is stepped once per optimiser step, so the learning rate moves
within an epoch. The rate for optimiser step ``s`` (0-based, counted over the whole run) is
``config.lr * lr_factor(s, ...)``, with ``N`` steps in all and ``W = warmup_epochs * steps_per_epoch``:

- warmup (constant, cosine, step): ``(s + 1) / W`` while ``s < W``, so the first step is not at 0
- constant: 1
- cosine: ``(1 + cos(pi (s - W) / (N - W))) / 2``, from 1 after the warmup towards 0 at the end
- step: ``0.1 ** k``, k = how many of ``N / 2`` and ``3 N / 4`` the step has reached
- onecycle (Smith & Topping 2019): a linear rise from 1/25 to 1 over ``W`` steps (30% of ``N`` when
  no warmup is set), then cosine down to ``1 / (25 * 1e4)`` at the end, as torch's OneCycleLR defaults
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainer.config import TrainConfig

SGD_MOMENTUM = 0.9
STEP_GAMMA = 0.1  # the "step" schedule's factor at each milestone
STEP_MILESTONES = (0.5, 0.75)  # fractions of the run's steps
ONECYCLE_START = 1 / 25  # torch's OneCycleLR div_factor
ONECYCLE_END = ONECYCLE_START / 1e4  # and its final_div_factor
ONECYCLE_RISE = 0.3  # fraction of the steps spent rising when warmup_epochs is 0 (torch's pct_start)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params, lr, decay = list(model.parameters()), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=decay)
    # On the CPU torch's default Adam runs a Python loop of ~8 ops per tensor (about 1 ms of a 5.5 ms
    # step for the default network); the fused kernel does a tensor in one call. The GPU keeps torch's
    # default (foreach), which trainer.graphed switches to capturable for its CUDA graph.
    fused = True if params and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params) else None
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(params, lr=lr, weight_decay=decay, fused=fused)


def lr_factor(step: int, schedule: str, total_steps: int, warmup_steps: int) -> float:
    """The multiple of the configured lr used for optimiser step ``step`` (see the module docstring)."""
    if schedule == "onecycle":
        rise = warmup_steps or max(1, round(ONECYCLE_RISE * total_steps))
        if step < rise:
            return ONECYCLE_START + (1 - ONECYCLE_START) * step / rise
        progress = (step - rise) / max(1, total_steps - rise)
        return ONECYCLE_END + (1 - ONECYCLE_END) * (1 + math.cos(math.pi * progress)) / 2
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (1 + math.cos(math.pi * progress)) / 2
    if schedule == "step":
        return STEP_GAMMA ** sum(step >= fraction * total_steps for fraction in STEP_MILESTONES)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int, *,
                    start_step: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule; sets the lr for step ``start_step`` (> 0 when resuming) at once, and each
    ``step()`` moves it to the next."""
    total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
    for group in optimizer.param_groups:  # the peak rate is this config's, whatever a restored state held
        group["initial_lr"] = config.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(start_step + step, config.lr_schedule, total, warmup))


def clip_gradients(model: nn.Module, max_norm: float) -> None:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; 0 leaves them alone."""
    if max_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)


class AdamInGraph:
    """torch's Adam/AdamW update written as tensor ops, so that ``torch.compile`` can put it in the same
    graph as the forward and backward (``trainer.compiled.CompiledStep`` on the CPU).

    It updates the optimiser's own parameters and state (``exp_avg``, ``exp_avg_sq``, ``step``, created
    here as torch creates them when a fresh optimiser has none yet), so a checkpoint, the learning-rate
    schedule (read from ``param_groups`` at every step) and an eager ``optimizer.step()`` in between (the
    epoch's last, smaller batch) all see one optimiser. The maths is ``torch.optim.Adam``'s (Kingma & Ba
    2015; AdamW: decoupled weight decay, Loshchilov & Hutter 2019), equal to its kernel to float rounding.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        (group,) = optimizer.param_groups
        self.optimizer, self.params = optimizer, list(group["params"])
        self.beta1, self.beta2 = group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        self.decoupled = isinstance(optimizer, torch.optim.AdamW)
        for p in self.params:
            state = optimizer.state[p]
            if not state:  # as torch's Adam fills it on its first step (fused: a float32 step on the device)
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.lr = torch.zeros((), dtype=torch.float32, device=self.params[0].device)  # refilled each step

    @staticmethod
    def supports(optimizer: torch.optim.Optimizer) -> bool:
        """Adam or AdamW as ``build_optimizer`` makes them: one group, no amsgrad, not maximising."""
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        return not (group["amsgrad"] or group["maximize"] or isinstance(group["lr"], torch.Tensor))

    def tensors(self) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(lr [], params, exp_avgs, exp_avg_sqs, steps): the compiled step's inputs, the lr set for this step."""
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])
        states = [self.optimizer.state[p] for p in self.params]
        return (self.lr, self.params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states])

    @torch.no_grad()
    def update_(self, grads: list[Tensor], lr: Tensor, params: list[Tensor], exp_avgs: list[Tensor],
                exp_avg_sqs: list[Tensor], steps: list[Tensor]) -> None:
        """One Adam step in place; ``grads[i]`` is the gradient of ``params[i]``."""
        beta1, beta2 = self.beta1, self.beta2
        for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            if self.weight_decay and self.decoupled:
                param.mul_(1 - lr * self.weight_decay)
            elif self.weight_decay:
                grad = grad + self.weight_decay * param
            step.add_(1)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - beta1 ** step)
            denom = exp_avg_sq.sqrt() / (1 - beta2 ** step).sqrt() + self.eps
            param.sub_(step_size * exp_avg / denom)
