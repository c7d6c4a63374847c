"""N-MNIST load and binning cost, on recordings generated in the original format at the real density.

No copy of N-MNIST is reachable here, so this writes ``--recordings`` files of ``--events`` events each
(the real ones average about 4,000) laid out as ``Train/<digit>/<id>.bin``, times ``read_split`` (tonic's
decoder plus the int32 codes) per recording, then bins shuffled batches of 64 into ``[T, 64, 2, 34, 34]``
frames on the device and reports frames per second. Multiply the per-recording time by 70,000 for the
load of the full set.

    .venv/bin/python bench/nmnist_loading.py --recordings 2000 --events 4000 --timesteps 25
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer import nmnist

BATCH_SIZE = 64


def write_recordings(folder: Path, n: int, n_events: int, seed: int = 0) -> None:
    gen = np.random.default_rng(seed)
    for i in range(n):
        digit = i % 10
        events = np.zeros((n_events, 5), dtype=np.uint8)
        t = np.sort(gen.integers(0, 310_000, n_events))
        events[:, 0] = gen.integers(0, 34, n_events)
        events[:, 1] = gen.integers(0, 34, n_events)
        events[:, 2] = (gen.integers(0, 2, n_events) << 7) | ((t >> 16) & 0x7F)
        events[:, 3], events[:, 4] = (t >> 8) & 0xFF, t & 0xFF
        path = folder / "Train" / str(digit) / f"{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(events.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=2000)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--timesteps", type=int, default=25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="snnmon-nmnist-bench-") as scratch:
        root = Path(scratch)
        write_recordings(root, args.recordings, args.events)
        source = nmnist.SplitSource("train", root / "Train", archive=False)
        nmnist.read_split(nmnist.SplitSource("train", root / "Train", archive=False), args.timesteps)  # warm
        started = time.perf_counter()
        arrays = nmnist.read_split(source, args.timesteps)
        load_s = time.perf_counter() - started
    per_recording_ms = 1000 * load_s / args.recordings
    print(f"load: {args.recordings} recordings x {args.events} events in {load_s:.2f} s = "
          f"{per_recording_ms:.2f} ms per recording (70,000: about {per_recording_ms * 70:.0f} s); "
          f"{arrays.codes.numel() * 4 / 2**20:.0f} MiB of codes")
    frames = nmnist.EventFrames(arrays, args.timesteps).to(args.device)
    order = torch.randperm(len(frames), device=args.device)
    frames[order[:BATCH_SIZE]]  # warm
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    seen = 0
    for start in range(0, len(frames), BATCH_SIZE):
        batch = frames[order[start:start + BATCH_SIZE]]
        seen += batch.shape[1]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    bin_s = time.perf_counter() - started
    print(f"binning on {args.device}: {seen / bin_s:.0f} recordings/s into [{args.timesteps}, {BATCH_SIZE}, "
          f"2, 34, 34] frames")


if __name__ == "__main__":
    main()
