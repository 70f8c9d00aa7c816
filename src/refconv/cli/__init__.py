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

__all__ = ["main", "build_parser", "COMMAND_MODULES", "add_command"]

# Every command: the module under refconv.cli that registers it (``register(subparsers)``) and its one-line help,
# in help order. The table lets ``refconv --help`` / ``--version`` / a bad command answer without importing any
# command module (several import torch: seconds); only the invoked command's module is imported.
# tests/test_cli_fast.py checks each summary against the help its module registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the paper's protocol (baseline, refconv vs continue/finetune, fold, analyses) and write a "
                     "report"),
    "train": ("train", "train one run: baseline, refconv, continue or finetune"),
    "eval": ("evaluate", "evaluate a run directory, checkpoint or weights file"),
    "fold": ("fold", "fold a RefConv run or checkpoint into plain deployable weights"),
    "convert-info": ("convert_info", "show what refconv.convert would do to a model"),
    "pretrained": ("pretrained", "list the pretrained models made here; publish a run as one"),
    "analyze": ("analyze", "channel redundancy, kernel skeleton, refocusing spectrum, loss landscape, attacks and "
                           "cost of a baseline vs RefConv pair"),
    "sweep": ("sweep", "run RefConv settings and the controls over budgets and seeds from one baseline; report when "
                       "RefConv pays"),
    "detect": ("downstream", "train / fold / export an SSD detector with a RefConv backbone"),
    "segment": ("downstream", "train / fold / export a segmenter (DeepLabV3, LR-ASPP, FCN) with a RefConv backbone"),
    "downstream-study": ("downstream_study", "detection / segmentation from a pretrained backbone: refconv vs "
                                            "continue / finetune over seeds, with a report"),
    "study-summary": ("study", "write the pretrained study's summary page from its recorded sweeps"),
    "study-analyses": ("study", "the paper's analyses over a finished sweep's seeds, RefConv vs control per seed"),
}
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``refconv`` parser.

    Args:
        command: ``"*"`` registers every command's full parser; a command name only that command's (the others
            appear in ``--help`` with their summary); None none (``--help``, ``--version``).
    """
    parser = argparse.ArgumentParser(
        prog="refconv",
        description="RefConv: refocus a pretrained ConvNet's kernels, train, fold back to the original model.",
    )
    parser.add_argument("--version", action="version", version=f"refconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = set(COMMAND_MODULES) if command == "*" else {COMMANDS[command][0]} if command in COMMANDS else set()
    registered: set[str] = set()
    for name, (module, summary) in COMMANDS.items():
        if module in wanted:
            if module not in registered:
                importlib.import_module(f"{__name__}.{module}").register(sub)
                registered.add(module)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def add_command(sub: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    """The parser of command ``name``, its one-line help taken from :data:`COMMANDS` (written once, there)."""
    return sub.add_parser(name, help=COMMANDS[name][1], description=description)


def add_model_data_options(p: argparse.ArgumentParser, *, model_help: str, data_help: str) -> None:
    """``--model/--num-classes/--in-chans`` (rebuild weights that do not record their architecture) and
    ``--data/--data-dir/--image-size`` (the test split; by default the run's), shared by ``eval`` and ``analyze``."""
    p.add_argument("--model", help=model_help)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--data", help=data_help)
    p.add_argument("--data-dir")
    p.add_argument("--image-size", type=int)


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first argument that is not an option), if it is one."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refconv`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
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
        distributed = sys.modules.get("refconv.engine.distributed")  # only a run that used it has a group to end
        if distributed is not None:
            distributed.shutdown()
