"""Issue 12's additions to the training events: step-level batch fields, layer_stats, warnings, and no
host read-back per batch (issue 14)."""

from __future__ import annotations

import itertools
import json
import sys

import pytest
import torch

from trainer import catalog
from trainer import train as train_module
from trainer.activity import HISTOGRAM_BINS, LayerActivity
from trainer.config import TrainConfig
from trainer.diagnostics import PLATEAU_EPOCHS, RunDiagnostics

SMALL = {"epochs": 2, "hidden": [32], "timesteps": 5, "batch_size": 128, "seed": 7, "device": "cpu"}
N_TRAIN = 6000  # the synthetic set's training split


def run(overrides=None):
    events = []
    config = TrainConfig.from_dict({**SMALL, **(overrides or {})})
    outcome = train_module.train(config, lambda e, d: events.append((e, d)))
    for _, data in events:
        json.dumps(data, allow_nan=False)
    return outcome, events


@pytest.fixture(scope="module")
def small_run():
    return run()


def test_batch_events_carry_step_window_means_and_lr(small_run):
    outcome, events = small_run
    assert outcome == "completed"
    batches = [d for e, d in events if e == "batch"]
    epochs = [d for e, d in events if e == "epoch"]
    n_batches = batches[0]["n_batches"]
    steps = [b["step"] for b in batches]
    assert steps == sorted(set(steps)) and steps[0] >= 1
    assert all(b["step"] == b["epoch"] * n_batches + b["batch"] + 1 for b in batches)
    assert [e["step"] for e in epochs] == [n_batches, 2 * n_batches]
    assert all(b["lr"] == pytest.approx(0.001) for b in batches)
    for epoch in (0, 1):
        # every sample of the epoch is in exactly one window: the windows' weighted means give the epoch's
        windows = [b for b in batches if b["epoch"] == epoch]
        sizes, previous = [], -1
        for b in windows:
            last_sample = min((b["batch"] + 1) * SMALL["batch_size"], N_TRAIN)
            sizes.append(last_sample - (previous + 1) * SMALL["batch_size"])
            previous = b["batch"]
        assert sum(sizes) == N_TRAIN
        loss = sum(b["batch_loss"] * n for b, n in zip(windows, sizes)) / N_TRAIN
        accuracy = sum(b["batch_accuracy"] * n for b, n in zip(windows, sizes)) / N_TRAIN
        assert loss == pytest.approx(epochs[epoch]["train_loss"], rel=1e-6)
        assert accuracy == pytest.approx(epochs[epoch]["train_accuracy"], rel=1e-9)
        assert windows[-1]["loss"] == epochs[epoch]["train_loss"]
        assert all(0 <= b["batch_accuracy"] <= 1 for b in windows)
    assert batches[-1]["batch_loss"] < batches[0]["batch_loss"]  # the curve shows learning


def test_epoch_events_carry_layer_stats(small_run):
    _, events = small_run
    for data in (d for e, d in events if e == "epoch"):
        stats = data["layer_stats"]
        assert set(stats) == set(data["layer_spike_rates"]) == {"lifs.0", "lifs.1"}
        for key, layer in stats.items():
            assert set(layer) == {"rate", "silent_fraction", "saturated_fraction", "rate_histogram"}
            assert layer["rate"] == data["layer_spike_rates"][key]
            histogram = layer["rate_histogram"]
            assert len(histogram) == HISTOGRAM_BINS and sum(histogram) == pytest.approx(1.0)
            # silent neurons (rate 0) are in the first bin; saturated ones (> 0.9) in the last two
            assert layer["silent_fraction"] <= histogram[0] + 1e-9
            assert layer["saturated_fraction"] <= histogram[-2] + histogram[-1] + 1e-9
            assert 0 < layer["rate"] < 1


class FakeCell:
    def __init__(self, counts):
        self.last_spike_counts = torch.tensor(counts, dtype=torch.float32)


def test_layer_activity_turns_counts_into_rates_and_fractions():
    # 4 neurons, T = 10, two batches of 5 samples: 100 steps per neuron over the epoch
    cell = FakeCell([0.0, 0.0, 0.0, 0.0])
    activity = LayerActivity({"lif": cell}, timesteps=10)
    for counts in ([0.0, 10.0, 25.0, 48.0], [0.0, 15.0, 25.0, 47.0]):
        cell.last_spike_counts = torch.tensor(counts)
        activity.add_batch(5)
    stats = activity.stats()["lif"]  # rates 0, 0.25, 0.5, 0.95
    assert stats["rate"] == pytest.approx((0 + 0.25 + 0.5 + 0.95) / 4)
    assert stats["silent_fraction"] == 0.25 and stats["saturated_fraction"] == 0.25
    expected = [0.0] * HISTOGRAM_BINS
    for bin_index in (0, 5, 10, 19):
        expected[bin_index] = 0.25
    assert stats["rate_histogram"] == pytest.approx(expected)
    activity.reset()
    assert activity.stats() == {}


