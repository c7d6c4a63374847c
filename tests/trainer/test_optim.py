"""The training recipe: each optimiser and schedule trains a real job, and the ``lr`` its batch events
report follows the schedule's formula step by step (formulas restated here, independently of
``trainer.optim``)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer import optim, train as train_module
from trainer.config import TrainConfig
from trainer.train import train

LR = 0.01
EPOCHS = 3
BATCH = 512
STEPS_PER_EPOCH = math.ceil(6000 / BATCH)  # 12 on the 6,000-image synthetic set
TOTAL = EPOCHS * STEPS_PER_EPOCH


def expected_lr(schedule: str, step: int, warmup_epochs: int) -> float:
    warmup = warmup_epochs * STEPS_PER_EPOCH
    if schedule == "onecycle":
        rise = warmup or round(0.3 * TOTAL)
        if step < rise:  # linear from lr/25 to lr
            return LR / 25 + (LR - LR / 25) * step / rise
        low = LR / 25 / 1e4
        return low + (LR - low) * 0.5 * (1 + math.cos(math.pi * (step - rise) / (TOTAL - rise)))
    if step < warmup:
        return LR * (step + 1) / warmup
    if schedule == "cosine":
        return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (TOTAL - warmup)))
    if schedule == "step":  # x0.1 from half way, x0.01 from three quarters
        return LR * (1 if step < TOTAL / 2 else 0.1 if step < 3 * TOTAL / 4 else 0.01)
    return LR


def run(monkeypatch, **fields) -> dict[str, list[dict]]:
    monkeypatch.setattr(train_module, "BATCH_EVENT_INTERVAL_S", 0.0)  # a batch event for every step
    config = TrainConfig.from_dict({"epochs": EPOCHS, "batch_size": BATCH, "lr": LR, "hidden": [32],
                                    "timesteps": 5, "seed": 2, "device": "cpu", **fields})
    events: dict[str, list[dict]] = {}
    outcome = train(config, lambda name, data: events.setdefault(name, []).append(data), allow_download=False)
    assert outcome == "completed", events.get("error")
    return events


@pytest.mark.parametrize("schedule,warmup_epochs", [("constant", 0), ("constant", 1), ("cosine", 1),
                                                     ("step", 0), ("onecycle", 0), ("onecycle", 1)])
def test_lr_in_batch_events_follows_the_schedule_and_the_job_learns(monkeypatch, schedule, warmup_epochs):
    events = run(monkeypatch, lr_schedule=schedule, warmup_epochs=warmup_epochs)
    batches = events["batch"]
    steps = [b["epoch"] * b["n_batches"] + b["batch"] for b in batches]
    assert steps == list(range(TOTAL)), "one batch event per optimiser step"
    for step, batch in zip(steps, batches):
        assert batch["lr"] == pytest.approx(expected_lr(schedule, step, warmup_epochs), rel=1e-9, abs=1e-15), step
    lrs = [b["lr"] for b in batches]
    if schedule != "constant" or warmup_epochs:
        assert len(set(lrs)) > 2, "the rate moves within the run"
    assert events["completed"][0]["val_accuracy"] >= 0.7


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 0.0), ("adamw", 0.01), ("sgd", 1e-4)])
def test_each_optimizer_trains_a_job(monkeypatch, optimizer, weight_decay):
    fields = {"optimizer": optimizer, "weight_decay": weight_decay, "epochs": 2}
    if optimizer == "sgd":
        fields["lr"] = 0.1  # SGD wants a larger step than Adam's 0.01
    events = run(monkeypatch, **fields)
    assert events["config"][0]["config"]["optimizer"] == optimizer
    first, last = events["epoch"][0], events["epoch"][-1]
    assert last["train_loss"] < events["batch"][0]["loss"]
    assert last["val_accuracy"] >= 0.7, (first, last)


def test_optimizers_are_built_as_configured():
    model = torch.nn.Linear(3, 2)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)):
        opt = optim.build_optimizer(model, TrainConfig(optimizer=name, lr=0.02, weight_decay=0.05))
        assert type(opt) is cls
        group = opt.param_groups[0]
        assert (group["lr"], group["weight_decay"]) == (0.02, 0.05)
        if name == "sgd":
            assert group["momentum"] == 0.9


def test_adam_on_the_cpu_is_torch_s_fused_kernel_and_steps_as_the_default_one():
    """The fused kernel is the CPU's speed-up (docs/benchmarks.md); it must take the same steps."""
    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    plain_model.load_state_dict(fused_model.state_dict())
    config = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.01)
    fused = optim.build_optimizer(fused_model, config)
    plain = torch.optim.AdamW(plain_model.parameters(), lr=0.01, weight_decay=0.01)
    assert fused.param_groups[0]["fused"] is True and not plain.param_groups[0]["fused"]
    assert not optim.build_optimizer(torch.nn.Linear(5, 3).double(), config).param_groups[0]["fused"]  # float32 only
    inputs = torch.randn(8, 5)
    for _ in range(10):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer, weight_decay", [("adam", 0.0), ("adam", 0.05), ("adamw", 0.05)])
