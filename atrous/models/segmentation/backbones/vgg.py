"""VGG-16 trunks for dense prediction: FCN's stride-32 net and two dilated stride-8 front ends.

Simonyan & Zisserman 2015 (VGG-16), with its classifier turned into convolutions:

- ``"fcn"`` (Long et al. 2015, FCN-8s): five 2x2/2 max-pools, fc6 as a 7x7 conv, fc7 as 1x1.
- ``"frontend"`` (Yu & Koltun 2016, the dilation front end): pool4 and pool5 removed, conv5 at
  dilation 2, fc6 a 7x7 conv at dilation 4; output stride 8, field 380 (the stride-32 net's
  404 less the two dropped 2x2 pools). This is exactly what ``make_dilated(fcn_trunk, 8)``
  produces.
- ``"largefov"`` (Chen et al. 2015, DeepLab-LargeFOV): 3x3 max-pools, pool4/pool5 at stride 1,
  conv5 at dilation 2, fc6 a 3x3 conv at rate 12 with 1024 channels, fc7 1024.

Every conv is "same"-padded, so feature maps are ``ceil(n / stride)``; the papers instead pad
the input (by 100 for FCN, by reflection for Yu & Koltun) and crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atrous._checks import check_float, check_int
from atrous.models._registry import register_model
from atrous.models.segmentation._common import scaled
from atrous.ops import DilatedConv2d

STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))  # (convs, width) of conv1 ... conv5
TRUNKS = ("fcn", "frontend", "largefov")


@dataclass(frozen=True)
class VGGConfig:
    """Where the five stages pool and dilate, and the shape of fc6/fc7.

    Attributes:
        pools: per stage, ``"2x2"`` (2x2/2), ``"3x3"`` (3x3/2), ``"3x3s1"`` (3x3/1) or ``None``.
        dilations: dilation of each stage's 3x3 convs.
        fc6_kernel, fc6_dilation, fc_width: fc6 as a conv; fc7 is 1x1, both ``fc_width`` wide.
    """

    pools: tuple[str | None, ...]
    dilations: tuple[int, ...]
    fc6_kernel: int
    fc6_dilation: int
    fc_width: int
    output_stride: int


CONFIGS = {
    "fcn": VGGConfig(("2x2",) * 5, (1,) * 5, 7, 1, 4096, 32),
    "frontend": VGGConfig(("2x2",) * 3 + (None, None), (1, 1, 1, 1, 2), 7, 4, 4096, 8),
    "largefov": VGGConfig(("3x3",) * 3 + ("3x3s1",) * 2, (1, 1, 1, 1, 2), 3, 12, 1024, 8),
}


def _pool(kind: str | None) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "2x2":
        return nn.MaxPool2d(2, stride=2, ceil_mode=True)
    return nn.MaxPool2d(3, stride=2 if kind == "3x3" else 1, padding=1)


class VGG16Trunk(nn.Module):
    """VGG-16 convolutional trunk; returns fc7. Children run in order (``conv1``, ``pool1``, ..., ``fc7``).

    Args:
        trunk: ``"fcn"``, ``"frontend"`` or ``"largefov"``.
        in_channels: input channels.
        width_multiplier: scales every width.
        dropout: dropout after fc6 and fc7 (0.5 in the papers).

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, ceil(H / OS), ceil(W / OS))`` with OS 32
        (``"fcn"``) or 8.
    """

    def __init__(self, trunk: str = "frontend", *, in_channels: int = 3, width_multiplier: float = 1.0,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if trunk not in CONFIGS:
            raise ValueError(f"trunk must be one of {TRUNKS}, got {trunk!r}")
        check_int(in_channels, "in_channels", low=1)
        check_float(dropout, "dropout", low=0.0, high=1.0)
        config = CONFIGS[trunk]
        self.output_stride = config.output_stride
        channels = in_channels
        self.stage_channels = []
        for index, ((convs, width), pool, dilation) in enumerate(zip(STAGES, config.pools, config.dilations)):
            width = scaled(width, width_multiplier)
            layers: list[nn.Module] = []
            for _ in range(convs):
                layers += [DilatedConv2d(channels, width, 3, dilation=dilation), nn.ReLU(inplace=True)]
                channels = width
            self.add_module(f"conv{index + 1}", nn.Sequential(*layers))
            self.add_module(f"pool{index + 1}", _pool(pool))
            self.stage_channels.append(width)
        fc_width = scaled(config.fc_width, width_multiplier)
        self.fc6 = nn.Sequential(
            DilatedConv2d(channels, fc_width, config.fc6_kernel, dilation=config.fc6_dilation),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.fc7 = nn.Sequential(nn.Conv2d(fc_width, fc_width, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.out_channels = fc_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


@register_model(task="backbone")
def vgg16_dilation_frontend(*, in_channels: int = 3, width_multiplier: float = 1.0,
                            dropout: float = 0.5) -> VGG16Trunk:
    """Yu & Koltun's VGG-16 front end: output stride 8, conv5 at dilation 2, fc6 7x7 at dilation 4."""
    return VGG16Trunk("frontend", in_channels=in_channels, width_multiplier=width_multiplier, dropout=dropout)
