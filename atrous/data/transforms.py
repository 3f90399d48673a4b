"""Joint augmentations for segmentation: the same geometry applied to an image and its mask.

The recipe of DeepLab (Chen et al. 2017, "Rethinking atrous convolution"): random scale 0.5-2.0,
random crop padded with 0 (image) and 255 = ignore (mask), horizontal flip. The image is
resampled bilinearly, the mask with nearest neighbour so labels are never blended. Each
transform takes and returns ``(image (C, H, W) float, mask (H, W) int64)``. Randomness comes from
``generator`` or, by default, torch's global generator (seeded per worker by ``DataLoader``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from atrous._checks import check_float, check_ints
from atrous.data.base import IGNORE_INDEX, JointTransform


def _check_pair(image: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
        raise TypeError(f"image must be a float tensor (C, H, W), got {getattr(image, 'shape', type(image).__name__)}")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise TypeError(f"mask must be an integer tensor (H, W), got {getattr(mask, 'shape', type(mask).__name__)}")
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"image size {tuple(image.shape[-2:])} and mask size {tuple(mask.shape)} differ")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    return check_ints(size, name, length=2, low=1, scalar=True, example="(height, width)")


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize image (bilinear, antialiased when shrinking) and mask (nearest) to ``size = (H, W)``."""
    _check_pair(image, mask)
    shrinking = size[0] < mask.shape[0] or size[1] < mask.shape[1]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrinking)[0]
    # "nearest-exact" samples pixel centres, so it lines up with bilinear's align_corners=False grid
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(mask.dtype)
    return image, mask


class RandomScale:
    """Rescale image and mask by a factor drawn uniformly from ``scale_range``.

    Args:
        scale_range: smallest and largest factor, e.g. ``(0.5, 2.0)``.
        generator: source of randomness; default torch's global generator.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0), *, generator: torch.Generator | None = None):
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        self.scale_range, self.generator = (float(scale_range[0]), float(scale_range[1])), generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, mask)
        scale = _uniform(*self.scale_range, self.generator)
        size = (max(1, round(mask.shape[0] * scale)), max(1, round(mask.shape[1] * scale)))
        return resize_pair(image, mask, size)


class RandomCrop:
    """Crop a random window of ``size``, padding first (image with ``image_fill``, mask with 255) if smaller.

    Args:
        size: crop size, an int or ``(height, width)``.
        image_fill: value of padded image pixels.
        mask_fill: label of padded mask pixels; default 255 = ignore, so padding costs no loss.
        generator: source of randomness; default torch's global generator.
    """

    def __init__(self, size: int | Sequence[int], *, image_fill: float = 0.0, mask_fill: int = IGNORE_INDEX,
                 generator: torch.Generator | None = None):
        self.size = _size_pair(size, "size")
        self.image_fill, self.mask_fill, self.generator = float(image_fill), int(mask_fill), generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, mask)
        crop_height, crop_width = self.size
        pad_bottom, pad_right = max(0, crop_height - mask.shape[0]), max(0, crop_width - mask.shape[1])
        if pad_bottom or pad_right:
            image = F.pad(image, (0, pad_right, 0, pad_bottom), value=self.image_fill)
            mask = F.pad(mask, (0, pad_right, 0, pad_bottom), value=self.mask_fill)
        top = int(torch.randint(0, mask.shape[0] - crop_height + 1, (), generator=self.generator))
        left = int(torch.randint(0, mask.shape[1] - crop_width + 1, (), generator=self.generator))
        window = (slice(top, top + crop_height), slice(left, left + crop_width))
        return image[(slice(None), *window)].contiguous(), mask[window].contiguous()


class RandomHorizontalFlip:
    """Mirror image and mask left-right with probability ``p``.

    Not for the digits dataset: a mirrored 2, 3, 7 or 9 is no longer that digit.

    Args:
        p: probability of flipping, in [0, 1].
        generator: source of randomness; default torch's global generator.
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None):
        check_float(p, "p", low=0.0, high=1.0)
        self.p, self.generator = float(p), generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, mask)
        if float(torch.rand((), generator=self.generator)) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


class Compose:
    """Apply joint transforms in order.

    Args:
        transforms: callables ``(image, mask) -> (image, mask)``.
    """

    def __init__(self, transforms: Sequence[JointTransform]):
        for transform in transforms:
            if not callable(transform):
                raise TypeError(f"every transform must be callable (image, mask) -> (image, mask), got {transform!r}")
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def train_transform(crop_size: int | Sequence[int], *, scale_range: tuple[float, float] = (0.5, 2.0),
                    flip: bool = True, generator: torch.Generator | None = None) -> Compose:
    """The usual training augmentation: random scale, random padded crop, optional flip.

    Args:
        crop_size: output size, an int or ``(height, width)``.
        scale_range: range of the random scale factor.
        flip: add a random horizontal flip; pass ``False`` for the digits dataset (mirrored digits
            change identity).
        generator: source of randomness shared by the steps; default torch's global generator.
    """
    steps: list[JointTransform] = [
        RandomScale(scale_range, generator=generator),
        RandomCrop(crop_size, generator=generator),
    ]
    if flip:
        steps.append(RandomHorizontalFlip(generator=generator))
    return Compose(steps)
