"""The geometry of one convolution with its padding resolved, and what its formulations share.

:class:`ConvSpec` is what :func:`atrous.dilated_conv` resolves a call to (stride, dilation,
``(low, high)`` padding per axis, groups, padding mode) and what every formulation of
:mod:`atrous.ops.formulations` receives. The helpers here pad by a spec, pick the functional
convolution and the channels-last format for a rank, and cast inputs under ``torch.autocast``
as ``F.convNd`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atrous.ops.capture import capturing

__all__ = ["CHANNELS_LAST", "CONV_BY_NDIM", "ConvSpec", "autocast_inputs", "pad_high", "pad_input"]

CONV_BY_NDIM = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # functional conv for each number of spatial axes
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}  # by number of spatial axes


@dataclass(frozen=True)
class ConvSpec:
    """Geometry of one convolution with its padding resolved.

    Attributes:
        stride, dilation: one int per spatial axis.
        pads: ``(low, high)`` padding per spatial axis; symbolic while a graph is captured
            where they depend on the input size (see ``fixed_pads``).
        groups: channel groups.
        pad_mode: ``F.pad``'s mode: ``"constant"`` (zeros), ``"reflect"``, ``"replicate"``, ``"circular"``.
    """

    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    groups: int = 1
    pad_mode: str = "constant"

    @property
    def ndim(self) -> int:
        return len(self.stride)

    @property
    def fixed_pads(self) -> bool:
        """Whether code may branch on the padding amounts. While a graph is captured, the amounts
        of a strided axis may follow the input size ("same" padding; traced tensors under
        ``torch.jit.trace``, ``torch.SymInt`` under ``torch.compile`` and ``torch.export``): a
        branch on them would fix the captured size in the graph, or guard on it, so they are
        used but never compared. Unit-stride amounts never depend on the size."""
        return self.unit_stride or not capturing()

    @property
    def symmetric(self) -> bool:
        """Zero padding with equal amounts on both sides: the convolution can pad by itself."""
        return self.pad_mode == "constant" and self.fixed_pads and all(lo == hi for lo, hi in self.pads)

    @property
    def unit_stride(self) -> bool:
        return all(s == 1 for s in self.stride)

    def as_2d(self) -> ConvSpec:
        """A 1D spec as the 2D spec of the same convolution over ``(N, C, 1, T)`` with a ``(1, k)`` kernel."""
        return ConvSpec((1, *self.stride), (1, *self.dilation), ((0, 0), *self.pads), self.groups, self.pad_mode)


def pad_input(x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    """``x`` padded as ``spec`` says (unchanged when there is nothing to pad).

    Args:
        x: ``(N, C, *S)``.
        spec: its padding amounts and mode.

    Returns:
        ``(N, C, *(S + low + high))``.
    """
    if spec.fixed_pads and not any(lo or hi for lo, hi in spec.pads):
        return x
    return F.pad(x, [amount for lo, hi in reversed(spec.pads) for amount in (lo, hi)], mode=spec.pad_mode)


def pad_high(x: torch.Tensor, amounts: Sequence) -> torch.Tensor:
    """Zeros on the high side of each spatial axis; negative amounts crop instead (unlike
    slicing, with no guard on whether an amount is 0 when it is symbolic).

    Args:
        x: ``(N, C, *S)``.
        amounts: one per spatial axis.

    Returns:
        ``(N, C, *(S + amounts))``.
    """
    return F.pad(x, [pad for amount in reversed(amounts) for pad in (0, amount)])


def autocast_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under ``torch.autocast`` a convolution runs in the autocast dtype, as ``F.convNd`` does:
    the inputs cast once (the formulations are built from ops autocast may leave alone).

    Args:
        x: ``(N, C_in, *S)``; weight: ``(C_out, C_in / groups, *K)``; bias: ``(C_out,)`` or None.

    Returns:
        The three, cast where autocast is on for ``x``'s device and would cast a convolution.
    """
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return x, weight, bias  # the caller's checks name the argument
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return x, weight, bias
    if not (x.is_floating_point() and weight.is_floating_point()) or torch.float64 in (x.dtype, weight.dtype):
        return x, weight, bias  # autocast leaves float64 alone
    dtype = torch.get_autocast_dtype(device)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
