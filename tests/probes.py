"""Gradient probes the model tests share: what an output really sees, measured by backprop."""

import torch
from torch import nn


def support_width(model: nn.Module, x: torch.Tensor) -> int:
    """Columns of ``x`` whose gradient reaches the centre output: the receptive field's width."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    columns = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    return int(columns.max() - columns.min() + 1)
