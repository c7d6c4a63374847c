"""The MNIST family (mnist, fashion_mnist, kmnist) from their four IDX files, offline-friendly, and
``snnmon data DATASET``.

``load_idx(spec, data_dir, allow_download=...)`` looks for each file in the dataset's folders under the
data directory (``trainer.catalog``: for MNIST ``DIR``, ``DIR/mnist`` and ``DIR/MNIST/raw``, torchvision's
own layout; for Fashion-MNIST ``DIR/fashion_mnist`` and ``DIR/FashionMNIST/raw``, never ``DIR`` itself,
since all three publish the same file names), extracted or as the original ``.gz``, and parses it with
torchvision's IDX reader. A ``.gz`` is decompressed into a temporary folder, never next to its source,
so read-only sources work. Only when files are missing and downloads are allowed does torchvision's
dataset class (``MNIST``, ``FashionMNIST``, ``KMNIST``) fetch them into ``DIR/<class>/raw``; a failed
download becomes ``DatasetUnavailable`` with a one-line reason, never a traceback.

Imports only the standard library at module level: ``service/cli.py`` imports this module to build its
parser, and ``snnmon serve`` must not pay for torch there.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from trainer import catalog
from trainer.catalog import DatasetSpec

if TYPE_CHECKING:
    import torch

MEAN = 0.1307  # of pixel/255 over MNIST's 60,000 training images (the others are measured at load)
STD = 0.3081
# Seconds per socket operation while torchvision downloads. Its urlopen calls have no timeout of their
# own, so a network that silently drops packets would hang the job; an offline DNS fails at once.
DOWNLOAD_TIMEOUT_S = 15.0
IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}
FILES = (IMAGE_FILES["train"], LABEL_FILES["train"], IMAGE_FILES["test"], LABEL_FILES["test"])
MNIST = catalog.DATASETS_BY_NAME["mnist"]
IDX_DATASETS = tuple(spec for spec in catalog.DATASETS if spec.kind == "idx")  # same files, same reader


class DatasetUnavailable(Exception):
    """A dataset cannot be loaded (files missing or unreadable, download failed); the message says which
    files, where it looked and what to do, on one line."""


MnistUnavailable = DatasetUnavailable  # the name callers used before there were other datasets


@dataclass(frozen=True)
class MnistArrays:
    train_images: "torch.Tensor"  # [60000, 28, 28] uint8, CPU
    train_labels: "torch.Tensor"  # [60000] int64 in 0..9
    test_images: "torch.Tensor"  # [10000, 28, 28] uint8: the official test set is the validation split
    test_labels: "torch.Tensor"  # [10000] int64


@dataclass(frozen=True)
class FoundFile:
    name: str  # e.g. "train-images-idx3-ubyte"
    path: Path  # the file as stored: extracted, or the original .gz
    gzipped: bool


def default_data_dir() -> Path:
    """``$SNNMON_DATA_DIR`` when set, else ``$XDG_DATA_HOME/snnmon`` (``~/.local/share/snnmon``), so
    ``snnmon data``, ``snnmon train`` and ``snnmon serve`` agree without flags."""
    if os.environ.get("SNNMON_DATA_DIR"):
        return Path(os.environ["SNNMON_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "snnmon"


def candidate_dirs(data_dir: Path, spec: DatasetSpec = MNIST) -> list[Path]:
    """Where the files may be, in the order searched (for MNIST: flat, a ``mnist`` folder, torchvision's
    layout)."""
    return [data_dir / folder if folder else data_dir for folder in spec.folders]


def locate(data_dir: Path, spec: DatasetSpec = MNIST) -> dict[str, FoundFile]:
    """Each of the four files that exists under ``data_dir``; an extracted file wins over its .gz."""
    found: dict[str, FoundFile] = {}
    for name in FILES:
        for folder in candidate_dirs(data_dir, spec):
            for path, gzipped in ((folder / name, False), (folder / f"{name}.gz", True)):
                if path.is_file():
                    found[name] = FoundFile(name, path, gzipped)
                    break
            if name in found:
                break
    return found


def load_mnist(data_dir: str | os.PathLike | None, *, allow_download: bool) -> MnistArrays:
    """The four MNIST arrays as CPU tensors; downloads missing files only when ``allow_download``."""
    return load_idx(MNIST, data_dir, allow_download=allow_download)


def load_idx(spec: DatasetSpec, data_dir: str | os.PathLike | None, *, allow_download: bool) -> MnistArrays:
    """The four arrays of an IDX dataset as CPU tensors; downloads missing files only when asked."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    found = locate(root, spec)
    download_error = None
    if len(found) < len(FILES) and allow_download:
        try:
            download(root, spec)
        except DatasetUnavailable as exc:
            download_error = str(exc)
        found = locate(root, spec)
    missing = [name for name in FILES if name not in found]
    if missing:
        files = ", ".join(f"{name}[.gz]" for name in missing)
        raise DatasetUnavailable(missing_message(
            f"{spec.title} files not found: {files}", candidate_dirs(root, spec), spec, root, allow_download,
            download_error, from_what=" (a folder with the .gz files)"))
    with tempfile.TemporaryDirectory(prefix="snnmon-mnist-") as scratch:
        arrays = {name: parse(name, extracted(found[name], Path(scratch)), spec) for name in FILES}
    for split in ("train", "test"):
        _check_split(split, arrays[IMAGE_FILES[split]], arrays[LABEL_FILES[split]], found)
    return MnistArrays(arrays[IMAGE_FILES["train"]], arrays[LABEL_FILES["train"]],
                       arrays[IMAGE_FILES["test"]], arrays[LABEL_FILES["test"]])


