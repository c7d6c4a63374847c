"""The CUDA-graph training step (trainer/graphed.py) and the Triton LIF kernels on a real GPU.

The ``gpu`` tests skip with their reason where CUDA is absent (the kernels' maths is checked on the CPU
in ``test_triton_lif.py``, under triton's interpreter). What they check on a GPU: 20 graphed steps (and
a partial batch run eagerly among them) follow the eager step's loss trajectory and end with the same
parameters; the compiled kernels equal the per-step loop of ``trainer.fused`` on CUDA tensors.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer import fused, graphed, surrogates
from trainer.config import TrainConfig
from trainer.models import build_model
from trainer.optim import build_optimizer, build_scheduler
from trainer.step import EagerStep, build_train_step

STEPS = 20
PARTIAL_AT, PARTIAL_SIZE = 12, 37  # an odd-sized batch among the full ones, as an epoch's last


def need_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip(f"needs CUDA: {what}")


def test_cpu_and_sgd_jobs_keep_the_eager_step():
    config = TrainConfig.from_dict({"seed": 0, "compile": "off"})  # auto would compile on the CPU
    model = build_model(config)
    assert type(build_train_step(model, build_optimizer(model, config), config, "cpu")) is EagerStep
    sgd = build_optimizer(model, dataclasses.replace(config, optimizer="sgd"))
    assert not graphed.supports(sgd, "cuda:0")  # its step reads the rate as a host number


def _batches(config: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator(device="cuda").manual_seed(1)
    sizes = [PARTIAL_SIZE if i == PARTIAL_AT else config.batch_size for i in range(STEPS + 1)]
    return [(torch.randn((size, 1, 28, 28), device="cuda", generator=gen) * 1.5,
             torch.randint(0, 10, (size,), device="cuda", generator=gen)) for size in sizes]


def _train(config: TrainConfig, batches, graph: bool):
    torch.manual_seed(config.seed)
    model = build_model(config).to("cuda")
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(batches))
    if graph:
        step = graphed.GraphedStep(model, optimizer, config, "cuda:0")
    else:  # the same Adam arithmetic as the graph's (capturable), without a graph
        for group in optimizer.param_groups:
            group["capturable"] = True
        step = EagerStep(model, optimizer, config)
    losses, rates = [], []
    for inputs, labels in batches:
        loss, counts = step(inputs, labels)
        scheduler.step()
        losses.append(loss)
        rates.append(torch.stack([cell.last_spike_rate for cell in model.spiking_layers().values()]))
    torch.cuda.synchronize()
    return step, torch.stack(losses).cpu(), torch.stack(rates).cpu(), model


@pytest.mark.gpu
@pytest.mark.parametrize("cell_type, learn", [("LIFCell", False), ("LapicqueCell", True),
                                              ("SynapticCell", False)])
def test_graphed_step_equals_eager_for_20_steps(cell_type, learn):
    need_cuda("captures the training step as a CUDA graph")
    config = TrainConfig.from_dict({"cell_type": cell_type, "learn_beta": learn, "learn_threshold": learn,
                                    "grad_clip": 1.0, "lr_schedule": "cosine", "epochs": 1, "seed": 0,
                                    "lr": 0.002})
    batches = _batches(config)
    step, graphed_losses, graphed_rates, graphed_model = _train(config, batches, graph=True)
    assert step.graphed and step.fallback_reason is None and step.warm_steps == graphed.WARMUP_STEPS
    _, eager_losses, eager_rates, eager_model = _train(config, batches, graph=False)
    print(f"{cell_type}: losses {[round(x, 4) for x in graphed_losses.tolist()]}")
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(graphed_rates, eager_rates, rtol=1e-5, atol=1e-6)  # cells' reports follow
    for (name, a), (_, b) in zip(graphed_model.state_dict().items(), eager_model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("surrogate", sorted(surrogates.SPECS))
@pytest.mark.parametrize("shape, broadcast", [((25, 64, 128), True), ((10, 3, 32, 24, 24), False),
                                              ((1, 5, 7), False)])
def test_triton_kernels_on_cuda_equal_the_loop(monkeypatch, surrogate, shape, broadcast):
    need_cuda("runs the compiled Triton kernels")
    spike_fn = surrogates.get(surrogate)
    results = []
    for use_triton in (True, False):
        monkeypatch.setattr(fused, "_use_triton", lambda current, fn, use=use_triton: use)
        gen = torch.Generator(device="cuda").manual_seed(0)
        if broadcast:
            base = (torch.randn(shape[1:], device="cuda", generator=gen) + 0.5).requires_grad_()
            current = base.expand(shape)
        else:
            base = (torch.randn(shape, device="cuda", generator=gen) * 1.5 + 0.5).requires_grad_()
            current = base
        v0 = torch.zeros(shape[1:], device="cuda", requires_grad=True)
        beta = torch.tensor(0.9, device="cuda", requires_grad=True)
        threshold = torch.tensor(1.0, device="cuda", requires_grad=True)
        spikes = fused.LIFSequence.apply(current, v0, beta, threshold, spike_fn)
        (spikes.sum(0) * torch.randn(shape[1:], device="cuda", generator=gen)).sum().backward()
        results.append((spikes.detach(), base.grad, v0.grad, beta.grad, threshold.grad))
    kernel, loop = results
    assert torch.equal(kernel[0], loop[0])
    for name, a, b in zip(("current", "v0", "beta", "threshold"), kernel[1:], loop[1:]):
        scale = float(b.abs().max()) + 1e-12
        assert float((a - b).abs().max()) <= 1e-5 * scale, name
