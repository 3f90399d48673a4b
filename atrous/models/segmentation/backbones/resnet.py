"""ResNet-18/34/50/101 backbones with an output stride of 8, 16 or 32 (DeepLab's dilated ResNet).

He et al. 2016, "Deep residual learning for image recognition", in the v1.5 layout (7x7/2 stem,
3x3/2 max-pool, the stride on the 3x3 conv of a stage's first block); module names match
torchvision's, so its ``state_dict`` loads (without ``fc``). Chen et al. 2017 (DeepLab v3,
"Rethinking atrous convolution") trade stride for dilation in the last stages and add
"multi-grid" unit rates to the last stage.

Stride becomes dilation without changing any receptive field: the 3x3 conv that loses its
stride keeps the previous dilation; the convs after it read at the new one. ResNet-50's field
is 427 pixels at output stride 32, 16 and 8 alike.

Output stride vs cost. Halving the output stride quadruples the area of every stage it
touches: OS 16 runs ``layer4`` on 4x the pixels of OS 32, OS 8 also runs ``layer3`` on 4x and
``layer4`` on 16x, and those stages' activations grow alike (DeepLab v3 trains at OS 16 and
evaluates at OS 8 for this reason). ResNet-50 on a 224x224 input, by ``atrous.receptive_field``:
4.09 GMACs at OS 32, 6.21 at OS 16, 19.08 at OS 8 (field 427 in all three); the conv and
BatchNorm outputs a training step keeps for backward take 85, 97 and 192 MiB per image (fp32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from atrous._checks import check_int, check_rates, is_int
from atrous.models._registry import register_model
from atrous.models.segmentation._common import scaled
from atrous.ops import DilatedConv2d


OUTPUT_STRIDES = (8, 16, 32)


def _check_output_stride(output_stride: object) -> int:
    if not is_int(output_stride):
        raise TypeError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    return output_stride


def _conv3x3(in_channels: int, out_channels: int, *, stride: int, dilation: int) -> DilatedConv2d:
    # Symmetric padding d * (k - 1) / 2 as torchvision pads, so its weights see the same alignment.
    padding = "same" if stride == 1 else dilation
    return DilatedConv2d(in_channels, out_channels, 3, stride=stride, padding=padding, dilation=dilation, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; ``dilations[0]`` on the (strided) first, ``dilations[1]`` on the second.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, channels, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1, dilations: tuple[int, int] = (1, 1)):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride=stride, dilation=dilations[0])
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride=1, dilation=dilations[1])
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, at ``dilations[0]``) -> 1x1 with a residual; ``dilations[1]`` is unused.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, 4 * channels, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1, dilations: tuple[int, int] = (1, 1)):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride=stride, dilation=dilations[0])
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class ResNetConfig:
    """Depth preset plus the dilation settings.

    Attributes:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        output_stride: 8, 16 or 32.
        multi_grid: unit rates for the last stage's blocks (DeepLab v3), repeated cyclically;
            ``None`` keeps every receptive field as at output stride 32.
        base_width: channels of the stem and first stage (64 in the paper).
        in_channels: input channels.
    """

    block: type[nn.Module]
    layers: tuple[int, int, int, int]
    output_stride: int = 32
    multi_grid: tuple[int, ...] | None = None
    base_width: int = 64
    in_channels: int = 3


def stage_plan(config: ResNetConfig) -> list[tuple[int, list[tuple[int, int]]]]:
    """(stride, [(first dilation, second dilation) per block]) for each of the four stages."""
    plan, rate, current = [], 1, 4
    for index, (stride, blocks) in enumerate(zip((1, 2, 2, 2), config.layers)):
        previous = rate
        if current * stride > config.output_stride:
            rate, stride = rate * stride, 1
        else:
            current *= stride
        dilations = [(previous, rate)] + [(rate, rate)] * (blocks - 1)
        if index == 3 and config.multi_grid is not None:
            grid = config.multi_grid
            dilations = [(rate * grid[i % len(grid)],) * 2 for i in range(blocks)]
        plan.append((stride, dilations))
    return plan


class ResNet(nn.Module):
    """ResNet body without the classifier; returns the ``layer4`` feature map.

    Args:
        config: a ``ResNetConfig``.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, out_channels, ceil(H / OS), ceil(W / OS))``, where
        ``out_channels = 8 * base_width * expansion``. ``stage_channels`` holds the output channels
        of ``layer1`` ... ``layer4`` (``layer1`` at stride 4 feeds DeepLab v3+'s decoder, ``layer3``
        its auxiliary head).
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        _check_output_stride(config.output_stride)
        check_int(config.in_channels, "in_channels", low=1)
        check_int(config.base_width, "base_width", low=1)
        if config.multi_grid is not None:
            check_rates(config.multi_grid, "multi_grid")
        self.config = config
        self.output_stride = config.output_stride
        width = config.base_width
        self.conv1 = nn.Conv2d(config.in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width
        stage_channels = []
        for index, (stride, dilations) in enumerate(stage_plan(config)):
            channels = width * 2**index
            blocks = []
            for j, block_dilations in enumerate(dilations):
                blocks.append(
                    config.block(in_channels, channels, stride=stride if j == 0 else 1, dilations=block_dilations)
                )
                in_channels = channels * config.block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            stage_channels.append(in_channels)
        self.stage_channels = tuple(stage_channels)
        self.out_channels = in_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


_DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def build_resnet(
    depth: int,
    *,
    output_stride: int = 32,
    multi_grid: Sequence[int] | None = None,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
) -> ResNet:
    """ResNet-``depth`` backbone; ``width_multiplier`` scales every width (0.0625 for tests)."""
    if depth not in _DEPTHS:
        raise ValueError(f"depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
    block, layers = _DEPTHS[depth]
    return ResNet(
        ResNetConfig(
            block,
            layers,
            output_stride=output_stride,
            multi_grid=None if multi_grid is None else check_rates(multi_grid, "multi_grid"),
            base_width=scaled(64, width_multiplier),
            in_channels=in_channels,
        )
    )


@register_model(task="backbone")
def resnet18(*, output_stride: int = 32, multi_grid: Sequence[int] | None = None, in_channels: int = 3,
             width_multiplier: float = 1.0) -> ResNet:
    """ResNet-18 backbone (512 x ``width_multiplier`` output channels)."""
    return build_resnet(18, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                        width_multiplier=width_multiplier)


@register_model(task="backbone")
def resnet34(*, output_stride: int = 32, multi_grid: Sequence[int] | None = None, in_channels: int = 3,
             width_multiplier: float = 1.0) -> ResNet:
    """ResNet-34 backbone (512 x ``width_multiplier`` output channels)."""
    return build_resnet(34, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                        width_multiplier=width_multiplier)


@register_model(task="backbone")
def resnet50(*, output_stride: int = 32, multi_grid: Sequence[int] | None = None, in_channels: int = 3,
             width_multiplier: float = 1.0) -> ResNet:
    """ResNet-50 backbone (2048 x ``width_multiplier`` output channels)."""
    return build_resnet(50, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                        width_multiplier=width_multiplier)


@register_model(task="backbone")
def resnet101(*, output_stride: int = 32, multi_grid: Sequence[int] | None = None, in_channels: int = 3,
              width_multiplier: float = 1.0) -> ResNet:
    """ResNet-101 backbone (2048 x ``width_multiplier`` output channels)."""
    return build_resnet(101, output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                        width_multiplier=width_multiplier)
