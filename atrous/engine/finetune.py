"""Fine-tuning from released weights: the weights file check, the backbone's own learning rate and
frozen BatchNorm.

Segmentation recipes that start from an ImageNet backbone or a released model (DeepLab, Chen et
al. 2017; torchvision's and mmsegmentation's reference recipes) train the pretrained backbone at
a lower learning rate than the new head and, with batches too small for useful statistics, keep
BatchNorm fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from atrous.engine.config import TrainConfig


def check_weights_file(path: str | Path, name: str) -> Path:
    """``path`` if it is a file this process can read; ``name`` (a config field or CLI option) names it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, or unreadable.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{name} {str(path)!r}: no such file (expected a .pth or .safetensors file)")
    if not file.is_file():
        raise ValueError(f"{name} {str(path)!r} is not a file (expected a .pth or .safetensors file)")
    try:
        with open(file, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r} is unreadable: {error.strerror or error}") from None
    return file


def backbone_prefix(model: nn.Module) -> str | None:
    """The ``named_parameters`` prefix of ``model``'s ResNet or VGG-16 trunk (``"backbone."``,
    ``"features.body."``, ``"trunk."``): where ``backbone_weights`` load; None if it has none."""
    from atrous.models.weights import find_backbone

    found = find_backbone(name for name, _ in model.named_parameters())
    return found[1] if found is not None else None


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s trainable parameters.

    With ``backbone_lr_scale != 1`` it has two parameter groups, the backbone's and the rest, each
    with its ``lr_scale``, which :func:`train_step` multiplies the scheduled learning rate by.

    Raises:
        ValueError: ``backbone_lr_scale != 1`` for a model without a ResNet or VGG-16 backbone.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": [p for _, p in named]}]
    if config.backbone_lr_scale != 1.0:
        prefix = backbone_prefix(model)
        if prefix is None:
            raise ValueError(f"backbone_lr_scale (--backbone-lr-scale) {config.backbone_lr_scale:g} needs a model with "
                             f"a ResNet or VGG-16 backbone; {config.model} has none (leave it at 1)")
        scale = config.backbone_lr_scale
        groups = [
            {"params": [p for name, p in named if name.startswith(prefix)], "lr": config.peak_lr * scale,
             "lr_scale": scale},
            {"params": [p for name, p in named if not name.startswith(prefix)], "lr_scale": 1.0},
        ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.peak_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.peak_lr, weight_decay=config.weight_decay)


def freeze_batchnorm(model: nn.Module) -> int:
    """Stop training every BatchNorm layer's scale and shift; returns how many layers there are.

    :func:`batchnorm_eval` keeps their running statistics as well: together they make each layer
    the fixed affine map its statistics and parameters define, as detection and segmentation
    recipes do when fine-tuning with batches too small for useful statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(False)
    return len(layers)


def batchnorm_eval(model: nn.Module) -> None:
    """Every BatchNorm layer of ``model`` in eval mode (normalising by, and leaving alone, its running statistics);
    called after ``model.train()``, which would switch them back."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
