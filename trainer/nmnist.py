"""N-MNIST (Orchard et al. 2015): event-camera recordings of the MNIST digits, read with ``tonic`` and
binned into ``timesteps`` frames of 2x34x34 on the job's device; and ``snnmon data nmnist``.

The dataset as published: ``Train/<digit>/<id>.bin`` (60,000 recordings) and ``Test/<digit>/<id>.bin``
(10,000), each a sequence of 40-bit events: x (8 bits), y (8 bits), polarity (1 bit) and a 23-bit
timestamp in microseconds, big-endian; a y of 240 marks a timestamp overflow. ``tonic.io.read_mnist_file``
decodes that format. The folders are searched in ``DIR/nmnist`` and ``DIR/NMNIST`` (where tonic's own
``NMNIST(save_to=DIR)`` puts them), extracted or as the ``train.zip``/``test.zip`` archives.

Each recording lasts about 300 ms (three saccades of 100 ms). At load time every event becomes one int32
code, ``(bin * 2 + polarity) * 34 * 34 + y * 34 + x`` with ``bin = t * T // 300 ms`` (later events fall
in the last bin), so a job holds 4 bytes per event and a batch is binned on the device by one bincount.

Imports only the standard library at module level (``service/cli.py`` builds its parser from here).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import socket
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from trainer import catalog
from trainer.mnist import (DOWNLOAD_TIMEOUT_S, DatasetUnavailable, add_directory_arguments, copy_from_source,
                           default_data_dir, missing_message)

if TYPE_CHECKING:
    import numpy as np
    import torch

SPEC = catalog.DATASETS_BY_NAME["nmnist"]
WINDOW_US = 300_000  # three saccades of 100 ms; the frames cover this window
CHANNELS, HEIGHT, WIDTH = SPEC.input_shape  # 2 polarities (off, on), 34 x 34 pixels
FRAME_SIZE = CHANNELS * HEIGHT * WIDTH
SPLIT_FOLDERS = {"train": "Train", "test": "Test"}
SPLIT_ARCHIVES = {"train": ("train.zip", "Train.zip"), "test": ("test.zip", "Test.zip")}
# md5 of the archives tonic downloads (its NMNIST class checks the same)
ARCHIVE_MD5 = {"train.zip": "20959b8e626244a1b502305a9e6e2031", "test.zip": "69ca8762b2fe404d9b9bad1103e97832"}
INSTALL_HINT = "pip install 'snn-training-monitor[nmnist]' (the tonic library reads the N-MNIST format)"


@dataclass(frozen=True)
class SplitSource:
    split: str  # "train" or "test"
    path: Path  # the Train/Test folder, or the archive
    archive: bool


@dataclass(frozen=True)
class EventArrays:
    """One split as flat event codes (see the module docstring), on the CPU."""
    codes: "torch.Tensor"  # [E] int32
    offsets: "torch.Tensor"  # [N + 1] int64: recording i is codes[offsets[i]:offsets[i + 1]]
    labels: "torch.Tensor"  # [N] int64


def candidate_dirs(data_dir: Path) -> list[Path]:
    return [data_dir / folder for folder in SPEC.folders]


def locate(data_dir: Path) -> dict[str, SplitSource]:
    """Each split found under ``data_dir``: an extracted folder wins over an archive."""
    found: dict[str, SplitSource] = {}
    for split, folder_name in SPLIT_FOLDERS.items():
        for folder in candidate_dirs(data_dir):
            if (folder / folder_name).is_dir():
                found[split] = SplitSource(split, folder / folder_name, archive=False)
                break
            archive = next((folder / a for a in SPLIT_ARCHIVES[split] if (folder / a).is_file()), None)
            if archive is not None:
                found[split] = SplitSource(split, archive, archive=True)
                break
    return found


def load_nmnist(data_dir: str | os.PathLike | None, timesteps: int, *,
                allow_download: bool) -> tuple[EventArrays, EventArrays]:
    """(train, test) event codes for ``timesteps`` bins; downloads with tonic only when allowed."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    found = locate(root)
    download_error = None
    if len(found) < len(SPLIT_FOLDERS) and allow_download:
        try:
            download(root, [s for s in SPLIT_FOLDERS if s not in found])
        except DatasetUnavailable as exc:
            download_error = str(exc)
        found = locate(root)
    missing = [s for s in SPLIT_FOLDERS if s not in found]
    if missing:
        wanted = ", ".join(f"{SPLIT_FOLDERS[s]}/ (or {SPLIT_ARCHIVES[s][0]})" for s in missing)
        raise DatasetUnavailable(missing_message(f"N-MNIST not found: {wanted}", candidate_dirs(root), SPEC, root,
                                                 allow_download, download_error))
    return read_split(found["train"], timesteps), read_split(found["test"], timesteps)


