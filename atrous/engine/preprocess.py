"""Input normalisation shared by training, evaluation and prediction."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# ImageNet statistics; stored with each checkpoint so prediction uses what training used.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 1] -> ``(images - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
