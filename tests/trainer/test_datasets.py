"""The dataset table and the datasets beyond MNIST: Fashion-MNIST and KMNIST from IDX files the tests
write in their own folders, N-MNIST from recordings written in the original 40-bit event format (laid
out as Train/<digit>/<id>.bin, or zipped as tonic downloads them), binning on the device, the config
rules, the models' input shapes, a short job on each through the real loop, and ``snnmon data``."""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from test_mnist import TEST_LABELS, TRAIN_LABELS, assert_known_arrays, contents, write_files
from trainer import catalog, mnist, nmnist
from trainer.config import ConfigError, TrainConfig, schema
from trainer.data import load_data
from trainer.models import build_model
from trainer.train import train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
IDX = ["fashion_mnist", "kmnist"]

# --- the table ---------------------------------------------------------------------------------------


def test_table_feeds_config_choices_schema_and_docs():
    names = [d.name for d in catalog.DATASETS]
    assert names == ["synthetic", "mnist", "fashion_mnist", "kmnist", "nmnist"]
    body = schema()
    dataset_field = next(f for f in body["fields"] if f["name"] == "dataset")
    assert dataset_field["choices"] == names
    assert [d["name"] for d in body["datasets"]] == names
    assert body["datasets"][-1]["input_shape"] == [2, 34, 34] and body["datasets"][-1]["n_classes"] == 10
    assert catalog.datasets_markdown() in (PROJECT_ROOT / "docs" / "datasets.md").read_text(), \
        "docs/datasets.md's table differs from trainer.catalog.datasets_markdown(); paste it in again"


def test_published_checksums_are_well_formed():
    for spec in catalog.DATASETS:
        for f in spec.files:
            assert len(f.gz_sha256) == 64 and int(f.gz_sha256, 16) >= 0 and f.gz_bytes > 0
            assert f.records == (spec.n_train if f.name.startswith("train") else spec.n_val)


# --- Fashion-MNIST and KMNIST ------------------------------------------------------------------------


@pytest.mark.parametrize("name", IDX)
@pytest.mark.parametrize("layout, gz", [("own", True), ("torchvision", False)])
def test_idx_datasets_load_from_their_own_folders(tmp_path, name, layout, gz):
    spec = catalog.DATASETS_BY_NAME[name]
    folder = spec.folders[0] if layout == "own" else f"{spec.torchvision_class}/raw"
    write_files(tmp_path / folder, gz)
    assert_known_arrays(mnist.load_idx(spec, tmp_path, allow_download=False))


@pytest.mark.parametrize("name", IDX)
def test_missing_files_name_what_to_fetch_and_where_it_goes(tmp_path, name):
    spec = catalog.DATASETS_BY_NAME[name]
    write_files(tmp_path, gz=True)  # MNIST's files, flat: the same names, and never taken for this dataset
    with pytest.raises(mnist.DatasetUnavailable) as caught:
        mnist.load_idx(spec, tmp_path, allow_download=False)
    message = str(caught.value)
    assert message.startswith(f"{spec.title} files not found: train-images-idx3-ubyte[.gz]")
    for folder in spec.folders:
        assert str(tmp_path / folder) in message
    assert spec.source in message and f"snnmon data {name} --data-dir {tmp_path} --from PATH" in message
    assert "downloads are off" in message and "\n" not in message


def test_fallback_to_synthetic_names_the_dataset(tmp_path):
    config = TrainConfig.from_dict({"dataset": "kmnist", "mnist_fallback": "synthetic", "seed": 1})
    bundle = load_data(config, data_dir=tmp_path, allow_download=False)
    assert bundle.name == "synthetic" and bundle.warning.startswith("Kuzushiji-MNIST unavailable")


