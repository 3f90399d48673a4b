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
* ``mixed_layout``: each direction of training in the layout oneDNN runs it fastest in on the
  CPU: the forward pass and the input gradient in channels-last, the weight gradient in the
  standard contiguous layout (oneDNN's channels-last dilated weight gradient is up to 1.8x
  slower). The same as ``channels_last`` when no gradient is needed.

``same_rate_stack`` is the stack-level formulation used by ``DilatedStack``: a run of layers
that share a rate, executed once in the space_to_batch domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atrous.ops.padding import kernel_extent
from atrous.ops.space_to_batch import batch_to_space, space_to_batch

CONV_BY_NDIM = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # functional conv for each number of spatial axes
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
_MERGE_SLACK = 0.05  # border_split merges runs when that adds at most this fraction of an axis's work


def capturing() -> bool:
    """Whether a graph is being traced, compiled or exported (no timing, no data-dependent choice)."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or _onnx_exporting()
    )


def _onnx_exporting() -> bool:
    """``torch.onnx.is_in_onnx_export()``, which imports two modules on every call (a third of an
    eager dilated conv's Python overhead): on first use, replaced by a check of the same two flags
    (imported then, not with atrous: the exporter package is slow to import)."""
    global _onnx_exporting
    _onnx_exporting = _onnx_flags()
    return _onnx_exporting()


def _onnx_flags() -> Callable[[], bool]:
    """A check of the flags ``torch.onnx.is_in_onnx_export`` reads, or that function itself where
    this PyTorch keeps them elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    if not (hasattr(GLOBALS, "in_onnx_export") and hasattr(_flags, "_is_onnx_exporting")):
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


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


def autocast_inputs(x, weight, bias):
    """Under ``torch.autocast`` a convolution runs in the autocast dtype, as ``F.convNd`` does:
    the inputs cast once (the formulations are built from ops autocast may leave alone)."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return x, weight, bias  # the caller's checks name the argument
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return x, weight, bias
    if not (x.is_floating_point() and weight.is_floating_point()) or torch.float64 in (x.dtype, weight.dtype):
        return x, weight, bias  # autocast leaves float64 alone
    dtype = torch.get_autocast_dtype(device)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _pad(x: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    if spec.fixed_pads and not any(lo or hi for lo, hi in spec.pads):
        return x
    return F.pad(x, [amount for lo, hi in reversed(spec.pads) for amount in (lo, hi)], mode=spec.pad_mode)


def _pad_high(x: torch.Tensor, amounts: Sequence) -> torch.Tensor:
    """Zeros on the high side of each spatial axis; negative amounts crop instead (unlike
    slicing, with no guard on whether an amount is 0 when it is symbolic)."""
    return F.pad(x, [pad for amount in reversed(amounts) for pad in (0, amount)])


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
    return conv(_pad(x, spec), weight, bias, spec.stride, 0, spec.dilation, spec.groups)


def pad_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """``F.pad`` first, then the convolution with no padding of its own."""
    return CONV_BY_NDIM[spec.ndim](_pad(x, spec), weight, bias, spec.stride, 0, spec.dilation, spec.groups)


def channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """The convolution on a channels-last copy of ``x``; the output returns to ``x``'s layout."""
    if spec.ndim == 1:  # as (N, C, 1, T) with a (1, k) kernel
        flat = ConvSpec((1, *spec.stride), (1, *spec.dilation), ((0, 0), *spec.pads), spec.groups, spec.pad_mode)
        return channels_last(x.unsqueeze(2), weight.unsqueeze(2), bias, flat).squeeze(2)
    y = native(x.contiguous(memory_format=_CHANNELS_LAST[spec.ndim]), weight, bias, spec)
    return y.contiguous()


def space_to_batch_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec
) -> torch.Tensor:
    """Stride 1: pad, fold the rate-``d`` sub-grids into the batch, undilated conv, unfold, crop.

    Sub-grid ``g`` of the padded input holds ``xpad[g + d m]``; output ``i = g + d j`` needs
    ``xpad[g + d (j + k)]``, a valid undilated convolution of that sub-grid. Zeros added to
    reach a multiple of ``d`` only feed outputs that are cropped.
    """
    padded = _pad(x, spec)
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
    """Per-axis runs of :func:`border_split` and the fraction of the dense work they compute."""
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


