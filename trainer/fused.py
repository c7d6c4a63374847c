"""The LIF recurrence (IF when beta is None) over all T as one autograd node, with hand-written BPTT.

For LIFCell, IFCell and LapicqueCell, the time loop is the hot path: autograd would record about five
nodes per step. Here the forward runs in place without a graph and the backward is one linear recurrence
over time, which is what makes this trainer several times faster than a per-step loop (see
docs/benchmarks.md). ``tests/trainer/test_cells.py`` checks its gradients against autograd through
``trainer.cells.lif_step`` for every surrogate.

Beta and the threshold stay 0-dim tensors on the device throughout (never ``.item()``), so neither
direction waits for the device, and a CUDA graph can capture both. On CUDA, float32 currents run as two
Triton kernels, one launch each way over all T (``trainer.triton_lif``); the CPU, other dtypes and a
spike function without a Triton form (see ``triton_lif.supports``) take the per-step loop below.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _use_triton(current: Tensor, spike_fn) -> bool:
    if not current.is_cuda:
        return False
    from trainer import triton_lif  # imported only here: CPU jobs never load triton

    return triton_lif.supports(current, spike_fn)


class LIFSequence(torch.autograd.Function):
    """The whole LIF recurrence (IF when beta is None) as one autograd node, with hand-written BPTT.

    The same maths as ``lif_step`` looped over T, minus the per-op autograd bookkeeping: the forward runs
    in place and keeps h_t = v_t - threshold and s_t; the backward (the reset detached, u_t the membrane
    after reset, f' the surrogate) is

        dL/dv_t = dL/ds_t f'(h_t) + beta dL/dv_{t+1}       dL/dI_t = dL/dv_t
        dL/dbeta = sum_t dL/dv_t u_{t-1}                    dL/dth = -sum_t (dL/ds_t f'(h_t) + dL/du_t s_t)
    """

    @staticmethod
    def forward(ctx, current: Tensor, v0: Tensor, beta: Tensor | None, threshold: Tensor, spike_fn) -> Tensor:
        ctx.triton = _use_triton(current, spike_fn)
        if ctx.triton:
            from trainer import triton_lif

            h, spikes = triton_lif.lif_forward(current, v0, beta, threshold)
        else:
            h, spikes = _forward_loop(current, v0, beta, threshold)
        ctx.spike_fn = spike_fn
        ctx.save_for_backward(h, spikes, v0, beta, threshold)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: Tensor):
        h, spikes, v0, beta, threshold = ctx.saved_tensors
        if ctx.triton:
            from trainer import triton_lif

            grad_v, grad_v0, grad_beta, grad_threshold = triton_lif.lif_backward(
                grad_spikes, h, v0, beta, threshold, ctx.spike_fn)
        else:
            grad_v, grad_v0, grad_beta, grad_threshold = _backward_loop(
                grad_spikes, h, spikes, v0, beta, threshold, ctx.spike_fn, ctx.needs_input_grad)
        return (grad_v, grad_v0 if ctx.needs_input_grad[1] else None,
                grad_beta if ctx.needs_input_grad[2] else None,
                grad_threshold if ctx.needs_input_grad[3] else None, None)


def _forward_loop(current: Tensor, v0: Tensor, beta: Tensor | None, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """h_t = v_t - threshold and s_t, [T, B, *shape] each, one in-place step at a time."""
    h = current.new_empty(current.shape)  # [T, B, *shape] contiguous even when current is broadcast
    spikes = current.new_empty(current.shape)
    v = v0.clone()  # [B, *shape], updated in place
    for t in range(current.shape[0]):
        if beta is None:
            v.add_(current[t])
        else:
            v.mul_(beta).add_(current[t])  # v = beta v + I, rounded twice as the Triton kernel does
        torch.sub(v, threshold, out=h[t])
        torch.gt(h[t], 0, out=spikes[t])
        v.addcmul_(spikes[t], threshold, value=-1.0)  # reset
    return h, spikes


def _backward_loop(grad_spikes: Tensor, h: Tensor, spikes: Tensor, v0: Tensor, beta: Tensor | None,
                   threshold: Tensor, spike_fn, needs_input_grad) -> tuple:
    grad_v = grad_spikes * spike_fn.pseudo_derivative(h)  # dL/ds_t f'(h_t), [T, B, *shape]
    through_spike_sum = grad_v.sum() if needs_input_grad[3] else None
    for t in range(h.shape[0] - 2, -1, -1):  # in place: dL/dv_t = dL/ds_t f'(h_t) + beta dL/dv_{t+1}
        if beta is None:
            grad_v[t].add_(grad_v[t + 1])
        else:
            grad_v[t].addcmul_(grad_v[t + 1], beta)
    grad_v0 = grad_beta = grad_threshold = None
    if needs_input_grad[1]:
        grad_v0 = grad_v[0] if beta is None else grad_v[0] * beta
    if needs_input_grad[2]:
        u = h[:-1] + threshold * (1 - spikes[:-1])  # membrane after reset, u_0 .. u_{T-2}
        grad_beta = (grad_v[1:] * u).sum() + (grad_v[0] * v0).sum()
    if needs_input_grad[3]:
        through_reset = (grad_v[1:] * spikes[:-1]).sum()
        grad_threshold = -(through_spike_sum + (through_reset if beta is None else beta * through_reset))
    return grad_v, grad_v0, grad_beta, grad_threshold
