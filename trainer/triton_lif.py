"""Triton kernels for the LIF recurrence (IF when beta is None): one launch forward, one backward.

The maths is ``trainer.fused.LIFSequence``'s, with the neurons of a layer, ``[B, *shape]`` flattened to
N, split into blocks: each program owns a block of neurons and loops over all T inside the kernel, the
membrane held in registers, so a layer costs one launch each way instead of a few per timestep. Beta and
the threshold are read from device memory (no ``.item()``: no host sync, and a CUDA graph can capture
the launches). Per timestep, for the program's neurons:

    forward    v = beta v + I_t;  h_t = v - th;  s_t = h_t > 0;  v -= s_t th      (stores h_t and s_t)
    backward   from t = T-1 down: d_t = dL/ds_t f'(h_t);  g_t = d_t + beta g_{t+1}   (dL/dI_t = g_t)
               dL/dbeta = sum_t g_{t+1} u_t + g_0 v_0,  u_t = h_t + th (1 - s_t) the membrane after reset
               dL/dth = -sum_t (d_t + beta g_{t+1} s_t)

The two scalar gradients are left per neuron in a ``[2, N]`` buffer and summed by torch: a fixed
order, so a run is reproducible (no atomics). The surrogate's pseudo-derivative f' is computed in
the backward kernel for every surrogate in ``trainer.surrogates`` (its constant folded as in that module).

``tests/trainer/test_triton_lif.py`` runs these kernels under ``TRITON_INTERPRET=1`` on the CPU against
the per-step loop in ``trainer.fused``. Only float32 is supported; ``supports`` says when to use them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

# trainer.surrogates' names -> the branch of _pseudo_derivative (a compile-time constant)
SURROGATE_CODES = {"atan_surrogate": 0, "fast_sigmoid": 1, "superspike": 2, "sigmoid_surrogate": 3,
                   "straight_through": 4, "triangular": 5}
HALF_PI = tl.constexpr(math.pi / 2)  # a constexpr global: the only kind a compiled kernel may read
SMALL_LAYER = 1 << 16
# No fused multiply-add: beta v + I rounded twice, as torch's separate mul and add (trainer.fused's loop)
# do, so the kernels' spikes equal the loop's exactly; the kernels are memory-bound, the FMA saves nothing.
LAUNCH_OPTIONS = {"num_warps": 4, "enable_fp_fusion": False}  # neurons (B x layer size) below which blocks of 128 keep more of the GPU busy


def supports(current: Tensor, spike_fn) -> bool:
    """Whether these kernels can run ``current`` [T, B, *shape] with ``spike_fn``."""
    return (current.dtype == torch.float32 and current.dim() >= 2
            and getattr(spike_fn, "name", None) in SURROGATE_CODES and hasattr(spike_fn, "param"))


@triton.jit
def _pseudo_derivative(x, param, SURROGATE: tl.constexpr):
    """f'(x) of trainer.surrogates, the same expressions (param: alpha, slope, beta or width)."""
    if SURROGATE == 0:  # atan: (alpha / 2) / (1 + (pi alpha x / 2)^2)
        scaled = x * (param * HALF_PI)
        out = (param / 2) / (1 + scaled * scaled)
    elif SURROGATE == 1:  # fast sigmoid: slope / (1 + slope |x|)^2
        denominator = 1 + param * tl.abs(x)
        out = param / (denominator * denominator)
    elif SURROGATE == 2:  # superspike: 1 / (1 + beta |x|)^2
        denominator = 1 + param * tl.abs(x)
        out = 1 / (denominator * denominator)
    elif SURROGATE == 3:  # sigmoid: slope sigma(slope x) (1 - sigma(slope x))
        sigma = tl.sigmoid(x * param)
        out = param * sigma * (1 - sigma)
    elif SURROGATE == 4:  # straight through: 1
        out = tl.full(x.shape, 1.0, tl.float32)
    else:  # triangular: max(1 - |x| / width, 0) / width
        out = tl.maximum(1 - tl.abs(x) / param, 0.0) / param
    return out


