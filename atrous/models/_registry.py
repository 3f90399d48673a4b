"""Model registry: ``@register_model`` on a builder, then ``create(name, **kwargs)``.

Every builder is a plain ``def`` whose arguments are all keyword-only and listed in its
signature, so ``create`` can name an unknown or missing argument and a grep finds every model.
Segmentation builders take ``num_classes`` with no default: the class count belongs to the data.
The test suite is driven by this registry, so a newly registered model is tested automatically
(the timm pattern).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable

from torch import nn

from atrous.models.weights import WeightsWarning, load_backbone_weights, load_weights

TASKS = ("segmentation", "backbone", "sequence")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def _check_builder(builder: Callable[..., nn.Module], task: str) -> None:
    name = getattr(builder, "__name__", repr(builder))
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    parameters = inspect.signature(builder).parameters.values()
    loose = [p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    if loose:
        raise TypeError(f"builder {name!r} must take keyword-only arguments (after `*`), not {loose}")
    num_classes = {p.name: p for p in parameters}.get("num_classes")
    if task == "segmentation" and (num_classes is None or num_classes.default is not inspect.Parameter.empty):
        raise TypeError(f"segmentation builder {name!r} must take `num_classes` with no default "
                        f"(the class count comes from the data)")


def register_model(fn: Callable[..., nn.Module] | None = None, *, task: str = "segmentation"):
    """Register a builder under its function name.

    Args:
        fn: the builder, e.g. ``def context_net(*, num_classes: int, width_multiplier: float = 1.0)``;
            every argument keyword-only, ``num_classes`` required for segmentation models.
        task: ``"segmentation"``, ``"backbone"`` or ``"sequence"``; tests and the CLI pick
            models by task.

    Raises:
        TypeError: the builder's signature breaks the rules above.
        ValueError: unknown ``task``, or the name is taken.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _check_builder(builder, task)
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        _TASKS[name] = task
        return builder

    return wrap(fn) if fn is not None else wrap


def list_models(task: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally only those of one task."""
    return sorted(name for name in _REGISTRY if task is None or _TASKS[name] == task)


def model_task(name: str) -> str:
    """The task a registered model was registered with."""
    _check_name(name)
    return _TASKS[name]


def model_arguments(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments of a registered model's builder, by name, in signature order."""
    _check_name(name)
    return dict(inspect.signature(_REGISTRY[name]).parameters)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def create(name: str, *, weights: str | os.PathLike | None = None,
           backbone_weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``create("deeplabv3_resnet50", num_classes=21)``.

    Args:
        name: a registered model (``list_models()``).
        weights: a local weights file for the whole model (:func:`atrous.models.load_weights`):
            torchvision's DeepLab v3 / FCN checkpoints, an atrous ``state_dict``, or ImageNet
            weights for a backbone model.
        backbone_weights: a local ImageNet classification checkpoint (torchvision's or timm's
            ResNet or VGG-16) for the model's backbone (:func:`atrous.models.load_backbone_weights`).
        **kwargs: the builder's arguments (``model_arguments(name)``).

    Returns:
        The model. With ``weights`` or ``backbone_weights`` it carries ``model.weights_report``, a
        :class:`~atrous.models.WeightsReport` (``str()`` of it is one line; its ``mean``/``std`` give the
        input normalisation the file expects); a whole-model load that skipped or newly initialised
        tensors also warns (``WeightsWarning``) with that line.

    Raises:
        ValueError: ``name`` is not registered, the builder rejects a value, both weight files are
            given, or a file does not fit the model.
        TypeError: an argument the builder does not take, or a required one (``num_classes``) is missing.
        FileNotFoundError: a weights file does not exist.
    """
    arguments = model_arguments(name)
    unknown = [key for key in kwargs if key not in arguments]
    if unknown:
        raise TypeError(f"{name} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                        f"it takes: {', '.join(arguments)} (and weights, backbone_weights)")
    missing = [key for key, p in arguments.items() if p.default is inspect.Parameter.empty and key not in kwargs]
    if missing:
        raise TypeError(f"{name} needs the argument(s) {', '.join(missing)}, "
                        f"e.g. create({name!r}, {missing[0]}=...)")
    if weights is not None and backbone_weights is not None:
        raise ValueError("give weights= (the whole model's) or backbone_weights= (ImageNet weights for its "
                         "backbone), not both")
    model = _REGISTRY[name](**kwargs)
    if weights is None and backbone_weights is None:
        return model
    report = load_weights(model, weights) if weights is not None else load_backbone_weights(model, backbone_weights)
    model.weights_report = report
    if report.partial:
        warnings.warn(str(report), WeightsWarning, stacklevel=2)
    return model
