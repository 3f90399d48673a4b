"""Helpers shared by the segmentation builders: the width knob, the resize to the input size, and the
forward of a backbone with a main and an optional auxiliary head (DeepLab v3, FCN-ResNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch import nn

from atrous._checks import check_float
from atrous.models._features import run_children
from atrous.ops.capture import capturing

MAX_WIDTH_MULTIPLIER = 64.0  # 64 times the papers' widths is already past any GPU's memory


def scaled(channels: int, width_multiplier: float) -> int:
    """``channels * width_multiplier`` rounded, at least 1: the width knob of every builder."""
    check_float(width_multiplier, "width_multiplier", low=0.0, high=MAX_WIDTH_MULTIPLIER, low_open=True)
    return max(1, int(round(channels * width_multiplier)))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``(N, C, *size)`` (no-op when already that size).

    Under tracing or export the resize is always recorded (a same-size bilinear resize is exact), so
    a graph captured where the sizes happened to agree stays right where they do not.
    """
    if not capturing() and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


AUX_LAYER = "layer3"  # the auxiliary head's input, at output stride 16 or 8 like layer4


def classify(backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None, x: torch.Tensor,
             *, training: bool) -> torch.Tensor | dict[str, torch.Tensor]:
    """``classifier(backbone(x))`` at the input size; in training with an auxiliary head also its
    logits on ``layer3``, as ``{"out": logits, "aux": aux_logits}`` (torchvision's ``aux_loss``).

    Args:
        backbone: a ResNet whose forward runs its children in order.
        classifier, aux_classifier: heads on ``layer4`` and ``layer3``; ``aux_classifier`` may be ``None``.
        x: ``(N, C_in, H, W)``.
        training: whether the model is in training mode.
    """
    size = x.shape[-2:]
    if aux_classifier is None or not training:
        return resize_to(classifier(backbone(x)), size)  # backbone: (N, C, H / OS, W / OS)
    features = run_children(backbone.named_children(), x, {AUX_LAYER: "aux", "layer4": "out"})
    return {"out": resize_to(classifier(features["out"]), size),
            "aux": resize_to(aux_classifier(features["aux"]), size)}