@triton.jit
def _lif_forward_kernel(current_ptr, current_t_stride, v0_ptr, beta_ptr, threshold_ptr, h_ptr, spikes_ptr,
                        T, N, HAS_BETA: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: T x N can pass 2^31
    mask = offsets < N
    threshold = tl.load(threshold_ptr)
    v = tl.load(v0_ptr + offsets, mask=mask, other=0.0)
    if HAS_BETA:
        beta = tl.load(beta_ptr)
    current_ptrs, h_ptrs, spike_ptrs = current_ptr + offsets, h_ptr + offsets, spikes_ptr + offsets
    for _ in range(T):
        x = tl.load(current_ptrs, mask=mask, other=0.0)
        if HAS_BETA:
            v = v * beta + x
        else:
            v = v + x
        h = v - threshold
        spike = (h > 0).to(tl.float32)
        tl.store(h_ptrs, h, mask=mask)
        tl.store(spike_ptrs, spike, mask=mask)
        v = v - spike * threshold
        current_ptrs += current_t_stride  # 0 for a current broadcast over T
        h_ptrs += N
        spike_ptrs += N


@triton.jit
def _lif_backward_kernel(grad_spikes_ptr, grad_t_stride, h_ptr, v0_ptr, beta_ptr, threshold_ptr,
                         grad_current_ptr, grad_v0_ptr, partials_ptr, param, T, N, last_grad_offset, last_offset,
                         HAS_BETA: tl.constexpr, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    threshold = tl.load(threshold_ptr)
    if HAS_BETA:
        beta = tl.load(beta_ptr)
    else:
        beta = 1.0
    grad_ptrs = grad_spikes_ptr + last_grad_offset + offsets  # step T-1; the loop walks back to 0
    h_ptrs = h_ptr + last_offset + offsets
    out_ptrs = grad_current_ptr + last_offset + offsets
    grad_next = tl.zeros([BLOCK], dtype=tl.float32)  # g_{t+1}, dL/dv at the next step (0 past the end)
    beta_sum = tl.zeros([BLOCK], dtype=tl.float32)
    threshold_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for _ in range(T):
        h = tl.load(h_ptrs, mask=mask, other=0.0)
        through_spike = tl.load(grad_ptrs, mask=mask, other=0.0) * _pseudo_derivative(h, param, SURROGATE)
        spike = (h > 0).to(tl.float32)  # s_t, recomputed from h_t exactly as the forward did
        carried = beta * grad_next  # beta g_{t+1}
        beta_sum += grad_next * (h + threshold * (1 - spike))  # g_{t+1} u_t
        threshold_sum += through_spike + carried * spike
        grad_next = through_spike + carried
        tl.store(out_ptrs, grad_next, mask=mask)
        grad_ptrs -= grad_t_stride
        h_ptrs -= N
        out_ptrs -= N
    v0 = tl.load(v0_ptr + offsets, mask=mask, other=0.0)
    beta_sum += grad_next * v0  # g_0 v_0
    tl.store(grad_v0_ptr + offsets, beta * grad_next, mask=mask)
    # per neuron, summed by torch (a block reduction here crashed LLVM's optimiser in triton 3.8, sm_90)
    tl.store(partials_ptr + offsets, beta_sum, mask=mask)
    tl.store(partials_ptr + N + offsets, -threshold_sum, mask=mask)


def _block(n: int) -> int:
    return 128 if n < SMALL_LAYER else 512


def _time_major(x: Tensor) -> tuple[Tensor, int]:
    """x [T, ...] with each x[t] contiguous (copied if not), and its stride over T in elements (0 when
    broadcast)."""
    if x.shape[0] > 1 and not x[0].is_contiguous():
        x = x.contiguous()
    return x, (x.stride(0) if x.shape[0] > 1 else 0)


def _scalar(value: Tensor | None, like: Tensor) -> Tensor:
    """A 0-dim float32 tensor on like's device (beta None: an unused placeholder)."""
    if value is None:
        return like.new_ones(())
    return value.detach().to(device=like.device, dtype=torch.float32).reshape(())


def lif_forward(current: Tensor, v0: Tensor, beta: Tensor | None, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """current [T, B, *shape] (float32, may be broadcast over T), v0 [B, *shape] -> (h, spikes), each
    [T, B, *shape] contiguous."""
    current, t_stride = _time_major(current)
    steps, n = current.shape[0], current[0].numel()
    h = torch.empty(current.shape, device=current.device, dtype=torch.float32)
    spikes = torch.empty_like(h)
    block = _block(n)
    _lif_forward_kernel[(triton.cdiv(n, block),)](
        current, t_stride, v0.contiguous(), _scalar(beta, current), _scalar(threshold, current), h, spikes,
        steps, n, HAS_BETA=beta is not None, BLOCK=block, **LAUNCH_OPTIONS)
    return h, spikes


def lif_backward(grad_spikes: Tensor, h: Tensor, v0: Tensor, beta: Tensor | None, threshold: Tensor,
                 spike_fn) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """dL/dspikes [T, B, *shape] -> (dL/dcurrent [T, B, *shape], dL/dv0 [B, *shape], dL/dbeta [] or None
    when beta is None, dL/dthreshold [])."""
    grad_spikes, t_stride = _time_major(grad_spikes.to(torch.float32))
    steps, n = h.shape[0], h[0].numel()
    block = _block(n)
    programs = triton.cdiv(n, block)
    grad_current = torch.empty_like(h)
    grad_v0 = torch.empty(h.shape[1:], device=h.device, dtype=torch.float32)
    partials = torch.empty((2, n), device=h.device, dtype=torch.float32)  # per neuron: dL/dbeta, dL/dth
    _lif_backward_kernel[(programs,)](
        grad_spikes, t_stride, h, v0.contiguous(), _scalar(beta, h), _scalar(threshold, h),
        grad_current, grad_v0, partials, float(spike_fn.param), steps, n, (steps - 1) * t_stride, (steps - 1) * n,
        HAS_BETA=beta is not None, SURROGATE=SURROGATE_CODES[spike_fn.name], BLOCK=block, **LAUNCH_OPTIONS)
    grad_beta, grad_threshold = partials.sum(1).to(threshold.dtype).unbind()
    return grad_current, grad_v0, (None if beta is None else grad_beta), grad_threshold
