"""Training throughput: this trainer vs snnTorch on the same network, interleaved in one process.

Network for both: 784→128→10, LIF (beta 0.9, threshold 1, reset by subtraction), atan surrogate
(alpha 2), T=25, batch 64, Adam (lr 1e-3), cross-entropy on output spike counts, direct encoding.
Data: the synthetic training set (6,000 images). Each round trains one epoch with each, alternating
which goes first; the report is the median training samples/s of each and the ratio of the medians.

This trainer is measured through ``trainer.train.train`` exactly as a job runs it (its own batch events
report the training-phase samples/s, excluding validation). snnTorch runs the textbook loop: one
``Linear`` and one ``snn.Leaky`` call per layer per timestep.

    .venv/bin/python bench/train_throughput.py [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainer import data as datasets
from trainer.config import TrainConfig
from trainer.train import train

CONFIG = {"dataset": "synthetic", "epochs": 1, "batch_size": 64, "lr": 0.001, "timesteps": 25,
          "hidden": [128], "surrogate": "atan_surrogate", "cell_type": "LIFCell",
          "network": "SpikingNet", "device": "cpu", "seed": 0}


def ours_samples_per_s() -> float:
    last = {}

    def emit(event, data):
        if event == "batch":
            last.update(data)

    assert train(TrainConfig.from_dict(CONFIG), emit) == "completed"
    return last["samples_per_s"]


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


def snntorch_samples_per_s(bundle: datasets.DataBundle) -> float:
    torch.manual_seed(0)
    net = SnnTorchNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=CONFIG["lr"])
    gen = torch.Generator().manual_seed(0)
    seen, start = 0, time.perf_counter()
    for images, labels in datasets.iterate_batches(bundle.train_images, bundle.train_labels, 64,
                                                   shuffle=True, generator=gen):
        x = datasets.encode(images, "direct", 25, bundle.mean, bundle.std).flatten(1)  # [B, 784]
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
    ours_samples_per_s(), snntorch_samples_per_s(bundle)  # warm-up: allocator, kernels
    ours, theirs = [], []
    for round_index in range(args.rounds):
        pair = [("ours", ours_samples_per_s), ("snntorch", lambda: snntorch_samples_per_s(bundle))]
        if round_index % 2:
            pair.reverse()
        for name, fn in pair:
            (ours if name == "ours" else theirs).append(fn())
        print(f"round {round_index + 1}: ours {ours[-1]:,.0f} samples/s, snnTorch {theirs[-1]:,.0f} samples/s")
    mine, base = statistics.median(ours), statistics.median(theirs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"median: this trainer {mine:,.0f} samples/s, snnTorch {base:,.0f} samples/s, ratio {mine / base:.2f}x")


if __name__ == "__main__":
    main()