def read_split(source: SplitSource, timesteps: int) -> EventArrays:
    """Every recording of one split, in the order of (digit, file name), binned for ``timesteps``."""
    import numpy as np
    import torch

    codes, lengths, labels = [], [0], []
    for label, name, raw in recordings(source):
        codes.append(event_codes(decode(raw, name), timesteps, name))
        lengths.append(codes[-1].shape[0])
        labels.append(label)
    if not labels:
        raise DatasetUnavailable(f"{source.path} holds no <digit>/<id>.bin recordings")
    flat = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
    return EventArrays(torch.from_numpy(flat), torch.tensor(lengths, dtype=torch.int64).cumsum(0),
                       torch.tensor(labels, dtype=torch.int64))


def recordings(source: SplitSource) -> Iterator[tuple[int, str, bytes]]:
    """(label, name shown in errors, raw bytes) of each ``<digit>/<id>.bin``, sorted by digit then name."""
    if not source.archive:
        for digit in range(SPEC.n_classes):
            for path in sorted((source.path / str(digit)).glob("*.bin")):
                yield digit, str(path), path.read_bytes()
        return
    try:
        with zipfile.ZipFile(source.path) as archive:
            members = []
            for member in archive.namelist():
                parts = member.split("/")
                if len(parts) >= 3 and parts[-3] == SPLIT_FOLDERS[source.split] and parts[-1].endswith(".bin") \
                        and parts[-2].isdigit() and int(parts[-2]) < SPEC.n_classes:
                    members.append((int(parts[-2]), parts[-1], member))
            for digit, _, member in sorted(members):
                yield digit, f"{source.path}:{member}", archive.read(member)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:  # zlib errors surface as BadZipFile/OSError
        raise DatasetUnavailable(f"{source.path} cannot be read as a zip archive: {exc}") from exc


def decode(raw: bytes, name: str) -> "np.ndarray":
    """One recording's events as a structured array (x, y, t, p) with tonic's N-MNIST reader."""
    try:
        from tonic.io import read_mnist_file
    except ImportError as exc:
        raise DatasetUnavailable(f"cannot read N-MNIST: {INSTALL_HINT}") from exc
    import numpy as np

    if len(raw) % 5:
        raise DatasetUnavailable(f"{name} is not an N-MNIST recording: {len(raw)} bytes is not a whole "
                                 f"number of 5-byte events")
    dtype = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
    return read_mnist_file(io.BytesIO(raw), dtype=dtype, is_stream=True)


