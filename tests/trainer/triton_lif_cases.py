"""The Triton LIF kernels against the per-step loop of ``trainer.fused``, case by case.

Run by ``test_triton_lif.py`` in a subprocess with ``TRITON_INTERPRET=1`` (triton reads it when a kernel
is defined, so it must be set before ``trainer.triton_lif`` is imported, and it must not leak into a
process that runs real CUDA kernels). ``python tests/trainer/triton_lif_cases.py`` prints one JSON
object, {case: null when the kernels match, else what differed}. Importing this module loads neither
torch's kernels nor triton: the test collects ``CASES`` from it.

Every case runs the same ``LIFSequence.apply`` (or a cell's forward) twice, once forced through the
kernels and once through the loop, then compares spikes exactly and every gradient to float32 rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SURROGATES = ("atan_surrogate", "fast_sigmoid", "superspike", "sigmoid_surrogate", "straight_through",
              "triangular")

# name -> (steps T, batch B, layer shape, input regime, surrogate, its param (None: default), beta
# (None: IF), learn beta and threshold, loss on the spike counts over T (a gradient broadcast over T))
CASES: dict[str, tuple] = {
    "T1_batch1": (1, 1, (5,), "random", "atan_surrogate", None, 0.9, True, False),
    "odd_sizes": (7, 3, (13,), "random", "atan_surrogate", None, 0.9, True, False),
    "several_programs": (5, 2, (131,), "random", "fast_sigmoid", None, 0.8, True, True),
    "conv_shaped": (4, 2, (3, 5, 7), "random", "superspike", None, 0.95, True, False),
    "broadcast_current": (6, 3, (17,), "broadcast", "atan_surrogate", None, 0.9, True, True),
    "all_silent": (5, 2, (11,), "silent", "atan_surrogate", None, 0.9, True, False),
    "all_firing": (5, 2, (11,), "firing", "atan_surrogate", None, 0.9, True, False),
    "fixed_beta_threshold": (6, 2, (9,), "random", "atan_surrogate", None, 0.9, False, True),
    "if_no_beta": (6, 2, (9,), "random", "atan_surrogate", None, None, True, False),
    "if_fixed_threshold": (6, 2, (9,), "random", "triangular", None, None, False, True),
    **{f"surrogate_{name}": (5, 2, (19,), "random", name, None, 0.9, True, False) for name in SURROGATES},
    "surrogate_param_override": (5, 2, (19,), "random", "sigmoid_surrogate", 2.5, 0.9, True, False),
    "cell_LIFCell": (5, 3, (21,), "random", "atan_surrogate", None, "LIFCell", True, True),
    "cell_IFCell": (5, 3, (21,), "random", "fast_sigmoid", None, "IFCell", True, False),
    "cell_LapicqueCell": (5, 3, (21,), "random", "atan_surrogate", None, "LapicqueCell", True, False),
}


def _current(torch, gen, steps, batch, shape, regime):
    """[T, B, *shape]: random around the threshold, all below 0, all far above, or one current for all T."""
    size = (steps, batch, *shape)
    if regime == "silent":
        return -torch.rand(size, generator=gen)  # v stays <= 0: never fires
    if regime == "firing":
        return 2 + torch.rand(size, generator=gen)  # v >= 2 after every reset of 1: fires every step
    if regime == "broadcast":
        return (torch.randn((batch, *shape), generator=gen) + 0.6).expand(size)  # stride 0 over T
    return torch.randn(size, generator=gen) * 1.5 + 0.5


def _run(torch, fused, surrogates, use_triton, spec):
    """Spikes and {name: gradient} of one case through the kernels or the loop."""
    from trainer.cells import CELL_CLASSES

    steps, batch, shape, regime, surrogate, param, beta, learn, on_counts = spec
    fused._use_triton = lambda current, spike_fn: use_triton  # the dispatch under test, forced
    gen = torch.Generator().manual_seed(7)
    current = _current(torch, gen, steps, batch, shape, regime)
    base = current if regime != "broadcast" else current[0]
    base = base.clone().requires_grad_()
    current = base.expand(current.shape) if regime == "broadcast" else base
    spike_fn = surrogates.get(surrogate, param)
    if isinstance(beta, str):  # a cell: its parameters as the model trains them
        torch.manual_seed(0)
        cell = CELL_CLASSES[beta](shape, spike_fn, learn_beta=learn and beta != "IFCell", learn_threshold=learn)
        spikes = cell(current)
        leaves = {"current": base, **dict(cell.named_parameters())}
    else:
        v0 = (torch.rand((batch, *shape), generator=gen) * 0.5).requires_grad_()
        beta_t = None if beta is None else torch.tensor(beta, requires_grad=learn)
        threshold = torch.tensor(1.0, requires_grad=learn)
        spikes = fused.LIFSequence.apply(current, v0, beta_t, threshold, spike_fn)
        leaves = {"current": base, "v0": v0, "beta": beta_t, "threshold": threshold}
    weights = torch.randn((batch, *shape) if on_counts else spikes.shape, generator=gen)
    loss = ((spikes.sum(0) if on_counts else spikes) * weights).sum()
    loss.backward()
    grads = {name: leaf.grad for name, leaf in leaves.items()
             if leaf is not None and leaf.requires_grad}
    return spikes.detach(), grads


def check(name: str) -> str | None:
    import torch

    from trainer import fused, surrogates

    spec = CASES[name]
    kernel_spikes, kernel_grads = _run(torch, fused, surrogates, True, spec)
    loop_spikes, loop_grads = _run(torch, fused, surrogates, False, spec)
    regime = spec[3]
    if not torch.equal(kernel_spikes, loop_spikes):
        return f"spikes differ at {int((kernel_spikes != loop_spikes).sum())} of {kernel_spikes.numel()}"
    if regime == "silent" and kernel_spikes.any() or regime == "firing" and not kernel_spikes.all():
        return f"the {regime} input did not give {regime} spikes"
    if set(kernel_grads) != set(loop_grads):
        return f"gradients for {sorted(kernel_grads)}, the loop gives {sorted(loop_grads)}"
    for key, expected in loop_grads.items():
        actual = kernel_grads[key]
        if actual is None or expected is None:
            if actual is not expected:
                return f"d/d{key}: {actual} vs the loop's {expected}"
            continue
        scale = float(expected.abs().max()) + 1e-12
        error = float((actual - expected).abs().max())
        if error > 1e-5 * scale:  # float32 rounding, relative to the largest gradient
            return f"d/d{key} differs by {error:.3g} (largest {scale:.3g})"
    return None


def main() -> None:
    print(json.dumps({name: check(name) for name in CASES}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    main()
