"""Load a trained checkpoint (or a model and a weights file) and label images: palette PNGs of class
indices plus overlays; images larger than a tile run in overlapping tiles (:mod:`atrous.engine.tiling`).

Outputs are written the way checkpoints are (:func:`atrous._files.atomic_write`: a
temporary name in the same folder, then renamed), never through a symbolic link, and every input
is decoded once before the first output is written, so a bad input leaves the folder untouched.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous._checks import check_int, finite_numbers, int_range, is_int
from atrous._files import atomic_write, check_output_file
from atrous.data.folders import DEFAULT_MAX_PIXELS, read_image
from atrous.data.palette import MAX_CLASSES
from atrous.engine.checkpoint import META_FILE, checkpoint_dir, load_checkpoint, read_checkpoint_meta
from atrous.engine.config import TrainConfig
from atrous.engine.evaluate import check_scales, predict_labels
from atrous.engine.preprocess import MEAN, STD, check_stats
from atrous.engine.prior import with_background_prior
from atrous.engine.tiling import DEFAULT_TILE, Tiler


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its best checkpoint, else its last) or a checkpoint folder/file -> checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return checkpoint_dir(path)


def _field_error(file: Path, field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"checkpoint file {str(file)!r}: field 'meta.{field}' must be {expected}, got {value!r}")


def _check_meta(meta: dict[str, Any], file: Path, in_channels: Any) -> None:
    """The metadata prediction reads, checked so a crafted or damaged file names its field."""
    if not isinstance(meta["model"], str):
        raise _field_error(file, "model", "a registered model name", meta["model"])
    classes = meta["num_classes"]
    if not is_int(classes) or not 1 <= classes <= MAX_CLASSES:
        raise _field_error(file, "num_classes", int_range(1, MAX_CLASSES), classes)
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != classes
                              or not all(isinstance(n, str) for n in names)):
        raise _field_error(file, "class_names", f"a list of {classes} strings (one per class)", names)
    channels = in_channels if is_int(in_channels) else 3
    for key, low in (("mean", -math.inf), ("std", 0.0)):
        value = meta.get(key)
        numbers = isinstance(value, list) and finite_numbers(value, above=low, length=channels)
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


def classes_in_weights(name: str, state: dict[str, torch.Tensor], **model_args: Any) -> int | None:
    """The class count a weights file was saved with, from the tensors whose shape follows ``num_classes``.

    ``name`` is built twice on the meta device (1 and 2 classes, no memory); the axis that changes
    in each differing tensor gives the count in ``state``. ``None`` when the file has none of those
    tensors or they disagree.
    """
    from atrous.models import create
    from atrous.models.weights import upgrade_state_dict

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [create(name, num_classes=k, **model_args) for k in (1, 2)]
    one, two = (model.state_dict() for model in models)
    state = upgrade_state_dict(state, models[0])  # runs saved with the old DeepLab key names
    counts = set()
    for key, tensor in one.items():
        if key in state and tensor.shape != two[key].shape and state[key].ndim == tensor.ndim:
            axis = next(i for i, (a, b) in enumerate(zip(tensor.shape, two[key].shape)) if a != b)
            counts.add(int(state[key].shape[axis]))
    return counts.pop() if len(counts) == 1 else None


def model_from_weights(
    name: str,
    weights: str | Path,
    *,
    num_classes: int | None = None,
    model_args: dict[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """A registered segmentation model with a local weights file (``atrous.models.create(name, weights=...)``):
    a released torchvision checkpoint, or a ``state_dict`` saved from an atrous model.

    Args:
        name: a registered segmentation model.
        weights: the ``.pth``/``.pt`` or ``.safetensors`` file (atrous never downloads; see docs/inference.md).
        num_classes: the class count; by default read from the file's classifier.
        model_args: other builder arguments (``head="torchvision"`` for torchvision's DeepLab v3).
        mean, std: input normalisation of RGB in [0, 1]; default ImageNet's, which torchvision's and
            timm's checkpoints expect and atrous runs train with unless told otherwise.
        device: where to put the model.

    Returns:
        ``(model in eval mode, meta)`` with ``meta`` as :func:`load_trained_model`'s (``model``,
        ``num_classes``, ``mean``, ``std``, ``model_kwargs``) plus ``weights`` and ``weights_report``
        (the one-line :class:`~atrous.models.WeightsReport`: what was loaded, skipped, newly initialised).

    Raises:
        FileNotFoundError: no file at ``weights``.
        ValueError: not a segmentation model, a file that does not fit it or leaves any of its tensors
            newly initialised (the message says which; tensors of the file the model lacks, such as
            an auxiliary head, are skipped and reported), a class count neither given nor in the
            file, or bad ``mean``/``std``.
    """
    from atrous.engine.trainer import check_model_size
    from atrous.models import create, load_weights, model_task, read_state_dict

    if model_task(name) != "segmentation":
        raise ValueError(f"model (--model) {name!r} is a {model_task(name)} model; predict and eval need a "
                         f"segmentation model")
    model_args = dict(model_args or {})
    for key in ("num_classes", "weights", "backbone_weights"):
        if key in model_args:
            raise ValueError(f"model_args (--model-arg) must not set {key!r}; it has its own argument")
    channels = model_args.get("in_channels", 3)
    check_int(channels, "model_args (--model-arg) in_channels", low=1)
    if channels != 3 and (mean is None or std is None):
        raise ValueError(f"a model with {channels} input channels needs mean (--mean) and std (--std): "
                         f"ImageNet's statistics are for RGB")
    mean, std = check_stats(MEAN if mean is None else mean, STD if std is None else std, channels=channels,
                            names=("mean (--mean)", "std (--std)"))
    if num_classes is not None:
        check_int(num_classes, "num_classes (--num-classes)", low=1, high=MAX_CLASSES)
    check_model_size(name, num_classes=num_classes or 2, **model_args)
    state = read_state_dict(weights)  # read once: for the class count and the load
    if num_classes is None:
        num_classes = classes_in_weights(name, state, **model_args)
        if num_classes is None:
            # a file of another layout says so (the loader's message names what it holds), not that
            # the class count is missing
            load_weights(create(name, num_classes=1, **model_args), weights, state=state)
            raise ValueError(f"weights file {str(weights)!r} does not say how many classes {name} predicts; "
                             f"give num_classes (--num-classes)")
        check_int(num_classes, "the class count in the weights file", low=1, high=MAX_CLASSES)
        check_model_size(name, num_classes=num_classes, **model_args)
    model = create(name, num_classes=num_classes, **model_args)
    report = load_weights(model, weights, state=state)  # a partial load is refused below, with the report
    model.weights_report = report
    if report.initialised:  # a classifier left at random initialisation predicts noise
        raise ValueError(f"weights file {str(weights)!r} does not hold all of {name}'s tensors, so predictions would "
                         f"come from random ones ({report}); check --model, --model-arg and --num-classes")
    meta = {"model": name, "num_classes": num_classes, "mean": mean, "std": std, "model_kwargs": model_args,
            "weights": str(weights), "weights_report": str(report)}
    return model.to(device).eval(), meta


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
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
) -> list[Path]:
    """Write ``STEM.png`` (palette PNG whose pixel values are class indices) and
    ``STEM_overlay.png`` for each image into ``out_dir``.

    Nothing is written until every input has been decoded (images with more than ``max_pixels``
    pixels are refused from their headers) and every output path checked. Each file is written
    to a temporary name in ``out_dir`` and renamed into place, so an output is whole or absent;
    a failure after the first image (a full disk) keeps the outputs of the images before it.
    Images larger than ``tile`` on either side run in overlapping tiles of which only the class
    indices are kept (:class:`~atrous.engine.tiling.Tiler`; ``tile=0`` runs every image whole).

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false.
        ValueError: two inputs share a file stem or an output, an output would replace an input,
            an input is unreadable, an output path is a symbolic link, ``scales`` are not
            finite numbers > 0, or ``tile``/``overlap`` are out of range.
        FileNotFoundError: an input does not exist.
        NotADirectoryError: ``out_dir`` is a file.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("predicting images needs the 'pillow' package: pip install 'atrous[train]'") from None

    from atrous.data.palette import overlay, save_index_png

    scales = check_scales(scales)
    tiler = Tiler(model, tile=tile, overlap=overlap, name=meta.get("model", "the model"))
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
            mask = predict_labels(model, image[None], flip=flip, scales=scales, mean=meta.get("mean"),
                                  std=meta.get("std"), tiler=tiler, device=device, progress=progress)[0]
            save_index_png(mask, mask_path)  # atomic, like the overlay
            picture = Image.fromarray(overlay(image, mask))
            atomic_write(overlay_path, lambda tmp: picture.save(tmp, format="PNG"))
            written += [mask_path, overlay_path]
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return written
