"""Drop-in PyTorch layers for dilated convolutions.

``DilatedConv1d/2d/3d`` subclass ``nn.Conv1d/2d/3d``: same parameters, same ``state_dict``
keys, so weights move freely between them and plain PyTorch layers. What they add is padding
that is right for any dilation and stride ("same", "valid", "causal") and a
``receptive_field`` property, and ``backend`` (not part of the ``state_dict``): how the
convolution executes, ``"auto"`` by default (see :mod:`atrous.ops.backend`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from atrous.ops.backend import CHOOSER, STACK_CHOICES, check_backend, fixed, layout_key
from atrous.ops.formulations import same_rate_stack
from atrous.ops.functional import dilated_conv
from atrous.ops.padding import (
    PADDING_MODES,
    PaddingSpec,
    causal_padding,
    check_rates,
    kernel_extent,
    resolve_padding,
    to_tuple,
)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_channels(in_channels: object, out_channels: object, groups: object) -> None:
    """Channel counts and groups as ``nn.ConvNd`` needs them, refused with their names and values."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        _check_count(name, value)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must both be divisible by "
                         f"groups={groups}")


class _DilatedConvMixin:
    """Shared forward and helpers; ``self.padding`` holds the user's spec ("same", 3, (1, 2), ...)."""

    def _init_padding(self, padding: PaddingSpec, ndim: int) -> None:
        if isinstance(padding, str):
            if padding not in PADDING_MODES:
                raise ValueError(f"padding must be one of {PADDING_MODES}, an int or a tuple of ints, got {padding!r}")
            if padding == "causal" and ndim != 1:
                raise ValueError(f"padding='causal' is only defined for 1D convolutions, got {ndim}D")
            self.padding = padding
        else:
            self.padding = to_tuple(padding, ndim, "padding", minimum=0)

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


def _conv_class(base: type[nn.modules.conv._ConvNd], ndim: int, doc: str) -> type:
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: PaddingSpec = "same",
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        _check_channels(in_channels, out_channels, groups)
        kernel_size = to_tuple(kernel_size, ndim, "kernel_size")
        stride = to_tuple(stride, ndim, "stride")
        dilation = to_tuple(dilation, ndim, "dilation")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        base.__init__(
            self, in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias, padding_mode, device, dtype
        )
        self._init_padding(padding, ndim)
        self.backend = check_backend(backend)

    cls = type(f"DilatedConv{ndim}d", (_DilatedConvMixin, base), {"__init__": __init__, "__doc__": doc})
    cls.__module__ = __name__
    return cls


_ARGS_DOC = """
    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups, bias, padding_mode,
            device, dtype: as in ``nn.Conv{n}d``.
        padding: ``"same"`` (default; output ``ceil(n / stride)``), ``"valid"``,{causal} or
            symmetric amounts.
        backend: keyword only; ``"auto"`` or a formulation name, as in :func:`atrous.dilated_conv`.

    Shape:
        ``(N, C_in, {shape})`` -> ``(N, C_out, {shape_out})``.
"""

DilatedConv1d = _conv_class(
    nn.Conv1d,
    1,
    "1D dilated convolution, a drop-in ``nn.Conv1d``.\n"
    + _ARGS_DOC.format(n=1, causal=' ``"causal"``,', shape="L", shape_out="L_out"),
)
DilatedConv2d = _conv_class(
    nn.Conv2d, 2, "2D dilated convolution, a drop-in ``nn.Conv2d``.\n" + _ARGS_DOC.format(
        n=2, causal="", shape="H, W", shape_out="H_out, W_out")
)
DilatedConv3d = _conv_class(
    nn.Conv3d, 3, "3D dilated convolution, a drop-in ``nn.Conv3d``.\n" + _ARGS_DOC.format(
        n=3, causal="", shape="D, H, W", shape_out="D_out, H_out, W_out")
)


class CausalConv1d(DilatedConv1d):
    """Causal 1D dilated convolution: ``(k - 1) * d`` zeros on the left, so ``y[t]`` sees ``x[<= t]``.

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.Conv1d``.
        dilation, stride, groups, bias, device, dtype: as in ``nn.Conv1d``.
        backend: ``"auto"`` or a formulation name, as in :func:`atrous.dilated_conv`.

    Shape:
        ``(N, C_in, T)`` -> ``(N, C_out, ceil(T / stride))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
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
        if not isinstance(dims, int) or isinstance(dims, bool) or dims not in _CONV_BY_DIMS:
            raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
        for name, flag in (("bias", bias), ("use_space_to_batch", use_space_to_batch)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        _check_count("channels", channels)
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
        return 1 + sum(kernel_extent(conv.kernel_size[0], rate) - 1 for conv, rate in zip(self.convs, self.rates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for start, stop, fused in self.groups_of_layers():
            if fused and self._fuse(x, start, stop):
                x = same_rate_stack(x, self.convs[start:stop], self.activations[start:stop], self.rates[start])
            else:
                for i in range(start, stop):
                    x = self.activations[i](self.convs[i](x))
        return x

    def _fuse(self, x: torch.Tensor, start: int, stop: int) -> bool:
        """Whether the fusable run ``[start, stop)`` goes through space_to_batch for this input."""
        if self.backend != "auto" or fixed() or x.device.type not in ("cpu", "cuda"):
            return True
        convs, activations = self.convs[start:stop], self.activations[start:stop]
        if x.shape[0] * math.prod(x.shape[2:]) * sum(conv.weight.numel() for conv in convs) < CHOOSER.min_macs:
            return True
        params = [p for conv in convs for p in conv.parameters() if p.requires_grad]
        grad = torch.is_grad_enabled() and (x.requires_grad or bool(params))
        layers = tuple((tuple(conv.weight.shape), conv.bias is not None, conv.backend) for conv in convs)
        acts = tuple(type(act).__name__ for act in activations)
        key = ("stack", self.rates[start], tuple(x.shape), layers, acts, grad, x.requires_grad, *layout_key(x))
        choice = CHOOSER.cache.get(key)
        if choice is None:
            # "layers" first: the plain-PyTorch way is kept unless space_to_batch is clearly faster.
            choice = CHOOSER.choose(key, STACK_CHOICES, self._timed_run(x, start, stop, grad), x.device)
        return choice == "space_to_batch"

    def _timed_run(self, x: torch.Tensor, start: int, stop: int, grad: bool) -> Callable[[str], None]:
        """Runs one way of executing ``[start, stop)`` (and its backward when ``grad``) for timing:
        no hooks fire, no ``.grad`` is written and the RNG state is restored."""
        convs, activations = self.convs[start:stop], self.activations[start:stop]
        inputs = x.detach().requires_grad_(grad and x.requires_grad)
        params = [p for conv in convs for p in conv.parameters() if p.requires_grad]
        wanted = ([inputs] if inputs.requires_grad else []) + params

        def run(name: str) -> None:
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(grad):
                if name == "space_to_batch":
                    y = same_rate_stack(inputs, convs, activations, self.rates[start])
                else:
                    y = inputs
                    for conv, act in zip(convs, activations):
                        y = act(conv.forward(y))
                if grad:
                    torch.autograd.grad(y, wanted, torch.ones_like(y))

        return run
