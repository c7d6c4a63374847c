"""The training loop: config, data, model, optimiser, train, validate, report.

Reads top to bottom like nanoGPT's ``train.py``. Everything it reports goes through one callback,
``emit(event, data)``, with the events and fields of the design's SSE table (config, batch, epoch,
completed, stopped, error) plus the additive ones of issue 12: batch events carry ``step`` (optimizer
steps so far in the job), ``batch_loss`` and ``batch_accuracy`` (means over every sample since the
previous batch event) and ``lr``; epoch events carry ``step``, ``layer_stats`` (``trainer.activity``)
and ``train_step`` (eager or compiled, and why: ``trainer.compiled``); ``warning`` events
(``trainer.diagnostics``) follow an epoch event and the run goes on. ``should_stop()`` is checked between batches, in training and in validation. The caller (CLI
or worker process) decides where events go.

No host synchronisation per batch: loss, correct counts and spike counts are summed on the device and
read back only when a batch event (at most about 10 a second) or an epoch event is emitted. A NaN loss
is therefore noticed at the next batch event, a fraction of a second later, and ends the run there.

Loss: cross-entropy on the output spike counts (Σ_t s_t, shape [B, 10]); accuracy: argmax of the counts.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from trainer import data as datasets
from trainer.activity import LayerActivity
from trainer.checkpoint import Checkpoints, TrainingState
from trainer.config import TrainConfig
from trainer.diagnostics import RunDiagnostics
from trainer.models import build_model
from trainer.optim import build_optimizer, build_scheduler
from trainer.step import build_train_step

Emit = Callable[[str, dict], None]
BATCH_EVENT_INTERVAL_S = 0.1  # at most about 10 batch events a second: enough for a live progress bar


class StopRequested(Exception):
    """Raised inside the loop when should_stop() turns true; caught once, in ``train``."""


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; the run ends with an error event (never a NaN in JSON)."""