def test_a_silent_layer_is_warned_about_once_and_the_run_goes_on(monkeypatch):
    # Lapicque with R = 1 (its default before issue 11): the input gain R dt/tau = 0.05 at 5 steps leaves
    # the output layer silent from the start
    defaults = catalog.cell_param_defaults
    monkeypatch.setattr(catalog, "cell_param_defaults",
                        lambda name: {**defaults(name), **({"R": 1.0} if name == "LapicqueCell" else {})})
    outcome, events = run({"epochs": 2, "cell_type": "LapicqueCell", "hidden": [16], "timesteps": 5,
                           "batch_size": 256})
    assert outcome == "completed"
    names = [e for e, _ in events]
    warnings = [d for e, d in events if e == "warning"]
    assert warnings, "expected a silent_layer warning"
    assert all(w["kind"] == "silent_layer" for w in warnings)
    assert [w["layer"] for w in warnings] == ["lifs.1"]  # reported when it turns silent, not every epoch
    assert warnings[0]["epoch"] == 0 and "lifs.1" in warnings[0]["message"]
    assert names.index("warning") == names.index("epoch") + 1  # right after the epoch that showed it
    first_epoch = next(d for e, d in events if e == "epoch")
    assert first_epoch["layer_stats"]["lifs.1"]["silent_fraction"] == 1.0


def test_diagnostics_report_a_plateau_once_and_silence_again_after_recovery():
    diagnostics = RunDiagnostics()
    alive = {"lif": {"rate": 0.2, "silent_fraction": 0.1}}
    mostly_silent = {"lif": {"rate": 0.05, "silent_fraction": 0.96}}
    losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.94, 0.99, 0.8, 0.85]
    kinds = []
    for epoch, loss in enumerate(losses):
        stats = mostly_silent if epoch in (2, 3, 6) else alive
        kinds.append([w["kind"] for w in diagnostics.check_epoch(epoch, stats, loss)])
    assert kinds[2] == ["silent_layer"] and kinds[3] == [] and kinds[6][0] == "silent_layer"
    plateau = [epoch for epoch, k in enumerate(kinds) if "val_loss_plateau" in k]
    assert plateau == [1 + PLATEAU_EPOCHS]  # best at epoch 1; epochs 2..6 did not beat it
    assert diagnostics.check_epoch(10, {"lif": {"rate": 0.0005, "silent_fraction": 0.0}}, 0.7)[0]["layer"] == "lif"


READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def test_the_batch_event_interval_holds_across_an_epochs_start(monkeypatch):
    """Epochs shorter than the interval: after the job's first batch, only each epoch's last goes out, so
    no batch event lands right behind an epoch event."""
    monkeypatch.setattr(train_module, "BATCH_EVENT_INTERVAL_S", 60.0)  # longer than the whole job
    outcome, events = run({"epochs": 3, "hidden": [16]})
    assert outcome == "completed"
    assert [(d["epoch"], d["batch"]) for e, d in events if e == "batch"] == [(0, 0), (0, 46), (1, 46), (2, 46)]


def test_an_epoch_whose_batches_run_out_early_still_counts_them(monkeypatch):
    """A data iterator that stops before ``n_batches`` (as the memory calibration's does) leaves samples no
    batch event reported: the epoch's means still cover them."""
    whole = train_module.datasets.iterate_batches
    monkeypatch.setattr(train_module.datasets, "iterate_batches",
                        lambda *args, **kwargs: itertools.islice(whole(*args, **kwargs), 3))
    monkeypatch.setattr(train_module, "BATCH_EVENT_INTERVAL_S", 60.0)
    outcome, events = run({"epochs": 2, "hidden": [16]})
    assert outcome == "completed"
    assert [(d["epoch"], d["batch"]) for e, d in events if e == "batch"] == [(0, 0)]
    first, second = (d for e, d in events if e == "epoch")
    assert 0 < first["train_accuracy"] < 1 and 0 < second["train_accuracy"] < 1
    assert first["step"] == 3 and second["step"] == 6


def test_no_read_back_per_batch(monkeypatch):
    """Values come to the host only when an event goes out: batch events (here only each epoch's last
    batch, with throttling set very long), validation and the epoch's layer stats."""
    reads = []
    loop_files = (train_module.__file__, sys.modules["trainer.activity"].__file__)
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller in loop_files:
                reads.append((_name, caller))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(train_module, "BATCH_EVENT_INTERVAL_S", 1e12)
    outcome, events = run({"epochs": 2, "hidden": [16]})
    monkeypatch.undo()
    assert outcome == "completed"
    n_batches = next(d for e, d in events if e == "batch")["n_batches"]
    assert n_batches == 47
    # the job's first batch goes out at once; after that, only each epoch's last
    assert [(d["epoch"], d["batch"]) for e, d in events if e == "batch"] == [(0, 0), (0, 46), (1, 46)]
    # one read for each batch event, and per epoch one for validation and one for the layer stats
    assert len(reads) == 3 + 2 * 2, reads
