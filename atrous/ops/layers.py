"""Drop-in PyTorch layers for dilated convolutions.

``DilatedConv1d/2d/3d`` subclass ``nn.Conv1d/2d/3d``: same parameters, same ``state_dict``
keys, so weights move freely between them and plain PyTorch layers. What they add is padding
that is right for any dilation and stride ("same", "valid", "causal") and a
``receptive_field`` property, and ``backend`` (not part of the ``state_dict``): how the
convolution executes, ``"auto"`` by default (see :mod:`atrous.ops.backend`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from atrous._checks import check_bool, check_int, check_rates
from atrous.ops.backend import check_backend
from atrous.ops.functional import dilated_conv
from atrous.ops.padding import (
    PADDING_MODES,
    PaddingSpec,
    causal_padding,
    kernel_extent,
    resolve_padding,
    stack_receptive_field,
    to_tuple,
)
from atrous.ops.stack_fusion import fuse_same_rate, same_rate_stack


def _check_channels(in_channels: object, out_channels: object, groups: object) -> None:
    """Channel counts and groups as ``nn.ConvNd`` needs them, refused with their names and values."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        check_int(value, name, low=1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must both be divisible by "
                         f"groups={groups}")


class DilatedConvNd:
    """What ``DilatedConv1d/2d/3d`` add to ``nn.Conv1d/2d/3d``: padding from a spec, the receptive
    field and ``backend``. A subclass names its number of spatial axes in ``spatial_dims`` and lists
    ``nn.ConvNd`` after this class; ``self.padding`` holds the user's spec ("same", 3, (1, 2), ...).

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.ConvNd``; the only positional arguments.
        stride, dilation, groups, bias, padding_mode, device, dtype: as in ``nn.ConvNd``,
            keyword only (so that a 4th positional argument cannot mean a stride here and a
            dilation in :class:`CausalConv1d`).
        padding: ``"same"`` (default; output ``ceil(n / stride)``), ``"valid"``, ``"causal"``
            (1D only) or symmetric amounts (an int or one per axis).
        backend: ``"auto"`` or a formulation name, as in :func:`atrous.dilated_conv`; not part
            of the ``state_dict``.
    """

    spatial_dims: int  # set by each subclass

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        *,
        stride: int | tuple[int, ...] = 1,
        padding: PaddingSpec = "same",
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        _check_channels(in_channels, out_channels, groups)
        kernel_size = to_tuple(kernel_size, self.spatial_dims, "kernel_size")
        stride = to_tuple(stride, self.spatial_dims, "stride")
        dilation = to_tuple(dilation, self.spatial_dims, "dilation")
        check_bool(bias, "bias")
        super().__init__(  # nn.ConvNd, next in the subclass's bases; padding resolved per call
            in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_padding(padding)
        self.backend = check_backend(backend)

    def _init_padding(self, padding: PaddingSpec) -> None:
        if isinstance(padding, str):
            if padding not in PADDING_MODES:
                raise ValueError(f"padding must be one of {PADDING_MODES}, an int or a tuple of ints, got {padding!r}")
            if padding == "causal" and self.spatial_dims != 1:
                raise ValueError(f"padding='causal' is only defined for 1D convolutions, got {self.spatial_dims}D")
            self.padding = padding
        else:
            self.padding = to_tuple(padding, self.spatial_dims, "padding", minimum=0)

    @property
    def receptive_field(self) -> tuple[int, ...]:
        """Input samples one output sees, per spatial axis: ``(k - 1) * d + 1``."""
        return tuple(kernel_extent(k, d) for k, d in zip(self.kernel_size, self.dilation))

    def explicit_padding(self, input_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """(low, high) zero padding applied for an input of the given spatial size."""
        return resolve_padding(self.padding, input_size, self.kernel_size, self.stride, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dilated_conv(
            x,
            self.weight,
            self.bias,
            dilation=self.dilation,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            padding_mode=self.padding_mode,
            backend=getattr(self, "backend", "auto"),  # modules pickled before backends existed
        )


class DilatedConv1d(DilatedConvNd, nn.Conv1d):
    """1D dilated convolution, a drop-in ``nn.Conv1d`` (same parameters and ``state_dict``).

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.Conv1d``.
        stride, padding, dilation, groups, bias, padding_mode, device, dtype, backend: keyword
            only, as in :class:`DilatedConvNd`; ``padding`` may be ``"causal"``.

    Shape:
        ``(N, C_in, L)`` -> ``(N, C_out, L_out)``.
    """

    spatial_dims = 1


class DilatedConv2d(DilatedConvNd, nn.Conv2d):
    """2D dilated convolution, a drop-in ``nn.Conv2d`` (same parameters and ``state_dict``).

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.Conv2d``.
        stride, padding, dilation, groups, bias, padding_mode, device, dtype, backend: keyword
            only, as in :class:`DilatedConvNd`.

    Shape:
        ``(N, C_in, H, W)`` -> ``(N, C_out, H_out, W_out)``.
    """

    spatial_dims = 2


class DilatedConv3d(DilatedConvNd, nn.Conv3d):
    """3D dilated convolution, a drop-in ``nn.Conv3d`` (same parameters and ``state_dict``).

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.Conv3d``.
        stride, padding, dilation, groups, bias, padding_mode, device, dtype, backend: keyword
            only, as in :class:`DilatedConvNd`.

    Shape:
        ``(N, C_in, D, H, W)`` -> ``(N, C_out, D_out, H_out, W_out)``.
    """

    spatial_dims = 3


class CausalConv1d(DilatedConv1d):
    """Causal 1D dilated convolution: ``(k - 1) * d`` zeros on the left, so ``y[t]`` sees ``x[<= t]``.

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.Conv1d``.
        dilation, stride, groups, bias, device, dtype: keyword only, as in ``nn.Conv1d``.
        backend: keyword only; ``"auto"`` or a formulation name, as in :func:`atrous.dilated_conv`.

    Shape:
        ``(N, C_in, T)`` -> ``(N, C_out, ceil(T / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding="causal",
            dilation=dilation,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
            backend=backend,
        )

    @property
    def context(self) -> int:
        """Past samples each output needs besides the current one: ``(k - 1) * d``."""
        return causal_padding(self.kernel_size[0], self.dilation[0])[0]


_CONV_BY_DIMS = {1: DilatedConv1d, 2: DilatedConv2d, 3: DilatedConv3d}


class DilatedStack(nn.Module):
    """A stack of ``conv -> activation`` layers, one per rate, with "same" padding.

    Runs of consecutive layers with the same rate > 1 (odd kernels) can execute once in the
    space_to_batch domain, which is exactly equal to running them one by one. With
    ``backend="auto"`` each such run is timed both ways on first use (per input shape, dtype,
    device and whether gradients are needed) and space_to_batch is used when clearly faster;
    with any other backend (or inside :func:`atrous.ops.deterministic_backend`) fusable runs
    always fuse.

    Args:
        channels: channels of every layer.
        rates: one dilation per layer, e.g. ``(1, 2, 4, 8)``.
        kernel_size: kernel size of every layer.
        activation: a factory for the elementwise activation after each conv
            (``None`` for identity).
        dims: 1, 2 or 3 spatial axes.
        bias: whether the convolutions have a bias.
        use_space_to_batch: allow same-rate runs to go through space_to_batch.
        backend: ``"auto"`` or a formulation name; also passed to every conv.

    Shape:
        ``(N, channels, *S)`` -> ``(N, channels, *S)``.
    """

    def __init__(
        self,
        channels: int,
        rates: Sequence[int],
        kernel_size: int = 3,
        activation: Callable[[], nn.Module] | None = nn.ReLU,
        *,
        dims: int = 2,
        bias: bool = True,
        use_space_to_batch: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_int(dims, "dims", low=1, high=3)
        check_bool(bias, "bias")
        check_bool(use_space_to_batch, "use_space_to_batch")
        check_int(channels, "channels", low=1)
        if activation is not None and not callable(activation):
            raise TypeError(f"activation must be a factory of modules such as nn.ReLU, or None, got {activation!r}")
        rates = check_rates(rates)
        self.rates = rates
        self.use_space_to_batch = use_space_to_batch
        self.backend = check_backend(backend)
        conv_cls = _CONV_BY_DIMS[dims]
        self.convs = nn.ModuleList(
            conv_cls(channels, channels, kernel_size, padding="same", dilation=rate, bias=bias, backend=backend)
            for rate in rates
        )
        self.activations = nn.ModuleList(activation() if activation else nn.Identity() for _ in rates)

    def groups_of_layers(self) -> list[tuple[int, int, bool]]:
        """(start, stop, fused) runs of layer indices; fused runs may go through space_to_batch."""
        runs, start = [], 0
        odd = self.convs[0].kernel_size[0] % 2 == 1
        for i in range(1, len(self.rates) + 1):
            if i == len(self.rates) or self.rates[i] != self.rates[start]:
                fused = self.use_space_to_batch and odd and self.rates[start] > 1 and i - start >= 2
                runs.append((start, i, fused))
                start = i
        return runs

    @property
    def receptive_field(self) -> int:
        """Receptive field of the whole stack along each axis: ``1 + sum (k - 1) * rate``."""
        return stack_receptive_field(self.convs[0].kernel_size[0], self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for start, stop, fused in self.groups_of_layers():
            if fused:
                convs, activations, rate = self.convs[start:stop], self.activations[start:stop], self.rates[start]
                if fuse_same_rate(x, convs, activations, rate, tune=self.backend == "auto"):
                    x = same_rate_stack(x, convs, activations, rate)
                    continue
            for i in range(start, stop):
                x = self.activations[i](self.convs[i](x))
        return x
