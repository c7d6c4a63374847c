"""MNIST loading from small IDX files the tests write themselves, in every layout the loader accepts,
plus failed and working downloads against local servers and ``snnmon data mnist`` as a subprocess."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torchvision.datasets import MNIST

from trainer import mnist

PROJECT_ROOT = Path(__file__).resolve().parents[2]
N_TRAIN, N_TEST = 5, 3


def known_images(n: int, offset: int) -> torch.Tensor:
    """[n, 28, 28] uint8 with a different, predictable value at every pixel of every image."""
    index = torch.arange(n * 28 * 28, dtype=torch.int64).view(n, 28, 28)
    return ((index * 7 + offset) % 256).to(torch.uint8)


TRAIN_IMAGES, TEST_IMAGES = known_images(N_TRAIN, 0), known_images(N_TEST, 101)
TRAIN_LABELS = torch.tensor([3, 0, 9, 3, 7])
TEST_LABELS = torch.tensor([1, 9, 0])


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """IDX: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, then big-endian sizes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim()) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    return header + tensor.to(torch.uint8).numpy().tobytes()


def contents(images=(TRAIN_IMAGES, TEST_IMAGES), labels=(TRAIN_LABELS, TEST_LABELS)) -> dict[str, bytes]:
    return {
        "train-images-idx3-ubyte": idx_bytes(images[0]), "train-labels-idx1-ubyte": idx_bytes(labels[0]),
        "t10k-images-idx3-ubyte": idx_bytes(images[1]), "t10k-labels-idx1-ubyte": idx_bytes(labels[1]),
    }


def write_files(folder: Path, gz: bool, files: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files or contents()).items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def assert_known_arrays(arrays: mnist.MnistArrays) -> None:
    assert arrays.train_images.dtype == torch.uint8 and arrays.train_labels.dtype == torch.int64
    assert torch.equal(arrays.train_images, TRAIN_IMAGES)
    assert torch.equal(arrays.test_images, TEST_IMAGES)
    assert torch.equal(arrays.train_labels, TRAIN_LABELS)
    assert torch.equal(arrays.test_labels, TEST_LABELS)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("subdir, gz", [
    ("", True), ("", False), ("mnist", True), ("MNIST/raw", False), ("MNIST/raw", True),
], ids=["gz", "extracted", "mnist-folder-gz", "torchvision-layout", "torchvision-layout-gz"])
def test_loads_exact_pixels_and_labels_from_each_layout(tmp_path, subdir, gz):
    write_files(tmp_path / subdir, gz)
    assert_known_arrays(mnist.load_mnist(tmp_path, allow_download=False))


def test_files_spread_over_candidate_folders_and_forms_load(tmp_path):
    files = contents()
    names = list(files)
    write_files(tmp_path, True, {names[0]: files[names[0]]})
    write_files(tmp_path / "mnist", False, {names[1]: files[names[1]], names[2]: files[names[2]]})
    write_files(tmp_path / "MNIST" / "raw", True, {names[3]: files[names[3]]})
    assert_known_arrays(mnist.load_mnist(str(tmp_path), allow_download=False))


def test_read_only_gz_source_loads_and_is_left_untouched(tmp_path):
    source = write_files(tmp_path / "ro", gz=True)
    before = tree(source)
    for path in source.iterdir():
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    source.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        # downloads on: present files must never trigger one (it would try to create MNIST/raw here)
        assert_known_arrays(mnist.load_mnist(source, allow_download=True))
    finally:
        source.chmod(stat.S_IRWXU)
    assert tree(source) == before


def test_missing_files_without_downloads_name_files_and_folders(tmp_path):
    write_files(tmp_path, gz=True, files={k: v for k, v in contents().items() if "train" in k})
    started = time.monotonic()
    with pytest.raises(mnist.MnistUnavailable) as caught:
        mnist.load_mnist(tmp_path, allow_download=False)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images" not in message  # only what is missing
    for folder in (tmp_path, tmp_path / "mnist", tmp_path / "MNIST" / "raw"):
        assert str(folder) in message
    assert "downloads are off" in message and "snnmon data mnist" in message
    assert "\n" not in message
    assert not (tmp_path / "MNIST").exists()


@pytest.fixture
def mirror(monkeypatch):
    """Point torchvision's MNIST mirrors at a URL the test chooses (a local server or a closed port)."""
    def use(url: str, md5s: dict[str, str] | None = None) -> None:
        monkeypatch.setattr(MNIST, "mirrors", [url])
        if md5s is not None:
            monkeypatch.setattr(MNIST, "resources", [(f"{name}.gz", md5) for name, md5 in md5s.items()])
    return use


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_download_is_a_clear_error_and_leaves_no_folders(tmp_path, mirror):
    mirror(f"http://127.0.0.1:{free_port()}/")
    root = tmp_path / "new" / "data"
    with pytest.raises(mnist.MnistUnavailable) as caught:
        mnist.load_mnist(root, allow_download=True)
    message = str(caught.value)
    assert "download into" in message and "train-images-idx3-ubyte" in message and "\n" not in message
    assert not (tmp_path / "new").exists()


