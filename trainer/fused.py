"""The LIF recurrence (IF when beta is None) over all T as one autograd node, with hand-written BPTT.

For LIFCell, IFCell and LapicqueCell, the time loop is the hot path: autograd would record about five
nodes per step. Here the forward runs in place without a graph and the backward is one linear recurrence
over time, which is what makes this trainer several times faster than a per-step loop (see
docs/benchmarks.md). ``tests/trainer/test_cells.py`` checks its gradients against autograd through
``trainer.cells.lif_step`` for every surrogate.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
        h = current.new_empty(current.shape)  # [T, B, *shape] contiguous even when current is broadcast
        spikes = current.new_empty(current.shape)
        v = v0.clone()  # [B, *shape], updated in place
        decay, th = (1.0 if beta is None else beta.item()), threshold.item()  # scalars: fewer broadcasts
        for t in range(current.shape[0]):
            torch.add(current[t], v, alpha=decay, out=v)  # v = beta v + I
            torch.sub(v, th, out=h[t])
            torch.gt(h[t], 0, out=spikes[t])
            v.sub_(spikes[t], alpha=th)  # reset
        ctx.spike_fn = spike_fn
        ctx.save_for_backward(h, spikes, v0, beta, threshold)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: Tensor):
        h, spikes, v0, beta, threshold = ctx.saved_tensors
        grad_v = grad_spikes * ctx.spike_fn.pseudo_derivative(h)  # dL/ds_t f'(h_t), [T, B, *shape]
        through_spike_sum = grad_v.sum() if ctx.needs_input_grad[3] else None
        decay = 1.0 if beta is None else beta.item()
        for t in range(h.shape[0] - 2, -1, -1):  # in place: dL/dv_t = dL/ds_t f'(h_t) + beta dL/dv_{t+1}
            grad_v[t].add_(grad_v[t + 1], alpha=decay)
        grad_v0 = grad_beta = grad_threshold = None
        if ctx.needs_input_grad[1]:
            grad_v0 = grad_v[0] * decay
        if ctx.needs_input_grad[2]:
            u = h[:-1] + threshold * (1 - spikes[:-1])  # membrane after reset, u_0 .. u_{T-2}
            grad_beta = (grad_v[1:] * u).sum() + (grad_v[0] * v0).sum()
        if ctx.needs_input_grad[3]:
            grad_threshold = -(through_spike_sum + decay * (grad_v[1:] * spikes[:-1]).sum())
        return grad_v, grad_v0, grad_beta, grad_threshold, None
