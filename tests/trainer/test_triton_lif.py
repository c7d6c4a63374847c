"""The Triton LIF kernels (trainer/triton_lif.py) match trainer/fused.py's loop, on the CPU.

CI has no GPU, so the kernels run in triton's interpreter (``TRITON_INTERPRET=1``), in one subprocess
for all cases (``triton_lif_cases.py``): the variable must be set before the kernels are defined and
must not reach this process, whose other tests may run real CUDA kernels. Each case compares forward
spikes exactly and every gradient to float32 rounding: T = 1, odd sizes, batch 1, several programs,
conv-shaped layers, a current broadcast over T, all-silent and all-firing inputs, learnable and fixed
beta and threshold, IF (no beta), every surrogate, and the three cells that use the kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import triton_lif_cases  # tests/trainer, next to this file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(Path(triton_lif_cases.__file__))], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(triton_lif_cases.CASES))
def test_kernels_match_the_loop(results, case):
    assert results[case] is None, results[case]


def test_every_surrogate_has_a_kernel_branch_and_a_case():
    from trainer import catalog, triton_lif  # defines the kernels compiled (not interpreted): harmless

    names = {spec.name for spec in catalog.SURROGATES}
    assert names == set(triton_lif.SURROGATE_CODES) == set(triton_lif_cases.SURROGATES)


def test_kernels_compile_for_an_h200():
    """Ahead of time, no GPU needed: the interpreter accepts code the compiler may not (a global read in
    a kernel, an LLVM crash), so every variant a job can launch is compiled to an sm_90 cubin here."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trainer import triton_lif

    target = GPUTarget("cuda", 90, 32)
    pointers = lambda *names: {name: "*fp32" for name in names}  # noqa: E731
    forward = {**pointers("current_ptr"), "current_t_stride": "i32",
               **pointers("v0_ptr", "beta_ptr", "threshold_ptr", "h_ptr", "spikes_ptr"),
               "T": "i32", "N": "i32", "HAS_BETA": "constexpr", "BLOCK": "constexpr"}
    backward = {**pointers("grad_spikes_ptr"), "grad_t_stride": "i32",
                **pointers("h_ptr", "v0_ptr", "beta_ptr", "threshold_ptr", "grad_current_ptr", "grad_v0_ptr",
                           "partials_ptr"),
                "param": "fp32", "T": "i32", "N": "i32", "last_grad_offset": "i64", "last_offset": "i64",
                "HAS_BETA": "constexpr", "SURROGATE": "constexpr", "BLOCK": "constexpr"}
    variants = [(triton_lif._lif_forward_kernel, forward, {"HAS_BETA": has_beta, "BLOCK": block})
                for has_beta in (True, False) for block in (128, 512)]
    variants += [(triton_lif._lif_backward_kernel, backward, {"HAS_BETA": has_beta, "SURROGATE": code, "BLOCK": 512})
                 for has_beta in (True, False) for code in triton_lif.SURROGATE_CODES.values()]
    for kernel, signature, constants in variants:
        compiled = triton.compile(ASTSource(kernel, signature, constants), target=target,
                                  options=triton_lif.LAUNCH_OPTIONS)
        assert compiled.asm["cubin"], (kernel.__name__, constants)
