"""Segmentation heads and blocks: the FCN head, the DeepLab v3+ decoder and an HDC block.

- FCN head: Long et al. 2015, "Fully convolutional networks for semantic segmentation".
- Decoder: Chen et al. 2018, "Encoder-decoder with atrous separable convolution" (DeepLab v3+):
  upsample the ASPP output 4x, concatenate 48 reduced low-level channels, refine with two 3x3
  convs.
- HDC: Wang et al. 2018, "Understanding convolution for semantic segmentation": consecutive
  rates with no common factor > 1 (e.g. 1, 2, 5) so the stack covers every input pixel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from atrous.models._checks import check_bool, check_float, check_int, check_sequence
from atrous.models.segmentation._common import ConvBNReLU, resize_to
from atrous.models.segmentation.aspp import RateWarning, SeparableConv2d


class FCNHead(nn.Sequential):
    """3x3 conv-BN-ReLU (``in_channels / 4`` wide) -> dropout -> 1x1 classifier.

    Args:
        in_channels: channels of the feature map.
        num_classes: output channels.
        hidden_channels: width of the 3x3 layer; default ``in_channels // 4``.
        dropout: dropout before the classifier.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, num_classes, H, W)``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, hidden_channels: int | None = None, dropout: float = 0.1
    ) -> None:
        check_int("in_channels", in_channels)
        check_int("num_classes", num_classes)
        hidden = max(1, in_channels // 4) if hidden_channels is None else check_int("hidden_channels", hidden_channels)
        check_float("dropout", dropout, low=0.0, high=1.0)
        super().__init__(ConvBNReLU(in_channels, hidden, 3), nn.Dropout(dropout), nn.Conv2d(hidden, num_classes, 1))


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse upsampled encoder features with reduced low-level features, then classify.

    Args:
        low_level_channels: channels of the stride-4 backbone features.
        encoder_channels: channels of the ASPP output.
        num_classes: output channels.
        reduce_channels: low-level channels after the 1x1 reduction (48 in the paper).
        channels: width of the two refining 3x3 convs (256 in the paper).
        separable: depthwise-separable refining convs, as in the paper.

    Shape:
        ``low (N, C_low, h, w)``, ``encoded (N, C_enc, h', w')`` -> ``(N, num_classes, h, w)``.
    """

    def __init__(
        self,
        low_level_channels: int,
        encoder_channels: int,
        num_classes: int,
        *,
        reduce_channels: int = 48,
        channels: int = 256,
        separable: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("low_level_channels", low_level_channels), ("encoder_channels", encoder_channels),
                            ("num_classes", num_classes), ("reduce_channels", reduce_channels),
                            ("channels", channels)):
            check_int(name, value)
        check_bool("separable", separable)
        self.reduce = ConvBNReLU(low_level_channels, reduce_channels, 1)
        fused = reduce_channels + encoder_channels
        if separable:
            self.refine = nn.Sequential(SeparableConv2d(fused, channels), SeparableConv2d(channels, channels))
        else:
            self.refine = nn.Sequential(ConvBNReLU(fused, channels, 3), ConvBNReLU(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, low: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        encoded = resize_to(encoded, low.shape[-2:])  # (N, C_enc, h, w)
        fused = torch.cat([encoded, self.reduce(low)], dim=1)
        return self.classifier(self.refine(fused))


class HDCBlock(nn.Module):
    """Hybrid dilated convolution: conv-BN-ReLU at each rate, plus a residual connection.

    Args:
        channels: channels in and out.
        rates: dilation of each 3x3 layer; a common factor > 1 warns (``RateWarning``), since
            then the stack only ever reads a sub-lattice of its input (gridding).
        residual: add the input to the output.

    Shape:
        ``(N, channels, H, W)`` -> ``(N, channels, H, W)``.
    """

    def __init__(self, channels: int, rates: Sequence[int] = (1, 2, 5), *, residual: bool = True) -> None:
        super().__init__()
        check_int("channels", channels)
        check_bool("residual", residual)
        rates = check_sequence("rates", rates)
        if not rates:
            raise ValueError("rates must name at least one dilation, got an empty sequence")
        for rate in rates:
            check_int("rates", rate)
        if math.gcd(*rates) > 1:
            warnings.warn(
                f"HDC rates {rates} share the factor {math.gcd(*rates)}: the block reads only every "
                f"{math.gcd(*rates)}-th pixel (gridding); HDC asks for rates like (1, 2, 5)",
                RateWarning,
                stacklevel=2,
            )
        self.rates = rates
        self.residual = residual
        self.layers = nn.Sequential(*(ConvBNReLU(channels, channels, 3, dilation=rate) for rate in rates))

    @property
    def receptive_field(self) -> int:
        """Receptive field along each axis: ``1 + 2 * sum(rates)``."""
        return 1 + 2 * sum(self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.residual else out
