"""Convolution blocks the heads and networks are built from: conv-BN-ReLU and its separable form.

The separable block is DeepLab v3+'s (Chen et al. 2018, "Encoder-decoder with atrous separable
convolution for semantic image segmentation"): a depthwise 3x3 atrous conv and a pointwise 1x1
conv, each followed by BatchNorm and ReLU, in place of a full 3x3 conv.
"""

from __future__ import annotations

from torch import nn

from atrous._checks import check_int
from atrous.ops import DilatedConv2d


class ConvBNReLU(nn.Sequential):
    """``DilatedConv2d`` ("same" padding, no bias) -> ``BatchNorm2d`` -> ``ReLU``.

    Args:
        in_channels, out_channels, kernel_size: as in ``nn.Conv2d``.
        dilation: the atrous rate.
        stride: convolution stride.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, dilation: int = 1, stride: int = 1
    ) -> None:
        super().__init__(
            DilatedConv2d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 atrous conv -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (DeepLab v3+).

    Args:
        in_channels, out_channels: as in ``nn.Conv2d``.
        dilation: the atrous rate of the depthwise conv.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1) -> None:
        check_int(in_channels, "in_channels", low=1)
        check_int(out_channels, "out_channels", low=1)
        super().__init__(
            DilatedConv2d(in_channels, in_channels, 3, dilation=dilation, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
