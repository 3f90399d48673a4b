"""The item contract shared by every segmentation dataset in atrous.

``ds[i]`` returns ``(image, mask)``: ``image`` a float32 tensor ``(3, H, W)`` in ``[0, 1]`` and
``mask`` an int64 tensor ``(H, W)`` of class indices, with ``255`` marking pixels to ignore (the
PASCAL VOC convention, Everingham et al. 2010). Subclasses only say how to load item ``i`` as
NumPy arrays; conversion and the optional joint transform happen here, once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from atrous._checks import check_int

IGNORE_INDEX = 255

# A joint transform: (image (3, H, W) float, mask (H, W) int64) -> the same, transformed together.
JointTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SegmentationDataset(Dataset):
    """Base class: ``ds[i] -> (image (3, H, W) float32 in [0, 1], mask (H, W) int64)``.

    Attributes:
        num_classes: number of classes, background included; labels are ``0 .. num_classes - 1``.
        class_names: one name per class.
        ignore_index: the mask value of pixels that count for no class (always 255).
        stems: one name per item (file stem, or a generated name), used for prediction outputs.
        transform: optional joint transform applied to ``(image, mask)`` after loading.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, *, num_classes: int, class_names: list[str], stems: list[str], transform: JointTransform | None):
        check_int(num_classes, "num_classes", low=1, high=IGNORE_INDEX)
        if len(class_names) != num_classes:
            raise ValueError(f"class_names must have num_classes={num_classes} entries, got {len(class_names)}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (image, mask) -> (image, mask) or None, got {transform!r}")
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.stems = list(stems)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.stems)

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as ``(image (H, W, 3) uint8, mask (H, W) integer)`` arrays, untransformed."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        index = check_int(index, "index", index=True)
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} is out of range for a dataset of {size} items")
        return index % size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_arrays(self._check_index(index))
        # NumPy does the conversion: it is single-threaded, and torch's thread pool is slow on busy machines
        channels_first = np.divide(image.transpose(2, 0, 1), np.float32(255.0), dtype=np.float32, order="C")
        image_tensor = torch.from_numpy(channels_first)
        mask_tensor = torch.from_numpy(mask.astype(np.int64))
        if self.transform is not None:
            image_tensor, mask_tensor = self.transform(image_tensor, mask_tensor)
        return image_tensor, mask_tensor

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items, num_classes={self.num_classes})"