def gemm_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """1D, stride 1, one group: ``y = sum_k W[:, :, k] @ xpad[:, :, d k : d k + T_out]``."""
    padded = _pad(x, spec)
    dilation, kernel = spec.dilation[0], weight.shape[2]
    out = padded.shape[2] - kernel_extent(kernel, dilation) + 1
    y = torch.matmul(weight[:, :, 0], padded[:, :, :out])  # (N, C_out, T_out)
    for k in range(1, kernel):
        y = y.add_(torch.matmul(weight[:, :, k], padded[:, :, dilation * k : dilation * k + out]))
    return y if bias is None else y.add_(bias[:, None])


class _MixedLayoutConv(torch.autograd.Function):
    """A convolution with symmetric zero padding whose forward pass and input gradient run in
    channels-last layout and whose weight gradient runs in the standard contiguous layout
    (converting what is not already so); output and input gradient come back in ``x``'s layout.

    Twice differentiable (the backward pass is made of differentiable ops), with forward-mode AD
    (``jvp``) and ``torch.func`` transforms; under ``vmap`` (batched gradients, vectorised
    Jacobians) the layouts are left as they come.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        ndim = x.ndim - 2
        y = CONV_BY_NDIM[ndim](_as_layout(x, _CHANNELS_LAST[ndim]), weight, bias, stride, padding, dilation, groups)
        return _as_layout(y, _memory_format(x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.geometry = stride, padding, dilation, groups, bias is not None
        ctx.output_shape = output.shape

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (stride, padding, dilation, groups, has_bias), ndim = ctx.geometry, x.ndim - 2
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # The transposed convolution; output_padding restores the (fewer than stride) samples
            # at the high end that no output reads (their gradient is zero).
            transpose = {2: F.conv_transpose2d, 3: F.conv_transpose3d}[ndim]
            reached = [(m - 1) * s - 2 * p + (k - 1) * d + 1
                       for m, s, p, k, d in zip(grad.shape[2:], stride, padding, weight.shape[2:], dilation)]
            unread = tuple(n - r for n, r in zip(x.shape[2:], reached))
            grad_last = _as_layout(grad, _CHANNELS_LAST[ndim])
            grad_x = transpose(grad_last, weight, None, stride, padding, unread, groups, dilation)
            grad_x = _as_layout(grad_x, _memory_format(x))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            plain = torch.contiguous_format  # a copy of x only when the caller's x is channels-last
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                _as_layout(grad, plain), _as_layout(x, plain), weight,
                [weight.shape[0]] if has_bias else None, stride, padding, dilation, False, [0] * ndim, groups,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]],
            )  # fmt: skip
        return grad_x, grad_w, grad_b, None, None, None, None

    @staticmethod
    def jvp(ctx, x_dot, weight_dot, bias_dot, *_):
        # Linear in each input: d(conv(x, w) + b) = conv(dx, w) + conv(x, dw) + db.
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, _ = ctx.geometry
        conv = CONV_BY_NDIM[x.ndim - 2]
        terms = []
        if x_dot is not None:
            terms.append(conv(x_dot, weight, None, stride, padding, dilation, groups))
        if weight_dot is not None:
            terms.append(conv(x, weight_dot, None, stride, padding, dilation, groups))
        if bias_dot is not None:
            terms.append(bias_dot.reshape(-1, *[1] * (x.ndim - 2)).expand(ctx.output_shape))
        return sum(terms[1:], terms[0])


def functorch_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` wrapper or a batched tensor of the older vmap behind
    ``jacobian(vectorize=True)`` (under vmap a layout cannot be queried)."""
    functorch = torch._C._functorch
    legacy = getattr(functorch, "is_legacy_batchedtensor", None)
    return functorch.is_functorch_wrapped_tensor(t) or functorch.is_batchedtensor(t) or bool(legacy and legacy(t))


