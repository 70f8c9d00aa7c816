"""``refconv`` command line: thin argparse front-ends over :mod:`refconv.engine`.

Each command lives in its own module exposing ``register(subparsers)`` (adds its parser and sets ``func``)
and does nothing a Python user could not do by calling the engine. Errors a user can cause are
:class:`~refconv.errors.RefConvError` subclasses: printed as one ``refconv CMD: error: ...`` line (exit 1),
never as a traceback. Ctrl-C exits with 130 after the run saved its checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import RefConvError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

# Modules under refconv.cli that provide a command (``register(subparsers)``), in help order.
COMMAND_MODULES = ("demo", "train", "evaluate", "fold", "convert_info", "pretrained", "analyze", "sweep",
                   "downstream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refconv",
        description="RefConv: refocus a pretrained ConvNet's kernels, train, fold back to the original model.",
    )
    parser.add_argument("--version", action="version", version=f"refconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refconv`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # RunInterrupted (checkpoint saved) or a second Ctrl-C
        msg = str(exc) or "interrupted."
        print(f"refconv {args.command}: {msg}", file=sys.stderr)
        return 130
    except RefConvError as exc:
        print(f"refconv {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        from ..engine.distributed import shutdown

        shutdown()
