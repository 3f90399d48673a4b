"""Exact dilated convolution for 1D, 2D and 3D tensors.

``y[i] = sum_k x[i * s + d * k] * w[k]`` over the padded input: the atrous convolution of
Chen et al. (DeepLab, 2015) and the dilated convolution of Yu & Koltun (2016). One entry point
serves every rank; the rank is read from the weight. How the convolution executes is chosen
per call shape among the exact formulations of :mod:`atrous.ops.formulations`
(``backend="auto"``, see :mod:`atrous.ops.backend`), or fixed by the caller.
"""

from __future__ import annotations

import torch

from atrous._checks import check_int
from atrous.ops.backend import check_backend, run_conv
from atrous.ops.capture import capturing
from atrous.ops.geometry import CONV_BY_NDIM, ConvSpec, autocast_inputs
from atrous.ops.padding import PaddingSpec, conv_output_size, kernel_extent, resolve_padding, to_tuple

__all__ = ["atrous_conv2d", "dilated_conv"]
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    ndim = weight.ndim - 2
    if ndim not in CONV_BY_NDIM:
        raise ValueError(
            f"weight must have 3, 4 or 5 dims (out_channels, in_channels/groups, *kernel) for 1D/2D/3D, "
            f"got shape {tuple(weight.shape)}"
        )
    if x.ndim != ndim + 2:
        raise ValueError(
            f"x must have {ndim + 2} dims (batch, channels, *{ndim} spatial) to match a {ndim}D weight, "
            f"got shape {tuple(x.shape)}"
        )
    check_int(groups, "groups", low=1)
    if weight.shape[0] % groups:
        raise ValueError(f"weight has {weight.shape[0]} output channels, not divisible by groups={groups}")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"x has {x.shape[1]} channels but weight expects in_channels = {weight.shape[1]} x groups={groups} "
            f"= {weight.shape[1] * groups}"
        )
    if x.dtype != weight.dtype:
        raise TypeError(f"x has dtype {x.dtype} but weight has dtype {weight.dtype}; they must match")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight is on {weight.device}; they must be on one device")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(f"bias must match weight's dtype and device ({weight.dtype}, {weight.device})")
    return ndim


def dilated_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    dilation: int | tuple[int, ...] = 1,
    stride: int | tuple[int, ...] = 1,
    padding: PaddingSpec = "same",
    groups: int = 1,
    padding_mode: str = "zeros",
    backend: str = "auto",
) -> torch.Tensor:
    """Dilated (atrous) convolution, 1D/2D/3D chosen by ``weight.ndim``.

    Args:
        x: input of shape ``(N, C_in, *spatial)``.
        weight: ``(C_out, C_in / groups, *kernel)``.
        bias: optional ``(C_out,)``.
        dilation: spacing between kernel taps, an int or one per spatial axis.
        stride: an int or one per spatial axis.
        padding: ``"same"`` (output ``ceil(n / stride)``, the extra sample padded on the high
            side), ``"valid"`` (none), ``"causal"`` (1D: ``(k - 1) * d`` on the left only, so
            ``y[t]`` depends on ``x[<= t]``), or symmetric amounts as an int or one per axis.
        groups: number of channel groups.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        backend: how to execute it, all exact: ``"auto"`` (the fastest for this shape, timed on
            first use and cached; see :mod:`atrous.ops.backend`), or one formulation of
            :mod:`atrous.ops.formulations`: ``"native"`` (plain ``F.convNd``), ``"pad"``,
            ``"channels_last"``, ``"space_to_batch"``, ``"border_split"``, ``"fold"``, ``"gemm"``,
            ``"mixed_layout"``.

    Returns:
        ``(N, C_out, *out_spatial)``.
    """
    x, weight, bias = autocast_inputs(x, weight, bias)
    captured = capturing()
    key = None if captured else _plan_key(x, weight, bias, dilation, stride, padding, groups, padding_mode)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _plan(x, weight, bias, dilation, stride, padding, groups, padding_mode, drop_taps=not captured)
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
    live_taps, spec = plan
    for dim, start, length in live_taps:
        weight = weight.narrow(dim, start, length)
    return run_conv(x, weight, bias, spec, check_backend(backend))


# Checked and resolved geometry per call signature: a repeated call skips the checks and padding
# arithmetic (about half of the Python an eager call costs). Never used while a graph is captured.
_PLANS: dict[tuple, tuple[tuple[tuple[int, int, int], ...], ConvSpec]] = {}
_MAX_PLANS = 4096


