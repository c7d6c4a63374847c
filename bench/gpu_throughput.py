"""GPU training throughput: snnTorch, SpikingJelly (if installed), torch.compile and this trainer.

One run prints everything issue 14 asks for on a GPU, in a few minutes on an H200:

1. training samples/s at batch 64, 256 and 1024 for the same network (784→128→10 LIF, beta 0.9,
   threshold 1, reset by subtraction, atan surrogate alpha 2, T=25, Adam lr 1e-3, cross-entropy on the
   output spike counts, direct encoding) written four ways:
   - snnTorch: the textbook loop, one ``Linear`` and one ``snn.Leaky`` call per layer per timestep, and
     ``loss.item()`` each step, as its tutorials do;
   - SpikingJelly, where installed: multi-step ``LIFNode`` (decay_input False, soft reset, so the same
     dynamics) with its fastest backend that loads (triton, cupy, then torch);
   - torch.compile: a plain multi-step loop compiled with ``mode="reduce-overhead"`` (inductor kernels
     and CUDA graphs), fused Adam, no host sync per step;
   - this trainer: ``build_model`` and ``build_train_step`` (the Triton LIF kernels, the whole step as
     one CUDA graph), driven as ``trainer.train`` drives it: batch, encode, step, scheduler, the loss
     and correct counts summed on the device.
   Each runs on device-resident synthetic images; after warm-up steps (compiles, captures), a timed
   window of about ``--seconds``, synchronised at both ends. Targets (issue 14, H200): this trainer at
   batch 64 >= 100,000 samples/s, at batch 1024 >= 1,500,000.
2. one MNIST epoch at the defaults through ``trainer.train.train``, exactly as a job runs it (target
   <= 1 s; the first epoch includes the kernel compiles and the graph capture, so two are reported);
3. ConvSpikingNet, T=10, one epoch (cosine rate, seed 3): validation accuracy (target >= 98%) and time.

    .venv/bin/python bench/gpu_throughput.py [--seconds 2] [--data-dir ../shared/datasets/mnist]

Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from trainer import data as datasets
from trainer.config import TrainConfig
from trainer.models import build_model
from trainer.optim import build_optimizer, build_scheduler
from trainer.step import build_train_step
from trainer.train import train

DEVICE = "cuda"  # every model and batch lives here (a CPU smoke run of this script sets it to "cpu")
BATCH_SIZES = (64, 256, 1024)
TIMESTEPS, HIDDEN, BETA, THRESHOLD, ALPHA, LR = 25, 128, 0.9, 1.0, 2.0, 1e-3
DEFAULT_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"
CONV_CONFIG = {"dataset": "mnist", "network": "ConvSpikingNet", "epochs": 1, "timesteps": 10, "seed": 3,
               "lr_schedule": "cosine"}

Step = Callable[[torch.Tensor, torch.Tensor], None]  # (uint8 images [B, 1, 28, 28], labels [B])


class Batches:
    """Full batches of the synthetic set on the GPU, in a fixed shuffled order, cycled."""

    def __init__(self, bundle: datasets.DataBundle, batch_size: int):
        order = torch.randperm(bundle.n_train, generator=torch.Generator().manual_seed(0)).to(DEVICE)
        self.images, self.labels = bundle.train_images, bundle.train_labels
        self.mean, self.std = bundle.mean, bundle.std
        self.slices = [order[i:i + batch_size] for i in range(0, bundle.n_train - batch_size + 1, batch_size)]
        self.next = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.slices[self.next % len(self.slices)]
        self.next += 1
        return self.images[index], self.labels[index]

    def direct(self, images: torch.Tensor) -> torch.Tensor:
        return datasets.encode(images, "direct", TIMESTEPS, self.mean, self.std)  # [B, 1, 28, 28]


def samples_per_s(step: Step, batches: Batches, batch_size: int, seconds: float, warmup: int = 30) -> float:
    """Warm up, estimate the step time, then time about ``seconds`` of steps, synchronised at both ends."""
    for _ in range(warmup):
        step(*batches())
    torch.cuda.synchronize()
    probe = time.perf_counter()
    for _ in range(10):
        step(*batches())
    torch.cuda.synchronize()
    count = max(10, int(seconds / max((time.perf_counter() - probe) / 10, 1e-6)))
    start = time.perf_counter()
    for _ in range(count):
        step(*batches())
    torch.cuda.synchronize()
    return count * batch_size / (time.perf_counter() - start)


# -- this trainer -------------------------------------------------------------------------------------

def ours(batches: Batches, batch_size: int) -> Step:
    config = dataclasses.replace(TrainConfig.from_dict({"seed": 0}), batch_size=batch_size, epochs=1000)
    model = build_model(config).to(DEVICE)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=len(batches.slices))
    train_step = build_train_step(model, optimizer, config, DEVICE)
    sums = torch.zeros(2, device=DEVICE, dtype=torch.float64)

    def step(images, labels):  # trainer.train's per-batch work
        loss, counts = train_step(batches.direct(images), labels)
        scheduler.step()
        sums.add_(torch.stack((loss * labels.shape[0], (counts.argmax(1) == labels).sum())))

    return step


# -- snnTorch -----------------------------------------------------------------------------------------

def snntorch(batches: Batches, batch_size: int) -> Step:
    import snntorch as snn
    from snntorch import surrogate

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            spike_grad = surrogate.atan(alpha=ALPHA)
            self.fc1, self.fc2 = torch.nn.Linear(784, HIDDEN), torch.nn.Linear(HIDDEN, 10)
            self.lif1 = snn.Leaky(beta=BETA, threshold=THRESHOLD, spike_grad=spike_grad, reset_mechanism="subtract")
            self.lif2 = snn.Leaky(beta=BETA, threshold=THRESHOLD, spike_grad=spike_grad, reset_mechanism="subtract")

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            out = []
            for _ in range(TIMESTEPS):
                spk1, mem1 = self.lif1(self.fc1(x), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                out.append(spk2)
            return torch.stack(out)

    torch.manual_seed(0)
    net = Net().to(DEVICE)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)

    def step(images, labels):
        loss = F.cross_entropy(net(batches.direct(images).flatten(1)).sum(0), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    return step


# -- SpikingJelly ---------------------------------------------------------------------------------------

def spikingjelly(batches: Batches, batch_size: int) -> Step:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    last_error = None
    for backend in ("triton", "cupy", "torch"):
        try:
            torch.manual_seed(0)
            net = torch.nn.Sequential(
                layer.Linear(784, HIDDEN, step_mode="m"),
                neuron.LIFNode(tau=1 / (1 - BETA), decay_input=False, v_reset=None, v_threshold=THRESHOLD,
                               surrogate_function=surrogate.ATan(alpha=ALPHA), step_mode="m", backend=backend),
                layer.Linear(HIDDEN, 10, step_mode="m"),
                neuron.LIFNode(tau=1 / (1 - BETA), decay_input=False, v_reset=None, v_threshold=THRESHOLD,
                               surrogate_function=surrogate.ATan(alpha=ALPHA), step_mode="m", backend=backend),
            ).to(DEVICE)
            optimizer = torch.optim.Adam(net.parameters(), lr=LR)

            def step(images, labels, net=net, optimizer=optimizer):
                x = batches.direct(images).flatten(1).expand(TIMESTEPS, -1, -1)  # [T, B, 784]
                loss = F.cross_entropy(net(x).sum(0), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                functional.reset_net(net)

            step(*batches())  # the backend loads (or fails) here
            step.__name__ = f"spikingjelly[{backend}]"
            return step
        except Exception as exc:  # a backend that is not available on this machine: try the next
            last_error = exc
    raise RuntimeError(f"no SpikingJelly backend ran: {last_error}")


# -- torch.compile ----------------------------------------------------------------------------------

class _AtanSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (ALPHA / 2) / (1 + (math.pi * ALPHA / 2 * x) ** 2)


class PlainLoopNet(torch.nn.Module):
    """The network as a plain multi-step loop: what inductor can fuse end to end."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(784, HIDDEN), torch.nn.Linear(HIDDEN, 10)

    def forward(self, x):  # x [B, 784]
        current = self.fc1(x)
        v1 = torch.zeros_like(current)
        v2 = current.new_zeros(x.shape[0], 10)
        out = []
        for _ in range(TIMESTEPS):
            v1 = BETA * v1 + current
            s1 = _AtanSpike.apply(v1 - THRESHOLD)
            v1 = v1 - s1.detach() * THRESHOLD
            v2 = BETA * v2 + self.fc2(s1)
            s2 = _AtanSpike.apply(v2 - THRESHOLD)
            v2 = v2 - s2.detach() * THRESHOLD
            out.append(s2)
        return torch.stack(out).sum(0)  # [B, 10] spike counts


