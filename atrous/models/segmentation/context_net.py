"""Small CPU-friendly segmentation networks around a context module, and their ablations.

A stride-4 stem (two 3x3/2 conv-BN-ReLU), two residual dilated blocks (the local front end),
a basic context module (Yu & Koltun 2016) at 1/4 resolution, a 1x1 classifier and bilinear
upsampling. The variants differ only in their dilation rates, so all have the same layers and
parameter count:

================  ==============  =========================  ==================
name              block rates     context rates              field (features)
================  ==============  =========================  ==================
``context_net``   1, 2            1, 1, 2, 4, 8, 16, 1       7 + 16 * 3 + 8 * 33 = 319
``hdc_net``       1, 2            1, 2, 5, 9, 2, 5, 9        319 (HDC: no common factor)
``gridding_net``  3, 3            3, 3, 3, 3, 3, 6, 6        319 (all multiples of 3)
``plain_net``     1, 1            1, 1, 1, 1, 1, 1, 1        7 + 16 * 2 + 8 * 7 = 95
================  ==============  =========================  ==================

The stem alone sees 7 pixels with a stride of 4; each 3x3 layer at rate ``r`` adds ``8 r``
input pixels (a residual block has two). ``gridding_net`` reaches as far as ``context_net`` but
each output reads only one feature pixel in three along each axis (the gridding effect of Wang
et al. 2018, "Understanding convolution for semantic segmentation"), while ``hdc_net`` follows
their hybrid dilated convolution rule. The residual blocks and BatchNorm are not in the paper's
basic network; they let the network train from scratch in minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.models._registry import register_model
from atrous.models.segmentation._common import ConvBNReLU, check_int, resize_to, scaled
from atrous.models.segmentation.context import CONTEXT_RATES, ContextModule
from atrous.ops import DilatedConv2d

HDC_RATES = (1, 2, 5, 9, 2, 5, 9)
GRIDDING_RATES = (3, 3, 3, 3, 3, 6, 6)
PLAIN_RATES = (1,) * 7
BLOCK_RATES = (1, 2)


class ResidualDilatedBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` with both 3x3 convs at one dilation (He et al. 2016).

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels, 3, dilation=dilation),
            DilatedConv2d(channels, channels, 3, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class ContextNet(nn.Module):
    """Stem (stride 4) -> residual dilated blocks -> context module -> 1x1 classifier -> upsampling.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        channels: width after the stem (the stem's first conv has half).
        rates: dilation of each 3x3 context layer.
        block_rates: dilation of each residual block before the context module.
        variant: ``"basic"`` or ``"large"`` context module.
        norm: BatchNorm inside the context module.

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
        block_rates: Sequence[int] = BLOCK_RATES,
        variant: str = "basic",
        norm: bool = True,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes)
        check_int("in_channels", in_channels)
        check_int("channels", channels)
        for rate in block_rates:
            check_int("block_rates", rate)
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, max(1, channels // 2), 3, stride=2),
            ConvBNReLU(max(1, channels // 2), channels, 3, stride=2),
        )
        self.blocks = nn.Sequential(*(ResidualDilatedBlock(channels, rate) for rate in block_rates))
        self.block_rates = tuple(block_rates)
        self.context = ContextModule(channels, variant, rates=rates, norm=norm)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.output_stride = 4

    @property
    def receptive_field(self) -> int:
        """Field of the feature map in input pixels: ``7 + 4 * (2 * 2 * sum(block_rates) + context field - 1)``."""
        block_growth = sum(4 * rate for rate in self.block_rates)  # two 3x3 convs per block
        return 7 + self.output_stride * (block_growth + self.context.receptive_field - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.context(self.blocks(self.stem(x)))  # (N, C, H/4, W/4)
        return resize_to(self.classifier(features), size)


def _build(rates: Sequence[int], block_rates: Sequence[int], num_classes: int, in_channels: int,
           width_multiplier: float, variant: str, norm: bool) -> ContextNet:
    return ContextNet(num_classes, in_channels, channels=scaled(48, width_multiplier), rates=rates,
                      block_rates=block_rates, variant=variant, norm=norm)


@register_model(task="segmentation")
def context_net(
    *,
    num_classes: int = 11,
    in_channels: int = 3,
    rates: Sequence[int] = CONTEXT_RATES,
    block_rates: Sequence[int] = BLOCK_RATES,
    variant: str = "basic",
    norm: bool = True,
    width_multiplier: float = 1.0,
) -> ContextNet:
    """Stride-4 stem, residual blocks at rates 1, 2, context module (1,1,2,4,8,16,1): 319-pixel field."""
    return _build(rates, block_rates, num_classes, in_channels, width_multiplier, variant, norm)


@register_model(task="segmentation")
def plain_net(*, num_classes: int = 11, in_channels: int = 3, norm: bool = True,
              width_multiplier: float = 1.0) -> ContextNet:
    """``context_net`` with every dilation 1: same parameters, 95-pixel field."""
    return _build(PLAIN_RATES, (1, 1), num_classes, in_channels, width_multiplier, "basic", norm)


@register_model(task="segmentation")
def hdc_net(*, num_classes: int = 11, in_channels: int = 3, norm: bool = True,
            width_multiplier: float = 1.0) -> ContextNet:
    """``context_net`` with hybrid dilated context rates 1,2,5,9,2,5,9: same parameters and field, no gridding."""
    return _build(HDC_RATES, BLOCK_RATES, num_classes, in_channels, width_multiplier, "basic", norm)


@register_model(task="segmentation")
def gridding_net(*, num_classes: int = 11, in_channels: int = 3, norm: bool = True,
                 width_multiplier: float = 1.0) -> ContextNet:
    """``context_net`` with every rate a multiple of 3 (blocks 3,3; context 3,3,3,3,3,6,6): same field, gridded."""
    return _build(GRIDDING_RATES, (3, 3), num_classes, in_channels, width_multiplier, "basic", norm)