def _plan_key(x, weight, bias, dilation, stride, padding, groups, padding_mode) -> tuple | None:
    """What decides the plan of a call, or None where it cannot be a dict key (then no caching)."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return None
    if bias is not None and not isinstance(bias, torch.Tensor):
        return None
    key = (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device,
           None if bias is None else (bias.shape, bias.dtype, bias.device),
           *map(_typed, (dilation, stride, padding, groups)), padding_mode)
    try:
        hash(key)
    except TypeError:  # e.g. a list for dilation
        return None
    return key


def _typed(value):
    """``value`` with its type and its items' types, so that 1.0 or True never share 1's plan (and its checks)."""
    return value, type(value), tuple(map(type, value)) if isinstance(value, tuple) else ()


def _plan(x, weight, bias, dilation, stride, padding, groups, padding_mode, *, drop_taps: bool):
    """Check a call and resolve it: ``(live_taps, spec)``, ``live_taps`` as ``(dim, start, length)``
    narrowings of the weight (see :func:`_drop_padding_taps`)."""
    ndim = _check_inputs(x, weight, bias, groups)
    dilation = to_tuple(dilation, ndim, "dilation")
    stride = to_tuple(stride, ndim, "stride")
    if padding_mode not in _PAD_MODES:
        raise ValueError(f"padding_mode must be one of {tuple(_PAD_MODES)}, got {padding_mode!r}")
    kernel = tuple(weight.shape[2:])
    sizes = tuple(x.shape[2:])
    pads = resolve_padding(padding, sizes, kernel, stride, dilation)
    for axis, (n, k, s, d, (lo, hi)) in enumerate(zip(sizes, kernel, stride, dilation, pads)):
        if conv_output_size(n, k, s, d, lo, hi) < 1:
            raise ValueError(
                f"input size {n} on spatial axis {axis} (padded to {n + lo + hi}) is smaller than the kernel's "
                f"extent {kernel_extent(k, d)} (kernel {k}, dilation {d}) with padding={padding!r}"
            )
    live_taps = ()
    if padding_mode == "zeros" and drop_taps:
        live_taps, dilation, pads = _drop_padding_taps(kernel, sizes, stride, dilation, pads)
    return live_taps, ConvSpec(stride, dilation, pads, groups, _PAD_MODES[padding_mode])


def _drop_padding_taps(kernel, sizes, stride, dilation, pads):
    """The kernel taps to keep when the others read only zero padding at every output position.

    Returns ``(live_taps, dilation, pads)``: weight narrowings ``(dim, start, length)`` and the
    dilation and padding that go with the narrowed kernel.

    With a rate as large as the input (rate 16 on a 16x16 feature map, DeepLab's rate 18 at
    output stride 16 on a 256-pixel image) every off-centre tap of a 3x3 kernel lands in the
    padding and the layer is a 1x1 convolution in disguise (Chen et al. 2017, Sec. 3.3); a
    causal layer with a rate longer than its input likewise reads only its last tap. Running
    only the live taps is exact, forward and backward (a dropped tap's gradient is zero either
    way), and skips their FLOPs. Only when the padding left around the live taps stays
    non-negative, so no input cropping is needed. Not under tracing or export: the taps depend
    on the input size, which a graph must leave free.
    """
    live_taps = []
    for axis, (n, k, s, d, (lo, hi)) in enumerate(zip(sizes, kernel, stride, dilation, pads)):
        last_out = conv_output_size(n, k, s, d, lo, hi) - 1
        live = [j for j in range(k) if d * j - lo < n and last_out * s + d * j - lo >= 0]
        if not live or len(live) == k:
            continue  # (no live tap at all: an output of bias only, left to the backend)
        first, last = live[0], live[-1]
        new_lo, new_hi = lo - d * first, hi - d * (k - 1 - last)
        if new_lo < 0 or new_hi < 0:
            continue
        live_taps.append((2 + axis, first, last - first + 1))
        pads = (*pads[:axis], (new_lo, new_hi), *pads[axis + 1:])
        if first == last:
            dilation = (*dilation[:axis], 1, *dilation[axis + 1:])
    return tuple(live_taps), dilation, pads


def atrous_conv2d(value: torch.Tensor, filters: torch.Tensor, rate: int, padding: str = "SAME") -> torch.Tensor:
    """TensorFlow's ``tf.nn.atrous_conv2d``: NHWC input, HWIO filters, stride 1.

    Args:
        value: ``(N, H, W, C_in)``.
        filters: ``(kH, kW, C_in, C_out)``.
        rate: dilation on both spatial axes.
        padding: ``"SAME"`` or ``"VALID"`` (TensorFlow spelling; lower case accepted).

    Returns:
        ``(N, H_out, W_out, C_out)``.
    """
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    if value.ndim != 4:
        raise ValueError(f"value must be NHWC with 4 dims, got shape {tuple(value.shape)}")
    if filters.ndim != 4:
        raise ValueError(f"filters must be HWIO with 4 dims, got shape {tuple(filters.shape)}")
    check_int(rate, "rate", low=1)
    out = dilated_conv(
        value.permute(0, 3, 1, 2), filters.permute(3, 2, 0, 1), dilation=rate, padding=padding.lower()
    )
    return out.permute(0, 2, 3, 1)
