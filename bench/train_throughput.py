"""Training throughput: this trainer (compiled and eager) vs snnTorch vs a plain loop put through
torch.compile, on the same network, interleaved in one process.

Network for all: 784→128→10, LIF (beta 0.9, threshold 1, reset by subtraction), atan surrogate
(alpha 2), T=25, batch 64, Adam (lr 1e-3), cross-entropy on output spike counts, direct encoding.
Data: the synthetic training set (6,000 images). Each round trains each contestant, rotating which goes
first; the report is the median training samples/s of each and its ratio to snnTorch's median.

This trainer is measured through ``trainer.train.train`` exactly as a job runs it (its own batch events
report the training-phase samples/s, excluding validation): with ``compile off``, one epoch; with
``compile on``, two epochs, of which the second is reported (steady state: the first pays the compile,
warm from the inductor cache after the warm-up round). snnTorch runs the textbook loop: one ``Linear``
and one ``snn.Leaky`` call per layer per timestep. The compiled baseline is the same network as a plain
multi-step loop (the first Linear once, then T steps of decay, spike, reset) through ``torch.compile``,
compiled once in the warm-up.

    .venv/bin/python bench/train_throughput.py [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from trainer import data as datasets
from trainer import surrogates
from trainer.config import TrainConfig
from trainer.train import train

CONFIG = {"dataset": "synthetic", "epochs": 1, "batch_size": 64, "lr": 0.001, "timesteps": 25,
          "hidden": [128], "surrogate": "atan_surrogate", "cell_type": "LIFCell",
          "network": "SpikingNet", "device": "cpu", "seed": 0}


def ours_samples_per_s(compile_mode: str, data_dir: str) -> float:
    """The training samples/s of the last epoch (with compile on, the second: the first pays the compile)."""
    last = {}

    def emit(event, data):
        if event == "batch":
            last.update(data)

    epochs = 2 if compile_mode == "on" else 1
    config = TrainConfig.from_dict({**CONFIG, "compile": compile_mode, "epochs": epochs})
    assert train(config, emit, data_dir=data_dir) == "completed"
    return last["samples_per_s"]


class PlainLoopNet(torch.nn.Module):
    """The network as a plain multi-step loop, the form inductor fuses: the baseline of issue 14."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 128)
        self.fc2 = torch.nn.Linear(128, 10)
        self.spike = surrogates.get("atan_surrogate")

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        current1 = self.fc1(x)  # [B, 128], the same every step
        mem1 = torch.zeros_like(current1)
        mem2 = current1.new_zeros(x.shape[0], 10)
        out = []
        for _ in range(timesteps):
            mem1 = 0.9 * mem1 + current1
            spk1 = self.spike(mem1 - 1.0)
            mem1 = mem1 - spk1.detach()
            mem2 = 0.9 * mem2 + self.fc2(spk1)
            spk2 = self.spike(mem2 - 1.0)
            mem2 = mem2 - spk2.detach()
            out.append(spk2)
        return torch.stack(out)  # [T, B, 10]


class SnnTorchNet(torch.nn.Module):
    def __init__(self):
        import snntorch as snn
        from snntorch import surrogate

        super().__init__()
        spike_grad = surrogate.atan(alpha=2.0)
        self.fc1 = torch.nn.Linear(784, 128)
        self.lif1 = snn.Leaky(beta=0.9, threshold=1.0, spike_grad=spike_grad, reset_mechanism="subtract")
        self.fc2 = torch.nn.Linear(128, 10)
        self.lif2 = snn.Leaky(beta=0.9, threshold=1.0, spike_grad=spike_grad, reset_mechanism="subtract")

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for _ in range(timesteps):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)  # [T, B, 10]


def loop_samples_per_s(bundle: datasets.DataBundle, net: torch.nn.Module) -> float:
    """One epoch of the textbook training loop over ``net(x [B, 784], T) -> spikes [T, B, 10]``, timed
    from its second batch (the first re-traces the compiled baseline: each compiled job of this trainer
    resets dynamo's in-memory code cache, ``trainer.compiled.CompiledStep``)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=CONFIG["lr"])
    gen = torch.Generator().manual_seed(0)
    seen, start = 0, None
    for images, labels in datasets.iterate_batches(bundle.train_images, bundle.train_labels, 64,
                                                   shuffle=True, generator=gen):
        if seen == 64 and start is None:
            seen, start = 0, time.perf_counter()
        x = datasets.encode(images, "direct", 25, bundle.mean, bundle.std).flatten(1)  # [B, 784]
        if x.shape[0] != 64:  # the compiled baseline keeps its one graph: the partial batch is skipped
            break
        counts = net(x, CONFIG["timesteps"]).sum(0)
        loss = F.cross_entropy(counts, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        seen += labels.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = datasets.synthetic_dataset(0)
    data_dir = tempfile.mkdtemp(prefix="bench-compile-")  # a fresh compile cache: the warm-up fills it
    torch.manual_seed(0)
    snntorch_net = SnnTorchNet()
    torch.manual_seed(0)
    compiled_loop = torch.compile(PlainLoopNet(), dynamic=False)
    contestants = {
        "this trainer, compiled": lambda: ours_samples_per_s("on", data_dir),
        "this trainer, eager": lambda: ours_samples_per_s("off", data_dir),
        "snnTorch": lambda: loop_samples_per_s(bundle, snntorch_net),
        "plain loop + torch.compile": lambda: loop_samples_per_s(bundle, compiled_loop),
    }
    for name, measure in contestants.items():  # warm-up: allocator, kernels, both compiles
        started = time.perf_counter()
        measure()
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    results = {name: [] for name in contestants}
    names = list(contestants)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            results[name].append(contestants[name]())
        print(f"round {round_index + 1}: " + ", ".join(f"{name} {results[name][-1]:,.0f}" for name in names),
              flush=True)
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds; medians, samples/s:")
    for name in names:
        print(f"  {name}: {medians[name]:,.0f} ({medians[name] / medians['snnTorch']:.2f}x snnTorch)")


if __name__ == "__main__":
    main()
