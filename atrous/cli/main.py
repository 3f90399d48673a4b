"""Entry point of the ``atrous`` command.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``;
the modules import torch and the rest of atrous inside ``run``, so ``atrous --help`` and every
subcommand's ``--help`` answer without loading them. Errors a user can fix (bad arguments,
missing files, bad data) print one line on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from atrous import __version__

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


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default: ``(default: X)`` is added to a help that does not already
    say its default; flags (off unless given) and options without a default say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if (
            "default" in help_text.lower()
            or action.default in (None, False, argparse.SUPPRESS)
            or action.required
            or not action.option_strings
            or action.nargs == 0  # store_true, version, help
        ):
            return help_text
        return f"{help_text} (default: %(default)s)" if help_text else "(default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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


def _environment_error(error: OSError) -> str:
    """A failure of the disk or the system (full, read-only, denied) as one line naming the path."""
    reason = error.strerror or str(error) or type(error).__name__
    path = error.filename if error.filename is not None else None
    return f"atrous: error: {path}: {reason}" if path else f"atrous: error: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``atrous`` command; every error is one line on stderr.

    Exit codes: 0 done; 2 a usage or input error (a bad option, a missing or malformed file);
    1 a failure of the environment or the run (disk full, read-only folder, permission denied,
    a diverged training, a run folder in use) or a check that failed (``rf --check-hdc`` on rates
    that break the HDC rule, ``export --check`` above its tolerance); 130/143 stopped by
    SIGINT/SIGTERM after saving.
    ``--traceback`` shows the full trace instead, for bug reports.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    show_trace = "--traceback" in argv
    argv = [arg for arg in argv if arg != "--traceback"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command in ("train", "train-seq", "generate"):
            from atrous.engine.allocator import reuse_freed_memory

            reuse_freed_memory()  # tensors allocated every step stop page-faulting (atrous.engine.allocator)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("atrous: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if show_trace:
            raise
        exit_code = getattr(error, "exit_code", None)
        if isinstance(exit_code, int):  # a run that stopped as it should: a signal, divergence, a lock
            print(f"atrous: {error}" if exit_code > 1 else one_line(error), file=sys.stderr)
            return exit_code
        if isinstance(error, (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError,
                              FileExistsError, IsADirectoryError)):
            print(one_line(error), file=sys.stderr)
            return 2
        if isinstance(error, ImportError):
            print(one_line(error), file=sys.stderr)
            return 2
        if isinstance(error, OSError):
            print(_environment_error(error), file=sys.stderr)
            return 1
        print(f"{one_line(error)} (run again with --traceback for the full trace)", file=sys.stderr)
        return 1
