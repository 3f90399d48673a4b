"""Segmentation datasets read from folders: the PASCAL VOC layout and a generic one.

VOC (Everingham et al. 2010)::

    ROOT/JPEGImages/STEM.jpg
    ROOT/SegmentationClass/STEM.png        palette PNG, pixel value = class index, 255 = ignore
    ROOT/ImageSets/Segmentation/SPLIT.txt  one stem per line

Generic::

    ROOT/{train,val}/images/STEM.*   any format Pillow reads, grayscale or RGB (used as RGB)
    ROOT/{train,val}/masks/STEM.png  single-channel PNG of class indices, 255 = ignore

Cheap checks (folders, stems, listed files) run on construction; each file is checked when it is
loaded (readable, image and mask of one size, labels below ``num_classes`` or 255), and every
error names the file. :meth:`FolderDataset.validate` loads everything once to check it up front.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data.base import IGNORE_INDEX, JointTransform, SegmentationDataset

VOC_CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
_MASK_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")


def read_image(path: str | Path) -> np.ndarray:
    """Read any image Pillow can open, as RGB.

    Returns:
        uint8 array ``(H, W, 3)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt or not an image; the message names it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as picture:
            picture.load()
            return np.array(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel mask of class indices (palette "P", "L" or 16/32-bit integer PNG).

    A palette PNG gives its indices, not its colours.

    Returns:
        int64 array ``(H, W)``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt or has several channels (e.g. an RGB colour mask).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    try:
        with Image.open(path) as picture:
            picture.load()
            mode = picture.mode
            indices = np.array(picture) if mode in _MASK_MODES else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read mask file {path}: {error}") from None
    if indices is None:
        raise ValueError(
            f"mask file {path} has mode {mode}; masks must be single-channel class indices "
            f"(palette or grayscale PNG, modes {', '.join(_MASK_MODES)})"
        )
    return indices.astype(np.int64)


def check_labels(mask: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` if ``mask`` holds a label outside ``0..num_classes-1`` and 255."""
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = np.unique(mask[bad])[:8].tolist()
        raise ValueError(
            f"mask file {path} has labels {values} outside the classes 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} = ignore); pass num_classes (--num-classes) if there are more classes"
        )


def infer_num_classes(mask_paths: list[Path]) -> int:
    """Largest label in the masks plus one, 255 excluded, and at least 2 (background and one class)."""
    largest = 0
    for path in mask_paths:
        mask = read_mask(path)
        labels = mask[mask != IGNORE_INDEX]
        if labels.size:
            if labels.min() < 0:
                raise ValueError(f"mask file {path} has negative labels; labels must be 0..254 or 255 = ignore")
            largest = max(largest, int(labels.max()))
    return max(largest + 1, 2)


class FolderDataset(SegmentationDataset):
    """Pairs of image and mask files; the shared loader of :class:`VOCSegmentation` and :class:`FolderSegmentation`.

    Attributes:
        image_paths, mask_paths: one file per item, in the order of ``stems``.
    """

    def __init__(self, image_paths: list[Path], mask_paths: list[Path], stems: list[str], *, num_classes: int,
                 class_names: list[str] | None, transform: JointTransform | None):
        if class_names is None:
            class_names = ["background", *(f"class_{index}" for index in range(1, num_classes))]
        super().__init__(num_classes=num_classes, class_names=class_names, stems=stems, transform=transform)
        self.image_paths, self.mask_paths = image_paths, mask_paths

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; they must have the same size"
            )
        check_labels(mask, self.num_classes, mask_path)
        return image, mask

    def validate(self) -> None:
        """Load every item once; raises the first error found, naming its file."""
        for index in range(len(self)):
            self.load_arrays(index)


def _check_num_classes(num_classes: int | None) -> None:
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or not 2 <= num_classes <= IGNORE_INDEX):
        raise ValueError(f"num_classes must be an int in 2..{IGNORE_INDEX} or None (infer), got {num_classes!r}")


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
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_classes: int | None = None,
                 class_names: list[str] | None = None, transform: JointTransform | None = None):
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
                         transform=transform)
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
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_classes: int | None = None,
                 class_names: list[str] | None = None, transform: JointTransform | None = None):
        _check_num_classes(num_classes)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        stems, image_paths, mask_paths = _generic_split_paths(root, split)
        if num_classes is None:
            every_mask = [path for folder in sorted(root.iterdir()) if (folder / "masks").is_dir()
                          for path in _files_by_stem(folder / "masks", {".png"}).values()]
            num_classes = infer_num_classes(every_mask)
        super().__init__(image_paths, mask_paths, stems, num_classes=num_classes, class_names=class_names,
                         transform=transform)
        self.root, self.split = root, split