def download(root: Path, spec: DatasetSpec = MNIST) -> None:
    """Fetch the four files with torchvision into ``root/<class>/raw``; raise DatasetUnavailable on failure.

    Sets the process-wide socket timeout for the duration (torchvision offers no per-call one); this
    runs in a job's worker process or a CLI command, where nothing else uses sockets meanwhile.
    """
    import urllib.error

    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, spec.torchvision_class)
    raw = root / spec.torchvision_class / "raw"
    new_dirs = [d for d in (raw, *raw.parents) if not d.exists()]  # innermost first
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        dataset_class(str(root), train=False, download=True)  # fetches all four, then reads the test split
    except (OSError, RuntimeError, urllib.error.URLError, ValueError) as exc:
        for folder in new_dirs:  # leave no empty folders behind in the user's (or a shared) tree
            try:
                folder.rmdir()
            except OSError:
                break
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetUnavailable(f"download into {raw} failed: {reason}") from exc
    finally:
        socket.setdefaulttimeout(previous)


def extracted(found: FoundFile, scratch: Path) -> Path:
    """A path to the file's IDX bytes: the file itself, or its .gz decompressed into ``scratch``."""
    if not found.gzipped:
        return found.path
    target = scratch / found.name
    try:
        with gzip.open(found.path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetUnavailable(f"{found.path} cannot be decompressed: {exc}") from exc
    return target


def parse(name: str, path: Path, spec: DatasetSpec = MNIST) -> "torch.Tensor":
    """Read one IDX file with torchvision's reader: images [N, 28, 28] uint8, labels [N] int64."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if "images" in name else read_label_file
    try:
        tensor = reader(str(path))
    except (AssertionError, ValueError, TypeError, RuntimeError, IndexError, OSError) as exc:
        reason = str(exc) or "wrong magic number or size in the IDX header"
        raise DatasetUnavailable(f"{path} is not a valid {spec.title} IDX file ({name}): {reason}") from exc
    if "images" in name and tuple(tensor.shape[1:]) != spec.input_shape[1:]:
        raise DatasetUnavailable(f"{path} holds {tuple(tensor.shape[1:])} images, not 28x28")
    last = spec.n_classes - 1
    if "labels" in name and tensor.numel() and not 0 <= int(tensor.min()) <= int(tensor.max()) <= last:
        raise DatasetUnavailable(f"{path} holds labels outside 0..{last}")
    return tensor


def _check_split(split: str, images: "torch.Tensor", labels: "torch.Tensor",
                 found: dict[str, FoundFile]) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DatasetUnavailable(
            f"{split} split mismatch: {found[IMAGE_FILES[split]].path} holds {images.shape[0]} images "
            f"but {found[LABEL_FILES[split]].path} holds {labels.shape[0]} labels")


def missing_message(what: str, searched: list[Path], spec: DatasetSpec, root: Path, allow_download: bool,
                    download_error: str | None, from_what: str = "") -> str:
    """One line for a dataset that is not there: what is missing, where we looked, why no download
    helped, and the command that puts it in place (shared by every dataset with files)."""
    message = f"{what}; looked in {', '.join(str(d) for d in searched)}"
    if download_error:
        message += f"; {download_error}"
    elif not allow_download:
        message += "; downloads are off"
    return (f"{message}. Get {spec.source} and copy them there with "
            f"`snnmon data {spec.name} --data-dir {root} --from PATH`{from_what}")


# --- `snnmon data DATASET`: prepare and verify a data directory ------------------------------------


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``snnmon data mnist|fashion_mnist|kmnist|nmnist``."""
    from trainer import nmnist

    data = subparsers.add_parser("data", help="prepare or verify an offline data directory",
                                 description="Prepare or verify a data directory so jobs train offline.")
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for spec in IDX_DATASETS:
        folders = ", ".join(f"DIR/{f}" if f else "DIR" for f in spec.folders)
        command = datasets.add_parser(
            spec.name, help=f"the four {spec.title} IDX files",
            description=f"Copy {spec.title}'s four IDX files (.gz or extracted; searched in {folders}) "
                        f"into a data directory, then verify it: records, class counts and sha256 of each "
                        f"file. Get them: {spec.source}. Exit code 0 when complete, 1 when not.")
        add_directory_arguments(command)
        command.add_argument("--download", action="store_true",
                             help=f"download missing files with torchvision's {spec.torchvision_class} "
                                  "(off by default: without it this command never uses the network)")
        command.set_defaults(handler=run_data_idx, spec=spec)
    nmnist.add_data_parser(datasets)


def add_directory_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--data-dir", type=Path, default=None,
                         help=f"the data directory jobs read (default: {default_data_dir()})")
    command.add_argument("--from", dest="source", type=Path, default=None, metavar="PATH",
                         help="copy the files found in PATH (or the dataset's folders under it) first")


