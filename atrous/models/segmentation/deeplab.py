"""DeepLab v3 and v3+ on dilated ResNets.

- v3: Chen et al. 2017, "Rethinking atrous convolution for semantic image segmentation":
  backbone at output stride 16 (or 8), ASPP, 1x1 classifier, bilinear upsampling.
- v3+: Chen et al. 2018, "Encoder-decoder with atrous separable convolution for semantic image
  segmentation": the same encoder plus a decoder fed by the stride-4 features.

ASPP rates default to the paper's for the chosen output stride ((6, 12, 18) at 16, doubled at
8); other rates warn (``RateWarning``). See ``atrous.models.segmentation.backbones.resnet`` for
what output stride costs in compute and memory.

``aux_loss=True`` adds an ``FCNHead`` on ``layer3`` as a second, auxiliary classifier for
training (torchvision's ``aux_loss``, mmsegmentation's ``auxiliary_head``). In training mode such a
model returns ``{"out": logits, "aux": aux_logits}``, both at the input size, and the caller adds
the auxiliary loss (torchvision's reference weighs it 0.5, mmsegmentation 0.4); in eval mode it
skips the auxiliary head and returns the logits tensor, as a model without it always does. The
v3 model's ``backbone``, ``classifier`` and ``aux_classifier`` are laid out as torchvision's
``deeplabv3_resnet50/101``; ``head="torchvision"`` builds torchvision's head itself (a 3x3
conv-BN-ReLU after ASPP, BatchNorm in the image-pooling branch, dropout 0.5), into which
torchvision's checkpoints load key for key (``atrous.models.load_weights``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous._checks import check_bool, check_int, check_rates
from atrous.models._features import FeatureExtractor
from atrous.models._registry import register_model
from atrous.models.segmentation._common import AUX_LAYER, classify, resize_to, scaled
from atrous.models.segmentation.backbones import ResNet, build_resnet
from atrous.models.segmentation.blocks import ASPP, paper_rates
from atrous.models.segmentation.heads import DeepLabHead, DeepLabV3PlusDecoder, FCNHead

HEADS = ("paper", "torchvision")


class DeepLabV3(nn.Module):
    """Backbone -> ASPP -> 1x1 classifier -> bilinear upsampling to the input size.

    Args:
        backbone: a ``ResNet`` (children run in order; ``layer3`` feeds the auxiliary head).
        num_classes: output channels.
        aspp_channels: ASPP width.
        rates: ASPP rates; default: the paper's for the backbone's output stride.
        separable: depthwise-separable ASPP branches.
        aux_loss: add ``aux_classifier``, an ``FCNHead`` on ``layer3`` (used in training mode only).
        extra_conv: the 3x3 conv-BN-ReLU torchvision's head has before its classifier (see
            :class:`~atrous.models.segmentation.heads.DeepLabHead`).
        pooling_norm: BatchNorm in ASPP's image-pooling branch, as torchvision's (batch size >= 2 to train).
        dropout: dropout after the ASPP projection (0.1; torchvision's is 0.5).

    Shape:
        ``(N, C_in, H, W)`` -> logits ``(N, num_classes, H, W)``; in training mode with
        ``aux_loss``, ``{"out": logits, "aux": aux_logits}`` of that shape each.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        *,
        aspp_channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        aux_loss: bool = False,
        extra_conv: bool = False,
        pooling_norm: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_bool(aux_loss, "aux_loss")
        self.backbone = backbone
        self.output_stride = backbone.output_stride
        rates = paper_rates(self.output_stride) if rates is None else check_rates(rates)
        self.classifier = DeepLabHead(backbone.out_channels, num_classes, channels=aspp_channels, rates=rates,
                                      separable=separable, dropout=dropout, output_stride=self.output_stride,
                                      extra_conv=extra_conv, pooling_norm=pooling_norm)
        self.aux_classifier = FCNHead(backbone.stage_channels[2], num_classes) if aux_loss else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        return classify(self.backbone, self.classifier, self.aux_classifier, x, training=self.training)


class DeepLabV3Plus(nn.Module):
    """DeepLab v3 encoder plus the v3+ decoder on the backbone's ``layer1`` (stride 4) features.

    Args:
        backbone: a ``ResNet`` (children run in order; ``layer1`` is stride 4).
        num_classes: output channels.
        aspp_channels: ASPP and decoder width (256 in the paper).
        reduce_channels: low-level channels after reduction (48 in the paper).
        rates: ASPP rates; default: the paper's for the backbone's output stride.
        separable: depthwise-separable ASPP and decoder convs.
        aux_loss: add ``aux_classifier``, an ``FCNHead`` on ``layer3`` (used in training mode only).

    Shape:
        ``(N, C_in, H, W)`` -> logits ``(N, num_classes, H, W)``; in training mode with
        ``aux_loss``, ``{"out": logits, "aux": aux_logits}`` of that shape each.
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
        aux_loss: bool = False,
    ) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_bool(aux_loss, "aux_loss")
        self.output_stride = backbone.output_stride
        layers = {"layer1": "low", "layer4": "out"}
        if aux_loss:
            layers = {"layer1": "low", AUX_LAYER: "aux", "layer4": "out"}
        self.features = FeatureExtractor(backbone, layers)
        rates = paper_rates(self.output_stride) if rates is None else check_rates(rates)
        self.aspp = ASPP(backbone.out_channels, aspp_channels, rates, separable=separable,
                         output_stride=self.output_stride)
        self.decoder = DeepLabV3PlusDecoder(backbone.stage_channels[0], aspp_channels, num_classes,
                                            reduce_channels=reduce_channels, channels=aspp_channels,
                                            separable=separable)
        self.aux_classifier = FCNHead(backbone.stage_channels[2], num_classes) if aux_loss else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.features(x)  # low: (N, C_low, H/4, W/4), out: (N, C, H/OS, W/OS)
        logits = resize_to(self.decoder(features["low"], self.aspp(features["out"])), x.shape[-2:])
        if self.aux_classifier is None or not self.training:
            return logits
        return {"out": logits, "aux": resize_to(self.aux_classifier(features["aux"]), x.shape[-2:])}


def _deeplabv3(depth: int, *, num_classes: int, in_channels: int, output_stride: int,
               multi_grid: Sequence[int] | None, rates: Sequence[int] | None, separable: bool, aux_loss: bool,
               head: str, width_multiplier: float) -> DeepLabV3:
    check_bool(separable, "separable")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS} ('paper': ASPP then the classifier; 'torchvision': "
                         f"torchvision's head, whose checkpoints load by key), got {head!r}")
    backbone = build_resnet(depth, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                            width_multiplier=width_multiplier)
    torchvision = head == "torchvision"
    return DeepLabV3(backbone, num_classes, aspp_channels=scaled(256, width_multiplier), rates=rates,
                     separable=separable, aux_loss=aux_loss, extra_conv=torchvision, pooling_norm=torchvision,
                     dropout=0.5 if torchvision else 0.1)


def _deeplabv3plus(depth: int, *, num_classes: int, in_channels: int, output_stride: int,
                   multi_grid: Sequence[int] | None, rates: Sequence[int] | None, separable: bool, aux_loss: bool,
                   width_multiplier: float) -> DeepLabV3Plus:
    check_bool(separable, "separable")
    backbone = build_resnet(depth, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                            width_multiplier=width_multiplier)
    return DeepLabV3Plus(backbone, num_classes, aspp_channels=scaled(256, width_multiplier),
                         reduce_channels=scaled(48, width_multiplier), rates=rates, separable=separable,
                         aux_loss=aux_loss)


@register_model(task="segmentation")
def deeplabv3_resnet50(
    *,
    num_classes: int,
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    rates: Sequence[int] | None = None,
    separable: bool = False,
    aux_loss: bool = False,
    head: str = "paper",
    width_multiplier: float = 1.0,
) -> DeepLabV3:
    """DeepLab v3 on ResNet-50.

    Args:
        num_classes: output channels (21 for PASCAL VOC).
        in_channels: input channels.
        output_stride: 8, 16 (default, the paper's training setting) or 32.
        multi_grid: unit rates of the last stage, e.g. ``(1, 2, 4)``; ``None`` keeps the fields.
        rates: ASPP rates; default ``(6, 12, 18) * 16 / output_stride``.
        separable: depthwise-separable ASPP convs.
        aux_loss: an auxiliary ``FCNHead`` on ``layer3``; in training mode the model then returns
            ``{"out": logits, "aux": aux_logits}`` (see the module docstring).
        head: ``"paper"`` (ASPP then the 1x1 classifier; trains at batch size 1) or ``"torchvision"``
            (torchvision's head: a 3x3 conv-BN-ReLU after ASPP, BatchNorm in the image-pooling branch,
            dropout 0.5), for torchvision's checkpoints; with ``output_stride=8`` and ``aux_loss=True``
            such a model computes what torchvision's ``deeplabv3_resnet50`` does.
        width_multiplier: scales every width (e.g. 0.0625 for a tiny test model).
    """
    return _deeplabv3(50, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                      multi_grid=multi_grid, rates=rates, separable=separable, aux_loss=aux_loss, head=head,
                      width_multiplier=width_multiplier)


@register_model(task="segmentation")
def deeplabv3_resnet18(
    *,
    num_classes: int,
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    rates: Sequence[int] | None = None,
    separable: bool = False,
    aux_loss: bool = False,
    head: str = "paper",
    width_multiplier: float = 1.0,
) -> DeepLabV3:
    """DeepLab v3 on ResNet-18; arguments as :func:`deeplabv3_resnet50`."""
    return _deeplabv3(18, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                      multi_grid=multi_grid, rates=rates, separable=separable, aux_loss=aux_loss, head=head,
                      width_multiplier=width_multiplier)


@register_model(task="segmentation")
def deeplabv3_resnet101(
    *,
    num_classes: int,
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    rates: Sequence[int] | None = None,
    separable: bool = False,
    aux_loss: bool = False,
    head: str = "paper",
    width_multiplier: float = 1.0,
) -> DeepLabV3:
    """DeepLab v3 on ResNet-101; arguments as :func:`deeplabv3_resnet50`."""
    return _deeplabv3(101, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                      multi_grid=multi_grid, rates=rates, separable=separable, aux_loss=aux_loss, head=head,
                      width_multiplier=width_multiplier)


@register_model(task="segmentation")
def deeplabv3plus_resnet50(
    *,
    num_classes: int,
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    rates: Sequence[int] | None = None,
    separable: bool = True,
    aux_loss: bool = False,
    width_multiplier: float = 1.0,
) -> DeepLabV3Plus:
    """DeepLab v3+ on ResNet-50; arguments as :func:`deeplabv3_resnet50`, with depthwise-separable
    ASPP and decoder convs by default, as in the paper."""
    return _deeplabv3plus(50, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                          multi_grid=multi_grid, rates=rates, separable=separable, aux_loss=aux_loss,
                          width_multiplier=width_multiplier)


@register_model(task="segmentation")
def deeplabv3plus_resnet18(
    *,
    num_classes: int,
    in_channels: int = 3,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    rates: Sequence[int] | None = None,
    separable: bool = True,
    aux_loss: bool = False,
    width_multiplier: float = 1.0,
) -> DeepLabV3Plus:
    """DeepLab v3+ on ResNet-18; arguments as :func:`deeplabv3plus_resnet50`."""
    return _deeplabv3plus(18, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                          multi_grid=multi_grid, rates=rates, separable=separable, aux_loss=aux_loss,
                          width_multiplier=width_multiplier)
