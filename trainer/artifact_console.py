"""``snnmon export`` and ``snnmon evaluate``: what a user does with a checkpoint file
(``best.safetensors`` / ``last.safetensors``, from ``snnmon train --save`` or the download endpoint).

``export CHECKPOINT --format nir -o FILE`` writes the network as a NIR graph (``trainer.nir_export``);
``evaluate CHECKPOINT [--dataset mnist]`` rebuilds the network from the file's metadata and prints its
loss and accuracy on the validation set of the dataset it was trained on (or the one named).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from trainer.config import FIELDS_BY_NAME

EXIT_FAILED = 1


def add_artifact_parsers(subparsers) -> None:
    export = subparsers.add_parser("export", help="write a checkpoint's network in an interchange format",
                                   description="Export a checkpoint's network (NIR: an HDF5 graph for "
                                   "neuromorphic simulators and hardware).")
    export.add_argument("checkpoint", help="a .safetensors checkpoint written by snnmon")
    export.add_argument("--format", choices=("nir",), default="nir", help="export format (default: nir)")
    export.add_argument("-o", "--output", required=True, help="file to write, e.g. net.nir")
    export.set_defaults(handler=run_export)

    evaluate = subparsers.add_parser("evaluate", help="print a checkpoint's validation loss and accuracy",
                                     description="Rebuild the network from a checkpoint and evaluate it "
                                     "on a validation set.")
    evaluate.add_argument("checkpoint", help="a .safetensors checkpoint written by snnmon")
    evaluate.add_argument("--dataset", choices=FIELDS_BY_NAME["dataset"].choices, default=None,
                          help="validation set (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--data-dir", default=None, help="MNIST data directory")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=run_evaluate)


def run_export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import CheckpointError
    from trainer.nir_export import NotExportable, export_checkpoint

    try:
        blob = export_checkpoint(args.checkpoint)
    except (CheckpointError, NotExportable) as exc:
        print(f"snnmon export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    Path(args.output).write_bytes(blob)
    print(f"wrote {args.output} ({len(blob)} bytes, NIR)")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from trainer import data
    from trainer.checkpoint import CheckpointError, load_model
    from trainer.train import evaluate, resolve_device

    device = resolve_device(args.device)
    try:
        model, config, metadata = load_model(args.checkpoint, device)
    except CheckpointError as exc:
        print(f"snnmon evaluate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.dataset is not None:
        config = dataclasses.replace(config, dataset=args.dataset)
    bundle = data.load_data(config, data_dir=args.data_dir, device=device, allow_download=False)
    import torch

    encode_gen = torch.Generator(device=device).manual_seed(config.seed + 1)

    def model_input(images):
        return data.encode(images, config.encoding, config.timesteps, bundle.mean, bundle.std, encode_gen)

    loss, accuracy = evaluate(model, bundle, config, model_input, lambda: None)
    result = {"checkpoint": str(args.checkpoint), "epoch": int(metadata["epoch"]), "dataset": bundle.name,
              "n_val": bundle.n_val, "val_loss": loss, "val_accuracy": accuracy}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{bundle.name} validation ({bundle.n_val} samples), epoch {result['epoch'] + 1} weights: "
              f"loss {loss:.4f}, accuracy {accuracy:.4f}")
    return 0
