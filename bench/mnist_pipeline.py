"""MNIST input pipeline: one uint8 tensor indexed per batch versus a per-sample torchvision DataLoader.

Both produce the same thing each batch, normalised float images [64, 1, 28, 28] and labels [64] on the
device, for one shuffled pass over the 60,000 training images. The two run interleaved (alternating
which goes first) so a noisy shared machine slows both alike; the script reports each pass, the medians
in samples/s and their ratio.

    .venv/bin/python bench/mnist_pipeline.py --data-dir ../shared/datasets/mnist --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import MNIST

from trainer import data, mnist

BATCH_SIZE = 64


def in_memory_pass(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> int:
    """The trainer's path: shuffled indices into the resident uint8 tensor, normalised per batch."""
    seen = 0
    for batch, targets in data.iterate_batches(images, labels, BATCH_SIZE, shuffle=True, generator=generator):
        x = data.encode(batch, "direct", 1, mnist.MEAN, mnist.STD)  # [B, 1, 28, 28] float
        seen += _consume(x, targets)
    return seen


def dataloader_pass(loader: DataLoader, device: torch.device) -> int:
    """The textbook path: PIL image -> ToTensor -> Normalize per sample, collated by the DataLoader."""
    seen = 0
    for x, targets in loader:
        seen += _consume(x.to(device, non_blocking=True), targets.to(device, non_blocking=True))
    return seen


def _consume(x: torch.Tensor, targets: torch.Tensor) -> int:
    # Touch the batch so neither path can skip work; synchronise so GPU timings are real.
    x.sum()
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return int(targets.shape[0])


def torchvision_root(data_dir: Path, scratch: Path) -> Path:
    """A root in torchvision's layout (scratch/MNIST/raw) holding the four extracted files."""
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, found in mnist.locate(data_dir).items():
        path = mnist.extracted(found, raw)
        if path.parent != raw:
            (raw / name).symlink_to(path.resolve())
    return scratch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default: the user's)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved passes of each pipeline")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    arrays = mnist.load_mnist(args.data_dir, allow_download=False)
    images = arrays.train_images.unsqueeze(1).to(device)  # [60000, 1, 28, 28] uint8, resident
    labels = arrays.train_labels.to(device)
    generator = torch.Generator().manual_seed(0)
    rates: dict[str, list[float]] = {"in-memory uint8 tensor": [], "per-sample DataLoader": []}
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as scratch:
        root = torchvision_root(args.data_dir or mnist.default_data_dir(), Path(scratch))
        dataset = MNIST(str(root), train=True, transform=transforms.Compose([
            transforms.ToTensor(), transforms.Normalize((mnist.MEAN,), (mnist.STD,))]))
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=args.workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))
        passes = {
            "in-memory uint8 tensor": lambda: in_memory_pass(images, labels, generator),
            "per-sample DataLoader": lambda: dataloader_pass(loader, device),
        }
        for round_index in range(args.rounds):
            order = list(passes) if round_index % 2 == 0 else list(reversed(passes))
            for name in order:
                started = time.perf_counter()
                seen = passes[name]()
                rates[name].append(seen / (time.perf_counter() - started))
                print(f"round {round_index}: {name:24s} {rates[name][-1]:12,.0f} samples/s", flush=True)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\ndevice {device}, batch {BATCH_SIZE}, {args.rounds} rounds, DataLoader workers {args.workers}, "
          f"torch {torch.get_num_threads()} threads")
    for name, value in medians.items():
        print(f"median {name:24s} {value:12,.0f} samples/s")
    print(f"ratio in-memory / DataLoader: {medians['in-memory uint8 tensor'] / medians['per-sample DataLoader']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
