"""``snnmon train``: train in the foreground with a live progress bar, or ``--json`` event lines;
``--save DIR`` writes the same checkpoints as a server job (``trainer.checkpoint``).

Flags are generated from ``trainer.config.FIELDS``; values go through ``TrainConfig.from_dict`` so a bad
flag gets the same per-field reason as the API (exit code 2). Ctrl-C asks the loop to stop at the next
batch and it reports ``stopped``; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from trainer.config import FIELDS, ConfigError, Field, TrainConfig

EXIT_BAD_CONFIG = 2
EXIT_FAILED = 1


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train one network in the foreground",
        description="Train a spiking network with surrogate gradients and print its progress.",
    )
    for f in FIELDS:
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=_help(f),
                            **_argument_kind(f))
    parser.add_argument("--json", action="store_true", help="print the event stream as JSON lines")
    parser.add_argument("--data-dir", default=None, help="MNIST data directory (default: SNNMON_DATA_DIR "
                        "or the user's data directory)")
    parser.add_argument("--allow-download", action=argparse.BooleanOptionalAction, default=True,
                        help="download MNIST when its files are missing")
    parser.add_argument("--save", metavar="DIR", default=None,
                        help="write last.safetensors after every epoch and best.safetensors at the best "
                        "validation accuracy (and last.state.pt, to resume) into DIR")
    parser.set_defaults(handler=run_train)
    return parser


def _argument_kind(f: Field) -> dict:
    if f.type == "bool":
        return {"action": argparse.BooleanOptionalAction}
    if f.type == "int_list":
        return {"nargs": "+", "metavar": "N"}
    return {"metavar": f.type.upper()}


def _help(f: Field) -> str:
    text = f.help
    if f.choices:
        aliases = f" (aliases: {', '.join(f'{a}={c}' for a, c in f.aliases.items())})" if f.aliases else ""
        text += f"; one of {', '.join(f.choices)}{aliases}"
    elif f.min is not None and f.type != "int_list":
        text += f"; {f.min:g} to {f.max:g}"
    elif f.type == "int_list":
        text += f"; {f.min_len} to {f.max_len} sizes, each {f.min:g} to {f.max:g}"
    default = "random" if f.default is None else f.default
    return f"{text} (default: {default})".replace("%", "%%")


def _coerce(f: Field, raw: Any) -> Any:
    """Turn flag text into the JSON value a client would send; leave it a string when it does not parse,
    so validation reports the same reason as for an API request."""
    if f.type in ("int", "seed"):
        return _number(raw, int)
    if f.type == "float":
        return _number(raw, float)
    if f.type == "int_list":
        parts = [p for item in raw for p in str(item).replace(",", " ").split()]
        return [_number(p, int) for p in parts]
    return raw


def _number(text: Any, kind):
    if not isinstance(text, str):
        return text
    try:
        return kind(text)
    except ValueError:
        return text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: _coerce(f, getattr(args, f.name)) for f in FIELDS if hasattr(args, f.name)}
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        for name, reason in exc.fields.items():
            print(f"snnmon train: --{name.replace('_', '-')}: {reason}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    from trainer.checkpoint import Checkpoints  # imports torch: only once the flags are known to be good
    from trainer.train import train

    stop_requested = False

    def on_sigint(signum, frame):
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True
        print("\nstopping at the next batch (Ctrl-C again to abort)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    reporter = JsonLines() if args.json else ProgressReporter()
    try:
        outcome = train(config, reporter, lambda: stop_requested, data_dir=args.data_dir,
                        allow_download=args.allow_download, checkpoints=Checkpoints(args.save))
    except Exception as exc:  # a process boundary: report one line, keep the traceback off the screen
        reporter("error", {"message": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        outcome = "error"
    finally:
        signal.signal(signal.SIGINT, previous)
        reporter.close()
    return EXIT_FAILED if outcome == "error" else 0


class JsonLines:
    """Each event as one JSON line on stdout: {"event": type, "data": {...}}."""

    def __call__(self, event: str, data: dict) -> None:
        print(json.dumps({"event": event, "data": data}, allow_nan=False, ensure_ascii=False), flush=True)

    def close(self) -> None:
        pass


class ProgressReporter:
    """A tqdm bar per epoch, a summary line per epoch and a final result."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: str, data: dict) -> None:
        from tqdm import tqdm

        if event == "config":
            cfg = data["config"]
            print(f"{data['architecture']} {cfg['cell_type']} ({cfg['surrogate']}), {data['dataset']}: "
                  f"{data['n_train']} train / {data['n_val']} val, T={cfg['timesteps']}, "
                  f"device {data['device']}, seed {data['seed']}")
            if data.get("warning"):
                print(f"warning: {data['warning']}", file=sys.stderr)
        elif event == "batch":
            if self.bar is None:
                self.bar = tqdm(total=data["n_batches"], desc=f"epoch {data['epoch'] + 1}", unit="batch",
                                leave=False, dynamic_ncols=True)
            self.bar.update(data["batch"] + 1 - self.bar.n)
            self.bar.set_postfix(loss=f"{data['loss']:.4f}", acc=f"{data['accuracy']:.3f}",
                                 sps=f"{data['samples_per_s']:.0f}")
        elif event == "epoch":
            self.close()
            rates = " ".join(f"{k}={v:.3f}" for k, v in data["layer_spike_rates"].items())
            print(f"epoch {data['epoch'] + 1}: train loss {data['train_loss']:.4f} acc "
                  f"{data['train_accuracy']:.4f} | val loss {data['val_loss']:.4f} acc "
                  f"{data['val_accuracy']:.4f} | {data['epoch_s']:.1f}s | spike rates {rates}")
        elif event == "checkpoint":
            print(f"saved {data['which']} checkpoint of epoch {data['epoch'] + 1} ({data['bytes']} bytes)")
        elif event == "completed":
            print(f"completed in {data['duration_s']:.1f}s: val accuracy {data['val_accuracy']:.4f}, "
                  f"val loss {data['val_loss']:.4f}")
        elif event == "stopped":
            self.close()
            print(f"stopped during epoch {data['epoch'] + 1}")
        elif event == "error":
            self.close()
            print(f"error: {data['message']}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
