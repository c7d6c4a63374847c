"""``snnmon``: the command line. ``serve`` runs the HTTP service, ``train`` trains in the foreground,
``data`` prepares an offline data directory; ``export`` and ``evaluate`` work on checkpoint files;
``submit``, ``watch``, ``jobs``, ``stop`` and ``metrics`` drive a running server (``service.remote``).
Each subcommand imports its package only when chosen, so
``snnmon serve`` never imports torch in the server process before it needs to.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from trainer import artifact_console, console, mnist
    from service import remote, settings

    parser = argparse.ArgumentParser(prog="snnmon", description="SNN Training Monitor")
    sub = parser.add_subparsers(dest="command", required=True)
    settings.add_serve_parser(sub)
    console.add_train_parser(sub)
    mnist.add_data_parser(sub)
    artifact_console.add_artifact_parsers(sub)
    remote.add_remote_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
