"""Stride-8 VGG-16 segmentation nets: Dilation8 (front end + context module) and DeepLab-LargeFOV.

- Dilation8: Yu & Koltun 2016, "Multi-scale context aggregation by dilated convolutions".
  The front end predicts class scores at stride 8; the context module (C = number of classes)
  refines them; bilinear upsampling returns to input size. The paper reports 67.6% mean IoU on
  the PASCAL VOC 2012 test set with the large context module.
- DeepLab-LargeFOV: Chen et al. 2015, "Semantic image segmentation with deep convolutional
  nets and fully connected CRFs" (DeepLab v1): fc6 a 3x3 conv at rate 12 (without the CRF).
"""

from __future__ import annotations

import torch
from torch import nn

from atrous._checks import check_int
from atrous.models._registry import register_model
from atrous.models.segmentation._common import resize_to
from atrous.models.segmentation.backbones import VGG16Trunk
from atrous.models.segmentation.blocks import ContextModule


class DilationNet(nn.Module):
    """VGG-16 stride-8 trunk -> 1x1 class scores -> optional context module -> bilinear upsampling.

    Args:
        trunk: ``"frontend"`` (Yu & Koltun) or ``"largefov"`` (DeepLab v1).
        num_classes: output channels (and the context module's width C).
        in_channels: input channels.
        context: ``"basic"``, ``"large"`` or ``None`` (front end alone).
        width_multiplier: scales the trunk's widths.
        dropout: dropout after fc6 and fc7.

    Shape:
        ``(N, in_channels, H, W)`` -> logits ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        trunk: str,
        num_classes: int,
        *,
        in_channels: int = 3,
        context: str | None = "large",
        width_multiplier: float = 1.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", low=1)
        if context not in (None, "basic", "large"):
            raise ValueError(f"context must be 'basic', 'large' or None (front end alone), got {context!r}")
        self.trunk = VGG16Trunk(trunk, in_channels=in_channels, width_multiplier=width_multiplier, dropout=dropout)
        self.output_stride = self.trunk.output_stride
        self.score = nn.Conv2d(self.trunk.out_channels, num_classes, 1)
        self.context = nn.Identity() if context is None else ContextModule(num_classes, context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(self.trunk(x))  # (N, K, H/8, W/8)
        return resize_to(self.context(scores), x.shape[-2:])


@register_model(task="segmentation")
def dilation8_vgg16(*, num_classes: int, in_channels: int = 3, context: str | None = "large",
                    width_multiplier: float = 1.0, dropout: float = 0.5) -> DilationNet:
    """Yu & Koltun's Dilation8: VGG-16 front end plus a (large by default) context module.

    Args:
        num_classes: output channels and the context module's width (21 for PASCAL VOC).
        in_channels: input channels.
        context: ``"basic"``, ``"large"`` or ``None`` (the front end alone).
        width_multiplier: scales the trunk's widths.
        dropout: dropout after fc6 and fc7.
    """
    return DilationNet("frontend", num_classes, in_channels=in_channels, context=context,
                       width_multiplier=width_multiplier, dropout=dropout)


@register_model(task="segmentation")
def deeplabv1_largefov_vgg16(*, num_classes: int, in_channels: int = 3, width_multiplier: float = 1.0,
                             dropout: float = 0.5) -> DilationNet:
    """DeepLab-LargeFOV (v1, no CRF): VGG-16 at output stride 8, fc6 3x3 at rate 12, 1024 wide;
    arguments as :func:`dilation8_vgg16`, without ``context``."""
    return DilationNet("largefov", num_classes, in_channels=in_channels, context=None,
                       width_multiplier=width_multiplier, dropout=dropout)
