"""Evaluation: confusion matrix, per-class IoU, mIoU and pixel accuracy, with optional flip and
multi-scale testing (average of softmax probabilities over flips and input scales, as in
DeepLab's evaluation protocol); images larger than a tile run in overlapping tiles
(:mod:`atrous.engine.tiling`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from atrous._checks import check_int, finite_numbers
from atrous.engine.metrics import ConfusionMatrix
from atrous.engine.preprocess import MEAN, STD, normalize
from atrous.engine.tiling import DEFAULT_TILE, Tiler


def _batches(dataset: Dataset, indices: Sequence[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive items stacked into batches; a change of image size starts a new batch."""
    images, masks = [], []
    for index in indices:
        image, mask = dataset[index]
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield torch.stack(images), torch.stack(masks)
            images, masks = [], []
        images.append(image)
        masks.append(mask)
    if images:
        yield torch.stack(images), torch.stack(masks)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """A non-empty sequence of finite input scales > 0, as a tuple; the error names ``scales``."""
    if not finite_numbers(scales, above=0):
        raise ValueError(f"scales (--scales) must be a non-empty sequence of finite numbers > 0, got {scales!r}")
    return tuple(scales)


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Class probabilities ``(N, K, H, W)`` for ``images`` ``(N, 3, H, W)`` in [0, 1].

    Args:
        model: returns logits at its input size.
        flip: also run the horizontally flipped image and average.
        scales: input scales to run and average (1.0 = original size), finite and > 0.
        mean, std: input normalisation (ImageNet statistics by default).
    """
    scales = check_scales(scales)
    height, width = images.shape[-2:]
    inputs = normalize(images, MEAN if mean is None else mean, STD if std is None else std)
    total = None
    for scale in scales:
        scaled = inputs
        if scale != 1.0:
            size = (max(8, round(height * scale)), max(8, round(width * scale)))
            scaled = F.interpolate(inputs, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = model(x)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total.add_(probs)  # in place: one K x H x W buffer
    return total.div_(len(scales) * (2 if flip else 1))


@torch.no_grad()
def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    *,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tiler: Tiler | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Class indices ``(N, H, W)`` (int64, on the device of ``images``) for ``images`` ``(N, 3, H, W)`` in [0, 1].

    Args:
        model: returns logits at its input size.
        flip, scales, mean, std: as :func:`predict_probabilities`.
        tiler: runs images it :meth:`~atrous.engine.tiling.Tiler.applies` to in overlapping tiles,
            keeping only each tile's class indices; ``None`` runs every image whole.
        device: where the model runs (default: where ``images`` are); tiles move there one at a time.
        progress: a progress bar over the tiles of a tiled image.
    """

    single = not flip and tuple(check_scales(scales)) == (1.0,)

    def labels(x: torch.Tensor) -> torch.Tensor:
        if not single:
            return predict_probabilities(model, x, flip=flip, scales=scales, mean=mean, std=std).argmax(1, keepdim=True)
        # one pass: softmax keeps the order, so the argmax of the logits, without a K x H x W probability map
        logits = model(normalize(x, MEAN if mean is None else mean, STD if std is None else std))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1, keepdim=True)

    if tiler is not None and tiler.applies(*images.shape[-2:]):
        if tuple(scales) != (1.0,):
            import warnings

            from atrous.engine.tiling import TilingWarning

            warnings.warn(f"scales {tuple(scales)} rescale each tile on its own, off the model's stride grid: "
                          "tiled labels are close to, not equal to, the whole image's", TilingWarning, stacklevel=2)
        return tiler.run(labels, images, device=device, progress=progress)[:, 0]
    return labels(images.to(device or images.device))[:, 0].to(images.device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    context=None,
    progress: bool = False,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
) -> dict:
    """Score ``model`` on ``dataset``.

    Args:
        model: segmentation model returning ``(N, K, H, W)`` logits.
        dataset: items ``(image (3, H, W), mask (H, W))``; has ``num_classes``.
        batch_size: images per forward pass.
        device: where to run.
        flip, scales: test-time augmentation (see :func:`predict_probabilities`).
        mean, std: input normalisation.
        context: a :class:`~atrous.engine.distributed.DistributedContext`; each process scores
            its share and the confusion matrices are summed.
        progress: show a progress bar.
        tile, overlap: images larger than ``tile`` on either side run in overlapping tiles
            (:class:`~atrous.engine.tiling.Tiler`); ``tile=0`` runs every image whole.

    Returns:
        ``{"miou", "pixel_acc", "iou", "confusion"}`` (see :class:`ConfusionMatrix`).
    """
    from atrous.engine import distributed

    check_int(batch_size, "batch_size (--batch-size)", low=1)
    scales = check_scales(scales)
    tiler = Tiler(model, tile=tile, overlap=overlap)
    context = context or distributed.DistributedContext()
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index=getattr(dataset, "ignore_index", 255))
    indices = range(context.rank, len(dataset), context.world_size)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with the "train" extra; evaluation works without the bar
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=len(indices), desc="evaluate", unit="img", dynamic_ncols=True)
    for images, masks in _batches(dataset, indices, batch_size):
        labels = predict_labels(model, images, flip=flip, scales=scales, mean=mean, std=std, tiler=tiler,
                                device=device, progress=progress)
        matrix.update(labels, masks)
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    model.train(was_training)
    distributed.all_reduce_sum(matrix.matrix, context)
    return matrix.summary()
