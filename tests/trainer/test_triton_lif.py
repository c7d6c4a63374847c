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
