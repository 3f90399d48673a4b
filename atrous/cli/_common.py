"""Argument parsing helpers shared by the subcommands."""

from __future__ import annotations


def parse_ints(text: str, name: str) -> list[int]:
    """Parse ``"1,2,4,8"`` into ints >= 1, naming ``name`` in the error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers like 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} must be comma-separated integers >= 1, got {text!r}")
    return values


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` -> floats > 0, naming ``name`` in the error."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers like 0.75,1,1.25, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"{name} must be comma-separated numbers > 0, got {text!r}")
    return values


def parse_key_values(items: list[str] | None, name: str) -> dict:
    """``["width=16", "variant=large"]`` -> ``{"width": 16, "variant": "large"}`` (ints, floats, bools kept)."""
    import ast

    result = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{name} must look like KEY=VALUE, got {item!r}")
        try:
            result[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            result[key] = raw
    return result


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")


def add_checkpoint_arguments(parser) -> None:
    group = parser.add_argument_group("checkpoints (a save also ends every epoch; SIGINT/SIGTERM save and exit)")
    group.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                       help="save at least every M minutes of training (default 5)")
    group.add_argument("--checkpoint-steps", type=int, default=None, metavar="N",
                       help="also save every N optimizer steps")


def checkpoint_every(args):
    from atrous.engine.loop import CheckpointEvery

    try:
        return CheckpointEvery(minutes=args.checkpoint_minutes, steps=args.checkpoint_steps)
    except ValueError as error:
        raise ValueError(f"--{str(error).replace('checkpoint ', 'checkpoint-', 1)}") from None
