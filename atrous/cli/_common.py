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