def copy_from_source(args: argparse.Namespace, data_dir: Path, copy: Callable[[Path, Path], object]) -> bool:
    """``--from PATH``: copy the dataset's files from PATH into ``data_dir`` with ``copy(source, target)``;
    False, after saying why on stderr, when PATH is no folder or the copy failed (shared by every dataset)."""
    if args.source is None:
        return True
    if not args.source.is_dir():
        print(f"error: --from {args.source} is not a folder", file=sys.stderr)
        return False
    try:
        copy(args.source.expanduser(), data_dir)
    except OSError as exc:
        print(f"error: cannot copy into {data_dir}: {exc}", file=sys.stderr)
        return False
    return True


def run_data_idx(args: argparse.Namespace) -> int:
    spec: DatasetSpec = args.spec
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    if not copy_from_source(args, data_dir, lambda source, target: copy_files(source, target, spec)):
        return 1
    if args.download and len(locate(data_dir, spec)) < len(FILES):
        try:
            download(data_dir, spec)
        except DatasetUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
    lines, complete = verify(data_dir, spec)
    print("\n".join(lines))
    return 0 if complete else 1


run_data_mnist = run_data_idx


def copy_files(source: Path, data_dir: Path, spec: DatasetSpec = MNIST) -> None:
    """Copy each file found in ``source`` (itself or the dataset's folders under it) into the dataset's
    first folder under ``data_dir``, as stored (.gz stays .gz), atomically."""
    found = locate(source, spec)
    if not found and spec.folders[0]:  # a plain folder holding the files: the usual download
        found = {name: f for name, f in locate(source, _flat(spec)).items()}
    target_dir = candidate_dirs(data_dir, spec)[0]
    target_dir.mkdir(parents=True, exist_ok=True)
    for file in found.values():
        target = target_dir / file.path.name
        if target.exists() and target.resolve() == file.path.resolve():
            continue
        partial = target_dir / f".{file.path.name}.partial"
        shutil.copyfile(file.path, partial)  # copyfile: a read-only source's mode is not copied
        os.replace(partial, target)
        print(f"copied {file.path} -> {target}")


