"""DeepLab v3 and v3+ on dilated ResNets.

- v3: Chen et al. 2017, "Rethinking atrous convolution for semantic image segmentation":
  backbone at output stride 16 (or 8), ASPP, 1x1 classifier, bilinear upsampling.
- v3+: Chen et al. 2018, "Encoder-decoder with atrous separable convolution for semantic image
  segmentation": the same encoder plus a decoder fed by the stride-4 features.

ASPP rates default to the paper's for the chosen output stride ((6, 12, 18) at 16, doubled at
8); other rates warn (``RateWarning``). See ``atrous.models.segmentation.resnet`` for what
output stride costs in compute and memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.models._checks import check_bool, check_int, check_sequence
from atrous.models._features import FeatureExtractor
from atrous.models._registry import register_model
from atrous.models.segmentation._common import resize_to, scaled
from atrous.models.segmentation.aspp import ASPP, paper_rates
from atrous.models.segmentation.heads import DeepLabV3PlusDecoder
from atrous.models.segmentation.resnet import ResNet, build_resnet


class DeepLabV3(nn.Module):
    """Backbone -> ASPP -> 1x1 classifier -> bilinear upsampling to the input size.

    Args:
        backbone: a module with ``out_channels`` and ``output_stride`` returning its last map.
        num_classes: output channels.
        aspp_channels: ASPP width.
        rates: ASPP rates; default: the paper's for the backbone's output stride.
        separable: depthwise-separable ASPP branches.

    Shape:
        ``(N, C_in, H, W)`` -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        *,
        aspp_channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes)
        self.backbone = backbone
        self.output_stride = backbone.output_stride
        rates = paper_rates(self.output_stride) if rates is None else check_sequence("rates", rates)
        self.aspp = ASPP(backbone.out_channels, aspp_channels, rates, separable=separable,
                         output_stride=self.output_stride)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)  # (N, C, H / OS, W / OS)
        return resize_to(self.classifier(self.aspp(features)), x.shape[-2:])


class DeepLabV3Plus(nn.Module):
    """DeepLab v3 encoder plus the v3+ decoder on the backbone's ``layer1`` (stride 4) features.

    Args:
        backbone: a ``ResNet`` (children run in order; ``layer1`` is stride 4).
        num_classes: output channels.
        aspp_channels: ASPP and decoder width (256 in the paper).
        reduce_channels: low-level channels after reduction (48 in the paper).
        rates: ASPP rates; default: the paper's for the backbone's output stride.
        separable: depthwise-separable ASPP and decoder convs.

    Shape:
        ``(N, C_in, H, W)`` -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        *,
        aspp_channels: int = 256,
        reduce_channels: int = 48,
        rates: Sequence[int] | None = None,
        separable: bool = True,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes)
        self.output_stride = backbone.output_stride
        self.features = FeatureExtractor(backbone, {"layer1": "low", "layer4": "out"})
        rates = paper_rates(self.output_stride) if rates is None else check_sequence("rates", rates)
        self.aspp = ASPP(backbone.out_channels, aspp_channels, rates, separable=separable,
                         output_stride=self.output_stride)
        self.decoder = DeepLabV3PlusDecoder(backbone.low_level_channels, aspp_channels, num_classes,
                                            reduce_channels=reduce_channels, channels=aspp_channels,
                                            separable=separable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)  # low: (N, C_low, H/4, W/4), out: (N, C, H/OS, W/OS)
        logits = self.decoder(features["low"], self.aspp(features["out"]))
        return resize_to(logits, x.shape[-2:])


def _deeplab(
    version: str,
    depth: int,
    *,
    num_classes: int,
    in_channels: int,
    output_stride: int,
    multi_grid: Sequence[int] | None,
    rates: Sequence[int] | None,
    separable: bool,
    width_multiplier: float,
) -> nn.Module:
    check_bool("separable", separable)
    backbone = build_resnet(depth, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                            width_multiplier=width_multiplier)
    width = scaled(256, width_multiplier)
    if version == "v3":
        return DeepLabV3(backbone, num_classes, aspp_channels=width, rates=rates, separable=separable)
    return DeepLabV3Plus(backbone, num_classes, aspp_channels=width, reduce_channels=scaled(48, width_multiplier),
                         rates=rates, separable=separable)


_DOC_ARGS = """

    Args:
        num_classes: output channels (21 for PASCAL VOC).
        in_channels: input channels.
        output_stride: 8, 16 (default, the paper's training setting) or 32.
        multi_grid: unit rates of the last stage, e.g. ``(1, 2, 4)``; ``None`` keeps the fields.
        rates: ASPP rates; default ``(6, 12, 18) * 16 / output_stride``.
        separable: depthwise-separable ASPP (and decoder) convs.
        width_multiplier: scales every width (e.g. 0.0625 for a tiny test model).
"""


def _preset(version: str, depth: int, separable_default: bool):
    def builder(
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
        rates: Sequence[int] | None = None,
        separable: bool = separable_default,
        width_multiplier: float = 1.0,
    ) -> nn.Module:
        return _deeplab(version, depth, num_classes=num_classes, in_channels=in_channels,
                        output_stride=output_stride, multi_grid=multi_grid, rates=rates, separable=separable,
                        width_multiplier=width_multiplier)

    name = "deeplabv3" if version == "v3" else "deeplabv3plus"
    builder.__name__ = builder.__qualname__ = f"{name}_resnet{depth}"
    builder.__doc__ = f"DeepLab {version} on ResNet-{depth}." + _DOC_ARGS
    return register_model(builder, task="segmentation")


deeplabv3_resnet18 = _preset("v3", 18, False)
deeplabv3_resnet50 = _preset("v3", 50, False)
deeplabv3_resnet101 = _preset("v3", 101, False)
deeplabv3plus_resnet18 = _preset("v3+", 18, True)
deeplabv3plus_resnet50 = _preset("v3+", 50, True)
