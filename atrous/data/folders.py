"""Segmentation datasets read from folders: the PASCAL VOC layout and a generic one.

VOC (Everingham et al. 2010)::

    ROOT/JPEGImages/STEM.jpg
    ROOT/SegmentationClass/STEM.png        palette PNG, pixel value = class index, 255 = ignore
    ROOT/ImageSets/Segmentation/SPLIT.txt  one stem per line

Generic::

    ROOT/{train,val}/images/STEM.*   any format and mode Pillow reads, 8- or 16-bit (used as RGB)
    ROOT/{train,val}/masks/STEM.png  single-channel PNG of class indices, 255 = ignore

Cheap checks (folders, stems, listed files) run on construction; each file is checked when it is
loaded (readable, at most ``max_pixels`` by its header, image and mask of one size, labels below
``num_classes`` or 255), and every error names the file. :meth:`FolderDataset.validate` loads
everything once to check it up front. :func:`read_image` is also the reader of ``atrous predict``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from atrous._checks import check_int
from atrous.data.base import IGNORE_INDEX, JointTransform, SegmentationDataset

VOC_CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
_MASK_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

# 10^8 pixels, 10000x10000 (medium-format cameras reach 1e8). Decoding it is cheap (0.3 GB as uint8, 1.2 GB
# as float32); predicting on it is not: logits and class probabilities at full resolution take 4 bytes per
# class per pixel each, 2 x 8.4 GB for VOC's 21 classes, about what a 24 GB machine holds beside a model.
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow's own size check reads one process-wide number, lifted only while a header is parsed; the lock
# keeps two readers from restoring each other's value.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _check_max_pixels(max_pixels: int) -> None:
    check_int(max_pixels, "max_pixels (--max-pixels)", low=1)


@contextmanager
def _decoded(path: str | Path, kind: str, max_pixels: int) -> Iterator[Any]:
    """The Pillow image at ``path``, decoded and turned upright by its EXIF orientation.

    The size comes from the header and is checked against ``max_pixels`` before any pixel is decoded.
    Pillow's fixed check (a warning at 89 MP, a traceback at 179 MP, neither naming a limit the user
    can change) is off while the header is read: this check replaces it.
    """
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    _check_max_pixels(max_pixels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    unreadable = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
    try:
        with _PILLOW_LIMIT_LOCK:
            pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                picture = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = pillow_limit
    except unreadable as error:
        raise ValueError(f"cannot read {kind} file {path}: {error}") from None
    with picture:
        width, height = picture.size
        if width * height > max_pixels:
            raise ValueError(
                f"{kind} file {path} is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} (max_pixels, --max-pixels); it was not decoded"
            )
        try:
            picture.load()
            # upright as a viewer shows it, which is how annotation tools show it to whoever draws the mask
            if picture.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                picture = ImageOps.exif_transpose(picture)
        except unreadable as error:
            raise ValueError(f"cannot read {kind} file {path}: {error}") from None
        yield picture


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as RGB on the 0..255 scale: the one reader of training, evaluation and prediction.

    Every mode becomes three channels: grayscale is replicated, a palette is expanded, CMYK and
    YCbCr are converted by Pillow, alpha and transparency are dropped (the colour as stored is kept),
    and the EXIF orientation is applied. 16-bit and 32-bit integer grayscale (``I;16``, ``I``) is
    read as 16-bit and scaled by 255 / 65535 = 1 / 257 in float32, not rounded, so ``array / 255``
    keeps all 16 bits (a value ``v`` becomes ``v / 65535`` in the model's [0, 1]); values outside
    0..65535 are refused. Float grayscale (``F``) must hold 0..1 and is scaled by 255. Pillow reads
    16-bit colour PNGs as their high byte (``v // 256``, within one 8-bit level of ``v / 257``).

    Args:
        path: any file Pillow opens.
        max_pixels: a larger image is refused from its header, before it is decoded.

    Returns:
        ``(H, W, 3)`` array: uint8 from 8-bit sources, float32 in [0, 255] from 16/32-bit ones.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt, not an image, too large, or of values out of range; the
            message names it.
    """
    with _decoded(path, "image", max_pixels) as picture:
        mode = picture.mode
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            values = np.asarray(picture)
            low, high = (values.min(), values.max()) if values.size else (0, 0)
            if mode == "F":
                if not (np.isfinite(values).all() and 0 <= low and high <= 1):
                    raise ValueError(f"image file {path} is a float image with values {low}..{high}; "
                                     f"float images must hold 0..1")
                gray = np.multiply(values, np.float32(255), dtype=np.float32)
            else:
                if low < 0 or high > 65535:
                    raise ValueError(f"image file {path} is a 32-bit integer image with values {low}..{high}; "
                                     f"integer images are read as 16-bit, 0..65535")
                gray = np.divide(values, np.float32(257), dtype=np.float32)  # v * 255 / 65535, exactly
            return np.repeat(gray[..., None], 3, axis=2)
        picture.info.pop("transparency", None)  # dropped anyway; Pillow warns about it for palettes
        try:
            return np.array(picture.convert("RGB"))
        except ValueError:
            raise ValueError(f"image file {path} has mode {mode}, which Pillow cannot convert to RGB") from None


