"""Padding and size arithmetic for dilated convolutions, as pure integer functions.

Shared by the ops (to pad tensors) and the analysis (to reason about receptive fields), so the
two can never disagree. A kernel of size ``k`` at dilation ``d`` spans ``(k - 1) * d + 1`` input
samples (Yu & Koltun 2016, "Multi-scale context aggregation by dilated convolutions").
"""

from __future__ import annotations

from collections.abc import Sequence

from atrous._checks import check_ints

PADDING_MODES = ("same", "valid", "causal")

PaddingSpec = str | int | Sequence[int]


def to_tuple(value: int | Sequence[int], ndim: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Expand an int or per-axis sequence of ints into a tuple of ``ndim`` ints.

    Args:
        value: an int, or a sequence of ``ndim`` ints.
        ndim: the number of spatial axes.
        name: the argument's name, used in error messages.
        minimum: the smallest allowed value.

    Raises:
        TypeError: ``value`` is not an int or a sequence of ints (a bool is neither).
        ValueError: wrong length, or an entry below ``minimum``.
    """
    return check_ints(value, name, length=ndim, low=minimum, scalar=True)


def kernel_extent(kernel_size: int, dilation: int) -> int:
    """Number of input samples one dilated kernel spans: ``(k - 1) * d + 1``."""
    return (kernel_size - 1) * dilation + 1


def stack_receptive_field(kernel_size: int, rates: Sequence[int]) -> int:
    """Receptive field of stride-1 convolutions of one kernel size applied in turn at ``rates``.

    Each layer widens the field by its extent less one, so the field is
    ``1 + sum((k - 1) * d for d in rates)`` (Yu & Koltun 2016: 3, 7, 15, 31 for 3x3 kernels at
    rates 1, 2, 4, 8), one axis of the field; the order of the rates does not matter.

    Args:
        kernel_size: the kernel size of every layer along the axis.
        rates: the dilation of each layer, in any order; empty gives 1 (the identity).

    Returns:
        The number of input samples one output sees along the axis.
    """
    return 1 + sum(kernel_extent(kernel_size, rate) - 1 for rate in rates)


def same_padding(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """(low, high) padding that makes the output ``ceil(size / stride)`` long.

    The total is split with the extra sample on the high side, the PyTorch and TensorFlow
    convention, so odd and even kernels both work. It is written with ``+``, ``*`` and ``//``
    only, every branch taken on ``kernel_size``, ``stride`` and ``dilation``, never on ``size``:
    ``size`` may be symbolic (a ``torch.SymInt`` under ``torch.compile`` or ``torch.export``, a
    traced 0-dim tensor under ``torch.jit.trace``) and the amounts then follow it in the graph.
    At stride 1, or for a kernel that spans one sample, they do not depend on ``size`` and come
    back as plain ints.
    """
    extent = kernel_extent(kernel_size, dilation)
    if stride == 1 or extent == 1:  # total extent - 1 at stride 1; 0 for a 1-tap kernel
        total = extent - 1
    else:
        # Padded to (out - 1) * stride + extent, the padded size and the output size stay simple
        # symbolic expressions (the output is (size + stride - 1) // stride itself).
        out = (size + stride - 1) // stride  # ceil(size / stride)
        total = (out - 1) * stride + extent - size
        if extent < stride:
            # total lies in [extent - stride, extent - 1], inside (-stride, stride), so
            # (total + stride) // stride is 0 when total is negative and 1 otherwise: this is
            # max(total, 0). Dividends stay >= 0 because ONNX's integer Div, which exported
            # graphs use for //, truncates where Python floors.
            total = total * ((total + stride) // stride)
    return total // 2, total - total // 2


def causal_padding(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """(low, high) padding for a causal 1D convolution: everything on the left."""
    return kernel_extent(kernel_size, dilation) - 1, 0


def resolve_padding(
    padding: PaddingSpec,
    sizes: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Turn a padding spec into explicit (low, high) amounts for each spatial axis.

    Args:
        padding: ``"same"``, ``"valid"``, ``"causal"`` (1D only), an int, or one int per axis
            (symmetric, as in ``nn.ConvNd``).
        sizes: input size of each spatial axis.
        kernel_size, stride, dilation: one int per spatial axis.
    """
    ndim = len(kernel_size)
    if isinstance(padding, str):
        if padding == "same":
            return tuple(same_padding(n, k, s, d) for n, k, s, d in zip(sizes, kernel_size, stride, dilation))
        if padding == "valid":
            return ((0, 0),) * ndim
        if padding == "causal":
            if ndim != 1:
                raise ValueError(f"padding='causal' is only defined for 1D convolutions, got {ndim}D")
            return (causal_padding(kernel_size[0], dilation[0]),)
        raise ValueError(f"padding must be one of {PADDING_MODES}, an int or a tuple of ints, got {padding!r}")
    amounts = to_tuple(padding, ndim, "padding", minimum=0)
    return tuple((p, p) for p in amounts)


def conv_output_size(size: int, kernel_size: int, stride: int, dilation: int, pad_low: int, pad_high: int) -> int:
    """Output length of a convolution over ``size`` samples with explicit padding."""
    return (size + pad_low + pad_high - kernel_extent(kernel_size, dilation)) // stride + 1
