"""``snnmon train``: train in the foreground with a live progress bar, or ``--json`` event lines;
``--save DIR`` writes the same checkpoints as a server job (``trainer.checkpoint``).

Flags are generated from ``trainer.config.FIELDS`` (``add_config_arguments``, also used by ``snnmon
submit``); values go through ``TrainConfig.from_dict`` so a bad flag gets the same per-field reason as
the API. Ctrl-C asks the loop to stop at the next batch and it reports ``stopped``; a second Ctrl-C
exits at once (code 130, no traceback).

Exit codes, shared with the remote commands (``service.remote``): 0 completed, 1 failed, 2 bad usage,
3 stopped, 130 aborted by a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from trainer.config import FIELDS, ConfigError, Field, TrainConfig

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_BAD_USAGE = 2
EXIT_STOPPED = 3
EXIT_ABORTED = 130  # 128 + SIGINT, what shells report for a process ended by Ctrl-C
EXIT_BAD_CONFIG = EXIT_BAD_USAGE
EXIT_CODES = {"completed": EXIT_COMPLETED, "stopped": EXIT_STOPPED, "error": EXIT_FAILED}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train one network in the foreground",
        description="Train a spiking network with surrogate gradients and print its progress. "
                    "Exit code 0 completed, 1 failed, 2 bad flags, 3 stopped.",
    )
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the event stream as JSON lines")
    parser.add_argument("--data-dir", default=None, help="data directory of mnist, fashion_mnist, kmnist, nmnist (default: SNNMON_DATA_DIR "
                        "or the user's data directory)")
    parser.add_argument("--allow-download", action=argparse.BooleanOptionalAction, default=True,
                        help="download the dataset when its files are missing")
    parser.add_argument("--save", metavar="DIR", default=None,
                        help="write last.safetensors after every epoch and best.safetensors at the best "
                        "validation accuracy (and last.state.pt, to resume) into DIR")
    parser.set_defaults(handler=run_train)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; a flag not given is absent from ``args`` (the default applies)."""
    for f in FIELDS:
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=_help(f),
                            **_argument_kind(f))


def flag_name(field_name: str) -> str:
    return f"--{field_name.replace('_', '-')}"


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
        text += f"; {_bound(f.min)} to {_bound(f.max)}"
    elif f.type == "int_list":
        text += f"; {f.min_len} to {f.max_len} sizes, each {_bound(f.min)} to {_bound(f.max)}"
    default = "random" if f.default is None else f.default
    return f"{text} (default: {default})".replace("%", "%%")


def _bound(value: float) -> str:
    """A bound as written: 4294967295, 0.0001 (``:g`` would print 4.29497e+09)."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def _coerce(f: Field, raw: Any) -> Any:
    """Turn flag text into the JSON value a client would send; leave it a string when it does not parse,
    so validation reports the same reason as for an API request."""
    if f.type in ("int", "seed"):
        value = _number(raw, int)
        return _number(value, float)  # "2.5" becomes 2.5, so the reason can say "got 2.5"
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


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as the JSON body a client would send (validation happens elsewhere)."""
    return {f.name: _coerce(f, getattr(args, f.name)) for f in FIELDS if hasattr(args, f.name)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(config_values(args))


def print_field_errors(command: str, fields: dict[str, str]) -> None:
    """One line per bad field, named by its flag: ``snnmon train: --epochs: must be ...``."""
    for name, reason in fields.items():
        print(f"snnmon {command}: {flag_name(name)}: {reason}", file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print_field_errors("train", exc.fields)
        return EXIT_BAD_USAGE

    from trainer.checkpoint import Checkpoints  # imports torch: only once the flags are known to be good
    from trainer.train import train

    stop_requested = False

    def on_sigint(signum, frame):
        nonlocal stop_requested
        if stop_requested:
            abort()
        stop_requested = True
        print("\nstopping at the next batch (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, on_sigint)
    reporter = JsonLines() if args.json else ProgressReporter()
    try:
        outcome = train(config, reporter, lambda: stop_requested, data_dir=args.data_dir,
                        allow_download=args.allow_download, checkpoints=Checkpoints(args.save))
    except Exception as exc:  # a process boundary: report one line, keep the traceback off the screen
        reporter("error", {"message": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        outcome = "error"
    finally:
        # Still a Ctrl-C while the process exits (torch's teardown takes a moment): leave at once, quietly.
        signal.signal(signal.SIGINT, lambda signum, frame: abort())
        reporter.close()
    return EXIT_CODES.get(outcome, EXIT_FAILED)


def abort() -> None:
    """A second Ctrl-C: leave now, without unwinding (no traceback, no waiting for the batch)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print("\naborted", file=sys.stderr, flush=True)
    os._exit(EXIT_ABORTED)


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
        elif event == "warning":
            print(f"warning: {data['message']}", file=sys.stderr)
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
