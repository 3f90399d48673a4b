"""space_to_batch / batch_to_space for N-d tensors.

A dilated convolution at rate ``r`` applied to a tensor equals an undilated convolution applied to
each of the ``r**n`` interleaved sub-grids ``x[..., i::r, j::r]``. Moving those sub-grids into the
batch (``space_to_batch``) lets a run of layers with one rate execute as ordinary dense
convolutions and pay for the rearrangement once (the trick documented with TensorFlow's
``atrous_conv2d``); :mod:`atrous.ops.formulations` builds on these for one layer and
:mod:`atrous.ops.stack_fusion` for a same-rate stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from atrous._checks import check_ints
from atrous.ops.padding import to_tuple


def _check_rank(x: torch.Tensor, name: str) -> int:
    allowed = f"{name} must be a tensor (batch, channels, *spatial) with >= 1 spatial axis"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{allowed}, got {type(x).__name__}")
    if x.ndim < 3:
        raise ValueError(f"{allowed}, got shape {tuple(x.shape)}")
    return x.ndim - 2


def _pad_pairs(pairs: Sequence[Sequence[int]] | None, ndim: int, name: str) -> list[tuple[int, int]] | None:
    if pairs is None:
        return None
    allowed = f"{name} must be {ndim} pairs (low, high) of ints >= 0, got {pairs!r}"
    if not isinstance(pairs, Sequence) or isinstance(pairs, (str, bytes)):
        raise TypeError(allowed)
    if len(pairs) != ndim:
        raise ValueError(allowed)
    return [check_ints(pair, f"{name}[{axis}]", length=2, low=0) for axis, pair in enumerate(pairs)]


def space_to_batch(
    x: torch.Tensor, block_size: int | Sequence[int], *, paddings: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """Move the ``block**n`` interleaved sub-grids of ``x`` into the batch.

    Args:
        x: ``(N, C, *S)``.
        block_size: the rate, an int or one per spatial axis.
        paddings: (low, high) zeros added per spatial axis first; by default the high side is
            padded up to the next multiple of the block.

    Returns:
        ``(prod(block) * N, C, *(S_padded / block))``; batch index ``offset * N + n`` where
        ``offset`` enumerates the sub-grid offsets in row-major order (TensorFlow's layout).
    """
    ndim = _check_rank(x, "x")
    block = to_tuple(block_size, ndim, "block_size")
    sizes = x.shape[2:]
    pads = _pad_pairs(paddings, ndim, "paddings") or [(0, -n % b) for n, b in zip(sizes, block)]
    for axis, (n, b, (lo, hi)) in enumerate(zip(sizes, block, pads)):
        if (n + lo + hi) % b:
            raise ValueError(f"axis {axis}: size {n} + paddings ({lo}, {hi}) is not a multiple of block_size {b}")
    if any(lo or hi for lo, hi in pads):
        x = F.pad(x, [a for pair in reversed(pads) for a in pair])
    batch, channels = x.shape[:2]
    split = [batch, channels]
    for n, b in zip(x.shape[2:], block):
        split += [n // b, b]
    x = x.reshape(split)  # (N, C, S0/b0, b0, S1/b1, b1, ...)
    block_axes = [3 + 2 * i for i in range(ndim)]
    grid_axes = [2 + 2 * i for i in range(ndim)]
    x = x.permute(*block_axes, 0, 1, *grid_axes)  # (b0, b1, ..., N, C, S0/b0, S1/b1, ...)
    return x.reshape(-1, channels, *(x.shape[-ndim:]))


def batch_to_space(
    x: torch.Tensor, block_size: int | Sequence[int], *, crops: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """Inverse of :func:`space_to_batch`: interleave the sub-grids back and crop.

    Args:
        x: ``(prod(block) * N, C, *G)``.
        block_size: an int or one per spatial axis.
        crops: (low, high) amounts removed per spatial axis afterwards (the ``paddings`` that
            went into :func:`space_to_batch`).

    Returns:
        ``(N, C, *(G * block - crops))``.
    """
    ndim = _check_rank(x, "x")
    block = to_tuple(block_size, ndim, "block_size")
    crops = _pad_pairs(crops, ndim, "crops") or [(0, 0)] * ndim
    blocks = 1
    for b in block:
        blocks *= b
    if x.shape[0] % blocks:
        raise ValueError(f"x's batch {x.shape[0]} is not a multiple of the block volume {blocks}")
    batch, channels, grid = x.shape[0] // blocks, x.shape[1], x.shape[2:]
    x = x.reshape(*block, batch, channels, *grid)
    # (b0, ..., N, C, G0, ...) -> (N, C, G0, b0, G1, b1, ...)
    order = [ndim, ndim + 1]
    for i in range(ndim):
        order += [ndim + 2 + i, i]
    x = x.permute(*order).reshape(batch, channels, *(g * b for g, b in zip(grid, block)))
    index = [slice(None), slice(None)] + [slice(lo, n - hi) for (lo, hi), n in zip(crops, x.shape[2:])]
    return x[tuple(index)]