def resolve_device(requested: str) -> str:
    """'auto' is the first GPU when CUDA is present, else the CPU; anything else is taken as given."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return "cuda:0"
    return requested


def train(config: TrainConfig, emit: Emit, should_stop: Callable[[], bool] = lambda: False, *,
          device: str | None = None, data_dir=None, allow_download: bool = True,
          job_id: str | None = None, checkpoints: Checkpoints | None = None) -> str:
    """Train ``config`` to the end, a stop or an error; return the terminal event's name.

    ``checkpoints`` (``trainer.checkpoint``): where to write ``last``/``best`` after each epoch, and
    what to start from (a run to resume, weights to fine-tune)."""
    started = time.perf_counter()
    config = config.with_seed()
    device = resolve_device(device or config.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        emit("error", {"message": f"device {device} requested but CUDA is not available on this machine"})
        return "error"
    torch.manual_seed(config.seed)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    encode_gen = torch.Generator(device=device).manual_seed(config.seed + 1)

    # -- data: whole uint8 tensors on the device, batches by indexing
    bundle = datasets.load_data(config, data_dir=data_dir, device=device, allow_download=allow_download)

    # -- model and optimiser
    model = build_model(config).to(device)
    optimizer = build_optimizer(model, config)
    layers = model.spiking_layers()
    config_event = {
        "job_id": job_id, "device": device, "dataset": bundle.name,
        "n_train": bundle.n_train, "n_val": bundle.n_val,
        "architecture": model.architecture(), "model_info": model.model_info(),
        "config": config.to_dict(), "seed": config.seed,
    }
    if bundle.warning:
        config_event["warning"] = bundle.warning
    emit("config", config_event)

    def model_input(images: torch.Tensor) -> torch.Tensor:
        # direct: [B, 1, 28, 28] normalised; rate, latency: [T, B, 1, 28, 28] spikes
        return datasets.encode(images, config.encoding, config.timesteps, bundle.mean, bundle.std, encode_gen)

    def check_stop(epoch: int) -> None:
        if should_stop():
            raise StopRequested(epoch)

    n_train_batches = datasets.n_batches(bundle.n_train, config.batch_size)
    activity = LayerActivity(layers, config.timesteps)
    diagnostics = RunDiagnostics()
    # Summed on the device (no host sync per batch), [Σ loss x B, Σ correct]: since the previous batch
    # event, and over the epoch (its own sum, so the epoch means do not depend on when events went out).
    sum_dtype = torch.float32 if device.startswith("mps") else torch.float64  # MPS has no float64
    window_sums = torch.zeros(2, device=device, dtype=sum_dtype)
    epoch_sums = torch.zeros(2, device=device, dtype=sum_dtype)
    checkpoints = checkpoints or Checkpoints()
    state = TrainingState(model, optimizer, {"shuffle": shuffle_gen, "encode": encode_gen},
                          (bundle.mean, bundle.std), device=device)
    first_epoch = checkpoints.restore(config, state, emit)  # > 0 when resuming
    epoch = first_epoch
    step = first_epoch * n_train_batches  # optimizer steps in this job, across epochs (and its resumes)
    # built after the restore, so a resumed job's schedule continues from its step; stepped once per
    # optimiser step
    scheduler = build_scheduler(optimizer, config, n_train_batches, start_step=step)
    train_step = build_train_step(model, optimizer, config, device,
                                  remaining_steps=config.epochs * n_train_batches - step, data_dir=data_dir,
                                  should_stop=should_stop)
    last = {}
    # time.perf_counter() of the latest batch event (the job's first batch goes out at once); kept across
    # epochs, so the interval holds at an epoch's start too: a short epoch would otherwise send a batch
    # event right behind its epoch event
    last_emit = time.perf_counter() - BATCH_EVENT_INTERVAL_S
    try:
        for epoch in range(first_epoch, config.epochs):
            # -- train one epoch
            epoch_start = time.perf_counter()
            model.train()
            activity.reset()
            epoch_sums.zero_()
            seen, window_seen = 0, 0
            batches = datasets.iterate_batches(bundle.train_images, bundle.train_labels, config.batch_size,
                                               shuffle=True, generator=shuffle_gen)
            for batch_index, (images, labels) in enumerate(batches):
                check_stop(epoch)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                loss, counts = train_step(model_input(images), labels)  # [], [B, classes] on the device
                scheduler.step()  # the next step's rate
                step += 1

                batch_size = labels.shape[0]
                batch_sums = torch.stack((loss * batch_size, (counts.argmax(1) == labels).sum()))
                window_sums += batch_sums
                epoch_sums += batch_sums
                window_seen += batch_size
                activity.add_batch(batch_size)
                now = time.perf_counter()
                if now - last_emit >= BATCH_EVENT_INTERVAL_S or batch_index + 1 == n_train_batches:
                    # the one read back per batch event
                    window_loss_sum, window_correct_sum, loss_sum, correct = (
                        torch.cat((window_sums, epoch_sums)).tolist())
                    window_sums.zero_()
                    if not math.isfinite(window_loss_sum):
                        raise NonFiniteLoss(f"loss became {window_loss_sum / window_seen} at epoch {epoch}, "
                                            f"by batch {batch_index}")
                    seen += window_seen
                    last_emit = time.perf_counter()
                    emit("batch", {
                        "epoch": epoch, "batch": batch_index, "n_batches": n_train_batches,
                        "loss": loss_sum / seen, "accuracy": correct / seen,
                        "samples_per_s": seen / max(last_emit - epoch_start, 1e-9),
                        "step": step, "batch_loss": window_loss_sum / window_seen,
                        "batch_accuracy": window_correct_sum / window_seen, "lr": float(lr),
                    })
                    window_seen = 0
            if window_seen:  # the batches ran out before n_train_batches (a truncated iterator): count the rest
                loss_sum, correct = epoch_sums.tolist()
                seen += window_seen
                window_sums.zero_()
            train_loss, train_accuracy = loss_sum / seen, correct / seen

            # -- validate
            val_loss, val_accuracy = evaluate(model, bundle, config, model_input, lambda: check_stop(epoch))
            last = {
                "train_loss": train_loss, "val_loss": val_loss,
                "train_accuracy": train_accuracy, "val_accuracy": val_accuracy,
            }
            layer_stats = activity.stats()
            # The epoch's events go out together, once its checkpoint is on disk: a client that reads the
            # epoch event finds its checkpoint event right behind it, and the server fans the group out in
            # one go (three fan-outs 10 ms apart cost a thousand subscribers three passes).
            epoch_events: list[tuple[str, dict]] = [("epoch", {
                "epoch": epoch, **last,
                "layer_spike_rates": {key: stats["rate"] for key, stats in layer_stats.items()},
                "param_snapshot": model.param_snapshot(),
                "epoch_s": time.perf_counter() - epoch_start,
                "step": step, "layer_stats": layer_stats,
                # which step ran (eager or compiled), why, and the compile's seconds (trainer.compiled)
                "train_step": getattr(train_step, "report", lambda: {"mode": config.compile, "kind": "eager"})(),
            })]
            epoch_events += [("warning", warning)
                             for warning in diagnostics.check_epoch(epoch, layer_stats, val_loss)]
            try:
                checkpoints.save(config, state, epoch, step, last,
                                 lambda event, data: epoch_events.append((event, data)))
            finally:  # a checkpoint that could not be written leaves the epoch's metrics on record all the same
                for event, data in epoch_events:
                    emit(event, data)
    except StopRequested:
        emit("stopped", {"epoch": epoch, "forced": False})
        return "stopped"
    except NonFiniteLoss as exc:
        emit("error", {"message": f"{exc}; try a lower learning rate"})
        return "error"

    emit("completed", {**last, "epochs": config.epochs, "duration_s": time.perf_counter() - started})
    return "completed"


@torch.no_grad()
def evaluate(model, bundle: datasets.DataBundle, config: TrainConfig, model_input, between_batches) -> tuple[float, float]:
    """Mean loss and accuracy over the validation set; calls ``between_batches()`` before each batch."""
    model.eval()
    loss_sum = torch.zeros((), device=bundle.val_labels.device)  # summed on the device, read once
    correct = torch.zeros((), device=bundle.val_labels.device)
    for images, labels in datasets.iterate_batches(bundle.val_images, bundle.val_labels,
                                                   max(config.batch_size, 256), shuffle=False):
        between_batches()
        counts = model(model_input(images)).sum(0)
        loss_sum += F.cross_entropy(counts, labels, reduction="sum")
        correct += (counts.argmax(1) == labels).sum()
    loss_total, correct_total = torch.stack((loss_sum, correct)).tolist()
    loss = loss_total / bundle.n_val
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"validation loss became {loss}")
    return loss, correct_total / bundle.n_val
