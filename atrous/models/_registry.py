"""Model registry: ``@register_model`` on a builder, then ``create(name, **kwargs)``.

The test suite is driven by this registry, so a newly registered model is tested
automatically (the timm pattern).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, task: str = "segmentation"):
    """Register a builder under its function name.

    Args:
        fn: the builder; keyword arguments only beyond ``num_classes``.
        task: ``"segmentation"``, ``"backbone"`` or ``"sequence"``; tests and the CLI pick
            models by task.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
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


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def create(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``create("deeplabv3_resnet50", num_classes=21)``."""
    _check_name(name)
    return _REGISTRY[name](**kwargs)
