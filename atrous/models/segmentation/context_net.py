"""Small CPU-friendly segmentation networks around a context module, and their ablations.

The layout of Yu & Koltun (2016), "Multi-scale context aggregation by dilated convolutions": a
front end that reduces the image 8x, a context module of seven 3x3 dilated layers on top of it,
then (as in DeepLabv3+, Chen et al. 2018) a light decoder that brings back stride-4 detail from
the front end before bilinear upsampling. The variants differ only in the seven dilation rates,
so all have the same layers and parameter count:

===============  =========================  ==========================
name             rates                      field of the context output
===============  =========================  ==========================
``context_net``  1, 1, 2, 4, 8, 16, 1       23 + 8 * 66 = 551
``hdc_net``      1, 2, 5, 9, 2, 5, 9        551 (HDC: no common factor)
``gridding_net`` 3, 3, 3, 6, 6, 6, 6        551 (all multiples of 3)
``plain_net``    1, 1, 1, 1, 1, 1, 1        23 + 8 * 14 = 135
===============  =========================  ==========================

The front end alone sees 23 pixels with a stride of 8; each 3x3 layer at rate ``r`` adds
``16 r`` input pixels. ``gridding_net`` reaches as far as ``context_net`` but each output reads
only one feature pixel in three along each axis (the gridding effect of Wang et al. 2018,
"Understanding convolution for semantic segmentation"), while ``hdc_net`` follows their hybrid
dilated convolution rule. Unlike the paper's basic module, each context layer here is a residual
unit with BatchNorm whose branch starts at zero (still the identity at init): it lets the
network train from scratch in minutes on a CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from atrous._checks import check_bool, check_int
from atrous.models._registry import register_model
from atrous.models.segmentation._common import resize_to, scaled
from atrous.models.segmentation.blocks import ContextModule, ConvBNReLU
from atrous.models.segmentation.blocks.context import CONTEXT_RATES

HDC_RATES = (1, 2, 5, 9, 2, 5, 9)
GRIDDING_RATES = (3, 3, 3, 6, 6, 6, 6)
PLAIN_RATES = (1,) * 7
FRONT_END_FIELD = 23  # three 3x3 convs with strides 2, 2, 1, then one with stride 2
CHANNELS = 96  # the context module's width C at width_multiplier 1


class ContextNet(nn.Module):
    """Front end (stride 8) -> context module -> decoder with a stride-4 skip -> bilinear upsampling.

    Widths follow ``channels`` (C): the front end grows C/3 -> 2C/3 -> C, the skip carries C/2
    and the decoder 2C/3 channels. The front end and the skip are this wide because small objects
    (the 16-31 px digits of ``digits``: two to four cells at stride 8) are told apart only from
    front-end detail; docs/digits.md has the measurements behind these widths.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        channels: width of the context module.
        rates: dilation of each 3x3 context layer.
        variant: ``"basic"`` or ``"large"`` context module.
        norm: BatchNorm inside the context module.
        residual: residual context layers (basic variant only).
        decoder: fuse stride-4 front-end features before the classifier; without it the
            classifier reads the stride-8 context output directly.
        skip_channels, fuse_channels: decoder widths; default C/2 and 2C/3 (runs saved with
            config version 1 used C/4 and C/2: :func:`narrow_decoder_widths`).

    Shape:
        ``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        *,
        channels: int = 96,
        rates: Sequence[int] = CONTEXT_RATES,
        variant: str = "basic",
        norm: bool = True,
        residual: bool = True,
        decoder: bool = True,
        skip_channels: int | None = None,
        fuse_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_int(in_channels, "in_channels", low=1)
        check_int(channels, "channels", low=1)
        for name, flag in (("norm", norm), ("residual", residual), ("decoder", decoder)):
            check_bool(flag, name)
        first, second = max(1, channels // 3), max(1, 2 * channels // 3)
        self.stem = nn.Sequential(  # stride 4, field 15: the decoder's skip
            ConvBNReLU(in_channels, first, 3, stride=2),
            ConvBNReLU(first, second, 3, stride=2),
            ConvBNReLU(second, second, 3),
        )
        self.down = ConvBNReLU(second, channels, 3, stride=2)
        self.context = ContextModule(channels, variant, rates=rates, norm=norm, residual=residual)
        if decoder:
            skip = max(1, channels // 2) if skip_channels is None else \
                check_int(skip_channels, "skip_channels", low=1)
            fused = max(1, 2 * channels // 3) if fuse_channels is None else \
                check_int(fuse_channels, "fuse_channels", low=1)
            self.skip = ConvBNReLU(second, skip, 1)
            self.fuse = ConvBNReLU(channels + skip, fused, 3)
            self.classifier = nn.Conv2d(fused, num_classes, 1)
        else:
            self.skip = self.fuse = None
            self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.output_stride = 8

    @property
    def receptive_field(self) -> int:
        """Field of the context output in input pixels: ``23 + 8 * (context field - 1)``."""
        return FRONT_END_FIELD + self.output_stride * (self.context.receptive_field - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = self.stem(x)  # (N, 2C/3, H/4, W/4)
        features = self.context(self.down(low))  # (N, C, H/8, W/8)
        if self.fuse is not None:
            features = self.fuse(torch.cat([resize_to(features, low.shape[-2:]), self.skip(low)], dim=1))
        return resize_to(self.classifier(features), size)


@register_model(task="segmentation")
def context_net(
    *,
    num_classes: int,
    in_channels: int = 3,
    rates: Sequence[int] = CONTEXT_RATES,
    variant: str = "basic",
    norm: bool = True,
    residual: bool = True,
    decoder: bool = True,
    width_multiplier: float = 1.0,
    skip_channels: int | None = None,
    fuse_channels: int | None = None,
) -> ContextNet:
    """Stride-8 front end + context module (rates 1,1,2,4,8,16,1) + stride-4 decoder: 551-pixel field.

    Args:
        num_classes: output channels (11 for ``digits``: ten digits and the background).
        in_channels: input channels.
        rates: dilation of each 3x3 context layer.
        variant: ``"basic"`` or ``"large"`` context module.
        norm: BatchNorm inside the context module.
        residual: residual context layers; ignored for the large variant, whose widths differ.
        decoder: fuse stride-4 front-end features before the classifier.
        width_multiplier: scales the width C = 96 and every width that follows it.
        skip_channels, fuse_channels: decoder widths; default C/2 and 2C/3.
    """
    check_bool(residual, "residual")  # before it is combined with the variant below
    return ContextNet(num_classes, in_channels, channels=scaled(CHANNELS, width_multiplier), rates=rates,
                      variant=variant, norm=norm, residual=residual and variant == "basic", decoder=decoder,
                      skip_channels=skip_channels, fuse_channels=fuse_channels)


@register_model(task="segmentation")
def plain_net(*, num_classes: int, in_channels: int = 3, norm: bool = True, width_multiplier: float = 1.0,
              skip_channels: int | None = None, fuse_channels: int | None = None) -> ContextNet:
    """``context_net`` with every dilation 1: same parameters, 135-pixel field; arguments as :func:`context_net`."""
    return context_net(num_classes=num_classes, in_channels=in_channels, rates=PLAIN_RATES, norm=norm,
                       width_multiplier=width_multiplier, skip_channels=skip_channels, fuse_channels=fuse_channels)


@register_model(task="segmentation")
def hdc_net(*, num_classes: int, in_channels: int = 3, norm: bool = True, width_multiplier: float = 1.0,
            skip_channels: int | None = None, fuse_channels: int | None = None) -> ContextNet:
    """``context_net`` with hybrid dilated rates 1,2,5,9,2,5,9: same parameters and field, no gridding;
    arguments as :func:`context_net`."""
    return context_net(num_classes=num_classes, in_channels=in_channels, rates=HDC_RATES, norm=norm,
                       width_multiplier=width_multiplier, skip_channels=skip_channels, fuse_channels=fuse_channels)


@register_model(task="segmentation")
def gridding_net(*, num_classes: int, in_channels: int = 3, norm: bool = True, width_multiplier: float = 1.0,
                 skip_channels: int | None = None, fuse_channels: int | None = None) -> ContextNet:
    """``context_net`` with rates 3,3,3,6,6,6,6: same parameters and field, but gridded; arguments as
    :func:`context_net`."""
    return context_net(num_classes=num_classes, in_channels=in_channels, rates=GRIDDING_RATES, norm=norm,
                       width_multiplier=width_multiplier, skip_channels=skip_channels, fuse_channels=fuse_channels)


CONTEXT_FAMILY = tuple(builder.__name__ for builder in (context_net, plain_net, hdc_net, gridding_net))


def narrow_decoder_widths(model: str, model_kwargs: Mapping[str, Any]) -> dict[str, int]:
    """The narrower decoder widths (skip C/4, fuse C/2) of runs saved with config version 1.

    Such runs trained a context-family model (``context_net``, ``plain_net``, ``hdc_net``,
    ``gridding_net``) whose decoder was narrower than today's default (C/2, 2C/3); passing these
    widths to the builder rebuilds the model they saved.

    Args:
        model: a registered model name.
        model_kwargs: the builder arguments the run was saved with.

    Returns:
        ``{"skip_channels": ..., "fuse_channels": ...}`` for a context-family model with its
        decoder, else ``{}``.
    """
    if model not in CONTEXT_FAMILY or not model_kwargs.get("decoder", True):
        return {}
    channels = scaled(CHANNELS, model_kwargs.get("width_multiplier", 1.0))
    return {"skip_channels": max(1, channels // 4), "fuse_channels": max(1, channels // 2)}
