"""Checkpoints in the training loop: files and events per epoch, reloading, resume, fine-tune, crashes."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from trainer import checkpoint, data, train as train_module
from trainer.checkpoint import CheckpointError, Checkpoints
from trainer.config import TrainConfig

TINY = {"epochs": 3, "hidden": [16], "timesteps": 5, "batch_size": 128, "seed": 77, "device": "cpu", "lr": 0.005}


def run(overrides=None, *, stop_when=lambda events: False, **checkpoint_args):
    """Train TINY with ``overrides``; ``stop_when(events so far)`` is the loop's stop check."""
    events = []
    config = TrainConfig.from_dict({**TINY, **(overrides or {})})
    outcome = train_module.train(config, lambda e, d: events.append((e, json.loads(json.dumps(d)))),
                                 lambda: stop_when(events), checkpoints=Checkpoints(**checkpoint_args))
    return outcome, events


def named(events, name):
    return [data for event, data in events if event == name]


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    return directory, *run(directory=directory)


def test_last_after_every_epoch_and_best_at_the_best_epoch(three_epochs):
    directory, outcome, events = three_epochs
    assert outcome == "completed"
    epochs = named(events, "epoch")
    checkpoints = named(events, "checkpoint")
    assert [c["epoch"] for c in checkpoints if c["which"] == "last"] == [0, 1, 2]
    # best follows every strict improvement of the validation accuracy
    best_so_far, improved = None, []
    for e in epochs:
        if best_so_far is None or e["val_accuracy"] > best_so_far:
            best_so_far = e["val_accuracy"]
            improved.append(e["epoch"])
    assert [c["epoch"] for c in checkpoints if c["which"] == "best"] == improved
    # each checkpoint event follows its epoch event
    order = [(e, d["epoch"]) for e, d in events if e in ("epoch", "checkpoint")]
    assert order[0] == ("epoch", 0) and order[1] == ("checkpoint", 0)
    for which in ("last", "best"):
        assert (directory / f"{which}.safetensors").stat().st_size == [
            c["bytes"] for c in checkpoints if c["which"] == which][-1]
    assert sorted(p.name for p in directory.iterdir()) == ["best.safetensors", "last.safetensors", "last.state.pt"]


def test_a_fresh_model_from_the_metadata_reproduces_the_final_accuracy(three_epochs):
    directory, _, events = three_epochs
    tensors = load_file(directory / "last.safetensors")  # plain safetensors, nothing of ours needed
    assert "fcs.0.weight" in tensors and list(tensors["fcs.0.weight"].shape) == [16, 784]
    model, config, metadata = checkpoint.load_model(directory / "last.safetensors")
    assert metadata["epoch"] == "2" and json.loads(metadata["metrics"])["val_accuracy"] == named(events, "completed")[0]["val_accuracy"]
    bundle = data.load_data(config)
    assert (bundle.mean, bundle.std) == (float(metadata["input_mean"]), float(metadata["input_std"]))
    encode = lambda images: data.encode(images, config.encoding, config.timesteps, bundle.mean, bundle.std)  # noqa: E731
    _, accuracy = train_module.evaluate(model, bundle, config, encode, lambda: None)
    assert accuracy == named(events, "completed")[0]["val_accuracy"]


def test_resume_after_a_stop_equals_the_uninterrupted_run(three_epochs, tmp_path):
    _, _, whole = three_epochs

    outcome, first = run(directory=tmp_path / "first", stop_when=lambda events: named(events, "checkpoint"))
    assert outcome == "stopped" and [c["epoch"] for c in named(first, "checkpoint")] == [0, 0]

    outcome, resumed = run(directory=tmp_path / "second", resume_from=tmp_path / "first")
    assert outcome == "completed"
    assert [e["epoch"] for e in named(resumed, "epoch")] == [1, 2]
    assert {e["epoch"] for e in named(resumed, "batch")} == {1, 2}
    assert named(resumed, "checkpoint")[0]["which"] == "best"  # carried over from the first run
    final = named(resumed, "completed")[0]
    expected = named(whole, "completed")[0]
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        assert final[key] == expected[key], key
    assert named(resumed, "epoch")[-1]["param_snapshot"] == named(whole, "epoch")[-1]["param_snapshot"]


