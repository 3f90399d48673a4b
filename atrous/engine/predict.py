"""Load a trained checkpoint and label images: palette PNGs of class indices plus overlays.

Outputs are written the way checkpoints are (:func:`atrous.engine.checkpoint.atomic_write`: a
temporary name in the same folder, then renamed), never through a symbolic link, and every input
is decoded once before the first output is written, so a bad input leaves the folder untouched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.data.folders import DEFAULT_MAX_PIXELS, read_image
from atrous.engine.checkpoint import META_FILE, atomic_write, checkpoint_dir, load_checkpoint, read_checkpoint_meta
from atrous.engine.config import TrainConfig
from atrous.engine.evaluate import check_scales, predict_probabilities
from atrous.engine.prior import with_background_prior


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its best checkpoint, else its last) or a checkpoint folder/file -> checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return checkpoint_dir(path)


def check_output_file(path: str | Path, *, overwrite: bool, name: str, hint: str = "pass --overwrite") -> Path:
    """Refuse an output path that would be written wrongly, before any work is done.

    Args:
        path: the file about to be written.
        overwrite: whether an existing regular file may be replaced.
        name: how the message names the path, e.g. ``"--out"``.
        hint: how to allow replacing, for the message.

    Raises:
        ValueError: ``path`` is a symbolic link (even a dangling one) or not a regular file.
        IsADirectoryError: ``path`` is a folder.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        FileNotFoundError, NotADirectoryError: its folder does not exist or is a file.
    """
    path = Path(path)
    if os.path.islink(path):
        raise ValueError(f"{name} {str(path)!r} is a symbolic link; atrous does not write through links "
                         "(remove it or choose another name)")
    if path.is_dir():
        raise IsADirectoryError(f"{name} {str(path)!r} is a folder; expected a file name")
    if path.exists():
        if not path.is_file():
            raise ValueError(f"{name} {str(path)!r} exists and is not a regular file")
        if not overwrite:
            raise FileExistsError(f"{name} {str(path)!r} already exists; {hint} to replace it")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"the folder of {name} {str(path)!r} is a file: {str(parent)!r}")
    if not parent.is_dir():
        raise FileNotFoundError(f"the folder of {name} {str(path)!r} does not exist: {str(parent)!r}")
    return path


def _field_error(file: Path, field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"checkpoint file {str(file)!r}: field 'meta.{field}' must be {expected}, got {value!r}")


def _check_meta(meta: dict[str, Any], file: Path, in_channels: Any) -> None:
    """The metadata prediction reads, checked so a crafted or damaged file names its field."""
    if not isinstance(meta["model"], str):
        raise _field_error(file, "model", "a registered model name", meta["model"])
    classes = meta["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 255:
        raise _field_error(file, "num_classes", "an int from 1 to 255", classes)
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != classes
                              or not all(isinstance(n, str) for n in names)):
        raise _field_error(file, "class_names", f"a list of {classes} strings (one per class)", names)
    channels = in_channels if isinstance(in_channels, int) and not isinstance(in_channels, bool) else 3
    for key, low in (("mean", -math.inf), ("std", 0.0)):
        value = meta.get(key)
        numbers = isinstance(value, list) and len(value) == channels and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > low for v in value)
        if value is not None and not numbers:
            what = "finite numbers" if key == "mean" else "finite numbers > 0"
            raise _field_error(file, key, f"a list of {channels} {what} (one per input channel)", value)
    if "model_kwargs" in meta and not isinstance(meta["model_kwargs"], dict):
        raise _field_error(file, "model_kwargs", "a JSON object of builder arguments", meta["model_kwargs"])
    if "data" in meta and not isinstance(meta["data"], str):
        raise _field_error(file, "data", "'digits' or a dataset folder", meta["data"])


def load_trained_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights.

    Args:
        path: a run folder, a checkpoint folder, or its ``checkpoint.json``/``model.safetensors``.
        device: where to put the model.

    Returns:
        ``(model in eval mode, meta)``; a model trained with ``background_weight`` != 1 comes wrapped
        in :class:`~atrous.engine.prior.BackgroundPrior`. ``meta`` holds ``num_classes``, ``class_names``,
        ``mean``, ``std``, ``config``, and ``model_kwargs`` (those the model was built with).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: not a segmentation checkpoint, or a field of its metadata that is missing or
            malformed; the message names the file and the field.
    """
    from atrous.engine.trainer import check_model_size
    from atrous.models import create

    folder = resolve_checkpoint(path)
    file = folder / META_FILE
    meta = read_checkpoint_meta(folder)["meta"]
    for key in ("model", "num_classes"):
        if key not in meta:
            task = meta.get("task")
            kind = f" (its task is {task!r}, from `atrous train-seq`)" if isinstance(task, str) else ""
            raise ValueError(f"checkpoint {str(folder)!r} is not a segmentation checkpoint{kind}: its {META_FILE} "
                             f"has no field 'meta.{key}'")
    config = TrainConfig.from_dict(meta["config"], source=f"checkpoint file {str(file)!r}: field 'meta.config'") \
        if "config" in meta else None  # with older runs' defaults
    kwargs = config.model_kwargs if config is not None else meta.get("model_kwargs", {})
    _check_meta(meta, file, kwargs.get("in_channels", 3) if isinstance(kwargs, dict) else 3)
    try:
        check_model_size(meta["model"], num_classes=meta["num_classes"], **kwargs)  # a crafted file allocates nothing
    except ValueError as error:
        raise ValueError(f"checkpoint file {str(file)!r}: {error}") from None
    model = create(meta["model"], num_classes=meta["num_classes"], **kwargs)
    load_checkpoint(folder, model)
    # a run trained with background weighted down predicts with the weighting undone
    model = with_background_prior(model, config.background_weight if config is not None else 1.0)
    return model.to(device).eval(), {**meta, "model_kwargs": dict(kwargs)}


