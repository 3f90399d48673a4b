"""The ONNX export's normalisation wrapper: images in [0, 1] in, the model's output out.

Its own module so that ``atrous export --help`` does not import torch.
"""

from __future__ import annotations

import torch
from torch import nn


class Normalized(nn.Module):
    """``model((images - mean) / std)``: images in [0, 1] in, the model's output out.

    Args:
        model: the segmentation model.
        mean, std: per-channel statistics the model was trained with.

    Shape:
        ``(N, C, H, W)`` -> the model's output.
    """

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)