def test_the_in_graph_adam_update_takes_torch_s_steps_and_shares_its_state(optimizer, weight_decay):
    """AdamInGraph (the compiled CPU step's update) against torch's own step, with a changing lr; an
    eager optimizer.step() in between (the epoch's last batch) continues from the state it left."""
    torch.manual_seed(0)
    ours_model, torch_model = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    torch_model.load_state_dict(ours_model.state_dict())
    config = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=weight_decay)
    ours, reference = optim.build_optimizer(ours_model, config), optim.build_optimizer(torch_model, config)
    assert optim.AdamInGraph.supports(ours)
    assert not optim.AdamInGraph.supports(optim.build_optimizer(ours_model, TrainConfig(optimizer="sgd")))
    update = optim.AdamInGraph(ours)
    inputs = torch.randn(8, 5)
    for step in range(12):
        for group in (*ours.param_groups, *reference.param_groups):
            group["lr"] = 0.01 / (1 + step)  # as a schedule moves it
        grads = torch.autograd.grad(ours_model(inputs).square().sum(), list(ours_model.parameters()))
        if step == 6:  # the eager step of a partial batch, on the same state
            for param, grad in zip(ours_model.parameters(), grads):
                param.grad = grad
            ours.step()
        else:
            update.update_(list(grads), *update.tensors())
        reference.zero_grad()
        torch_model(inputs).square().sum().backward()
        reference.step()
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_ours, p_torch in zip(ours_model.parameters(), torch_model.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ours.state[p_ours][key], reference.state[p_torch][key], rtol=1e-5, atol=1e-7)


def test_grad_clip_caps_the_global_norm_and_zero_leaves_gradients_alone():
    model = torch.nn.Linear(4, 3)
    (model(torch.ones(2, 4)) * 100).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in before]))
    assert norm > 1
    optim.clip_gradients(model, 0.0)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
    optim.clip_gradients(model, 1.0)
    clipped = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(clipped).item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(clipped, torch.cat([g.flatten() for g in before]) / norm, rtol=1e-5, atol=0)


def test_a_clipped_job_trains(monkeypatch):
    events = run(monkeypatch, grad_clip=0.5, epochs=2)
    assert events["completed"][0]["val_accuracy"] >= 0.7


def test_a_resumed_schedule_continues_from_its_step():
    """train() builds the scheduler after a checkpoint restore with start_step = the steps already done."""
    config = TrainConfig(lr=LR, epochs=EPOCHS, lr_schedule="cosine", warmup_epochs=1)
    optimizer = optim.build_optimizer(torch.nn.Linear(2, 2), config)
    optimizer.param_groups[0]["lr"] = 123.0  # whatever a restored optimizer state held
    start = STEPS_PER_EPOCH + 5
    scheduler = optim.build_scheduler(optimizer, config, STEPS_PER_EPOCH, start_step=start)
    for step in range(start, TOTAL):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr("cosine", step, 1), rel=1e-12)
        optimizer.step()
        scheduler.step()