def compiled(batches: Batches, batch_size: int) -> Step:
    torch.manual_seed(0)
    net = PlainLoopNet().to(DEVICE)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, fused=True)
    loss_of = torch.compile(lambda x, y: F.cross_entropy(net(x), y), mode="reduce-overhead")
    sums = torch.zeros((), device=DEVICE)

    def step(images, labels):
        torch.compiler.cudagraph_mark_step_begin()
        loss = loss_of(batches.direct(images).flatten(1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums.add_(loss.detach())

    return step


# -- the report ---------------------------------------------------------------------------------------

def throughput_table(seconds: float) -> None:
    bundle = datasets.synthetic_dataset(0)
    for name in ("train_images", "train_labels"):
        setattr(bundle, name, getattr(bundle, name).to(DEVICE))
    rows = [("snnTorch", snntorch), ("SpikingJelly", spikingjelly), ("torch.compile reduce-overhead", compiled),
            ("this trainer", ours)]
    print(f"| {'implementation':32} | " + " | ".join(f"batch {b:>4}" for b in BATCH_SIZES) + " |")
    print(f"| {'-' * 32} | " + " | ".join("-" * 10 for _ in BATCH_SIZES) + " |")
    for name, build in rows:
        cells = []
        for batch_size in BATCH_SIZES:
            batches = Batches(bundle, batch_size)
            try:
                rate = samples_per_s(build(batches, batch_size), batches, batch_size, seconds)
                cells.append(f"{rate:>10,.0f}")
            except ImportError as exc:
                cells.append(f"not installed ({exc.name})")
                break
            except Exception as exc:  # one baseline failing must not lose the rest of the table
                cells.append(f"failed: {type(exc).__name__}: {str(exc)[:80]}")
            torch.cuda.empty_cache()
        print(f"| {name:32} | " + " | ".join(cells) + " |", flush=True)


def job_epochs(config: dict, data_dir: Path) -> list[dict]:
    events: dict[str, list[dict]] = {}
    outcome = train(TrainConfig.from_dict({**config, "device": "cuda"}),
                    lambda event, data: events.setdefault(event, []).append(data),
                    data_dir=data_dir, allow_download=False)
    if outcome != "completed":
        raise RuntimeError(f"{outcome}: {events.get('error')}")
    return events["epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window per measurement")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_MNIST, help="MNIST's four IDX files")
    parser.add_argument("--skip-conv", action="store_true", help="leave out the ConvSpikingNet epoch")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_throughput.py: CUDA is not available on this machine; nothing to measure.")
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"training samples/s (784-128-10 LIF, T={TIMESTEPS}):", flush=True)
    throughput_table(args.seconds)

    from trainer import mnist

    if [name for name in mnist.FILES if name not in mnist.locate(args.data_dir)]:
        print(f"MNIST not found in {args.data_dir}: the epoch timings are left out (--data-dir)")
        return
    epochs = job_epochs({"dataset": "mnist", "epochs": 2, "seed": 0}, args.data_dir)
    print("MNIST at the defaults (784-128-10 LIF, T=25, batch 64), trainer.train.train: "
          + ", ".join(f"epoch {e['epoch'] + 1} {e['epoch_s']:.2f} s (val {e['val_accuracy']:.2%})" for e in epochs),
          flush=True)
    if not args.skip_conv:
        (conv,) = job_epochs(CONV_CONFIG, args.data_dir)
        print(f"ConvSpikingNet, T=10, 1 epoch, cosine, seed 3: val accuracy {conv['val_accuracy']:.2%}, "
              f"epoch {conv['epoch_s']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
