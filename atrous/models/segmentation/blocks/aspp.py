"""Atrous Spatial Pyramid Pooling, plain and depthwise-separable, with rate sanity checks.

Chen et al. 2017, "Rethinking atrous convolution for semantic image segmentation" (DeepLab v3):
a 1x1 branch, one 3x3 atrous branch per rate, and image-level pooling, concatenated and
projected by a 1x1 conv. The paper's rates are (6, 12, 18) at output stride 16 and twice that at
output stride 8. It also notes that as the rate approaches the feature-map size a 3x3 filter
degenerates to its centre tap (a 1x1 filter), which is why image pooling was added.
Chen et al. 2018 (DeepLab v3+) make the 3x3 branches depthwise separable.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from atrous._checks import check_bool, check_float, check_int, check_rates
from atrous.models.segmentation.blocks.conv import SeparableConv2d
from atrous.ops import DilatedConv2d
from atrous.ops.capture import capturing

PAPER_RATES = (6, 12, 18)  # at output stride 16
PAPER_OUTPUT_STRIDE = 16


class RateWarning(UserWarning):
    """An ASPP rate that does not fit the output stride or the feature map (see ``check_aspp_rates``)."""


def paper_rates(output_stride: int) -> tuple[int, ...]:
    """DeepLab v3's ASPP rates for an output stride: (6, 12, 18) at 16, (12, 24, 36) at 8."""
    return tuple(r * PAPER_OUTPUT_STRIDE // output_stride for r in PAPER_RATES)


def check_aspp_rates(
    rates: Sequence[int],
    *,
    output_stride: int | None = None,
    feature_size: Sequence[int] | None = None,
) -> None:
    """Warn (``RateWarning``) about rates that break the paper's convention or outgrow the map.

    Args:
        rates: the ASPP rates.
        output_stride: if given, rates other than ``paper_rates(output_stride)`` warn.
        feature_size: ``(h, w)`` of the feature map; a rate ``>= h`` or ``>= w`` puts every
            off-centre tap of the 3x3 filter in the zero padding along that axis.
    """
    rates = tuple(rates)
    if output_stride is not None and output_stride in (8, 16, 32):
        expected = paper_rates(output_stride)
        if rates != expected:
            warnings.warn(
                f"ASPP rates {rates} at output_stride={output_stride}: DeepLab v3 uses {expected} "
                f"(6, 12, 18 at output stride 16, scaled by 16 / output_stride)",
                RateWarning,
                stacklevel=3,
            )
    if feature_size is not None:
        h, w = (int(s) for s in feature_size)
        too_big = [r for r in rates if r >= h or r >= w]
        if too_big:
            whole = "to its centre tap (a 1x1 conv)" if all(r >= h and r >= w for r in too_big) else "along one axis"
            warnings.warn(
                f"ASPP rates {too_big} reach past the {h}x{w} feature map, so those 3x3 branches degenerate "
                f"{whole}; use a larger input, a smaller output stride or smaller rates",
                RateWarning,
                stacklevel=3,
            )


class ASPPConv(nn.Sequential):
    """One atrous branch: 3x3 conv at ``rate`` -> BN -> ReLU (separable when asked)."""

    def __init__(self, in_channels: int, out_channels: int, rate: int, *, separable: bool = False) -> None:
        if separable:
            super().__init__(SeparableConv2d(in_channels, out_channels, dilation=rate))
        else:
            super().__init__(
                DilatedConv2d(in_channels, out_channels, 3, dilation=rate, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
        self.rate = rate


class ASPPPooling(nn.Module):
    """Image-level features: global average -> 1x1 conv (with bias) -> ReLU -> broadcast back.

    No BatchNorm here: after pooling it would see one value per channel per image, which fails in
    training at batch size 1 and is noisy at small batches. The projection after the concat is
    normalised anyway. (torchvision's branch has that BatchNorm, :class:`NormalizedASPPPooling`; in
    eval mode it folds exactly into this conv's weight and bias.)

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))  # (N, C_out, 1, 1)
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class NormalizedASPPPooling(nn.Sequential):
    """torchvision's image-level branch: global average -> 1x1 conv (no bias) -> BN -> ReLU -> broadcast.

    Numbered as torchvision's ``ASPPPooling`` (``1`` the conv, ``2`` the BatchNorm), so its weights
    load by key. The BatchNorm sees one value per channel per image: training needs batches of two
    or more images (use :class:`ASPPPooling` otherwise).

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, x.shape[2], x.shape[3])  # (N, C_out, 1, 1) broadcast


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLab v3), trainable at batch size 1.

    Submodules are named as in torchvision's ``ASPP`` (``convs.0`` the 1x1 branch, ``convs.1..`` the
    atrous branches, then the pooling branch; ``project``), so its ``state_dict`` keys carry over
    except the pooling branch's (see :class:`ASPPPooling`); with ``pooling_norm=True`` they all do.

    Args:
        in_channels: channels of the backbone feature map.
        out_channels: channels of every branch and of the output (256 in the paper).
        rates: one 3x3 atrous branch per rate.
        separable: depthwise-separable 3x3 branches (DeepLab v3+).
        image_pooling: include the image-level branch.
        dropout: dropout after the projection.
        output_stride: if given, warn when ``rates`` differ from the paper's for it.
        pooling_norm: torchvision's pooling branch with BatchNorm (:class:`NormalizedASPPPooling`),
            which cannot train at batch size 1.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)``. Warns (``RateWarning``) in
        forward when a rate reaches past ``H`` or ``W`` (not while a graph is being captured).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = PAPER_RATES,
        *,
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
        output_stride: int | None = None,
        pooling_norm: bool = False,
    ) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", low=1)
        check_int(out_channels, "out_channels", low=1)
        rates = check_rates(rates)
        check_float(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        check_bool(separable, "separable")
        check_bool(image_pooling, "image_pooling")
        check_bool(pooling_norm, "pooling_norm")
        if output_stride is not None:
            check_int(output_stride, "output_stride", low=1)
        check_aspp_rates(rates, output_stride=output_stride)
        self.rates = rates
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                          nn.ReLU(inplace=True))
        ]
        branches += [ASPPConv(in_channels, out_channels, rate, separable=separable) for rate in rates]
        if image_pooling:
            pooling = NormalizedASPPPooling if pooling_norm else ASPPPooling
            branches.append(pooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)  # torchvision's name, so its weights load by name
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not capturing():  # reading the size would fix it in a captured graph (and warn: a graph break)
            check_aspp_rates(self.rates, feature_size=x.shape[-2:])
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


__all__ = ["ASPP", "ASPPConv", "ASPPPooling", "NormalizedASPPPooling", "PAPER_OUTPUT_STRIDE", "PAPER_RATES",
           "RateWarning", "check_aspp_rates", "paper_rates"]
