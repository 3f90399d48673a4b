"""Exact formulations of one dilated convolution: the candidates that ``backend="auto"`` times.

Each computes ``y[i] = sum_k xpad[i * s + d * k] w[k]`` over the padded input; they differ only
in how the work reaches the kernel library, so their results agree to floating-point rounding:

* ``native``: one ``F.convNd`` call with the padding inside (padded first when asymmetric).
* ``pad``: ``F.pad`` first, then the convolution without padding.
* ``channels_last``: the input in channels-last memory order (oneDNN's and cuDNN's native layout,
  no reorder inside the library; 1D runs as a ``(1, k)`` 2D convolution); the output comes back
  in the caller's layout.
* ``space_to_batch``: stride 1; the ``d**n`` interleaved sub-grids move into the batch and an
  undilated convolution runs there (the trick documented with TensorFlow's ``atrous_conv2d``,
  Chen et al. 2017). In 1D this is dilation folding, ``(N, C, T) -> (N d, C, T / d)``.
* ``border_split``: stride 1, zero padding; the output is cut into blocks inside which the same
  taps read real input, and each block runs as a valid convolution with only those taps. Taps
  that would read nothing but padding cost nothing: a 3x3 kernel at a rate as large as the map
  becomes a 1x1 convolution (the degenerate ASPP branch of Chen et al. 2017).
* ``fold``: 1D, stride 1, zero padding; the padded sequence viewed as a ``(T / d, d)`` image
  (``x[a d + b]`` at row ``a``, column ``b``), where the rate-``d`` taps are neighbouring rows, so
  an undilated ``(k, 1)`` 2D convolution computes it: dilation folding without moving the data
  (no copy at all for "same" padding when ``d`` divides ``T``).
* ``gemm``: 1D, stride 1, one group; one matrix product per tap over shifted views of the
  padded input, with no im2col copy and no layout reorder.
* ``mixed_layout``: each direction of training in its fastest layout on the CPU
  (:mod:`atrous.ops.mixed_layout`).

Which of them are worth timing for a call is :mod:`atrous.ops.selection`'s business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from atrous.ops.geometry import CHANNELS_LAST, CONV_BY_NDIM, ConvSpec, pad_input
from atrous.ops.mixed_layout import mixed_layout
from atrous.ops.padding import kernel_extent
from atrous.ops.space_to_batch import batch_to_space, space_to_batch

__all__ = ["FORMULATIONS", "Formulation", "applicable", "border_plan"]

_MERGE_SLACK = 0.05  # border_split merges runs when that adds at most this fraction of an axis's work


def native(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """One ``F.convNd`` call, padding inside when symmetric (plain PyTorch).

    Args:
        x: ``(N, C_in, *S)``; weight: ``(C_out, C_in / groups, *K)``; bias: ``(C_out,)`` or None.
        spec: stride, dilation, padding and groups.

    Returns:
        ``(N, C_out, *S_out)``; every formulation below has this signature.
    """
    conv = CONV_BY_NDIM[spec.ndim]
    if spec.symmetric:
        return conv(x, weight, bias, spec.stride, tuple(lo for lo, _ in spec.pads), spec.dilation, spec.groups)
    return conv(pad_input(x, spec), weight, bias, spec.stride, 0, spec.dilation, spec.groups)


def pad_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """``F.pad`` first, then the convolution with no padding of its own."""
    return CONV_BY_NDIM[spec.ndim](pad_input(x, spec), weight, bias, spec.stride, 0, spec.dilation, spec.groups)


def channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """The convolution on a channels-last copy of ``x``; the output returns to ``x``'s layout."""
    if spec.ndim == 1:  # as (N, C, 1, T) with a (1, k) kernel
        return channels_last(x.unsqueeze(2), weight.unsqueeze(2), bias, spec.as_2d()).squeeze(2)
    y = native(x.contiguous(memory_format=CHANNELS_LAST[spec.ndim]), weight, bias, spec)
    return y.contiguous()


