"""Tiny arguments for every registered model, the one table the registry-driven tests share.

A newly registered sequence model needs its entry in :data:`SEQUENCE` (its arguments differ from
model to model; ``test_every_registered_model_has_tiny_arguments`` in
``tests/models/sequence/test_sequence_registry.py`` fails until it is there); segmentation models
and backbones all take ``width_multiplier`` (and segmentation models ``num_classes``), so one entry
each serves them all. Imported as ``from tiny_models import ...``: pytest's default ``prepend``
import mode puts ``tests/`` (the folder of the root ``conftest.py``) on ``sys.path``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from atrous.models import create, model_task

SEGMENTATION: dict[str, Any] = {"num_classes": 3, "width_multiplier": 1 / 16}
BACKBONE: dict[str, Any] = {"width_multiplier": 1 / 16}
SEQUENCE: dict[str, dict[str, Any]] = {
    "tcn": {"in_channels": 3, "out_channels": 2, "hidden": 4, "levels": 3, "kernel_size": 3},
    "wavenet": {"classes": 8, "blocks": 2, "layers": 3, "residual_channels": 4, "gate_channels": 6, "skip_channels": 3},
}


def resnet101_twins(names: Iterable[str]) -> set[str]:
    """The ``*_resnet101`` models among ``names`` whose ``*_resnet50`` twin is there too.

    Each twin is built by the same builder with ``depth=101``: its ResNet-101 repeats the ResNet-50's
    bottleneck 17 more times in ``layer3`` and holds no module, padding or code path the ResNet-50
    version lacks. Tests whose cost grows with the layer count (export, compile, trace) skip it.
    """
    names = set(names)
    return {name for name in names if name.endswith("_resnet101") and name.replace("_resnet101", "_resnet50") in names}


def tiny_kwargs(name: str) -> dict[str, Any]:
    """The tiny builder arguments of the registered model ``name`` (a fresh dict)."""
    task = model_task(name)
    if task == "sequence":
        if name not in SEQUENCE:
            raise KeyError(f"sequence model {name!r} has no tiny arguments; add them to tests/tiny_models.py")
        return dict(SEQUENCE[name])
    return dict(SEGMENTATION if task == "segmentation" else BACKBONE)


def create_tiny(name: str, **overrides: Any) -> nn.Module:
    """``create(name)`` with its tiny arguments, ``overrides`` taking precedence; ASPP's warning that
    tiny inputs are smaller than its rates is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create(name, **{**tiny_kwargs(name), **overrides})


def calibrated(model: nn.Module, x: torch.Tensor, *, seed: int = 2) -> nn.Module:
    """Random BatchNorm scales in [0.5, 1.5) and shifts of std 0.1, then statistics of ``x``; in eval mode.

    The scales matter: residual branches that start at zero (the context module's) would otherwise
    leave their dilated convolutions out of the output. The statistics keep tiny random networks at
    O(1) outputs.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(x)
    return model.eval()
