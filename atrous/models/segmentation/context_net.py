"""Small CPU-friendly segmentation networks around a context module, and their ablations.

A stride-4 stem (two 3x3/2 conv-BN-ReLU), a basic context module (Yu & Koltun 2016) at 1/4
resolution, a 1x1 classifier and bilinear upsampling. The variants differ only in the seven
dilation rates, so all have the same layers and parameter count:

===============  =========================  ===================
name             rates                      field (features)
===============  =========================  ===================
``context_net``  1, 1, 2, 4, 8, 16, 1       7 + 4 * 66 = 271
``hdc_net``      1, 2, 5, 9, 2, 5, 9        271 (HDC: no common factor)
``gridding_net`` 3, 3, 3, 6, 6, 6, 6        271 (all multiples of 3)
``plain_net``    1, 1, 1, 1, 1, 1, 1        7 + 4 * 14 = 63
===============  =========================  ===================

The stem alone sees 7 pixels with a stride of 4; each 3x3 layer at rate ``r`` adds ``8 r``
input pixels. ``gridding_net`` reaches as far as ``context_net`` but each output reads only one
feature pixel in three along each axis (the gridding effect of Wang et al. 2018, "Understanding
convolution for semantic segmentation"), while ``hdc_net`` follows their hybrid dilated
convolution rule. Unlike the paper's basic module, each context layer here is a residual unit
with BatchNorm whose branch starts at zero (still the identity at init): it lets the network
train from scratch in minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.models._registry import register_model
from atrous.models.segmentation._common import ConvBNReLU, check_int, resize_to, scaled
from atrous.models.segmentation.context import CONTEXT_RATES, ContextModule

HDC_RATES = (1, 2, 5, 9, 2, 5, 9)
GRIDDING_RATES = (3, 3, 3, 6, 6, 6, 6)
PLAIN_RATES = (1,) * 7


class ContextNet(nn.Module):
    """Stem (stride 4) -> context module -> 1x1 classifier -> bilinear upsampling.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        channels: width of the context module (the stem's first conv has half).
        rates: dilation of each 3x3 context layer.
        variant: ``"basic"`` or ``"large"`` context module.
        norm: BatchNorm inside the context module.
        residual: residual context layers (basic variant only).

    Shape:
        ``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        *,
        channels: int = 48,
        rates: Sequence[int] = CONTEXT_RATES,
        variant: str = "basic",
        norm: bool = True,
        residual: bool = True,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        check_int("channels", channels)
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, max(1, channels // 2), 3, stride=2),
            ConvBNReLU(max(1, channels // 2), channels, 3, stride=2),
        )
        self.context = ContextModule(channels, variant, rates=rates, norm=norm, residual=residual)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.output_stride = 4

    @property
    def receptive_field(self) -> int:
        """Field of the feature map in input pixels: ``7 + 4 * (context field - 1)``; logits add 4."""
        return 7 + self.output_stride * (self.context.receptive_field - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.context(self.stem(x))  # (N, C, H/4, W/4)
        return resize_to(self.classifier(features), size)


def _build(rates: Sequence[int], num_classes: int, in_channels: int, width_multiplier: float, variant: str,
           norm: bool, residual: bool = True) -> ContextNet:
    return ContextNet(num_classes, in_channels, channels=scaled(48, width_multiplier), rates=rates, variant=variant,
                      norm=norm, residual=residual and variant == "basic")


@register_model(task="segmentation")
def context_net(
    *,
    num_classes: int = 11,
    in_channels: int = 3,
    rates: Sequence[int] = CONTEXT_RATES,
    variant: str = "basic",
    norm: bool = True,
    residual: bool = True,
    width_multiplier: float = 1.0,
) -> ContextNet:
    """Stride-4 stem + context module (rates 1,1,2,4,8,16,1): 271-pixel field, 160k parameters."""
    return _build(rates, num_classes, in_channels, width_multiplier, variant, norm, residual)


@register_model(task="segmentation")
def plain_net(*, num_classes: int = 11, in_channels: int = 3, norm: bool = True,
              width_multiplier: float = 1.0) -> ContextNet:
    """``context_net`` with every dilation 1: same parameters, 63-pixel field."""
    return _build(PLAIN_RATES, num_classes, in_channels, width_multiplier, "basic", norm)


@register_model(task="segmentation")
def hdc_net(*, num_classes: int = 11, in_channels: int = 3, norm: bool = True,
            width_multiplier: float = 1.0) -> ContextNet:
    """``context_net`` with hybrid dilated rates 1,2,5,9,2,5,9: same parameters and field, no gridding."""
    return _build(HDC_RATES, num_classes, in_channels, width_multiplier, "basic", norm)


@register_model(task="segmentation")
def gridding_net(*, num_classes: int = 11, in_channels: int = 3, norm: bool = True,
                 width_multiplier: float = 1.0) -> ContextNet:
    """``context_net`` with rates 3,3,3,6,6,6,6: same parameters and field, but gridded."""
    return _build(GRIDDING_RATES, num_classes, in_channels, width_multiplier, "basic", norm)
