"""Argument checks shared by every layer: ints, floats, tuples of ints, dilation rates, flags.

One policy for every error: ``TypeError`` when the value has the wrong type, ``ValueError`` when
it has the right type and a wrong value, each naming the argument, the value received and what is
allowed. ``True`` is an int to Python but never a count, a size or a rate to atrous, so the int
checks refuse bools. This module sits at the bottom of the package (it imports nothing from
atrous), so the ops, the data, the streaming step, the exporters and the CLI all use it.

Checks of a file's fields (a checkpoint's metadata, a config read back) report a wrong type as a
wrong value of the file; they use the predicates :func:`is_int` and :func:`is_number`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence


def is_int(value: object) -> bool:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (finite or not) and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_numbers(values: object, *, above: float = -math.inf, length: int | None = None) -> bool:
    """Whether ``values`` is a non-empty sequence (not a string) of finite numbers > ``above``,
    of ``length`` items when given; for lists read from files and options, whose errors say more."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        return False
    if length is not None and len(values) != length:
        return False
    return all(is_number(v) and math.isfinite(v) and v > above for v in values)


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"from {low:,} to {high:,}"
    if low is not None:
        return f">= {low:,}"
    return f"<= {high:,}" if high is not None else ""


def int_range(low: int | None = None, high: int | None = None) -> str:
    """The ints allowed, as the messages say it: ``"an int >= 1"``, ``"an int from 1 to 4,096"``."""
    return f"an int {_bounds(low, high)}".strip()


def check_int(value: object, name: str, *, low: int | None = None, high: int | None = None,
              index: bool = False) -> int:
    """``value`` if it is an int in ``[low, high]`` (a missing bound is no bound).

    Args:
        value: what the caller passed.
        name: the argument's name (or the CLI option) for the message.
        low, high: the smallest and largest value allowed.
        index: also accept what Python can use as an index (a NumPy integer), returned as an int.

    Raises:
        TypeError: not an int (a bool, a float, a string).
        ValueError: out of range.
    """
    if index and not isinstance(value, bool):
        try:
            value = operator.index(value)
        except TypeError:
            pass
    if not is_int(value):
        raise TypeError(f"{name} must be {int_range(low, high)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {int_range(low, high)}, got {value!r}")
    return value


def number_range(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False) -> str:
    """The numbers allowed, as the messages say it: ``"a finite number > 0 and <= 64"``."""
    bounds = ([f"{'>' if low_open else '>='} {low:g}"] if math.isfinite(low) else []) + \
             ([f"{'<' if high_open else '<='} {high:g}"] if math.isfinite(high) else [])
    return " ".join(["a finite number", " and ".join(bounds)]).strip()


def check_float(value: object, name: str, *, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in the interval from ``low`` to ``high``.

    Args:
        value: what the caller passed (an int is accepted).
        name: the argument's name for the message.
        low, high: the bounds, included unless ``low_open`` or ``high_open``.

    Raises:
        TypeError: not an int or a float (a bool, a string).
        ValueError: NaN, infinite or out of range.
    """
    allowed = number_range(low, high, low_open=low_open, high_open=high_open)
    if not is_number(value):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low) \
            or (high_open and value == high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_ints(value: object, name: str, *, length: int | range | None = None, low: int | None = 1,
               high: int | None = None, scalar: bool = False, example: str = "") -> tuple[int, ...]:
    """A tuple of ints in ``[low, high]``, from a sequence of ``length`` of them.

    Args:
        value: a list or tuple of ints; with ``scalar``, also one int, repeated ``length`` times.
        name: the argument's name for the message.
        length: how many entries: an exact count, a ``range`` of counts, or None for any
            non-empty sequence.
        low, high: the smallest and largest entry allowed (None: no bound).
        scalar: accept one int for all entries (``length`` must then be an int).
        example: a value to show in the message, e.g. ``"(1, 2, 4)"``.

    Raises:
        TypeError: not a sequence (a string is not one), or an entry that is not an int.
        ValueError: the wrong number of entries, or an entry out of range.
    """
    count = "" if length is None else f"{length} " if isinstance(length, int) else \
        f"{length.start} to {length.stop - 1} "
    what = f"a sequence of {count}ints {_bounds(low, high)}".strip() + (f" such as {example}" if example else "")
    if scalar:
        what = f"{int_range(low, high)} or {what}"
    if scalar and is_int(value):
        values = (value,) * length
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        values = tuple(value)
    else:
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if length is None and not values or isinstance(length, int) and len(values) != length \
            or isinstance(length, range) and len(values) not in length:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if not all(is_int(v) for v in values):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if any((low is not None and v < low) or (high is not None and v > high) for v in values):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return values


def check_rates(rates: object, name: str = "rates", *, high: int | None = None) -> tuple[int, ...]:
    """Dilation rates: a non-empty sequence of ints >= 1 (and <= ``high``), as a tuple.

    Raises:
        TypeError: not a sequence, or a rate that is not an int (``2.0``, ``True``, NaN).
        ValueError: no rate at all, or a rate below 1 or above ``high``.
    """
    return check_ints(rates, name, low=1, high=high, example="(1, 2, 4)")


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``; a TypeError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
