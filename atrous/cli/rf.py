"""``atrous rf``: receptive-field table of a stack of dilated convolutions."""

from __future__ import annotations

import argparse

from atrous.ops.padding import kernel_extent


def parse_ints(text: str, name: str) -> list[int]:
    """Parse ``"1,2,4,8"`` into ints >= 1, naming ``name`` in the error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers like 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{name} must be comma-separated integers >= 1, got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(name, help="receptive-field table of a dilated stack")
    parser.add_argument("--rates", default="1,2,4,8", help="dilation of each layer (default 1,2,4,8)")
    parser.add_argument("--kernel", type=int, default=3, help="kernel size of every layer (default 3)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rates = parse_ints(args.rates, "--rates")
    if args.kernel < 1:
        raise ValueError(f"--kernel must be >= 1, got {args.kernel}")
    rows, field = [], 1
    for i, rate in enumerate(rates, 1):
        adds = kernel_extent(args.kernel, rate) - 1
        field += adds
        rows.append((str(i), str(rate), f"{args.kernel - 1}x{rate} = {adds}", str(field)))
    header = ("Layer", "Dilation", "Adds to RF", "Cumulative RF")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    return 0
