"""Turn strides into dilations so a classification CNN keeps resolution but not its field of view.

DeepLab (Chen et al. 2015/2017) removes the stride of the last blocks of a network and dilates
every later convolution by the removed factor. Done right, every neuron keeps exactly the
receptive field it had: a layer whose stride is removed still reads its input at the old
spacing (the previous dilation), and each layer after it reads at the new, larger spacing.
Dilating the strided layer itself as well (as ``segmentation_models_pytorch.make_dilated`` does)
spreads its taps twice as far and changes the field.
"""

from __future__ import annotations

import torch
from torch import nn

from atrous._checks import check_int

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVG_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def _as_tuple(value, ndim: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def _input_grid_strides(module: nn.Module, probe_shape: tuple[int, ...]) -> dict[str, float]:
    """Stride (input pixels per sample) of the grid each conv / pool reads, from one probe forward."""
    grids: dict[str, float] = {}
    handles = []
    for name, child in module.named_modules():
        if isinstance(child, _CONV + _MAX_POOL + _AVG_POOL):

            def hook(mod, args, name=name):
                if name not in grids:
                    grids[name] = probe_shape[2] / args[0].shape[2]

            handles.append(child.register_forward_pre_hook(hook))
    modes = {m: m.training for m in module.modules()}
    param = next(module.parameters(), None)
    x = torch.zeros(probe_shape, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    try:
        module.eval()  # no BatchNorm statistics change during the probe
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return grids


def make_dilated(
    module: nn.Module,
    output_stride: int,
    *,
    in_channels: int | None = None,
    probe_size: int = 128,
) -> nn.Module:
    """Replace strides by dilations, in place, so ``module`` downsamples by ``output_stride`` at most.

    One probe forward (eval mode, no gradients) measures the grid stride ``g`` each convolution
    and pooling layer reads. A layer with stride ``s`` whose output grid ``g * s`` would pass
    ``output_stride`` loses its stride; every layer's dilation (and integer padding) is multiplied
    by ``g / min(g, output_stride)``. A strided layer thus keeps the previous dilation and the
    layers after it take the new one, which leaves every receptive field unchanged. Parallel
    branches (residual shortcuts) are handled because strides are measured, not counted.

    Non-overlapping pools (kernel <= stride, e.g. VGG's 2x2 max-pool) whose stride is removed
    become ``nn.Identity``, as Yu & Koltun (2016) remove pool4 and pool5 (the field then loses
    the pool's own ``(k - 1) * g`` pixels, nothing more); overlapping max-pools
    keep their kernel at stride 1 and take the dilation. Convolutions are assumed "same"-padded
    (integer padding ``d * (k - 1) / 2`` or the ``"same"`` mode of ``atrous`` layers).

    Args:
        module: a CNN taking ``(N, C, *spatial)``; modified in place and returned.
        output_stride: the largest downsampling factor to keep, a power of two >= 1.
        in_channels: channels of the probe input; default: ``in_channels`` of the first conv.
        probe_size: spatial size of the probe input on every axis; must be a multiple of the
            network's original total stride.

    Returns:
        ``module``, whose output is ``ceil(n / output_stride)`` long where it was ``n / stride``.

    Raises:
        TypeError: ``output_stride`` or ``probe_size`` not an int.
        ValueError: bad ``output_stride`` / ``probe_size``, or no convolution in ``module``.
    """
    check_int(output_stride, "output_stride", low=1)
    if output_stride & (output_stride - 1):  # a power of two has one bit set
        raise ValueError(f"output_stride must be a power of two >= 1 (e.g. 8, 16, 32), got {output_stride!r}")
    check_int(probe_size, "probe_size", low=1)
    convs = [m for m in module.modules() if isinstance(m, _CONV)]
    if not convs:
        raise ValueError(f"module must contain at least one convolution, got {type(module).__name__}")
    ndim = len(convs[0].kernel_size)
    channels = convs[0].in_channels if in_channels is None else in_channels
    grids = _input_grid_strides(module, (1, channels) + (probe_size,) * ndim)

    replacements: list[tuple[str, nn.Module]] = []
    for name, layer in module.named_modules():
        if name not in grids:
            continue
        grid = grids[name]
        factor = grid / min(grid, output_stride)
        if factor != int(factor):
            raise ValueError(f"probe_size={probe_size} is not a multiple of the network's strides at layer {name!r}")
        factor = int(factor)
        stride = _as_tuple(layer.stride, ndim)
        removed = max(stride) > 1 and grid * max(stride) > output_stride
        if isinstance(layer, _CONV):
            layer.dilation = tuple(d * factor for d in layer.dilation)
            if not isinstance(layer.padding, str):
                layer.padding = tuple(p * factor for p in _as_tuple(layer.padding, ndim))
            if removed:
                layer.stride = (1,) * ndim
        elif removed:
            kernel = _as_tuple(layer.kernel_size, ndim)
            if all(k <= s for k, s in zip(kernel, stride)):
                replacements.append((name, nn.Identity()))
            elif isinstance(layer, _MAX_POOL):
                layer.stride = 1
                layer.dilation = tuple(d * factor for d in _as_tuple(layer.dilation, ndim))
                layer.padding = tuple(p * factor for p in _as_tuple(layer.padding, ndim))
            else:
                raise ValueError(f"cannot dilate overlapping average pooling {name!r}; only max pooling has dilation")
        elif isinstance(layer, _MAX_POOL):
            layer.dilation = tuple(d * factor for d in _as_tuple(layer.dilation, ndim))
            layer.padding = tuple(p * factor for p in _as_tuple(layer.padding, ndim))
    for name, new in replacements:
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, new)
    return module
