"""The ``mixed_layout`` formulation: each direction of training in the layout oneDNN runs it fastest in.

On the CPU oneDNN runs a dilated convolution's forward pass and input gradient fastest in
channels-last layout, but its channels-last dilated weight gradient is up to 1.8x slower than
the standard contiguous one. :func:`mixed_layout` runs each direction in its own layout through a
custom autograd function; with no gradient wanted it is the ``channels_last`` formulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.ops.capture import functorch_wrapped
from atrous.ops.geometry import CHANNELS_LAST, CONV_BY_NDIM, ConvSpec, autocast_inputs, pad_input
from atrous.ops.padding import kernel_extent

__all__ = ["mixed_layout"]


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
        y = CONV_BY_NDIM[ndim](_as_layout(x, CHANNELS_LAST[ndim]), weight, bias, stride, padding, dilation, groups)
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
            reached = [(m - 1) * s - 2 * p + kernel_extent(k, d)
                       for m, s, p, k, d in zip(grad.shape[2:], stride, padding, weight.shape[2:], dilation)]
            unread = tuple(n - r for n, r in zip(x.shape[2:], reached))
            grad_last = _as_layout(grad, CHANNELS_LAST[ndim])
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


def _as_layout(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` in ``memory_format``; unchanged inside ``torch.func`` transforms (a layout is speed only)."""
    return t if functorch_wrapped(t) else t.contiguous(memory_format=memory_format)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format: channels-last when it is laid out so (and not also plainly contiguous)."""
    last = CHANNELS_LAST.get(x.ndim - 2)
    if last is not None and not functorch_wrapped(x) and not x.is_contiguous() and x.is_contiguous(memory_format=last):
        return last
    return torch.contiguous_format


def mixed_layout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> torch.Tensor:
    """Forward pass and input gradient in channels-last, weight gradient in the contiguous layout.

    Args:
        x: ``(N, C_in, *S)``; weight: ``(C_out, C_in / groups, *K)``; bias: ``(C_out,)`` or None.
        spec: stride, dilation, padding and groups.

    Returns:
        ``(N, C_out, *S_out)`` in ``x``'s memory layout.
    """
    if spec.ndim == 1:  # as (N, C, 1, T) with a (1, k) kernel
        return mixed_layout(x.unsqueeze(2), weight.unsqueeze(2), bias, spec.as_2d()).squeeze(2)
    x, weight, bias = autocast_inputs(x, weight, bias)  # its backward runs in the forward's dtype
    if spec.symmetric:  # padded by the convolutions themselves: no padded copy, no gradient for the padding
        padding = tuple(lo for lo, _ in spec.pads)
    else:
        x, padding = pad_input(x, spec), (0,) * spec.ndim
    return _MixedLayoutConv.apply(x, weight, bias, spec.stride, padding, spec.dilation, spec.groups)
