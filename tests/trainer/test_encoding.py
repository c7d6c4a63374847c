"""Input encodings: direct, rate and latency (time to first spike)."""

import torch

from trainer import data
from trainer.config import TrainConfig
from trainer.train import train


def test_latency_gives_each_lit_pixel_one_spike_brighter_earlier():
    images = torch.tensor([0, 1, 64, 128, 200, 254, 255], dtype=torch.uint8).view(1, 1, 1, 7).expand(2, 1, 28, 7)
    images = torch.nn.functional.pad(images, (0, 21))  # [2, 1, 28, 28], the rest black
    spikes = data.encode(images, "latency", 11, mean=0.5, std=0.25)  # mean and std do not apply
    assert spikes.shape == (11, 2, 1, 28, 28) and spikes.dtype == torch.float32
    counts = spikes.sum(0)
    assert counts[..., 1:7].eq(1).all(), "every lit pixel spikes exactly once"
    assert counts[..., 0].eq(0).all() and counts[..., 7:].eq(0).all(), "black pixels never spike"
    first = spikes.argmax(0)[0, 0, 0, 1:7].tolist()  # spike step of intensities 1 .. 255
    # round((1 - p) * 10) with p = 1/255, 64/255, 128/255, 200/255, 254/255, 1
    assert first == [10, 7, 5, 2, 0, 0]
    assert first == sorted(first, reverse=True), "brighter pixels spike earlier"


def test_latency_encoding_trains():
    config = TrainConfig.from_dict({"encoding": "latency", "epochs": 1, "hidden": [64], "timesteps": 10,
                                    "seed": 1, "device": "cpu"})
    events = []
    assert train(config, lambda name, d: events.append((name, d)), allow_download=False) == "completed"
    assert events[-1][1]["val_accuracy"] > 0.5
