"""Load a trained checkpoint and label images: palette PNGs of class indices plus overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.data.folders import DEFAULT_MAX_PIXELS, read_image
from atrous.engine.checkpoint import checkpoint_dir, load_checkpoint, read_checkpoint_meta
from atrous.engine.config import TrainConfig
from atrous.engine.evaluate import predict_probabilities
from atrous.engine.prior import with_background_prior


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its best checkpoint, else its last) or a checkpoint folder/file -> checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return checkpoint_dir(path)


def load_trained_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights.

    Args:
        path: a run folder, a checkpoint folder, or its ``checkpoint.json``/``model.safetensors``.
        device: where to put the model.

    Returns:
        ``(model in eval mode, meta)``; a model trained with ``background_weight`` != 1 comes wrapped
        in :class:`~atrous.engine.prior.BackgroundPrior`. ``meta`` holds ``num_classes``, ``class_names``,
        ``mean``, ``std``, ``config``...
    """
    from atrous.engine.trainer import check_model_size
    from atrous.models import create

    folder = resolve_checkpoint(path)
    meta = read_checkpoint_meta(folder)["meta"]
    for key in ("model", "num_classes"):
        if key not in meta:
            raise ValueError(f"checkpoint {str(folder)!r} is not a segmentation checkpoint (no {key!r} in its metadata)")
    config = TrainConfig.from_dict(meta["config"]) if "config" in meta else None  # with older runs' defaults
    kwargs = config.model_kwargs if config is not None else meta.get("model_kwargs", {})
    check_model_size(meta["model"], num_classes=meta["num_classes"], **kwargs)  # a crafted file allocates nothing
    model = create(meta["model"], num_classes=meta["num_classes"], **kwargs)
    load_checkpoint(folder, model)
    # a run trained with background weighted down predicts with the weighting undone
    model = with_background_prior(model, config.background_weight if config is not None else 1.0)
    return model.to(device).eval(), meta


def read_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An image file as ``(3, H, W)`` float32 in [0, 1], read as datasets read it
    (:func:`atrous.data.folders.read_image`: any mode, 16 bits kept); errors name the file."""
    array = read_image(path, max_pixels=max_pixels)
    # the division the datasets do (SegmentationDataset.__getitem__), so training and prediction see the same numbers
    return torch.from_numpy(np.divide(array.transpose(2, 0, 1), np.float32(255.0), dtype=np.float32, order="C"))


def predict_files(
    model: nn.Module,
    meta: dict[str, Any],
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Path]:
    """Write ``STEM.png`` (palette PNG whose pixel values are class indices) and
    ``STEM_overlay.png`` for each image into ``out_dir``; images with more than ``max_pixels``
    pixels are refused before they are decoded.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false (checked before any work).
        ValueError: two inputs share a file stem.
    """
    from PIL import Image

    from atrous.data.palette import overlay, save_index_png

    out_dir = Path(out_dir)
    paths = [Path(p) for p in images]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise ValueError(f"two input images share the stem {duplicate!r}; their outputs would collide")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
    targets = [(out_dir / f"{s}.png", out_dir / f"{s}_overlay.png") for s in stems]
    if not overwrite:
        for target in (t for pair in targets for t in pair):
            if target.exists():
                raise FileExistsError(f"{str(target)!r} already exists; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)
    written = []
    for path, (mask_path, overlay_path) in zip(paths, targets):
        image = read_rgb(path, max_pixels=max_pixels)
        probs = predict_probabilities(
            model, image[None].to(device), flip=flip, scales=scales, mean=meta.get("mean"), std=meta.get("std")
        )
        mask = probs.argmax(1)[0].cpu()
        save_index_png(mask, mask_path)
        Image.fromarray(overlay(image, mask)).save(overlay_path)
        written += [mask_path, overlay_path]
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return written
