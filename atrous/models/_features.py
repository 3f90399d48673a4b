"""Named intermediate feature maps from a backbone whose forward runs its children in order.

DeepLab v3+ (Chen et al. 2018, "Encoder-decoder with atrous separable convolution") and FCN-8s
(Long et al. 2015) need low-level features next to the last feature map; this wrapper returns
them by name without touching the backbone's code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def run_children(
    children: Iterable[tuple[str, nn.Module]], x: torch.Tensor, return_layers: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Feed ``x`` through ``children`` in order; return ``{key: output}`` of those named in ``return_layers``.

    Stops after the last requested child, so later ones cost nothing.

    Args:
        children: ``(name, module)`` pairs, e.g. ``backbone.named_children()``.
        x: the input of the first child.
        return_layers: ``{child name: output key}``.
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in children:
        x = module(x)
        if name in return_layers:
            out[return_layers[name]] = x
            if len(out) == len(return_layers):
                break
    return out


class FeatureExtractor(nn.Module):
    """Run a backbone's children in order and return the outputs of the named ones.

    The backbone must compute ``forward`` by calling its direct children one after another
    (true of every backbone in ``atrous.models.segmentation``). Children after the last
    requested one are dropped, so they cost nothing and hold no parameters.

    Args:
        backbone: a module whose forward is the sequential composition of its children.
        return_layers: ``{child name: output key}``, e.g. ``{"layer1": "low", "layer4": "out"}``.

    Shape:
        ``(N, C, H, W)`` -> ``{key: (N, C_k, H_k, W_k)}`` in the order the children run.
    """

    def __init__(self, backbone: nn.Module, return_layers: dict[str, str]) -> None:
        super().__init__()
        names = [name for name, _ in backbone.named_children()]
        missing = [name for name in return_layers if name not in names]
        if not return_layers or missing:
            raise ValueError(
                f"return_layers must name children of the backbone; got {sorted(return_layers)}, "
                f"children are {names}"
            )
        last = max(names.index(name) for name in return_layers)
        self.body = nn.ModuleDict(OrderedDict(list(backbone.named_children())[: last + 1]))
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return run_children(self.body.items(), x, self.return_layers)
