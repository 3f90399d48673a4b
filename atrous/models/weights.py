"""Bring your own weights: load a local checkpoint of torchvision, timm or atrous into an atrous model.

``atrous.models.create(name, weights=PATH)`` and ``create(name, backbone_weights=PATH)`` call
:func:`load_weights` and :func:`load_backbone_weights`; atrous never downloads anything. A file is a
``torch.save``d ``state_dict`` read with ``torch.load(weights_only=True)`` (a plain ``state_dict``, or a
dict holding one under ``"state_dict"`` or ``"model"``), or a ``.safetensors`` file; a pickle of
objects is refused. The layouts and the VGG fc6/fc7 conversion are in ``atrous.models._layouts``.

What fits loads; what does not is either an error (a file of another architecture, a backbone that
differs in any tensor) or, for a whole-model load, reported: file tensors skipped and model tensors
newly initialised, e.g. a classifier for another class count. :class:`WeightsReport` says which, in
one line. torchvision's and timm's checkpoints expect RGB input in [0, 1] normalised with ImageNet's
mean and std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`); the report carries them.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from atrous._checks import check_bool
from atrous.models._layouts import (
    Backbone,
    classification_backbone,
    describe,
    find_backbone,
    fit_vgg_fc,
    resnet_name,
    segmentation_backbone,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUX_HEAD = "aux_classifier."  # a model or a file may lack the auxiliary head; the rest must match
_WRAPPERS = ("state_dict", "model")  # training scripts' checkpoint dicts hold the state_dict under these


class WeightsWarning(UserWarning):
    """A whole-model load left file tensors unused or model tensors newly initialised."""


@dataclass(frozen=True)
class WeightsReport:
    """What a load did; ``str(report)`` says it in one line.

    Attributes:
        path: the file read.
        source: the file in words, e.g. ``"ResNet-50 weights (torchvision/timm ImageNet classification layout)"``.
        target: ``"model"`` (a whole-model load) or the backbone's module path (``"backbone"``, ``"trunk"``).
        loaded: model ``state_dict`` keys now holding the file's tensors.
        skipped: file keys not loaded (an ImageNet classifier, a head of another shape, an auxiliary
            head the model lacks).
        initialised: model keys that keep their fresh initialisation.
        conversions: how tensors were converted (VGG-16's fc6/fc7), one note each.
        mismatched: ``(key, shape in the file, shape in the model)`` of the keys both have in
            different shapes (among ``skipped`` and ``initialised``).
        mean, std: per-channel input normalisation (RGB in [0, 1]) the file was trained with:
            ImageNet's for a torchvision or timm layout, ``None`` for atrous's own (use its run's).
        partial: a whole-model load with skipped or newly initialised keys (``create`` then warns).
    """

    path: str
    source: str
    target: str
    loaded: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    initialised: tuple[str, ...] = ()
    conversions: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    partial: bool = False

    def __str__(self) -> str:
        into = "the model" if self.target == "model" else f"the backbone ({self.target})"
        parts = [f"loaded {len(self.loaded)} tensors from {self.path!r}, {self.source}, into {into}"]
        parts += list(self.conversions)
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} from the file: {_summary(self.skipped)}")
        if self.initialised:
            parts.append(f"newly initialised {len(self.initialised)}: {_summary(self.initialised)}")
        if self.mismatched:
            key, file, model = self.mismatched[0]
            more = f" and {len(self.mismatched) - 1} more" if len(self.mismatched) > 1 else ""
            parts.append(f"shapes differ for {key} ({file} in the file, {model} in the model){more}")
        if self.mean is not None:
            parts.append(f"expects ImageNet-normalised RGB input (mean {self.mean}, std {self.std})")
        return "; ".join(parts)


def _summary(keys: Sequence[str], limit: int = 6) -> str:
    """Keys grouped by module (``classifier.4.weight``, ``.bias`` -> ``classifier.4``), at most ``limit`` named."""
    modules = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))
    more = f" and {len(modules) - limit} more" if len(modules) > limit else ""
    return ", ".join(modules[:limit]) + more


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read without unpickling objects.

    Args:
        path: a ``torch.save``d ``state_dict`` (or a dict holding one under ``"state_dict"`` or
            ``"model"``), or a safetensors file; told apart by content, not name. A ``module.``
            prefix on every key (``DataParallel``) is removed.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a directory, an unreadable or corrupt file, a pickle of objects, or no
            ``state_dict`` of tensors inside.
        ImportError: a safetensors file without the ``safetensors`` package.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"weights path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    name = repr(str(path))
    if not path.exists():
        raise FileNotFoundError(f"weights file {name} does not exist")
    if path.is_dir():
        raise ValueError(f"weights file {name} is a directory; give the file (.pth/.pt or .safetensors)")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise ValueError(f"weights file {name} is unreadable: {error.strerror or error}") from None
    if path.suffix == ".safetensors" or head[8:10] == b'{"':  # 8-byte header length, then JSON
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError("reading .safetensors weights needs the 'safetensors' package: "
                              "pip install 'atrous[train]'") from None
        try:
            return _unwrap(load_file(path, device="cpu"), name)
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"weights file {name} is not a readable safetensors file: {error}") from None
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or its legacy pickle
        raise ValueError(f"weights file {name} is neither a torch.save file nor a safetensors file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f" (it holds a {found.group(1)})" if found else ""
        raise ValueError(f"weights file {name} holds pickled Python objects{what}, which atrous does not "
                         f"unpickle: save model.state_dict() (read with torch.load(weights_only=True))") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as error:
        raise ValueError(f"weights file {name} is a corrupt torch.save file: {error}") from None
    return _unwrap(content, name)


def _unwrap(content: object, name: str) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(content, Mapping) and isinstance(content.get(key), Mapping):
            content = content[key]
            break
    if not isinstance(content, Mapping) or not content:
        kind = f"a dict with keys {list(content)[:6]}" if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(f"weights file {name} holds {kind}, not a state_dict (a dict of tensors, or one under "
                         f"{' or '.join(map(repr, _WRAPPERS))})")
    bad = [key for key, value in content.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"weights file {name} holds a dict with non-tensor entries ({bad[:4]}), not a state_dict")
    state = dict(content)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # BatchNorm's step count: no weight, refilled when absent


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _kind_differs(file: torch.Tensor, model: torch.Tensor) -> bool:
    """Integer weights where the model has floats (or the reverse): not a precision, a wrong file."""
    return file.is_floating_point() != model.is_floating_point()


def _differences(file: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], limit: int = 3) -> list[str]:
    """The first differences between two key sets, in words."""
    lines = []
    shapes = [f"{k} is {_shape(file[k])} in the file, {_shape(model[k])} in the model"
              for k in file if k in model and file[k].shape != model[k].shape]
    shapes += [f"{k} holds {file[k].dtype} in the file where the model holds {model[k].dtype}"
               for k in file if k in model and file[k].shape == model[k].shape and _kind_differs(file[k], model[k])]
    only_model = [k for k in model if k not in file and not _counter(k)]
    only_file = [k for k in file if k not in model and not _counter(k)]
    if shapes:
        lines.append("; ".join(shapes[:limit]) + (f" (and {len(shapes) - limit} more)" if len(shapes) > limit else ""))
    if only_model:
        lines.append(f"{len(only_model)} keys missing from the file ({_summary(only_model, limit)})")
    if only_file:
        lines.append(f"{len(only_file)} keys the model lacks ({_summary(only_file, limit)})")
    return lines


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Load an ImageNet classification checkpoint into ``model``'s ResNet or VGG-16 backbone.

    Layouts: torchvision's or timm's ResNet-18/34/50/101 (at any output stride: dilation has no
    weights) and VGG-16 (fc6/fc7 converted to the trunk's convolutions, see ``atrous.models._layouts``),
    or the ``backbone`` of a segmentation checkpoint. The classifier (``fc``, fc8) is skipped and
    everything outside the backbone keeps its initialisation.

    Args:
        model: an atrous model with a ResNet or VGG-16 backbone, or such a backbone itself.
        path: the weights file (see :func:`read_state_dict`).

    Returns:
        The :class:`WeightsReport`.

    Raises:
        ValueError: the model has no such backbone, the file is of another layout, or any backbone
            tensor is missing or of another shape (another depth, width or input channels).
    """
    model_state = model.state_dict()
    found = find_backbone(model_state)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no ResNet or VGG-16 backbone for backbone_weights= "
                         f"(models with one: deeplabv3*, deeplabv3plus*, fcn_resnet*, dilation8_vgg16, "
                         f"deeplabv1_largefov_vgg16, fcn8s_vgg16 and the backbones)")
    state = read_state_dict(path)
    backbone = classification_backbone(state) or segmentation_backbone(state)
    if not isinstance(backbone, Backbone):
        what = backbone if isinstance(backbone, str) else describe(state)[0]
        raise ValueError(f"weights file {str(path)!r} holds {what}, not ImageNet classification weights of a "
                         f"ResNet (torchvision/timm) or VGG-16 (torchvision/timm)")
    return _load_backbone(model, model_state, found, backbone, str(path), target=None)


def _load_backbone(model: nn.Module, model_state: Mapping[str, torch.Tensor], found: tuple[str, str],
                   backbone: Backbone, path: str, *, target: str | None) -> WeightsReport:
    kind, prefix = found
    body = {key[len(prefix):]: value for key, value in model_state.items() if key.startswith(prefix)}
    expected = resnet_name(body) if kind == "resnet" else "VGG-16 trunk"
    if backbone.kind != kind:
        raise ValueError(f"weights file {path!r} holds {backbone.name} weights; the model's backbone is a {expected}")
    if kind == "vgg16":
        fit_vgg_fc(backbone, {key: value.shape for key, value in body.items()})
    differences = _differences(backbone.state, body)
    if differences:
        raise ValueError(f"weights file {path!r} holds {backbone.name} weights ({backbone.source}) that do not fit "
                         f"the model's backbone, a {expected}: {'; '.join(differences)}")
    model.load_state_dict({prefix + key: value for key, value in backbone.state.items()}, strict=False)
    imagenet = backbone.imagenet
    rest = tuple(key for key in model_state if not key.startswith(prefix) and not _counter(key))
    return WeightsReport(
        path, f"{backbone.name} weights ({backbone.source})", target or prefix.rstrip(".") or "model",
        loaded=tuple(prefix + key for key in backbone.state), skipped=backbone.classifier, initialised=rest,
        conversions=tuple(backbone.notes), mean=IMAGENET_MEAN if imagenet else None,
        std=IMAGENET_STD if imagenet else None,
    )


def upgrade_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with the key names atrous used before DeepLab's head took torchvision's layout.

    Runs saved before then name the ASPP branches ``aspp.branches.N`` and (in DeepLab v3) the
    classifier ``classifier``; the modules, their order and their tensors are unchanged, so the
    renamed file loads (and its optimizer state still lines up parameter for parameter). A state
    without the old names comes back as it was.
    """
    if not any(key.startswith("aspp.branches.") for key in state):
        return dict(state)
    model_keys = set(model.state_dict())
    in_head = any(key.startswith("classifier.0.convs.") for key in model_keys)  # v3: ASPP inside the head
    # the head's last layer: the 1x1 classifier that was ``classifier`` itself
    final = max((key.rsplit(".", 1)[0] for key in model_keys
                 if key.startswith("classifier.") and not key.startswith("classifier.0.") and key.endswith(".weight")),
                default=None)
    upgraded = {}
    for key, value in state.items():
        if key.startswith("aspp.branches."):
            key = "aspp.convs." + key.removeprefix("aspp.branches.")
        if in_head and key.startswith("aspp."):
            key = "classifier.0." + key.removeprefix("aspp.")
        elif in_head and final is not None and key in ("classifier.weight", "classifier.bias"):
            key = f"{final}.{key.rsplit('.', 1)[1]}"
        upgraded[key] = value
    return upgraded


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = False,
                 state: Mapping[str, torch.Tensor] | None = None) -> WeightsReport:
    """Load a whole model's weights: torchvision's ``deeplabv3_resnet50/101`` and ``fcn_resnet50/101``
    (into atrous's with ``head="torchvision"``, resp. ``fcn_resnet*``), an atrous ``state_dict``, or,
    into a backbone model (``resnet50``, ``vgg16_dilation_frontend``), ImageNet classification weights.

    The backbone must match tensor for tensor; in the heads, tensors of another shape (a classifier
    for another class count) and an auxiliary head on one side only are skipped or newly initialised
    and listed in the report; any other difference is an error.

    Args:
        model: the atrous model, built with the file's architecture.
        path: the weights file (see :func:`read_state_dict`).
        strict: refuse any skipped or newly initialised tensor (an ImageNet classifier, which a
            backbone model has no place for, aside).
        state: the file's tensors when they were already read (``read_state_dict(path)``), so
            that a caller who looked into the file does not read it twice; ``path`` then names it.

    Returns:
        The :class:`WeightsReport`; ``partial`` when something was skipped or newly initialised.

    Raises:
        ValueError: the file does not fit the model (with what it holds and what differs), or
            ``strict`` and the load is partial.
    """
    check_bool(strict, "strict")
    model_state = model.state_dict()
    state = upgrade_state_dict(read_state_dict(path) if state is None else state, model)
    name, found = str(path), find_backbone(model_state)
    classification = classification_backbone(state)
    if isinstance(classification, Backbone):
        if found is None:
            raise ValueError(f"weights file {name!r} holds {classification.name} weights ({classification.source}), "
                             f"which fit no part of {type(model).__name__}")
        if found[1]:
            raise ValueError(f"weights file {name!r} holds {classification.name} weights ({classification.source}); "
                             f"load them into a segmentation model's backbone with backbone_weights=, not weights=")
        return _load_backbone(model, model_state, found, classification, name, target="model")
    source, imagenet = describe(state)
    expected = describe(model_state)[0] if found else f"whose keys begin {', '.join(list(model_state)[:3])}"
    if not set(state) & set(model_state):
        raise ValueError(f"weights file {name!r} holds {source}, which matches no layout of {type(model).__name__} "
                         f"({expected}); whole-model weights are torchvision's segmentation models or atrous "
                         f"state_dicts, ImageNet classification weights go to backbone_weights=")
    if found is not None:
        prefix = found[1]
        backbone_differences = _differences({k: v for k, v in state.items() if k.startswith(prefix)},
                                            {k: v for k, v in model_state.items() if k.startswith(prefix)})
        if backbone_differences:
            raise ValueError(f"weights file {name!r} holds {source}; the model is {expected}; their backbones "
                             f"differ: {'; '.join(backbone_differences)}")
    structural = [k for k in (set(state) ^ set(model_state)) if not k.startswith(AUX_HEAD) and not _counter(k)]
    if structural:
        raise ValueError(f"weights file {name!r} holds {source}, which does not fit {type(model).__name__} "
                         f"({expected}): {'; '.join(_differences(state, model_state))}{_hint(state, model_state)}")
    wrong_kind = [k for k in state if k in model_state and not _counter(k) and _kind_differs(state[k], model_state[k])]
    if wrong_kind:
        raise ValueError(f"weights file {name!r} holds {source}, which does not fit {type(model).__name__}: "
                         f"{'; '.join(_differences(state, model_state))}")
    mismatched = [k for k in state if k in model_state and state[k].shape != model_state[k].shape]
    loaded = tuple(k for k in state if k in model_state and k not in mismatched)
    skipped = tuple(k for k in state if k not in loaded and not _counter(k))
    initialised = tuple(k for k in model_state if k not in loaded and not _counter(k))
    report = WeightsReport(
        name, source, "model", loaded, skipped, initialised,
        mismatched=tuple((k, _shape(state[k]), _shape(model_state[k])) for k in mismatched),
        mean=IMAGENET_MEAN if imagenet else None, std=IMAGENET_STD if imagenet else None,
        partial=bool(skipped or initialised),
    )
    if strict and report.partial:
        raise ValueError(f"strict load refused: weights file {name!r} does not fit the model exactly ({report})")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return report


def _hint(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> str:
    pooling_bn = "classifier.0.convs.4.2.running_mean"
    if pooling_bn in state and "classifier.0.convs.4.conv.weight" in model_state:
        return ("; torchvision's DeepLab v3 checkpoints need head='torchvision' and output_stride=8, the stride "
                "they were trained at (on the command line: --model-arg head=torchvision --model-arg output_stride=8)")
    if pooling_bn in model_state and "classifier.0.convs.4.conv.weight" in state:
        return "; this is atrous's own DeepLab head: build the model with head='paper'"
    return ""
