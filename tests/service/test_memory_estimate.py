"""The memory admission estimate (``service.memory``): its model of the networks, its budgets, and its
calibration against the measured peak resident memory of real training steps."""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service import memory
from service.settings import _size
from trainer import catalog
from trainer.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from memory_calibration import QUICK_CONFIGS, measure_peak_rss, run_measured  # noqa: E402

TOLERANCE = 0.30  # the issue's bar: within 30% of the measured peak


def test_the_estimate_needs_no_torch():
    import subprocess

    code = ("import sys, service.memory, service.jobs; "
            "assert 'torch' not in sys.modules, 'service.memory pulled in torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_every_catalog_cell_has_a_measured_kept_count():
    assert set(memory.CELL_KEPT_FLOATS) == {cell.name for cell in catalog.CELLS}


def test_the_network_shapes_match_the_models():
    """The estimate's neuron and parameter counts are those of the torch models it stands for."""
    from trainer.models import build_model

    for values in ({"hidden": [300, 50]}, {"hidden": [64], "cell_type": "RecurrentLIFCell"},
                   {"network": "ConvSpikingNet"}, {"network": "ConvSpikingNet", "cell_type": "RecurrentLIFCell"},
                   {"dataset": "nmnist", "hidden": [64]}, {"dataset": "nmnist", "network": "ConvSpikingNet"}):
        config = TrainConfig.from_dict(values)
        model = build_model(config)
        cells = model.spiking_layers().values()
        assert [int(math.prod(cell.shape)) for cell in cells] == memory.layer_neurons(config), values
        assert sum(p.numel() for p in model.parameters()) == memory.parameter_count(config), values


def test_it_grows_with_every_field_it_names_to_reduce():
    config = TrainConfig.from_dict({"hidden": [1024, 512], "batch_size": 128, "timesteps": 50,
                                    "cell_type": "AdExCell", "encoding": "rate", "learn_beta": True})
    smaller = {"batch_size": {"batch_size": 64}, "timesteps": {"timesteps": 25}, "hidden": {"hidden": [512, 512]},
               "encoding": {"encoding": "direct"}, "cell_type": {"cell_type": "LIFCell", "learn_beta": False},
               "learn_beta": {"learn_beta": False}}
    total = memory.estimate_job_memory(config, "cpu").total
    assert memory.reducible_fields(config) == list(smaller)
    for field, change in smaller.items():
        reduced = TrainConfig.from_dict({**config.to_dict(), "seed": None, **change})
        assert memory.estimate_job_memory(reduced, "cpu").total < total, field


def test_the_issue_configs_are_judged_about_as_large_as_it_found():
    """Issue 10: MLP 4096x4 at B 512, T 100 was heading for ~10 GB; ConvSpikingNet rate B 512 T 100 needs
    ~23 GB with LIF cells and far more (it says ~47 GB) with AlphaCell."""
    def gib(values: dict) -> float:
        return memory.estimate_job_memory(TrainConfig.from_dict(values), "cpu").total / memory.GIB

    big = {"batch_size": 512, "timesteps": 100}
    assert 8 < gib({"hidden": [4096] * 4, **big}) < 14
    conv = {"network": "ConvSpikingNet", "encoding": "rate", **big}
    assert 18 < gib(conv) < 32
    assert gib({**conv, "cell_type": "AlphaCell"}) > 1.25 * gib(conv)


def test_largest_fitting_is_the_boundary():
    config = TrainConfig.from_dict({"hidden": [2048], "batch_size": 512, "timesteps": 100})
    estimate = lambda b: memory.estimate_job_memory(TrainConfig.from_dict({"hidden": [2048], "batch_size": b,
                                                                           "timesteps": 100}), "cpu").total
    budget = estimate(300) + estimate(301) >> 1  # between two batch sizes, whatever the calibration
    assert memory.largest_fitting(config, "cpu", "batch_size", budget) == 300
    assert memory.largest_fitting(config, "cpu", "batch_size", estimate(300)) == 300
    assert memory.largest_fitting(config, "cpu", "batch_size", memory.GIB // 2) is None


def test_budgets_come_from_the_flag_or_the_machine():
    assert memory.cpu_job_budget(3 * memory.GIB, 2) == 3 * memory.GIB
    machine = memory.machine_memory_bytes()
    assert 0 < machine <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory.cpu_job_budget(0, 2) == (machine - memory.SERVER_RESERVE_BYTES) // 2
    assert memory.cpu_job_budget(0, 4) < memory.cpu_job_budget(0, 2)
    assert memory.gpu_job_budget(5 * memory.GIB, 2, 1) == 5 * memory.GIB
    if not memory.gpu_memory_bytes():
        assert memory.gpu_job_budget(0, 2, 0) == 0  # no GPU: nothing to judge against


def test_sizes_parse_with_units():
    assert _size("8G") == 8 * memory.GIB
    assert _size("512MiB") == 512 * memory.MIB
    assert _size("1.5gb") == int(1.5 * memory.GIB)
    assert _size("0") == 0
    with pytest.raises(ValueError, match="size like 8G"):
        _size("lots")


def test_an_amount_over_a_limit_never_reads_as_equal_to_it():
    assert memory.gib(1.5 * memory.GIB + 1, round_up=True) == "1.51 GiB"
    assert memory.gib(1.5 * memory.GIB) == memory.gib(1.5 * memory.GIB, round_up=True) == "1.50 GiB"


def test_resident_bytes_reads_this_process():
    resident, peak = memory.resident_bytes(os.getpid())
    assert 10 * memory.MIB < resident <= peak
    assert memory.resident_bytes(2**22 + 12345) is None  # above pid_max: no such process


def test_a_measured_peak_is_the_childs_own():
    """A child of a large process reports its own peak. (``ru_maxrss`` from wait4 carries the parent's
    resident size at fork across exec: in CI every config measured the pytest process's 1,429 MiB.)"""
    ballast = bytearray(512 * memory.MIB)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page: resident
    assert memory.resident_bytes(os.getpid())[0] > 512 * memory.MIB
    peak, _ = run_measured("pass")
    assert 5 * memory.MIB < peak < 100 * memory.MIB, peak / memory.MIB


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 45 CPU seconds in all; minutes of wall time on a crowded machine
def test_the_estimate_is_within_30_percent_of_the_measured_peak():
    """Each config: one optimiser step and one validation batch in a fresh process, peak RSS is its own VmHWM.
    Two at a time (the peaks are per process, so running side by side does not change them)."""
    assert len(QUICK_CONFIGS) >= 5
    with ThreadPoolExecutor(2) as pool:
        measured = list(pool.map(measure_peak_rss, QUICK_CONFIGS))
    report = []
    for config, (peak, _) in zip(QUICK_CONFIGS, measured):
        estimate = memory.estimate_job_memory(TrainConfig.from_dict(config), "cpu").total
        report.append((config, estimate / memory.MIB, peak / memory.MIB, estimate / peak))
    print("\n".join(f"{c}: estimate {e:.0f} MiB, measured {m:.0f} MiB, ratio {r:.2f}" for c, e, m, r in report))
    assert all(abs(ratio - 1) <= TOLERANCE for *_, ratio in report), report
