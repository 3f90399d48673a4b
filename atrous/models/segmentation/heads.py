"""Segmentation heads: feature map(s) in, class logits out at the feature resolution.

- ``FCNHead``: Long et al. 2015, "Fully convolutional networks for semantic segmentation"; a
  3x3 conv-BN-ReLU and a 1x1 classifier. DeepLab v3 uses it as the auxiliary head on ``layer3``
  (as torchvision's ``aux_loss=True`` and mmsegmentation's ``auxiliary_head`` do).
- ``DeepLabHead``: Chen et al. 2017, "Rethinking atrous convolution for semantic image
  segmentation" (DeepLab v3): ASPP then a 1x1 classifier.
- ``DeepLabV3PlusDecoder``: Chen et al. 2018, "Encoder-decoder with atrous separable
  convolution" (DeepLab v3+): upsample the ASPP output 4x, concatenate 48 reduced low-level
  channels, refine with two 3x3 convs.

``FCNHead`` and ``DeepLabHead`` number their layers as torchvision's heads of the same names, so
torchvision's ``classifier`` and ``aux_classifier`` weights load by key (ASPP's pooling branch
aside unless ``pooling_norm=True``, see :class:`~atrous.models.segmentation.blocks.ASPPPooling`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from atrous._checks import check_bool, check_float, check_int
from atrous.models.segmentation._common import resize_to
from atrous.models.segmentation.blocks import ASPP, PAPER_RATES, ConvBNReLU, SeparableConv2d
from atrous.ops import DilatedConv2d


class FCNHead(nn.Sequential):
    """3x3 conv (``in_channels / 4`` wide) -> BN -> ReLU -> dropout -> 1x1 classifier.

    Args:
        in_channels: channels of the feature map.
        num_classes: output channels.
        hidden_channels: width of the 3x3 layer; default ``in_channels // 4`` (torchvision's).
        dropout: dropout before the classifier.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, num_classes, H, W)``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, hidden_channels: int | None = None, dropout: float = 0.1
    ) -> None:
        check_int(in_channels, "in_channels", low=1)
        check_int(num_classes, "num_classes", low=1)
        hidden = max(1, in_channels // 4) if hidden_channels is None else \
            check_int(hidden_channels, "hidden_channels", low=1)
        check_float(dropout, "dropout", low=0.0, high=1.0)
        super().__init__(
            DilatedConv2d(in_channels, hidden, 3, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )


class DeepLabHead(nn.Sequential):
    """ASPP -> (optional 3x3 conv-BN-ReLU) -> 1x1 classifier: DeepLab v3's head.

    The paper classifies the ASPP output directly; torchvision's and mmsegmentation's heads put a
    3x3 conv-BN-ReLU in between (``extra_conv=True``). The layers keep torchvision's indices either
    way (``0`` ASPP, ``1``-``3`` the extra conv, ``4`` the classifier), so a head without the extra
    conv has no ``1``-``3`` and ``head[1]`` is its classifier.

    Args:
        in_channels: channels of the backbone feature map.
        num_classes: output channels.
        channels: ASPP width (256 in the paper).
        rates: ASPP rates.
        separable: depthwise-separable ASPP branches.
        dropout: dropout after the ASPP projection.
        output_stride: if given, ASPP warns when ``rates`` differ from the paper's for it.
        extra_conv: the 3x3 conv-BN-ReLU of torchvision's head.
        pooling_norm: ASPP's image-pooling branch with torchvision's BatchNorm (no training at
            batch size 1); with ``extra_conv=True`` and ``dropout=0.5`` the head is torchvision's.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 256,
        rates: Sequence[int] = PAPER_RATES,
        separable: bool = False,
        dropout: float = 0.1,
        output_stride: int | None = None,
        extra_conv: bool = False,
        pooling_norm: bool = False,
    ) -> None:
        check_int(num_classes, "num_classes", low=1)
        check_bool(extra_conv, "extra_conv")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["0"] = ASPP(in_channels, channels, rates, separable=separable, dropout=dropout,
                           output_stride=output_stride, pooling_norm=pooling_norm)
        if extra_conv:
            layers["1"] = DilatedConv2d(channels, channels, 3, bias=False)
            layers["2"] = nn.BatchNorm2d(channels)
            layers["3"] = nn.ReLU(inplace=True)
        layers["4"] = nn.Conv2d(channels, num_classes, 1)
        super().__init__(layers)


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
            check_int(value, name, low=1)
        check_bool(separable, "separable")
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