def _as_layout(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` in ``memory_format``; unchanged inside ``torch.func`` transforms (a layout is speed only)."""
    return t if functorch_wrapped(t) else t.contiguous(memory_format=memory_format)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format: channels-last when it is laid out so (and not also plainly contiguous)."""
    last = _CHANNELS_LAST.get(x.ndim - 2)
    if last is not None and not functorch_wrapped(x) and not x.is_contiguous() and x.is_contiguous(memory_format=last):
        return last
    return torch.contiguous_format


def mixed_layout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """Forward pass and input gradient in channels-last, weight gradient in the contiguous layout."""
    if spec.ndim == 1:  # as (N, C, 1, T) with a (1, k) kernel
        flat = ConvSpec((1, *spec.stride), (1, *spec.dilation), ((0, 0), *spec.pads), spec.groups, spec.pad_mode)
        return mixed_layout(x.unsqueeze(2), weight.unsqueeze(2), bias, flat).squeeze(2)
    x, weight, bias = autocast_inputs(x, weight, bias)  # its backward runs in the forward's dtype
    if spec.symmetric:  # padded by the convolutions themselves: no padded copy, no gradient for the padding
        padding = tuple(lo for lo, _ in spec.pads)
    else:
        x, padding = _pad(x, spec), (0,) * spec.ndim
    return _MixedLayoutConv.apply(x, weight, bias, spec.stride, padding, spec.dilation, spec.groups)


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


def applicable(name: str, x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> bool:
    """Whether formulation ``name`` computes this convolution (else ``native`` stands in)."""
    if name in ("native", "pad", "channels_last", "mixed_layout"):
        return True
    if name == "gemm":
        return spec.ndim == 1 and spec.groups == 1 and spec.unit_stride
    if name == "fold":
        return spec.ndim == 1 and spec.unit_stride and spec.pad_mode == "constant"
    if name == "border_split":
        return spec.unit_stride and spec.pad_mode == "constant"
    return spec.unit_stride  # space_to_batch


def candidates(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, training: bool = False) -> list[str]:
    """The formulations worth timing for this call, ``native`` first; duplicates left out.

    Args:
        training: whether a gradient is wanted (``mixed_layout`` differs from ``channels_last``
            only in the backward pass; for a channels-last input, from ``native``).
    """
    names = ["native"]
    if spec.ndim == 1 or not x.is_contiguous(memory_format=_CHANNELS_LAST[spec.ndim]):
        names.append("channels_last")
    if training:
        names.append("mixed_layout")
    if applicable("border_split", x, weight, spec) and border_plan(x.shape[2:], weight.shape[2:], spec)[1] < 0.9:
        names.append("border_split")
    if applicable("fold", x, weight, spec) and spec.dilation[0] > 1:
        names.append("fold")
    # On a 2-core AVX-512 CPU with oneDNN, padding first, a single-layer space_to_batch and the
    # per-tap GEMM never beat native on a benchmark shape (oneDNN's forward already skips taps
    # that read only padding), so only CUDA times them, against cuDNN's dilated kernels.
    if x.device.type == "cuda":
        if spec.symmetric and any(lo for lo, _ in spec.pads):
            names.append("pad")  # otherwise native already pads first
        if spec.unit_stride and any(d > 1 for d in spec.dilation):
            names.append("space_to_batch")
        if applicable("gemm", x, weight, spec):
            names.append("gemm")
    return names


def same_rate_stack(
    x: torch.Tensor,
    convs: Sequence[torch.nn.modules.conv._ConvNd],
    activations: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    rate: int,
) -> torch.Tensor:
    """Run ``act(conv(x))`` for each layer of a same-rate, stride-1, odd-kernel stack in the
    space_to_batch domain; equal to running the dilated layers one by one with "same" padding.

    Sizes that are not multiples of ``rate`` are padded on the high side; those padded samples
    would become real data after the first layer, so they are re-zeroed after every layer, as
    the zero padding of the dilated layers would be. While a graph is captured, the sizes may be
    symbolic, so the padding, re-zeroing and final crop always run, by amounts that may be 0:
    the graph is then right at every size.
    """
    ndim, batch, sizes = x.ndim - 2, x.shape[0], x.shape[2:]
    grid = [(n + rate - 1) // rate for n in sizes]  # ceil(n / rate): samples per sub-grid
    highs = [g * rate - n for g, n in zip(grid, sizes)]
    padded = capturing() or any(highs)
    unpadded = [(0, 0)] * ndim  # already padded here, by amounts that may be symbolic
    y = space_to_batch(_pad_high(x, highs) if padded else x, rate, paddings=unpadded)
    if padded:
        mask = space_to_batch(_pad_high(torch.ones_like(x[:1, :1]), highs), rate, paddings=unpadded)  # (rate**n, 1, *G)
    conv_fn = CONV_BY_NDIM[ndim]
    for conv, act in zip(convs, activations):
        padding = tuple((k - 1) // 2 for k in conv.kernel_size)
        y = act(conv_fn(y, conv.weight, conv.bias, 1, padding, 1, conv.groups))
        if padded:
            y = (y.reshape(-1, batch, *y.shape[1:]) * mask.unsqueeze(1)).reshape(y.shape)
    y = batch_to_space(y, rate)
    return _pad_high(y, [-high for high in highs]) if padded else y
