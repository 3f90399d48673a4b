"""Measured receptive fields: the exact support by backpropagation, and the effective field.

``empirical_receptive_field`` measures what :func:`atrous.analysis.receptive_field` computes:
it backpropagates a one-hot at the centre output through a float64 copy of the model whose
weights are positive (``1 / fan_in``), biases zero, activations and norms linearised to the
identity and max pooling replaced by mean pooling over the same window, so no path can cancel
or be cut; the non-zero input gradients are exactly the inputs the output depends on.

``effective_receptive_field`` is Luo et al. 2016 ("Understanding the effective receptive
field in deep convolutional neural networks"): the magnitude of the input gradient of the
centre output with the model's own weights, which concentrates in a Gaussian-like blob much
smaller than the theoretical field.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from atrous.analysis._ops import _flatten
from atrous.analysis._trace import probe_dtype_device
from atrous.analysis.receptive_field import ReceptiveField, check_input_shape
from atrous.ops.padding import kernel_extent

_IDENTITY = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "gelu", "silu",
    "mish", "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "sigmoid", "tanh", "softplus", "prelu",
    "batch_norm", "group_norm", "layer_norm", "instance_norm", "local_response_norm", "rms_norm", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
}


class _Linearised(TorchFunctionMode):
    """Activations and norms -> identity, max pooling -> mean over the same (dilated) window."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "").strip("_")
        if name in _IDENTITY and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name.startswith("max_pool") and name[8:10] in ("1d", "2d", "3d"):
            out = _mean_pool(*args, **kwargs)
            return (out, torch.zeros_like(out, dtype=torch.long)) if name.endswith("with_indices") else out
        if name.startswith("adaptive_max_pool"):
            out = getattr(F, name.replace("max", "avg").removesuffix("_with_indices"))(args[0], args[1])
            return (out, torch.zeros_like(out, dtype=torch.long)) if name.endswith("with_indices") else out
        return func(*args, **kwargs)