def read_mask(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel mask of class indices (palette "P", "L" or 16/32-bit integer PNG).

    Values are labels as stored: a palette PNG gives its indices, not its colours, and a 16-bit
    mask is not rescaled, so any value above 255 is refused (no 16-bit value is taken for "ignore":
    tools differ, and a guess would silently drop labelled pixels). An EXIF orientation, which
    masks rarely carry, is applied as for images, so a mask shows as a viewer shows it.

    Args:
        path: the mask file.
        max_pixels: a larger mask is refused from its header, before it is decoded.

    Returns:
        int64 array ``(H, W)`` of values in 0..255.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt, too large, has several channels (e.g. an RGB colour mask),
            or holds a label outside 0..255; the message names it.
    """
    with _decoded(path, "mask", max_pixels) as picture:
        mode = picture.mode
        if mode not in _MASK_MODES:
            raise ValueError(
                f"mask file {path} has mode {mode}; masks must be single-channel class indices "
                f"(palette or grayscale PNG, modes {', '.join(_MASK_MODES)})"
            )
        labels = np.asarray(picture).astype(np.int64)
    outside = (labels < 0) | (labels > IGNORE_INDEX)
    if outside.any():
        values = np.unique(labels[outside])[:8].tolist()
        raise ValueError(
            f"mask file {path} has label{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}; labels "
            f"must be 0..{IGNORE_INDEX - 1} or {IGNORE_INDEX} (ignore), and a {mode} mask is read as stored"
        )
    return labels


def check_labels(mask: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` if ``mask`` holds a label outside ``0..num_classes-1`` and 255."""
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = np.unique(mask[bad])[:8].tolist()
        raise ValueError(
            f"mask file {path} has labels {values} outside the classes 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} = ignore); pass num_classes (--num-classes) if there are more classes"
        )


def infer_num_classes(mask_paths: list[Path], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Largest label in the masks plus one, 255 excluded, and at least 2 (background and one class)."""
    largest = 0
    for path in mask_paths:
        mask = read_mask(path, max_pixels=max_pixels)
        labels = mask[mask != IGNORE_INDEX]
        if labels.size:
            largest = max(largest, int(labels.max()))
    return max(largest + 1, 2)


class FolderDataset(SegmentationDataset):
    """Pairs of image and mask files; the shared loader of :class:`VOCSegmentation` and :class:`FolderSegmentation`.

    Images and masks are read by :func:`read_image` and :func:`read_mask`, so an image is
    ``(H, W, 3)`` uint8, or float32 on the same 0..255 scale from a 16-bit file.

    Attributes:
        image_paths, mask_paths: one file per item, in the order of ``stems``.
        max_pixels: larger files are refused before they are decoded.
    """

    def __init__(self, image_paths: list[Path], mask_paths: list[Path], stems: list[str], *, num_classes: int,
                 class_names: list[str] | None, transform: JointTransform | None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        _check_max_pixels(max_pixels)
        if class_names is None:
            class_names = ["background", *(f"class_{index}" for index in range(1, num_classes))]
        super().__init__(num_classes=num_classes, class_names=class_names, stems=stems, transform=transform)
        self.image_paths, self.mask_paths = image_paths, mask_paths
        self.max_pixels = max_pixels

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path, max_pixels=self.max_pixels)
        mask = read_mask(mask_path, max_pixels=self.max_pixels)
        if image.shape[:2] != mask.shape:
            turned = " (the image's EXIF orientation is applied)" if image.shape[:2] == mask.shape[::-1] else ""
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; they must have the same size{turned}"
            )
        check_labels(mask, self.num_classes, mask_path)
        return image, mask

    def validate(self) -> None:
        """Load every item once; raises the first error found, naming its file."""
        for index in range(len(self)):
            self.load_arrays(index)


def _check_num_classes(num_classes: int | None) -> None:
    if num_classes is not None:  # None: inferred from the masks
        check_int(num_classes, "num_classes", low=2, high=IGNORE_INDEX)


def find_voc_root(root: str | Path) -> Path | None:
    """The folder holding ``JPEGImages`` and ``SegmentationClass``: ``root`` itself, or its VOC2012 subfolder."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


class VOCSegmentation(FolderDataset):
    """PASCAL VOC segmentation: ``JPEGImages/*.jpg``, palette PNGs in ``SegmentationClass/``.

    Args:
        root: the VOC folder (``VOC2012``), or a folder holding ``VOC2012`` or ``VOCdevkit/VOC2012``.
        split: a list in ``ImageSets/Segmentation/`` (``"train"``, ``"val"``, ``"trainval"``, ...).
        num_classes: default 21 (VOC's 20 classes and background, with VOC class names); masks are
            not scanned for VOC.
        class_names: one name per class; default the VOC names when there are 21 classes.
        transform: optional joint transform ``(image (3, H, W), mask (H, W)) -> (image, mask)``.
        max_pixels: images and masks with more pixels are refused before they are decoded.
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_classes: int | None = None,
                 class_names: list[str] | None = None, transform: JointTransform | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        _check_num_classes(num_classes)
        if not Path(root).is_dir():
            raise FileNotFoundError(f"VOC root folder {root} does not exist")
        voc_root = find_voc_root(root)
        if voc_root is None:
            raise FileNotFoundError(f"{root} has no JPEGImages/ and SegmentationClass/ folders (VOC layout)")
        list_dir = voc_root / "ImageSets" / "Segmentation"
        list_file = list_dir / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(path.stem for path in list_dir.glob("*.txt")) if list_dir.is_dir() else []
            raise FileNotFoundError(f"split list {list_file} does not exist; available splits: {available}")
        stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not stems:
            raise ValueError(f"split list {list_file} is empty")
        image_paths, mask_paths = [], []
        for stem in stems:
            candidates = [voc_root / "JPEGImages" / f"{stem}{ext}" for ext in (".jpg", ".jpeg", ".png")]
            image_path = next((path for path in candidates if path.is_file()), None)
            if image_path is None:
                raise FileNotFoundError(f"image {candidates[0]} listed in {list_file} does not exist")
            mask_path = voc_root / "SegmentationClass" / f"{stem}.png"
            if not mask_path.is_file():
                raise FileNotFoundError(f"mask {mask_path} listed in {list_file} does not exist")
            image_paths.append(image_path)
            mask_paths.append(mask_path)
        num_classes = num_classes or len(VOC_CLASS_NAMES)
        if class_names is None and num_classes == len(VOC_CLASS_NAMES):
            class_names = VOC_CLASS_NAMES
        super().__init__(image_paths, mask_paths, stems, num_classes=num_classes, class_names=class_names,
                         transform=transform, max_pixels=max_pixels)
        self.root, self.split = voc_root, split


def _files_by_stem(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in files:
            other = files[path.stem].name
            raise ValueError(f"two files in {folder} share the stem {path.stem!r}: {other} and {path.name}")
        files[path.stem] = path
    return files


def _generic_split_paths(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    from PIL import Image

    image_dir, mask_dir = root / split / "images", root / split / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder {folder} does not exist (expected ROOT/{{train,val}}/{{images,masks}}/)")
    images = _files_by_stem(image_dir, set(Image.registered_extensions()))
    masks = _files_by_stem(mask_dir, {".png"})
    if not images:
        raise ValueError(f"folder {image_dir} holds no image files")
    for missing, folder, other in ((sorted(set(images) - set(masks)), mask_dir, "image"),
                                   (sorted(set(masks) - set(images)), image_dir, "mask")):
        if missing:
            raise ValueError(f"{len(missing)} {other} stem(s) have no match in {folder}, e.g. {missing[:5]}")
    stems = sorted(images)
    return stems, [images[stem] for stem in stems], [masks[stem] for stem in stems]


class FolderSegmentation(FolderDataset):
    """The generic layout ``ROOT/{train,val}/{images,masks}/`` with matching file stems.

    Args:
        root: the dataset folder.
        split: ``"train"`` or ``"val"`` (any subfolder name with ``images/`` and ``masks/`` works).
        num_classes: default inferred from the data: the largest label in the masks of every split
            under ``root`` plus one (255 excluded), so train and val agree.
        class_names: one name per class; default ``background, class_1, ...``.
        transform: optional joint transform ``(image (3, H, W), mask (H, W)) -> (image, mask)``.
        max_pixels: images and masks with more pixels are refused before they are decoded.
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_classes: int | None = None,
                 class_names: list[str] | None = None, transform: JointTransform | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        _check_num_classes(num_classes)
        _check_max_pixels(max_pixels)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        stems, image_paths, mask_paths = _generic_split_paths(root, split)
        if num_classes is None:
            every_mask = [path for folder in sorted(root.iterdir()) if (folder / "masks").is_dir()
                          for path in _files_by_stem(folder / "masks", {".png"}).values()]
            num_classes = infer_num_classes(every_mask, max_pixels=max_pixels)
        super().__init__(image_paths, mask_paths, stems, num_classes=num_classes, class_names=class_names,
                         transform=transform, max_pixels=max_pixels)
        self.root, self.split = root, split