def test_pixel_statistics_are_measured_for_datasets_without_published_ones(tmp_path):
    write_files(tmp_path / "fashion_mnist", gz=True)
    bundle = load_data(TrainConfig.from_dict({"dataset": "fashion_mnist"}), data_dir=tmp_path,
                       allow_download=False)
    pixels = bundle.train_images.double() / 255
    assert bundle.name == "fashion_mnist" and bundle.train_images.shape == (5, 1, 28, 28)
    assert bundle.mean == pytest.approx(float(pixels.mean()), abs=1e-9)
    assert bundle.std == pytest.approx(float(pixels.std(unbiased=False)), abs=1e-9)


def test_published_gz_checksum_is_compared_when_no_content_checksum_is_known(tmp_path):
    folder = write_files(tmp_path / "kmnist", gz=True)
    spec = catalog.DATASETS_BY_NAME["kmnist"]
    lines, complete = mnist.verify(tmp_path, spec)
    assert complete and all(line.rstrip().endswith(" no") for line in lines[2:6])  # not the real files
    as_published = tuple(dataclasses.replace(f, gz_sha256=mnist._sha256(folder / f"{f.name}.gz"))
                         for f in spec.files)
    lines, _ = mnist.verify(tmp_path, dataclasses.replace(spec, files=as_published))
    assert all(line.rstrip().endswith(" yes") for line in lines[2:6])
    (folder / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress((folder / "t10k-images-idx3-ubyte.gz")
                                                                    .read_bytes()))
    lines, _ = mnist.verify(tmp_path, spec)
    assert lines[4].rstrip().endswith(" unknown")  # extracted: only the .gz has a published checksum


# --- N-MNIST -----------------------------------------------------------------------------------------


def recording_bytes(x, y, p, t) -> bytes:
    """Events in N-MNIST's format: per event 40 bits, big-endian: x (8), y (8), polarity (1), t (23, us)."""
    x, y, p, t = (np.asarray(a, dtype=np.uint64) for a in (x, y, p, t))
    out = np.zeros((len(x), 5), dtype=np.uint8)
    out[:, 0], out[:, 1] = x, y
    out[:, 2] = (p << 7) | ((t >> 16) & 0x7F)
    out[:, 3], out[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return out.tobytes()


def make_recording(label: int, gen: np.random.Generator, n: int = 60):
    # (the real recordings hold about 4,000 events each)
    """A recording whose events fall on the label's column band, over 0..310 ms (past the 300 ms window)."""
    x = gen.integers(3 * label, 3 * label + 4, n)
    y = gen.integers(0, 34, n)
    p = gen.integers(0, 2, n)
    t = np.sort(gen.integers(0, 310_000, n))
    return x, y, p, t


def write_nmnist(root: Path, per_class: dict[str, int], seed: int = 0, archive: bool = False,
                 n_events: int = 60) -> dict:
    """Train/<digit>/<id>.bin and Test/... under ``root`` (or train.zip/test.zip); returns the events
    by split, in the loader's order (digit, then file name)."""
    gen = np.random.default_rng(seed)
    events: dict[str, list] = {}
    root.mkdir(parents=True, exist_ok=True)
    for split, folder in nmnist.SPLIT_FOLDERS.items():
        events[split] = []
        files = {}
        for digit in range(10):
            for i in range(per_class[split]):
                recording = make_recording(digit, gen, n_events)
                events[split].append((digit, recording))
                files[f"{folder}/{digit}/{digit * 1000 + i:05d}.bin"] = recording_bytes(*recording)
        if archive:
            with zipfile.ZipFile(root / nmnist.SPLIT_ARCHIVES[split][0], "w") as z:
                for name, data in files.items():
                    z.writestr(name, data)
        else:
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
    return events


def expected_frames(recordings, timesteps: int) -> torch.Tensor:
    """[T, B, 2, 34, 34] event counts, binned independently of the loader."""
    frames = np.zeros((timesteps, len(recordings), 2, 34, 34))
    for b, (_, (x, y, p, t)) in enumerate(recordings):
        bins = np.minimum(t * timesteps // 300_000, timesteps - 1)
        np.add.at(frames, (bins, b, p, y, x), 1)
    return torch.from_numpy(frames).float()


@pytest.mark.parametrize("folder, archive", [("NMNIST", False), ("nmnist", True)], ids=["tonic-layout", "zips"])
def test_nmnist_events_are_binned_into_frames_exactly(tmp_path, folder, archive):
    events = write_nmnist(tmp_path / folder, {"train": 2, "test": 1}, archive=archive)
    timesteps = 7
    train, test = nmnist.load_nmnist(tmp_path, timesteps, allow_download=False)
    assert train.labels.tolist() == [d for d, _ in events["train"]] and test.labels.shape == (10,)
    assert train.codes.dtype == torch.int32 and int(train.offsets[-1]) == 20 * 60
    frames = nmnist.EventFrames(train, timesteps)
    index = torch.tensor([5, 0, 19, 5])
    batch = frames[index]
    assert batch.shape == (timesteps, 4, 2, 34, 34) and batch.dtype == torch.float32
    assert torch.equal(batch, expected_frames([events["train"][i] for i in index.tolist()], timesteps))


@pytest.mark.gpu
def test_nmnist_binning_on_cuda_equals_the_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: checks that frames binned on the GPU equal the CPU's")
    write_nmnist(tmp_path / "nmnist", {"train": 3, "test": 1}, n_events=500)
    train, _ = nmnist.load_nmnist(tmp_path, 25, allow_download=False)
    frames = nmnist.EventFrames(train, 25)
    index = torch.randperm(30)[:16]
    on_gpu = frames.to("cuda")[index.to("cuda")]
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), frames[index])


