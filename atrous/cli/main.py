"""Entry point of the ``atrous`` command.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``.
Errors a user can fix (bad arguments, missing files, bad data) print one line on stderr and
exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from atrous import __version__
from atrous.engine.allocator import reuse_freed_memory

# subcommand name -> module under atrous.cli
SUBCOMMANDS = {
    "train": "atrous.cli.train",
    "eval": "atrous.cli.evaluate",
    "predict": "atrous.cli.predict",
    "rf": "atrous.cli.rf",
    "train-seq": "atrous.cli.train_seq",
    "generate": "atrous.cli.generate",
    "export": "atrous.cli.export",
}


class UsageError(Exception):
    """A mistake in the command line or its inputs; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message}")


def one_line(error: BaseException) -> str:
    """The error as one line; errors re-raised from DataLoader workers carry a whole traceback,
    whose last line is the original message."""
    if isinstance(error, UsageError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[-1] if lines else type(error).__name__
    for prefix in ("ValueError: ", "TypeError: ", "FileNotFoundError: "):
        message = message.removeprefix(prefix)
    return f"atrous: error: {message}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atrous", description="Dilated convolutions: analysis, models, training.")
    parser.add_argument("--version", action="version", version=f"atrous {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in SUBCOMMANDS.items():
        importlib.import_module(module_name).add_parser(subparsers, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    reuse_freed_memory()  # tensors allocated every step stop page-faulting (atrous.engine.allocator)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.run(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, FileExistsError) as error:
        print(one_line(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atrous: interrupted", file=sys.stderr)
        return 130