def event_codes(events: "np.ndarray", timesteps: int, name: str) -> "np.ndarray":
    """[E] int32 codes (bin, polarity, y, x) of one recording's events."""
    import numpy as np

    x, y, p = events["x"], events["y"], events["p"]
    if len(events) and (x.max() >= WIDTH or y.max() >= HEIGHT):
        raise DatasetUnavailable(f"{name} has events outside the 34x34 sensor (x up to {x.max()}, "
                                 f"y up to {y.max()}): not an N-MNIST recording")
    bins = np.minimum(events["t"] * timesteps // WINDOW_US, timesteps - 1)
    return (((bins * CHANNELS + p) * HEIGHT + y) * WIDTH + x).astype(np.int32)


class EventFrames:
    """N recordings as flat event codes on one device; ``frames[index]`` bins the recordings a batch
    index names into event counts ``[T, B, 2, 34, 34]`` float, on the same device."""

    def __init__(self, arrays: EventArrays, timesteps: int):
        self.codes, self.timesteps = arrays.codes, timesteps
        self.offsets = arrays.offsets.cpu()  # [N + 1], on the CPU: slicing bounds need no device sync
        self.shape = (int(arrays.labels.shape[0]), CHANNELS, HEIGHT, WIDTH)  # like a stack of images

    def to(self, device) -> "EventFrames":
        moved = EventFrames.__new__(EventFrames)
        moved.codes, moved.offsets = self.codes.to(device), self.offsets
        moved.timesteps, moved.shape = self.timesteps, self.shape
        return moved

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: "torch.Tensor") -> "torch.Tensor":
        import torch

        device = self.codes.device
        picked = index.cpu()
        starts, ends = self.offsets[picked].tolist(), self.offsets[picked + 1].tolist()
        codes = torch.cat([self.codes[start:end] for start, end in zip(starts, ends)])  # [E] int32
        n = len(starts)
        lengths = torch.tensor([end - start for start, end in zip(starts, ends)], device=device)
        sample = torch.repeat_interleave(torch.arange(n, dtype=torch.int32, device=device), lengths,
                                         output_size=codes.shape[0])  # [E] the event's place in the batch
        # code = bin * FRAME_SIZE + pixel  ->  (bin * n + sample) * FRAME_SIZE + pixel, in int32
        # (at most 100 bins x 512 samples x 2312 < 2**31)
        flat = codes + (codes // FRAME_SIZE * (n - 1) + sample) * FRAME_SIZE
        counts = torch.bincount(flat, minlength=self.timesteps * n * FRAME_SIZE)
        return counts.to(torch.float32).view(self.timesteps, n, CHANNELS, HEIGHT, WIDTH)


def download(root: Path, splits: list[str]) -> None:
    """Fetch the missing splits with tonic's ``NMNIST(save_to=root)`` into ``root/NMNIST``."""
    try:
        import tonic.datasets
    except ImportError as exc:
        raise DatasetUnavailable(f"download needs tonic: {INSTALL_HINT}") from exc
    import urllib.error

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for split in splits:
            tonic.datasets.NMNIST(save_to=str(root), train=split == "train")
    except (OSError, RuntimeError, urllib.error.URLError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetUnavailable(f"download into {root / 'NMNIST'} failed: {reason}") from exc
    finally:
        socket.setdefaulttimeout(previous)


# --- `snnmon data nmnist` ---------------------------------------------------------------------------


def add_data_parser(datasets: argparse._SubParsersAction) -> None:
    command = datasets.add_parser(
        "nmnist", help="the N-MNIST Train and Test recordings",
        description="Copy N-MNIST's Train and Test folders (or train.zip and test.zip) into DIR/nmnist, then "
                    f"verify them: recordings and events per split, class counts. Get them: {SPEC.source}. "
                    f"Reading needs {INSTALL_HINT}. Exit code 0 when complete, 1 when not.")
    add_directory_arguments(command)
    command.add_argument("--download", action="store_true",
                         help="download missing splits with tonic's NMNIST (off by default)")
    command.set_defaults(handler=run_data_nmnist)


def run_data_nmnist(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    if not copy_from_source(args, data_dir, copy_splits):
        return 1
    missing = [s for s in SPLIT_FOLDERS if s not in locate(data_dir)]
    if args.download and missing:
        try:
            download(data_dir, missing)
        except DatasetUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
    lines, complete = verify(data_dir)
    print("\n".join(lines))
    return 0 if complete else 1


def copy_splits(source: Path, data_dir: Path) -> None:
    """Copy each split found in ``source`` (itself, or its nmnist/NMNIST folder) into ``DIR/nmnist``."""
    found = _locate_flat(source) or locate(source)
    target_dir = candidate_dirs(data_dir)[0]
    target_dir.mkdir(parents=True, exist_ok=True)
    for split in found.values():
        target = target_dir / (split.path.name if split.archive else SPLIT_FOLDERS[split.split])
        if target.exists() and target.resolve() == split.path.resolve():
            continue
        partial = target_dir / f".{target.name}.partial"
        if split.archive:
            shutil.copyfile(split.path, partial)
        else:
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(split.path, partial, copy_function=shutil.copyfile)
            partial.chmod(0o755)
            for folder in partial.rglob("*"):
                if folder.is_dir():
                    folder.chmod(0o755)  # a read-only source's modes are not what a data dir needs
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(partial, target)
        print(f"copied {split.path} -> {target}")


def _locate_flat(folder: Path) -> dict[str, SplitSource]:
    """Splits directly in ``folder`` (Train/, Test/ or the archives), as a download leaves them."""
    found = {}
    for split, name in SPLIT_FOLDERS.items():
        if (folder / name).is_dir():
            found[split] = SplitSource(split, folder / name, archive=False)
        else:
            archive = next((folder / a for a in SPLIT_ARCHIVES[split] if (folder / a).is_file()), None)
            if archive is not None:
                found[split] = SplitSource(split, archive, archive=True)
    return found


def verify(data_dir: Path) -> tuple[list[str], bool]:
    """A report on both splits in ``data_dir`` (lines to print), and whether they are complete."""
    import numpy as np

    found = locate(data_dir)
    lines = [f"N-MNIST in {data_dir} (looked in {', '.join(str(d) for d in candidate_dirs(data_dir))})"]
    problems = [f"missing {SPLIT_FOLDERS[s]}/ (or {SPLIT_ARCHIVES[s][0]})" for s in SPLIT_FOLDERS if s not in found]
    counts: dict[str, int] = {}
    for split, source in found.items():
        classes = np.zeros(SPEC.n_classes, dtype=np.int64)
        n_events = 0
        try:
            for label, name, raw in recordings(source):
                n_events += len(event_codes(decode(raw, name), 1, name))
                classes[label] += 1
        except DatasetUnavailable as exc:
            problems.append(str(exc))
            lines.append(f"{split}: {os.path.relpath(source.path, data_dir)} unreadable")
            continue
        counts[split] = int(classes.sum())
        where = os.path.relpath(source.path, data_dir)
        md5 = ""
        if source.archive and source.path.name.lower() in ARCHIVE_MD5:
            same = _md5(source.path) == ARCHIVE_MD5[source.path.name.lower()]
            md5 = f", archive md5 {'matches' if same else 'differs from'} tonic's"
        mean = n_events / max(counts[split], 1)
        lines.append(f"{split}: {where}: {counts[split]} recordings, {n_events} events "
                     f"({mean:.0f} per recording){md5}")
        lines.append(f"{split} classes 0-9: " + " ".join(str(int(c)) for c in classes))
        if not counts[split]:
            problems.append(f"{split}: no <digit>/<id>.bin recordings in {source.path}")
    if problems:
        lines.append("incomplete: " + "; ".join(problems))
        lines.append(f"fix: get {SPEC.source}; --from PATH copies them from a folder that has them; "
                     "--download fetches them with tonic")
    else:
        lines.append(f"complete: {counts['train']} training and {counts['test']} test recordings "
                     f"(published N-MNIST: {SPEC.n_train} and {SPEC.n_val})")
    return lines, not problems


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