def _flat(spec: DatasetSpec) -> DatasetSpec:
    """The same dataset searched in the given folder itself (a --from source, never the data dir)."""
    from dataclasses import replace

    return replace(spec, folders=("",))


def verify(data_dir: Path, spec: DatasetSpec = MNIST) -> tuple[list[str], bool]:
    """A report (lines to print) on the four files in ``data_dir``, and whether they are complete.

    "published" compares the sha256 of the IDX content where it is known (MNIST), else the sha256 of a
    .gz as published; an extracted file without a published content checksum says "unknown"."""
    found = locate(data_dir, spec)
    expected = {f.name: f for f in spec.files}
    rows = [("file", "found as", "records", "sha256 of IDX content", f"published {spec.title}")]
    missing = [f"{name}[.gz]" for name in FILES if name not in found]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    records: dict[str, int] = {}
    class_lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="snnmon-mnist-") as scratch:
        for name in FILES:
            if name not in found:
                rows.append((name, "missing", "", "", ""))
                continue
            shown = os.path.relpath(found[name].path, data_dir)
            try:
                path = extracted(found[name], Path(scratch))
                tensor = parse(name, path, spec)
            except DatasetUnavailable as exc:
                rows.append((name, shown, "unreadable", "", ""))
                problems.append(str(exc))
                continue
            digest = _sha256(path)
            records[name] = int(tensor.shape[0])
            rows.append((name, shown, str(records[name]), digest,
                         _published(found[name], digest, expected[name])))
            if "labels" in name:
                counts = [int(c) for c in tensor.bincount(minlength=spec.n_classes)]
                split = "train" if name == LABEL_FILES["train"] else "test"
                class_lines.append(f"{split} classes 0-{spec.n_classes - 1}: " + " ".join(map(str, counts)))
    for split in ("train", "test"):
        n_images, n_labels = records.get(IMAGE_FILES[split]), records.get(LABEL_FILES[split])
        if n_images is not None and n_labels is not None and n_images != n_labels:
            problems.append(f"{split}: {n_images} images but {n_labels} labels")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    where = ", ".join(str(d) for d in candidate_dirs(data_dir, spec))
    lines = [f"{spec.title} in {data_dir} (looked in {where})"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += class_lines
    if problems:
        lines.append("incomplete: " + "; ".join(problems))
        lines.append(f"fix: get {spec.source}; --from PATH copies the files from a folder that has them; "
                     "--download fetches them")
    else:
        lines.append(f"complete: {records[IMAGE_FILES['train']]} training and "
                     f"{records[IMAGE_FILES['test']]} test records (published {spec.title}: "
                     f"{spec.n_train} and {spec.n_val})")
    return lines, not problems


def _published(found: FoundFile, content_digest: str, expected: catalog.DataFile) -> str:
    if expected.content_sha256:
        return "yes" if content_digest == expected.content_sha256 else "no"
    if found.gzipped:
        return "yes" if _sha256(found.path) == expected.gz_sha256 else "no"
    return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