def test_download_that_never_answers_times_out(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(mnist, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mirror(f"http://127.0.0.1:{silent.getsockname()[1]}/")
        started = time.monotonic()
        with pytest.raises(mnist.MnistUnavailable, match="timed out"):
            mnist.load_mnist(tmp_path, allow_download=True)
    assert time.monotonic() - started < 10
    assert socket.getdefaulttimeout() is None  # the process-wide timeout is restored


def test_download_from_a_mirror_lands_in_torchvision_layout(tmp_path, mirror):
    served = write_files(tmp_path / "served", gz=True)
    md5s = {name: hashlib.md5((served / f"{name}.gz").read_bytes()).hexdigest() for name in mnist.FILES}
    handler = lambda *a, **kw: QuietHandler(*a, directory=str(served), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        mirror(f"http://127.0.0.1:{server.server_address[1]}/", md5s)
        root = tmp_path / "data"
        assert_known_arrays(mnist.load_mnist(root, allow_download=True))
    finally:
        server.shutdown()
        server.server_close()
    assert {f"{name}.gz" for name in mnist.FILES} <= {p.name for p in (root / "MNIST" / "raw").iterdir()}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def test_wrong_magic_number_names_the_file(tmp_path):
    files = contents()
    files["t10k-labels-idx1-ubyte"] = b"\x00\x00\x0f\x01" + files["t10k-labels-idx1-ubyte"][4:]
    write_files(tmp_path, gz=False, files=files)
    with pytest.raises(mnist.MnistUnavailable, match="t10k-labels-idx1-ubyte.*not a valid MNIST IDX file"):
        mnist.load_mnist(tmp_path, allow_download=False)


def test_truncated_gz_is_a_clear_error(tmp_path):
    write_files(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(mnist.MnistUnavailable, match="train-images-idx3-ubyte.gz cannot be decompressed"):
        mnist.load_mnist(tmp_path, allow_download=False)


def test_images_and_labels_of_different_length_are_rejected(tmp_path):
    write_files(tmp_path, gz=False, files=contents(labels=(TRAIN_LABELS[:4], TEST_LABELS)))
    with pytest.raises(mnist.MnistUnavailable, match="train split mismatch: .* 5 images but .* 4 labels"):
        mnist.load_mnist(tmp_path, allow_download=False)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SNNMON_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert mnist.default_data_dir() == tmp_path / "snnmon"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert mnist.default_data_dir() == Path.home() / ".local" / "share" / "snnmon"
    monkeypatch.setenv("SNNMON_DATA_DIR", str(tmp_path / "mine"))
    assert mnist.default_data_dir() == tmp_path / "mine"


def test_module_imports_no_torch():
    """service/cli.py imports trainer.mnist to build its parser; `snnmon serve` must not import torch."""
    code = "import sys, trainer.mnist; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, timeout=60).returncode == 0


def snnmon(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(env_home), "XDG_DATA_HOME": str(env_home / "data")}
    env.pop("SNNMON_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)
def test_cli_prepares_from_a_read_only_torchvision_tree_then_verifies(tmp_path):
    source = write_files(tmp_path / "src" / "MNIST" / "raw", gz=False)
    source.chmod(stat.S_IRUSR | stat.S_IXUSR)
    data_dir = tmp_path / "data"
    try:
        prepared = snnmon("data", "mnist", "--data-dir", str(data_dir), "--from", str(tmp_path / "src"),
                          env_home=tmp_path)
    finally:
        source.chmod(stat.S_IRWXU)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(mnist.FILES)
    out = prepared.stdout
    for name, data in contents().items():
        records = {"train-images-idx3-ubyte": 5, "train-labels-idx1-ubyte": 5}.get(name, 3)
        row = next(line for line in out.splitlines() if line.startswith(name))
        assert row.split()[1:] == [name, str(records), hashlib.sha256(data).hexdigest(), "no"]
    assert "train classes 0-9: 1 0 0 2 0 0 0 1 0 1" in out
    assert "test classes 0-9: 1 1 0 0 0 0 0 0 0 1" in out
    assert "complete: 5 training and 3 test records" in out

    verified = snnmon("data", "mnist", "--data-dir", str(data_dir), env_home=tmp_path)
    assert verified.returncode == 0
    assert verified.stdout.splitlines() == [line for line in out.splitlines() if not line.startswith("copied")]

    (data_dir / "t10k-images-idx3-ubyte").unlink()
    broken = snnmon("data", "mnist", "--data-dir", str(data_dir), env_home=tmp_path)
    assert broken.returncode == 1
    assert "incomplete: missing t10k-images-idx3-ubyte[.gz]" in broken.stdout


def test_cli_default_dir_and_bad_source(tmp_path):
    result = snnmon("data", "mnist", "--from", str(tmp_path / "absent"), env_home=tmp_path)
    assert result.returncode == 1 and "is not a folder" in result.stderr
    empty = snnmon("data", "mnist", env_home=tmp_path)
    assert empty.returncode == 1
    assert f"MNIST in {tmp_path / 'data' / 'snnmon'}" in empty.stdout
    assert "incomplete: missing train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]" in empty.stdout
