"""``backend=``: how a dilated convolution executes, and the record of ``"auto"``'s choices.

Every dilated convolution takes ``backend=``: a formulation of :mod:`atrous.ops.formulations`
by name, or ``"auto"`` (the default), which times the formulations worth trying on the first
call with a new key and reuses the fastest (:mod:`atrous.ops.selection` picks the candidates,
:mod:`atrous.ops.autotune` times them). All formulations compute the same result up to
floating-point rounding; a run that must repeat bit for bit records the choices with
:func:`export_choices` and replays them with :func:`replay_choices`, or runs inside
:func:`deterministic_backend`.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from atrous.ops.autotune import CHOOSER, deterministic_backend
from atrous.ops.capture import capturing
from atrous.ops.formulations import FORMULATIONS, applicable
from atrous.ops.geometry import ConvSpec
from atrous.ops.selection import auto_formulation
from atrous.ops.stack_fusion import STACK_CHOICES

__all__ = [
    "BACKENDS", "STACK_CHOICES", "backend_choices", "check_backend", "clear_backend_cache", "deterministic_backend",
    "export_choices", "replay_choices", "run_conv",
]  # fmt: skip

BACKENDS = ("auto", *FORMULATIONS)
# No branch on the input size and no custom autograd function (which exporters cannot see into).
_CAPTURE_SAFE = ("native", "pad", "channels_last")


def check_backend(backend: str) -> str:
    """``backend`` itself, or a ValueError naming the allowed values."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def run_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec, backend: str = "auto"
) -> torch.Tensor:
    """Run the convolution with formulation ``backend`` (``"auto"``: the cached fastest).

    Args:
        x: ``(N, C_in, *S)``, already checked against ``weight``.
        weight: ``(C_out, C_in / groups, *K)``.
        bias: ``(C_out,)`` or None.
        spec: stride, dilation, resolved padding and groups.
        backend: ``"auto"`` or a name in :data:`BACKENDS`; a formulation that does not apply
            to this call (e.g. ``"gemm"`` in 2D), or whose Python depends on the input size (or
            that is a custom autograd function) while a graph is traced, compiled or exported,
            runs ``native`` instead.

    Returns:
        ``(N, C_out, *S_out)``.
    """
    if backend == "auto":
        backend = auto_formulation(x, weight, bias, spec)
    elif backend not in FORMULATIONS or not applicable(backend, spec):
        backend = "native"
    elif backend not in _CAPTURE_SAFE and capturing():
        backend = "native"  # their Python branches on sizes; a captured graph would bake them in
    return FORMULATIONS[backend](x, weight, bias, spec)


def clear_backend_cache() -> None:
    """Forget every cached and replayed choice (the next call of each key times again)."""
    with CHOOSER.lock:
        CHOOSER.cache.clear()
        CHOOSER.preset.clear()


def backend_choices() -> dict[Hashable, str]:
    """A copy of the cache: key -> chosen formulation (or way of a ``DilatedStack`` run)."""
    with CHOOSER.lock:
        return dict(CHOOSER.cache)


def export_choices() -> dict[str, str]:
    """The choices made so far (and those replayed), as JSON-able ``{repr(key): formulation}``.

    Different formulations round differently, so a run that must repeat bit for bit records
    these and gives them to :func:`replay_choices` in the next process.
    """
    with CHOOSER.lock:
        return {**CHOOSER.preset, **{repr(key): name for key, name in CHOOSER.cache.items()}}


def replay_choices(choices: dict[str, str]) -> int:
    """Use these recorded choices instead of timing when their keys come up; returns how many were taken.

    Entries naming no known formulation are ignored; a choice that is not a candidate for its
    call when it comes up is timed as usual.
    """
    if not isinstance(choices, dict):
        raise TypeError(f"choices must be a dict of str -> formulation name, got {type(choices).__name__}")
    known = (*FORMULATIONS, *STACK_CHOICES)
    valid = {key: name for key, name in choices.items() if isinstance(key, str) and name in known}
    with CHOOSER.lock:
        CHOOSER.preset.update(valid)
    return len(valid)