def read_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An image file as ``(3, H, W)`` float32 in [0, 1], read as datasets read it
    (:func:`atrous.data.folders.read_image`: any mode, 16 bits kept); errors name the file."""
    array = read_image(path, max_pixels=max_pixels)
    # the division the datasets do (SegmentationDataset.__getitem__), so training and prediction see the same numbers
    return torch.from_numpy(np.divide(array.transpose(2, 0, 1), np.float32(255.0), dtype=np.float32, order="C"))


def _output_folder(out_dir: Path) -> None:
    if os.path.islink(out_dir) and not out_dir.exists():
        raise FileNotFoundError(f"output folder (--out) {str(out_dir)!r} is a symbolic link to a missing folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output folder (--out) {str(out_dir)!r} is a file, not a folder")
    for parent in out_dir.parents:  # mkdir(parents=True) would stop at a file on the way
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"output folder (--out) {str(out_dir)!r} cannot be made: "
                                         f"{str(parent)!r} is a file")
            break


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
    ``STEM_overlay.png`` for each image into ``out_dir``.

    Nothing is written until every input has been decoded (images with more than ``max_pixels``
    pixels are refused from their headers) and every output path checked. Each file is written
    to a temporary name in ``out_dir`` and renamed into place, so an output is whole or absent;
    a failure after the first image (a full disk) keeps the outputs of the images before it.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false.
        ValueError: two inputs share a file stem or an output, an output would replace an input,
            an input is unreadable, an output path is a symbolic link, or ``scales`` are not
            finite numbers > 0.
        FileNotFoundError: an input does not exist.
        NotADirectoryError: ``out_dir`` is a file.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("predicting images needs the 'pillow' package: pip install 'atrous[train]'") from None

    from atrous.data.palette import overlay, save_index_png

    scales = check_scales(scales)
    out_dir = Path(out_dir)
    paths = [Path(p) for p in images]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise ValueError(f"two input images share the stem {duplicate!r}; their outputs would collide")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist or is not a file")
    _output_folder(out_dir)
    targets = [(out_dir / f"{s}.png", out_dir / f"{s}_overlay.png") for s in stems]
    writers: dict[Path, Path] = {}
    for path, pair in zip(paths, targets):
        for target in pair:  # "a.png" and "a_overlay.png" as inputs would both write a_overlay.png
            if target in writers:
                raise ValueError(f"input images {str(writers[target])!r} and {str(path)!r} would both write "
                                 f"{str(target)!r}; rename one")
            writers[target] = path
    if out_dir.is_dir():
        inputs = {p.resolve(): p for p in paths}
        for target in writers:
            check_output_file(target, overwrite=overwrite, name="output")
            if target.resolve() in inputs:
                raise ValueError(f"output {str(target)!r} would replace the input image "
                                 f"{str(inputs[target.resolve()])!r}; choose another --out")
    for path in paths:  # a corrupt or oversized input fails here, before any output exists
        read_image(path, max_pixels=max_pixels)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with the "train" extra; prediction works without the bar
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)
    written = []
    try:
        for path, (mask_path, overlay_path) in zip(paths, targets):
            image = read_rgb(path, max_pixels=max_pixels)
            probs = predict_probabilities(
                model, image[None].to(device), flip=flip, scales=scales, mean=meta.get("mean"), std=meta.get("std")
            )
            mask = probs.argmax(1)[0].cpu()
            atomic_write(mask_path, lambda tmp: save_index_png(mask, tmp))
            picture = Image.fromarray(overlay(image, mask))
            atomic_write(overlay_path, lambda tmp: picture.save(tmp, format="PNG"))
            written += [mask_path, overlay_path]
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return written