def test_nmnist_missing_split_names_what_to_fetch_and_where_it_goes(tmp_path):
    write_nmnist(tmp_path / "nmnist", {"train": 1, "test": 1})
    import shutil

    shutil.rmtree(tmp_path / "nmnist" / "Test")
    with pytest.raises(mnist.DatasetUnavailable) as caught:
        nmnist.load_nmnist(tmp_path, 10, allow_download=False)
    message = str(caught.value)
    assert message.startswith("N-MNIST not found: Test/ (or test.zip)")
    assert f"{tmp_path / 'nmnist'}, {tmp_path / 'NMNIST'}" in message and "Train/" not in message
    assert "garrickorchard.com/datasets/n-mnist" in message and "snnmon data nmnist" in message
    assert "\n" not in message


def test_nmnist_rejects_recordings_that_are_not_nmnist(tmp_path):
    write_nmnist(tmp_path / "nmnist", {"train": 1, "test": 1})
    bad = tmp_path / "nmnist" / "Train" / "3" / "03000.bin"
    bad.write_bytes(recording_bytes([40], [2], [1], [5]))
    with pytest.raises(mnist.DatasetUnavailable, match="03000.bin has events outside the 34x34 sensor"):
        nmnist.load_nmnist(tmp_path, 10, allow_download=False)
    bad.write_bytes(recording_bytes([4], [2], [1], [5])[:-2])
    with pytest.raises(mnist.DatasetUnavailable, match="03000.bin is not an N-MNIST recording: 3 bytes"):
        nmnist.load_nmnist(tmp_path, 10, allow_download=False)


def test_nmnist_config_rules():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({"dataset": "nmnist", "encoding": "rate", "mnist_fallback": "synthetic"})
    assert set(caught.value.fields) == {"encoding", "mnist_fallback"}
    assert "encoding must be direct" in caught.value.fields["encoding"]
    assert TrainConfig.from_dict({"dataset": "nmnist"}).dataset == "nmnist"


@pytest.mark.parametrize("network, architecture", [
    ("SpikingNet", "2312→16→10"), ("ConvSpikingNet", "2x34x34→c32→c64→128→10")])
def test_models_take_the_input_shape_from_the_table(network, architecture):
    config = TrainConfig.from_dict({"dataset": "nmnist", "network": network, "hidden": [16], "timesteps": 5})
    model = build_model(config)
    assert model.architecture() == architecture
    out = model(torch.rand(5, 3, 2, 34, 34))
    assert out.shape == (5, 3, 10)
    with pytest.raises(ValueError, match=r"expected input \[B, 2, 34, 34\]"):
        model(torch.rand(3, 1, 28, 28))


