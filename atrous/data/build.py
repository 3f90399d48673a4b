"""``build_dataset``: one entry point from a dataset spec (``"digits"`` or a folder) to a dataset.

The CLI's ``--data`` argument goes straight here; the layout of a folder is detected from the
folders it holds (see :mod:`atrous.data.folders`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atrous.data.base import SegmentationDataset

BUILTIN_DATASETS = ("digits",)


def detect_layout(path: str | Path) -> str:
    """``"voc"`` or ``"folders"`` for a dataset folder.

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a folder.
        ValueError: ``path`` holds neither layout; the message names it and describes both.
    """
    from atrous.data.folders import find_voc_root

    path = Path(path)
    if not path.is_dir():
        builtin = ", ".join(BUILTIN_DATASETS)
        raise FileNotFoundError(f"dataset folder {path} does not exist (built-in datasets: {builtin})")
    if find_voc_root(path) is not None:
        return "voc"
    if any((path / split / "images").is_dir() for split in ("train", "val")):
        return "folders"
    raise ValueError(
        f"{path} is not a dataset folder: expected the VOC layout (JPEGImages/, SegmentationClass/, "
        f"ImageSets/Segmentation/) or {{train,val}}/{{images,masks}}/ with matching file stems"
    )


def build_dataset(
    spec: str | Path, split: str = "train", *, num_classes: int | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Build a segmentation dataset from ``"digits"`` or a folder path.

    Args:
        spec: ``"digits"`` (built in, generated from a seed) or a folder in the VOC or generic layout.
        split: ``"train"`` or ``"val"`` (VOC also takes any list in ``ImageSets/Segmentation``).
        num_classes: number of classes; default inferred (digits: 11, VOC: 21, generic: from the masks).
        **kwargs: passed to :class:`DigitsScenes`, :class:`VOCSegmentation` or :class:`FolderSegmentation`
            (e.g. ``transform=``, ``num_images=``, ``seed=``).

    Returns:
        A dataset whose items are ``(image (3, H, W) float32 in [0, 1], mask (H, W) int64)``.
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be 'digits' or a folder path, got {type(spec).__name__}")
    if isinstance(spec, str) and spec == "digits":
        from atrous.data.digits import DigitsScenes

        dataset = DigitsScenes(split, **kwargs)
        if num_classes is not None and num_classes != dataset.num_classes:
            raise ValueError(
                f"num_classes must be {dataset.num_classes} (or None) for the digits dataset, got {num_classes}"
            )
        return dataset
    from atrous.data.folders import FolderSegmentation, VOCSegmentation

    layout = detect_layout(spec)
    dataset_class = VOCSegmentation if layout == "voc" else FolderSegmentation
    return dataset_class(spec, split, num_classes=num_classes, **kwargs)
