"""FCN-8s on VGG-16, the baseline the dilation papers compare against.

Long et al. 2015, "Fully convolutional networks for semantic segmentation": class scores from
fc7 (stride 32) are upsampled 2x by a learned deconvolution initialised to bilinear
interpolation, added to scores from pool4, upsampled 2x again, added to scores from pool3,
and upsampled 8x bilinearly. The skip scorers start at zero, so training starts from FCN-32s.
"""

from __future__ import annotations

import torch
from torch import nn

from atrous.models._checks import check_int
from atrous.models._features import FeatureExtractor
from atrous.models._registry import register_model
from atrous.models.segmentation._common import resize_to
from atrous.models.segmentation.vgg import VGG16Trunk


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
        check_int("num_classes", num_classes)
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
def fcn8s_vgg16(*, num_classes: int = 21, in_channels: int = 3, width_multiplier: float = 1.0,
                dropout: float = 0.5) -> FCN8s:
    """FCN-8s on VGG-16 (output stride 32 with pool3/pool4 skips)."""
    return FCN8s(num_classes, in_channels=in_channels, width_multiplier=width_multiplier, dropout=dropout)
