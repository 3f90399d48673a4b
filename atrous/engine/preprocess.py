"""Input normalisation shared by training, evaluation and prediction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from atrous._checks import finite_numbers

# ImageNet statistics: the default of atrous runs, stored with each checkpoint so prediction uses what
# training used, and what torchvision's and timm's released checkpoints expect on RGB in [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """``(N, 3, H, W)`` in [0, 1] -> ``(images - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def check_stats(mean: Sequence[float], std: Sequence[float], *, channels: int = 3,
                names: tuple[str, str] = ("mean", "std")) -> tuple[list[float], list[float]]:
    """``mean`` and ``std`` as lists of ``channels`` finite numbers (``std`` > 0); errors name ``names``."""
    result = []
    for values, name, low in ((mean, names[0], -math.inf), (std, names[1], 0.0)):
        what = "finite numbers" if low == -math.inf else "finite numbers > 0"
        if not finite_numbers(values, above=low, length=channels):
            raise ValueError(f"{name} must be {channels} {what} (one per input channel), got {values!r}")
        result.append([float(v) for v in values])
    return result[0], result[1]
