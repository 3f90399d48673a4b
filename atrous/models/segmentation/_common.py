"""Small helpers shared by the segmentation models: width scaling, conv-BN-ReLU, resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atrous.models._checks import check_float
from atrous.ops import DilatedConv2d
from atrous.ops.formulations import capturing


MAX_WIDTH_MULTIPLIER = 64.0  # 64 times the papers' widths is already past any GPU's memory


def scaled(channels: int, width_multiplier: float) -> int:
    """``channels * width_multiplier`` rounded, at least 1: the width knob of every builder."""
    check_float("width_multiplier", width_multiplier, low=0.0, high=MAX_WIDTH_MULTIPLIER, low_open=True)
    return max(1, int(round(channels * width_multiplier)))


def check_output_stride(output_stride: object, allowed: tuple[int, ...] = (8, 16, 32)) -> int:
    if output_stride not in allowed or isinstance(output_stride, bool):
        raise ValueError(f"output_stride must be one of {allowed}, got {output_stride!r}")
    return output_stride  # type: ignore[return-value]


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


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``(N, C, *size)`` (no-op when already that size).

    Under tracing or export the resize is always recorded (a same-size bilinear resize is exact), so
    a graph captured where the sizes happened to agree stays right where they do not.
    """
    if not capturing() and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