def _mean_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    ndim = x.ndim - 2

    def tup(v):
        return tuple(v) if isinstance(v, (list, tuple)) else (v,) * ndim

    kernel, pad, dilation = tup(kernel_size), tup(padding), tup(dilation)
    stride = kernel if stride in (None, [], ()) else tup(stride)
    channels = x.shape[1]
    weight = torch.ones((channels, 1, *kernel), dtype=x.dtype, device=x.device) / math.prod(kernel)
    if ceil_mode:  # extra high-side zeros give the last, partial window max pooling would keep
        extra = []
        for n, k, s, d, p in zip(x.shape[2:], kernel, stride, dilation, pad):
            span = n + 2 * p - kernel_extent(k, d)
            extra.append((-(-span // s)) * s - span)
        x = F.pad(x, [a for e in reversed(extra) for a in (0, e)])
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    return conv(x, weight, None, stride, pad, dilation, channels)


def _positive_copy(model: nn.Module) -> nn.Module:
    linear = copy.deepcopy(model).to(torch.float64).eval()
    with torch.no_grad():
        for name, parameter in linear.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("bias"):
                parameter.zero_()
            else:
                fan_in = parameter[0].numel() if parameter.ndim > 1 else 1
                parameter.fill_(1.0 / fan_in)
    return linear


def _first_output(output: Any) -> torch.Tensor:
    tensors = [t for t in _flatten(list(output.values()) if isinstance(output, dict) else output)
               if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        raise ValueError("the model returned no floating-point tensor to take the receptive field of")
    return tensors[0]


def _support(model: nn.Module, x: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with _Linearised():
        out = _first_output(model(x))
    selector = out.new_zeros(out.shape)
    selector[(0, slice(None), *index)] = 1.0
    (grad,) = torch.autograd.grad(out, x, selector, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[2:], dtype=torch.bool)
    return grad.abs().sum(dim=(0, 1)) > 0


def _extent(support: torch.Tensor, axis: int) -> tuple[int, int]:
    other = tuple(d for d in range(support.ndim) if d != axis)
    hits = torch.nonzero(support.any(dim=other) if other else support).flatten()
    return int(hits.min()), int(hits.max())


def empirical_receptive_field(model: nn.Module, input_shape: Sequence[int]) -> ReceptiveField:
    """Exact receptive field of the centre output, measured by backpropagation.

    The stride is measured from the shift between the fields of the centre output and its
    neighbour on each axis, and ``padding`` from where the centre output's field starts. Use an
    input large enough that the field is not clipped by the borders.

    Args:
        model: any ``nn.Module`` taking one ``(N, C, *spatial)`` tensor.
        input_shape: ``(C, *spatial)``.

    Returns:
        A :class:`ReceptiveField` with ``method="empirical"`` and ``support``: the boolean map
        (spatial shape of the input) of the input samples that reach the centre output.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_shape = check_input_shape(input_shape)
    linear = _positive_copy(model)
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=probe_dtype_device(model)[1])
    with torch.no_grad(), _Linearised():
        out_spatial = tuple(_first_output(linear(x)).shape[2:])
    if len(out_spatial) != len(input_shape) - 1:
        raise ValueError(f"the model's output {out_spatial} has no spatial axes to take a receptive field of")
    centre = tuple(n // 2 for n in out_spatial)
    support = _support(linear, x, centre)
    if not support.any():
        raise ValueError("the centre output does not depend on the input")
    sizes, strides, paddings = [], [], []
    for axis, n in enumerate(out_spatial):
        lo, hi = _extent(support, axis)
        sizes.append(hi - lo + 1)
        stride = 0
        if n > 1:
            neighbour = list(centre)
            neighbour[axis] += 1 if centre[axis] + 1 < n else -1
            shifted = _support(linear, x, tuple(neighbour))
            if shifted.any():
                lo2, hi2 = _extent(shifted, axis)
                step = lo2 - lo if lo > 0 and lo2 > 0 else hi2 - hi
                stride = step * (1 if neighbour[axis] > centre[axis] else -1)
        strides.append(stride)
        paddings.append(centre[axis] * stride - lo)
    return ReceptiveField(
        size=tuple(sizes),
        stride=tuple(strides),
        padding=tuple(paddings),
        input_shape=input_shape,
        method="empirical",
        support=support,
    )


def effective_receptive_field(
    model: nn.Module,
    input: torch.Tensor | Sequence[int],
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Effective receptive field (Luo et al. 2016): ``|d y_centre / d x|`` with the model's weights.

    Args:
        model: any ``nn.Module`` taking one ``(N, C, *spatial)`` tensor; run in eval mode.
        input: an input batch ``(N, C, *spatial)``, or its ``(C, *spatial)`` shape, in which
            case one standard-normal sample is drawn with ``seed``.
        seed: seed for the random input when ``input`` is a shape.

    Returns:
        The gradient magnitude summed over batch and channels, shape ``(*spatial)``, float;
        :func:`atrous.viz.plot_erf` draws it, with a title that says which weights it measured.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(input, torch.Tensor):
        shape = check_input_shape(input)
        generator = torch.Generator().manual_seed(seed)
        dtype, device = probe_dtype_device(model)  # drawn on the CPU: the same sample on any device
        input = torch.randn((1, *shape), generator=generator).to(dtype=dtype, device=device)
    if input.ndim < 3 or not input.is_floating_point():
        raise ValueError(f"input must be a float tensor (N, C, *spatial), got shape {tuple(input.shape)}, "
                         f"dtype {input.dtype}")
    was_training = model.training
    model.eval()
    try:
        x = input.detach().clone().requires_grad_(True)
        out = _first_output(model(x))
        centre = tuple(n // 2 for n in out.shape[2:])
        selector = out.new_zeros(out.shape)
        selector[(slice(None), slice(None), *centre)] = 1.0
        (grad,) = torch.autograd.grad(out, x, selector, allow_unused=True)
    finally:
        model.train(was_training)
    return torch.zeros(x.shape[2:]) if grad is None else grad.abs().sum(dim=(0, 1)).detach()
