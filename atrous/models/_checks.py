"""Argument checks shared by the model builders."""

from __future__ import annotations


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
