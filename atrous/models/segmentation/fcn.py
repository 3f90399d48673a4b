"""FCNs: FCN-8s on VGG-16, the baseline the dilation papers compare against, and torchvision's FCN
on a dilated ResNet.

- FCN-8s: Long et al. 2015, "Fully convolutional networks for semantic segmentation": class scores
  from fc7 (stride 32) are upsampled 2x by a learned deconvolution initialised to bilinear
  interpolation, added to scores from pool4, upsampled 2x again, added to scores from pool3, and
  upsampled 8x bilinearly. The skip scorers start at zero, so training starts from FCN-32s.
- FCN-ResNet (torchvision's ``fcn_resnet50/101``): the FCN head (a 3x3 conv-BN-ReLU and a 1x1
  classifier) on a ResNet dilated to output stride 8 as DeepLab does (Chen et al. 2017), with an
  optional auxiliary head on ``layer3``; laid out as torchvision's, so its checkpoints load by key.
"""

from __future__ import annotations

import torch
from torch import nn

from collections.abc import Sequence

from atrous._checks import check_bool, check_int
from atrous.models._features import FeatureExtractor
from atrous.models._registry import register_model
from atrous.models.segmentation._common import classify, resize_to
from atrous.models.segmentation.backbones import ResNet, VGG16Trunk, build_resnet
from atrous.models.segmentation.heads import FCNHead


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """``(channels, channels, k, k)`` weight making ``ConvTranspose2d`` a per-channel bilinear upsampler."""
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float32) - centre).abs() / factor  # (k,)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = taps[:, None] * taps[None, :]
    return weight


def _upsample2x(channels: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 4))
    return up


class FCN8s(nn.Module):
    """VGG-16 FCN with pool3 and pool4 skips.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        width_multiplier: scales the trunk's widths.
        dropout: dropout after fc6 and fc7.

    Shape:
        ``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(self, num_classes: int, *, in_channels: int = 3, width_multiplier: float = 1.0,
                 dropout: float = 0.5) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        trunk = VGG16Trunk("fcn", in_channels=in_channels, width_multiplier=width_multiplier, dropout=dropout)
        self.features = FeatureExtractor(trunk, {"pool3": "pool3", "pool4": "pool4", "fc7": "fc7"})
        self.score_fr = nn.Conv2d(trunk.out_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(trunk.stage_channels[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(trunk.stage_channels[2], num_classes, 1)
        for skip in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(skip.weight)
            nn.init.zeros_(skip.bias)
        self.upscore2 = _upsample2x(num_classes)
        self.upscore_pool4 = _upsample2x(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)  # pool3: stride 8, pool4: stride 16, fc7: stride 32
        score = self.score_pool4(features["pool4"])
        score = score + resize_to(self.upscore2(self.score_fr(features["fc7"])), score.shape[-2:])
        skip = self.score_pool3(features["pool3"])
        score = skip + resize_to(self.upscore_pool4(score), skip.shape[-2:])
        return resize_to(score, x.shape[-2:])


@register_model(task="segmentation")
def fcn8s_vgg16(*, num_classes: int, in_channels: int = 3, width_multiplier: float = 1.0,
                dropout: float = 0.5) -> FCN8s:
    """FCN-8s on VGG-16 (output stride 32 with pool3/pool4 skips).

    Args:
        num_classes: output channels (21 for PASCAL VOC).
        in_channels: input channels.
        width_multiplier: scales the trunk's widths.
        dropout: dropout after fc6 and fc7.
    """
    return FCN8s(num_classes, in_channels=in_channels, width_multiplier=width_multiplier, dropout=dropout)


class FCNResNet(nn.Module):
    """Dilated ResNet -> ``FCNHead`` -> bilinear upsampling to the input size (torchvision's FCN).

    Args:
        backbone: a ``ResNet`` (children run in order; ``layer3`` feeds the auxiliary head).
        num_classes: output channels.
        aux_loss: add ``aux_classifier``, an ``FCNHead`` on ``layer3`` (used in training mode only).

    Shape:
        ``(N, C_in, H, W)`` -> logits ``(N, num_classes, H, W)``; in training mode with
        ``aux_loss``, ``{"out": logits, "aux": aux_logits}`` of that shape each.
    """

    def __init__(self, backbone: ResNet, num_classes: int, *, aux_loss: bool = False) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        check_bool(aux_loss, "aux_loss")
        self.backbone = backbone
        self.output_stride = backbone.output_stride
        self.classifier = FCNHead(backbone.out_channels, num_classes)
        self.aux_classifier = FCNHead(backbone.stage_channels[2], num_classes) if aux_loss else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        return classify(self.backbone, self.classifier, self.aux_classifier, x, training=self.training)


def _fcn_resnet(depth: int, *, num_classes: int, in_channels: int, output_stride: int,
                multi_grid: Sequence[int] | None, aux_loss: bool, width_multiplier: float) -> FCNResNet:
    backbone = build_resnet(depth, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                            width_multiplier=width_multiplier)
    return FCNResNet(backbone, num_classes, aux_loss=aux_loss)


@register_model(task="segmentation")
def fcn_resnet50(*, num_classes: int, in_channels: int = 3, output_stride: int = 8,
                 multi_grid: Sequence[int] | None = None, aux_loss: bool = False,
                 width_multiplier: float = 1.0) -> FCNResNet:
    """FCN on ResNet-50 at output stride 8, torchvision's ``fcn_resnet50``.

    Args:
        num_classes: output channels (21 for PASCAL VOC).
        in_channels: input channels.
        output_stride: 8 (default, torchvision's), 16 or 32.
        multi_grid: unit rates of the last stage, e.g. ``(1, 2, 4)``; ``None`` keeps the fields.
        aux_loss: an auxiliary ``FCNHead`` on ``layer3``; in training mode the model then returns
            ``{"out": logits, "aux": aux_logits}``.
        width_multiplier: scales every width (e.g. 0.0625 for a tiny test model).
    """
    return _fcn_resnet(50, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                       multi_grid=multi_grid, aux_loss=aux_loss, width_multiplier=width_multiplier)


@register_model(task="segmentation")
def fcn_resnet101(*, num_classes: int, in_channels: int = 3, output_stride: int = 8,
                  multi_grid: Sequence[int] | None = None, aux_loss: bool = False,
                  width_multiplier: float = 1.0) -> FCNResNet:
    """FCN on ResNet-101 at output stride 8, torchvision's ``fcn_resnet101``; arguments as
    :func:`fcn_resnet50`."""
    return _fcn_resnet(101, num_classes=num_classes, in_channels=in_channels, output_stride=output_stride,
                       multi_grid=multi_grid, aux_loss=aux_loss, width_multiplier=width_multiplier)
