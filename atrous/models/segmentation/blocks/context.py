"""The context module of Yu & Koltun 2016, "Multi-scale context aggregation by dilated convolutions".

Seven 3x3 layers at dilations 1, 1, 2, 4, 8, 16, 1, each followed by ReLU, then a 1x1 layer:
the receptive field grows 3, 5, 9, 17, 33, 65, 67 while the resolution stays. The basic module
keeps C channels throughout; the large one widens to 2C, 2C, 4C, 8C, 16C, 32C, 32C and returns C.
Both are initialised to pass their input through (the paper's identity initialisation), so a
module plugged after a trained front end starts from the front end's predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous._checks import check_bool, check_float, check_int, check_rates
from atrous.ops import DilatedConv2d

CONTEXT_RATES = (1, 1, 2, 4, 8, 16, 1)
LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)  # multiples of C for the seven 3x3 layers
VARIANTS = ("basic", "large")


def _group_identity_(weight: torch.Tensor, channels: int, noise: float) -> None:
    """Yu & Koltun's eq. 5: centre tap ``C / c_out`` where ``floor(a C / c_in) == floor(b C / c_out)``, plus noise."""
    c_out, c_in, kh, kw = weight.shape
    with torch.no_grad():
        if noise > 0:
            weight.normal_(0.0, noise)
        else:
            weight.zero_()
        a = torch.arange(c_in) * channels // c_in  # group of each input channel
        b = torch.arange(c_out) * channels // c_out  # group of each output channel
        mask = (b[:, None] == a[None, :]).to(weight.dtype)  # (c_out, c_in)
        weight[:, :, kh // 2, kw // 2] += mask * (channels / c_out)


class _ResidualUnit(nn.Module):
    """``relu(x + norm(conv(x)))``: one context layer as a residual unit."""

    def __init__(self, channels: int, rate: int, norm: bool) -> None:
        super().__init__()
        self.conv = DilatedConv2d(channels, channels, 3, dilation=rate, bias=not norm)
        self.norm = nn.BatchNorm2d(channels) if norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def reset_parameters(self) -> None:
        # The branch starts at exactly zero, so the unit starts as the identity on x >= 0.
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv.reset_parameters()
            nn.init.zeros_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        else:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.norm(self.conv(x)))


class ContextModule(nn.Module):
    """Multi-scale context aggregation: maps C feature maps to C, dilation growing per layer.

    Args:
        channels: C, the channels in and out (the number of classes in the paper).
        variant: ``"basic"`` (width C everywhere, exact identity at init) or ``"large"``
            (widths 2C ... 32C, group identity plus ``init_noise`` Gaussian noise at init).
        rates: dilation of each 3x3 layer; the paper's ``(1, 1, 2, 4, 8, 16, 1)`` by default.
            The large variant needs seven.
        init_noise: standard deviation of the noise added to the large variant's init
            (the paper asks for ``sigma << C / c_out``); 0 gives an exact identity.
        norm: BatchNorm after each 3x3 conv (not in the paper; it helps training from scratch).
            The identity init then holds in eval mode while the running statistics are fresh
            (up to BatchNorm's eps).
        residual: make each 3x3 layer a residual unit ``relu(x + norm(conv(x)))`` whose branch
            starts at zero (basic variant only; not in the paper). The module is still the exact
            identity at init and trains from scratch much faster.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``. At init, non-negative inputs come back unchanged
        (basic: exactly; large: up to the noise).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "basic",
        *,
        rates: Sequence[int] = CONTEXT_RATES,
        init_noise: float = 1e-3,
        norm: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        check_int(channels, "channels", low=1)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        rates = check_rates(rates)
        if variant == "large" and len(rates) != len(LARGE_WIDTHS):
            raise ValueError(f"variant='large' needs {len(LARGE_WIDTHS)} rates, got {rates!r}")
        if residual and variant != "basic":
            raise ValueError(f"residual=True needs variant='basic' (equal widths), got variant={variant!r}")
        check_float(init_noise, "init_noise", low=0.0)
        check_bool(norm, "norm")
        check_bool(residual, "residual")
        widths = [channels * m for m in LARGE_WIDTHS] if variant == "large" else [channels] * len(rates)
        self.channels, self.variant, self.rates = channels, variant, rates
        self.residual = residual
        layers: list[nn.Module] = []
        in_channels = channels
        for rate, width in zip(rates, widths):
            if residual:
                layers.append(_ResidualUnit(channels, rate, norm))
                continue
            layers.append(DilatedConv2d(in_channels, width, 3, dilation=rate, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
        layers.append(nn.Conv2d(in_channels, channels, 1))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters(init_noise if variant == "large" else 0.0)

    def reset_parameters(self, init_noise: float = 0.0) -> None:
        """Identity (basic) or group-identity-plus-noise (large) weights, zero biases."""
        for module in self.layers:
            if isinstance(module, _ResidualUnit):
                module.reset_parameters()
            elif isinstance(module, nn.Conv2d):
                _group_identity_(module.weight, self.channels, init_noise)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def receptive_field(self) -> int:
        """Receptive field along each axis, in input samples: ``1 + 2 * sum(rates)``."""
        return 1 + 2 * sum(self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
