"""Argument checks shared by the model builders: each error names the argument, the value
received and what is allowed."""

from __future__ import annotations

import math


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[minimum, maximum]``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value!r}")
    return value


def check_float(name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False,
                high_open: bool = False) -> float:
    """Return ``value`` if it is a finite number in the interval, else raise naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or value > high or (low_open and value == low) or (high_open and value == high):
        bounds = [f"{'>' if low_open else '>='} {low:g}"] + ([f"{'<' if high_open else '<='} {high:g}"]
                                                          if math.isfinite(high) else [])
        raise ValueError(f"{name} must be a finite number {' and '.join(bounds)}, got {value!r}")
    return float(value)


def check_sequence(name: str, value: object) -> tuple:
    """``value`` as a tuple if it is a list or tuple (not a string), else raise naming ``name``."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a sequence of ints such as (1, 2, 4), got {value!r}")
    return tuple(value)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is ``True`` or ``False``, else raise naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