# --- a short job on each, through the real loop ------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dataset, network, epochs, min_val_accuracy", [
    ("fashion_mnist", "SpikingNet", 1, None), ("kmnist", "SpikingNet", 1, None),
    ("nmnist", "SpikingNet", 3, 0.7),
    pytest.param("nmnist", "ConvSpikingNet", 1, None, marks=pytest.mark.slow)])
def test_short_job_on_generated_files(tmp_path, dataset, network, epochs, min_val_accuracy):
    """The IDX sets hold 5 + 3 images (nothing to learn); the N-MNIST recordings put each class's
    events on its own band of columns, so a network that sees the binned events learns them."""
    if dataset == "nmnist":
        write_nmnist(tmp_path / "NMNIST", {"train": 4, "test": 2}, n_events=2000)
        n_train, n_val = 40, 20
    else:
        write_files(tmp_path / catalog.DATASETS_BY_NAME[dataset].folders[0], gz=True)
        n_train, n_val = len(TRAIN_LABELS), len(TEST_LABELS)
    events = []
    config = TrainConfig.from_dict({"dataset": dataset, "network": network, "epochs": epochs,
                                    "batch_size": 8, "timesteps": 6, "hidden": [32], "seed": 3,
                                    "device": "cpu"})
    outcome = train(config, lambda e, d: events.append((e, d)), data_dir=tmp_path, allow_download=False)
    assert outcome == "completed", events[-1]
    first = events[0][1]
    assert (first["dataset"], first["n_train"], first["n_val"]) == (dataset, n_train, n_val)
    epoch_events = [d for e, d in events if e == "epoch"]
    assert len(epoch_events) == epochs and all(0 <= d["val_accuracy"] <= 1 for d in epoch_events)
    if min_val_accuracy is not None:
        assert epoch_events[-1]["val_accuracy"] >= min_val_accuracy, epoch_events


# --- snnmon data -------------------------------------------------------------------------------------


def snnmon(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    env.pop("SNNMON_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_cli_prepares_and_verifies_kmnist_and_nmnist(tmp_path):
    write_files(tmp_path / "downloads", gz=True)
    data_dir = tmp_path / "data"
    result = snnmon("data", "kmnist", "--data-dir", str(data_dir), "--from", str(tmp_path / "downloads"),
                    home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (data_dir / "kmnist").iterdir()) == sorted(f"{n}.gz" for n in contents())
    assert "published Kuzushiji-MNIST" in result.stdout and "train classes 0-9: 1 0 0 2 0 0 0 1 0 1" in result.stdout
    assert "complete: 5 training and 3 test records (published Kuzushiji-MNIST: 60000 and 10000)" in result.stdout

    write_nmnist(tmp_path / "nmnist-download", {"train": 2, "test": 1}, archive=True)
    result = snnmon("data", "nmnist", "--data-dir", str(data_dir), "--from", str(tmp_path / "nmnist-download"),
                    home=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (data_dir / "nmnist").iterdir()) == ["test.zip", "train.zip"]
    out = result.stdout
    assert "train: nmnist/train.zip: 20 recordings, 1200 events (60 per recording), archive md5 differs" in out
    assert "test classes 0-9: 1 1 1 1 1 1 1 1 1 1" in out
    assert "complete: 20 training and 10 test recordings (published N-MNIST: 60000 and 10000)" in out

    missing = snnmon("data", "fashion_mnist", "--data-dir", str(data_dir), home=tmp_path)
    assert missing.returncode == 1 and "incomplete: missing train-images-idx3-ubyte[.gz]" in missing.stdout


def test_nmnist_module_imports_no_torch():
    """service/cli.py builds the `snnmon data nmnist` parser from this module; `snnmon serve` must not
    pay for torch (nor tonic)."""
    code = "import sys, trainer.nmnist; sys.exit('torch' in sys.modules or 'tonic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, timeout=60).returncode == 0