def space_to_batch_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    """Stride 1: pad, fold the rate-``d`` sub-grids into the batch, undilated conv, unfold, crop.

    Sub-grid ``g`` of the padded input holds ``xpad[g + d m]``; output ``i = g + d j`` needs
    ``xpad[g + d (j + k)]``, a valid undilated convolution of that sub-grid. Zeros added to
    reach a multiple of ``d`` only feed outputs that are cropped.
    """
    padded = pad_input(x, spec)
    out = [n - kernel_extent(k, d) + 1 for n, k, d in zip(padded.shape[2:], weight.shape[2:], spec.dilation)]
    y = CONV_BY_NDIM[spec.ndim](space_to_batch(padded, spec.dilation), weight, bias, 1, 0, 1, spec.groups)
    y = batch_to_space(y, spec.dilation)
    return y[(slice(None), slice(None), *(slice(0, n) for n in out))].contiguous()


def fold(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """1D, stride 1, zero padding: an undilated ``(k, 1)`` conv over the ``(rows, d)`` view of the padded input.

    With ``X[a, b] = xpad[a d + b]``, output ``t = a d + b`` is ``sum_j w[j] X[a + j, b]``. The
    input is padded to ``rows = ceil(T_out / d) + k - 1`` full rows; when the padding is
    symmetric whole rows and ``d`` divides ``T``, the convolution pads the rows itself (no copy).
    """
    (low, high), dilation, kernel = spec.pads[0], spec.dilation[0], weight.shape[2]
    length = x.shape[2]
    out = length + low + high - kernel_extent(kernel, dilation) + 1
    batch, channels = x.shape[:2]
    if low == high and low % dilation == 0 and length % dilation == 0:
        image, row_pad = x.reshape(batch, channels, length // dilation, dilation), low // dilation
    else:
        rows = -(-out // dilation) + kernel - 1
        padded = F.pad(x, (low, rows * dilation - low - length))
        image, row_pad = padded.reshape(batch, channels, rows, dilation), 0
    y = F.conv2d(image, weight.unsqueeze(3), bias, 1, (row_pad, 0), 1, spec.groups)
    return y.reshape(batch, weight.shape[0], -1)[:, :, :out].contiguous()


def gemm_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """1D, stride 1, one group: ``y = sum_k W[:, :, k] @ xpad[:, :, d k : d k + T_out]``."""
    padded = pad_input(x, spec)
    dilation, kernel = spec.dilation[0], weight.shape[2]
    out = padded.shape[2] - kernel_extent(kernel, dilation) + 1
    y = torch.matmul(weight[:, :, 0], padded[:, :, :out])  # (N, C_out, T_out)
    for k in range(1, kernel):
        y = y.add_(torch.matmul(weight[:, :, k], padded[:, :, dilation * k : dilation * k + out]))
    return y if bias is None else y.add_(bias[:, None])


def _axis_runs(size: int, kernel: int, dilation: int, pad_low: int, out: int) -> list[tuple[int, int, int, int]]:
    """Runs ``(start, stop, first_tap, stop_tap)`` of outputs on one axis (stride 1) whose real taps agree.

    Tap ``j`` of output ``i`` reads input ``i + d j - pad_low``; it is real when that lies in
    ``[0, size)``, so the real taps of an output are a contiguous range. Neighbouring runs merge
    when the taps they would compute on padding add little work, to keep the number of calls low.
    """
    cuts = {0, out}
    for j in range(kernel):
        cuts.update(c for c in (pad_low - dilation * j, size + pad_low - dilation * j) if 0 < c < out)
    runs = []
    for start, stop in zip(sorted(cuts), sorted(cuts)[1:]):
        taps = [j for j in range(kernel) if 0 <= start + dilation * j - pad_low < size]
        runs.append((start, stop, taps[0], taps[-1] + 1) if taps else (start, stop, 0, 0))
    merged = [runs[0]]
    for start, stop, first, last in runs[1:]:
        m_start, _, m_first, m_last = merged[-1]
        lo, hi = (min(first, m_first), max(last, m_last)) if last > first and m_last > m_first else (0, 0)
        separate = sum((b - a) * (t1 - t0) for a, b, t0, t1 in (merged[-1], (start, stop, first, last)))
        if hi > lo and (stop - m_start) * (hi - lo) - separate <= _MERGE_SLACK * out * kernel:
            merged[-1] = (m_start, stop, lo, hi)
        else:
            merged.append((start, stop, first, last))
    return merged


def border_plan(
    sizes: Sequence[int], kernel: Sequence[int], spec: ConvSpec
) -> tuple[list[list[tuple[int, int, int, int]]], float]:
    """Per-axis runs of :func:`border_split` and the fraction of the dense work they compute.

    Args:
        sizes: the input's spatial sizes; kernel: the kernel's.
        spec: stride 1 per axis, dilation and zero padding.

    Returns:
        ``(plan, fraction)``: for each axis its runs ``(start, stop, first_tap, stop_tap)`` of
        outputs, and the share of ``every tap at every output`` that those runs compute.
    """
    plan, fraction = [], 1.0
    for n, k, d, (lo, hi) in zip(sizes, kernel, spec.dilation, spec.pads):
        out = n + lo + hi - kernel_extent(k, d) + 1
        runs = _axis_runs(n, k, d, lo, out)
        plan.append(runs)
        fraction *= sum((b - a) * (t1 - t0) for a, b, t0, t1 in runs) / (out * k)
    return plan, fraction


def border_split(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """Stride 1, zero padding: each output block is a valid convolution over only its real taps."""
    plan, _ = border_plan(x.shape[2:], weight.shape[2:], spec)
    conv = CONV_BY_NDIM[spec.ndim]

    def block(runs: tuple[tuple[int, int, int, int], ...]) -> torch.Tensor:
        if any(t1 == t0 for _, _, t0, t1 in runs):  # every tap reads padding: only the bias remains
            shape = (x.shape[0], weight.shape[0], *(b - a for a, b, _, _ in runs))
            y = x.new_zeros(shape)
            return y if bias is None else y + bias.reshape(-1, *([1] * spec.ndim))
        index, pads = [slice(None), slice(None)], []
        for (a, b, t0, t1), d, (lo, _), n in zip(runs, spec.dilation, spec.pads, x.shape[2:]):
            first, stop = a + d * t0 - lo, b + d * (t1 - 1) - lo  # input span of this block
            index.append(slice(max(first, 0), min(stop, n)))
            pads.append((max(-first, 0), max(stop - n, 0)))  # only after merging runs
        part = x[tuple(index)]
        if any(lo or hi for lo, hi in pads):
            part = F.pad(part, [amount for lo, hi in reversed(pads) for amount in (lo, hi)])
        taps = weight[(slice(None), slice(None), *(slice(t0, t1) for _, _, t0, t1 in runs))]
        return conv(part, taps, bias, 1, 0, spec.dilation, spec.groups)

    def assemble(axis: int, runs: tuple) -> torch.Tensor:
        if axis == spec.ndim:
            return block(runs)
        parts = [assemble(axis + 1, runs + (run,)) for run in plan[axis]]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2 + axis)

    return assemble(0, ())


Formulation = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", ConvSpec], torch.Tensor]
FORMULATIONS: dict[str, Formulation] = {
    "native": native,
    "pad": pad_first,
    "channels_last": channels_last,
    "space_to_batch": space_to_batch_conv,
    "border_split": border_split,
    "fold": fold,
    "gemm": gemm_taps,
    "mixed_layout": mixed_layout,
}


def applicable(name: str, spec: ConvSpec) -> bool:
    """Whether formulation ``name`` computes the convolution ``spec`` describes (else ``native`` stands in)."""
    if name in ("native", "pad", "channels_last", "mixed_layout"):
        return True
    if name == "gemm":
        return spec.ndim == 1 and spec.groups == 1 and spec.unit_stride
    if name == "fold":
        return spec.ndim == 1 and spec.unit_stride and spec.pad_mode == "constant"
    if name == "border_split":
        return spec.unit_stride and spec.pad_mode == "constant"
    return spec.unit_stride  # space_to_batch
