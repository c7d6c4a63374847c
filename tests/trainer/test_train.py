"""The training loop on the synthetic dataset: accuracy, event order and fields, stop, NaN, seeding."""

import json

import pytest
import torch

from trainer import train as train_module
from trainer.config import TrainConfig

SMALL = {"epochs": 3, "hidden": [64], "timesteps": 10, "seed": 1234, "device": "cpu"}

EVENT_FIELDS = {
    "config": {"job_id", "device", "dataset", "n_train", "n_val", "architecture", "model_info", "config", "seed"},
    "batch": {"epoch", "batch", "n_batches", "loss", "accuracy", "samples_per_s"},
    "epoch": {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "layer_spike_rates",
              "param_snapshot", "epoch_s"},
    "completed": {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "duration_s"},
    "stopped": {"epoch", "forced"},
    "error": {"message"},
}
MODEL_INFO = {"total_params", "trainable_params", "spiking_cells", "cell_types", "learnable_dynamics"}


def run(overrides=None, should_stop=lambda: False, **kwargs):
    events = []
    config = TrainConfig.from_dict({**SMALL, **(overrides or {})})
    outcome = train_module.train(config, lambda e, d: events.append((e, d)), should_stop, **kwargs)
    for _, data in events:  # everything is plain JSON, never NaN
        json.dumps(data, allow_nan=False)
    return outcome, events


@pytest.fixture(scope="module")
def seeded_run():
    return run()


def test_seeded_run_reaches_90_percent_with_documented_events(seeded_run):
    outcome, events = seeded_run
    assert outcome == "completed"
    names = [e for e, _ in events]
    assert names[0] == "config" and names[-1] == "completed"
    assert names.count("epoch") == 3
    # order: config, then per epoch some batches and exactly one epoch event
    epoch_positions = [i for i, n in enumerate(names) if n == "epoch"]
    previous = 0
    for pos in epoch_positions:
        assert "batch" in names[previous + 1:pos]
        previous = pos
    for name, data in events:
        assert set(data) >= EVENT_FIELDS[name], name
    config_event = events[0][1]
    assert set(config_event["model_info"]) >= MODEL_INFO
    assert config_event["architecture"] == "784→64→10"
    assert config_event["seed"] == 1234 and config_event["config"]["seed"] == 1234
    epochs = [d for e, d in events if e == "epoch"]
    assert [d["epoch"] for d in epochs] == [0, 1, 2]
    assert epochs[-1]["val_accuracy"] >= 0.90
    assert set(epochs[-1]["layer_spike_rates"]) == {"lifs.0", "lifs.1"}
    assert all(0 <= r <= 1 for r in epochs[-1]["layer_spike_rates"].values())
    assert epochs[-1]["param_snapshot"]["lifs.0.beta"] == pytest.approx(0.9)
    completed = events[-1][1]
    assert completed["val_accuracy"] == epochs[-1]["val_accuracy"]


def test_batch_events_are_throttled_and_cover_each_epoch(seeded_run):
    _, events = seeded_run
    batches = [d for e, d in events if e == "batch"]
    n_batches = batches[0]["n_batches"]
    assert n_batches == -(-6000 // 64)
    last_of_epoch = [d for d in batches if d["batch"] == n_batches - 1]
    assert len(last_of_epoch) == 3  # the final batch of every epoch is always reported
    assert len(batches) < 3 * n_batches  # throttled: not one event per batch


def test_seeded_runs_are_reproducible_on_cpu():
    a = run({"epochs": 1})[1]
    b = run({"epochs": 1})[1]
    timed = ("epoch_s", "duration_s", "samples_per_s", "train_step")  # train_step: auto's timed decision
    strip = lambda evs: [(e, {k: v for k, v in d.items() if k not in timed})
                         for e, d in evs if e in ("epoch", "completed")]
    assert strip(a) == strip(b)


def test_should_stop_is_honoured_within_one_batch():
    events = []

    def emit(event, data):
        events.append(event)

    class CountingStop:
        calls = 0

        def __call__(self):
            self.calls += 1
            return self.calls > 5  # the 6th check asks to stop

    stopper = CountingStop()
    config = TrainConfig.from_dict({**SMALL, "epochs": 2})
    outcome = train_module.train(config, emit, stopper)
    assert outcome == "stopped"
    assert events[-1] == "stopped"
    assert stopper.calls == 6  # checked before every batch; no batch ran after the request
    assert "epoch" not in events


def test_should_stop_is_honoured_during_validation(monkeypatch):
    # stop on the first check inside validation: the run reports stopped without an epoch event
    state = {"validating": False}
    real_evaluate = train_module.evaluate

    def evaluate(*args, **kwargs):
        state["validating"] = True
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    outcome, events = run({"epochs": 1}, should_stop=lambda: state["validating"])
    assert outcome == "stopped"
    assert [e for e, _ in events][-1] == "stopped"
    assert events[-1][1] == {"epoch": 0, "forced": False}
    assert "epoch" not in [e for e, _ in events]


def test_nan_loss_ends_with_a_clear_error(monkeypatch):
    real = train_module.F.cross_entropy

    def poisoned(counts, labels, **kwargs):
        return real(counts, labels, **kwargs) * float("nan")

    monkeypatch.setattr(train_module.F, "cross_entropy", poisoned)
    outcome, events = run({"epochs": 1})
    assert outcome == "error"
    name, data = events[-1]
    assert name == "error" and "nan" in data["message"].lower() and "\n" not in data["message"]


def test_rate_encoding_trains():
    outcome, events = run({"epochs": 1, "encoding": "rate"})
    assert outcome == "completed"
    assert events[-1][1]["val_accuracy"] > 0.5


def test_cuda_request_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the no-CUDA error path cannot be exercised here")
    outcome, events = run({"epochs": 1, "device": "cuda"})
    assert outcome == "error" and "CUDA" in events[-1][1]["message"]