def test_fine_tune_starts_where_the_source_ended(three_epochs):
    directory, _, events = three_epochs
    source_accuracy = named(events, "completed")[0]["val_accuracy"]
    first_batch = lambda events: named(events, "batch")[0]["accuracy"]  # noqa: E731
    # the first batch event comes after the first optimiser step: stop the run right there
    _, tuned = run(init_from=directory / "best.safetensors", stop_when=lambda events: named(events, "batch"))
    assert first_batch(tuned) > 0.5 and source_accuracy > 0.5, (first_batch(tuned), source_accuracy)
    _, fresh = run(stop_when=lambda events: named(events, "batch"))
    assert first_batch(fresh) < 0.3  # chance is 0.1


def test_fine_tune_with_another_architecture_names_the_mismatch(three_epochs):
    directory, _, _ = three_epochs
    with pytest.raises(CheckpointError, match=r"fcs\.0\.weight is \[16, 784\] in the checkpoint but \[8, 784\]"):
        run({"hidden": [8]}, init_from=directory / "last.safetensors")


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path):
    writes = []

    def crash_on_second_epoch(path):
        writes.append(path.name)
        if len(writes) > 3:  # epoch 0 wrote state, last, best; the crash hits epoch 1's first file
            raise KeyboardInterrupt("simulated crash mid-write")

    with pytest.raises(KeyboardInterrupt):
        run(directory=tmp_path, before_replace=crash_on_second_epoch)
    assert checkpoint.read_metadata(tmp_path / "last.safetensors")["epoch"] == "0"
    state = torch.load(tmp_path / "last.state.pt", weights_only=True)
    assert state["epoch"] == 0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_an_epochs_events_go_out_together_once_its_checkpoint_is_written(tmp_path):
    """The epoch event waits for the epoch's checkpoint: whoever reads it can fetch that checkpoint, and
    the service gets the epoch's events in one burst (one fan-out to its subscribers, not three)."""
    on_disk_at_epoch_event, events = [], []

    def emit(event, data):
        events.append(event)
        if event == "epoch":
            on_disk_at_epoch_event.append(checkpoint.read_metadata(tmp_path / "last.safetensors")["epoch"])

    config = TrainConfig.from_dict({**TINY, "epochs": 2})
    assert train_module.train(config, emit, checkpoints=Checkpoints(directory=tmp_path)) == "completed"
    assert on_disk_at_epoch_event == ["0", "1"]
    epoch_ends = [i for i, event in enumerate(events) if event == "epoch"]
    for i in epoch_ends:  # nothing between an epoch event and its checkpoint events
        assert events[i + 1] == "checkpoint", events


def test_a_checkpoint_that_cannot_be_written_still_leaves_the_epoch_on_record(tmp_path):
    writes = []

    def disk_full_in_second_epoch(path):
        writes.append(path.name)
        if len(writes) > 3:
            raise OSError(28, "No space left on device")

    events = []
    config = TrainConfig.from_dict({**TINY, "epochs": 2})
    with pytest.raises(OSError, match="No space left"):
        train_module.train(config, lambda e, d: events.append((e, d)),
                           checkpoints=Checkpoints(directory=tmp_path, before_replace=disk_full_in_second_epoch))
    assert [d["epoch"] for d in named(events, "epoch")] == [0, 1]
    assert [(c["which"], c["epoch"]) for c in named(events, "checkpoint")] == [("last", 0), ("best", 0)]


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.load_model(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load_model(tmp_path / "missing.safetensors")


def test_the_lr_scheduler_state_is_saved_and_restored(tmp_path):
    config = TrainConfig.from_dict(TINY)

    def fresh_state():
        from trainer.models import build_model

        model = build_model(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return checkpoint.TrainingState(model, optimizer, {"shuffle": torch.Generator()}, (0.1, 0.3),
                                        scheduler=scheduler)

    saved = fresh_state()
    for _ in range(5):  # stepped per optimiser step: lr 0.005 -> 0.00125 after 4 steps
        saved.optimizer.step()
        saved.scheduler.step()
    Checkpoints(tmp_path).save(config, saved, 0, 5, {"val_accuracy": 0.5}, lambda e, d: None)
    restored = fresh_state()
    assert Checkpoints(resume_from=tmp_path).restore(config, restored, lambda e, d: None) == 1
    assert restored.scheduler.state_dict() == saved.scheduler.state_dict()
    assert restored.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"] == 0.00125
