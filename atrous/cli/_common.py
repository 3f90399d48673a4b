"""Argument parsing helpers shared by the subcommands."""

from __future__ import annotations

import importlib.util
import math


def parse_ints(text: str, name: str, *, maximum: int | None = None) -> list[int]:
    """Parse ``"1,2,4,8"`` into ints >= 1 (and <= ``maximum``), naming ``name`` in the error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers like 1,2,4,8, got {text!r}") from None
    allowed = f">= 1 and <= {maximum:,}" if maximum is not None else ">= 1"
    if not values or min(values) < 1 or (maximum is not None and max(values) > maximum):
        raise ValueError(f"{name} must be comma-separated integers {allowed}, got {text!r}")
    return values


def parse_floats(text: str, name: str, *, maximum: float | None = None) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` -> finite floats > 0 (and <= ``maximum``), naming ``name`` in the error."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers like 0.75,1,1.25, got {text!r}") from None
    allowed = f"finite numbers > 0 and <= {maximum:g}" if maximum is not None else "finite numbers > 0"
    # nan compares False with everything, so finiteness is checked on its own
    if not values or not all(math.isfinite(v) and v > 0 for v in values) or \
            (maximum is not None and max(values) > maximum):
        raise ValueError(f"{name} must be comma-separated {allowed}, got {text!r}")
    return values


def check_number(value: float, name: str, *, low: float, high: float, low_open: bool = False) -> float:
    """``value`` if it is finite and in ``[low, high]`` (``(low, high]`` when ``low_open``), else a
    ValueError naming the option ``name``, the value and the range."""
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound} and <= {high:g}, got {value!r}")
    return value


def check_int(value: int, name: str, *, low: int, high: int | None = None) -> int:
    """``value`` if ``low <= value <= high``, else a ValueError naming the option ``name``."""
    if value < low or (high is not None and value > high):
        allowed = f"an int >= {low:,}" if high is None else f"an int from {low:,} to {high:,}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def parse_key_values(items: list[str] | None, name: str) -> dict:
    """``["width=16", "variant=large"]`` -> ``{"width": 16, "variant": "large"}`` (ints, floats, bools kept)."""
    import ast

    result = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{name} must look like KEY=VALUE, got {item!r}")
        if key in result:
            raise ValueError(f"{name} {key} is given twice ({key}={result[key]!r} and {item!r}); give it once")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # not a literal: a string
            value = raw
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} {item!r}: {key} must be a finite number, got {raw!r}")
        result[key] = value
    return result


def require(module: str, extra: str, purpose: str) -> None:
    """Raise an ImportError naming the extra to install when the optional ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the {module!r} package: pip install 'atrous[{extra}]'")


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")


def add_checkpoint_arguments(parser) -> None:
    group = parser.add_argument_group("checkpoints (a save also ends every epoch; SIGINT/SIGTERM save and exit)")
    group.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                       help="save at least every M minutes of training (default: 5)")
    group.add_argument("--checkpoint-steps", type=int, default=None, metavar="N",
                       help="also save every N optimizer steps")


def checkpoint_every(args):
    from atrous.engine.loop import CheckpointEvery

    try:
        return CheckpointEvery(minutes=args.checkpoint_minutes, steps=args.checkpoint_steps)
    except ValueError as error:
        raise ValueError(f"--{str(error).replace('checkpoint ', 'checkpoint-', 1)}") from None


def check_resume(args, allowed: set[str]) -> str:
    """The run folder of ``--resume``, after refusing an empty one, another ``--out``, and any option
    outside ``allowed`` (a resumed run trains with its own settings)."""
    if not args.resume.strip():
        raise ValueError("--resume needs the run folder to continue")
    if args.out and args.out != args.resume:
        raise ValueError("--resume RUN_DIR continues that folder; do not also pass a different --out")
    given = [name for name, value in vars(args).items() if name not in allowed and value not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags}: a resumed run keeps the settings it was started with; give only --resume "
                         f"(and how long to train), or start a new run")
    return args.resume
