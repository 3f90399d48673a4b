"""Analytic receptive field of any PyTorch model, with a per-layer table and its cost.

The field of a stack of layers is ``1 + sum_l (k_l - 1) * d_l * prod_{m<l} s_m`` (Yu & Koltun
2016 for dilation; Araujo et al. 2019, "Computing receptive fields of convolutional neural
networks", for the general recurrence and the alignment of branches). ``padding`` follows
TensorFlow's receptive_field library: output 0's field is centred at
``-padding + (size - 1) / 2`` and output ``i``'s at that plus ``i * stride``.

Each row also carries the parameters and multiply-adds of its layer, which makes the point of
dilation visible: rates 1, 2, 4, 8 widen the field from 3 to 31 at the cost of four 3x3 layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from atrous._checks import check_ints
from atrous.analysis import _fields
from atrous.analysis._ops import LayerRow
from atrous.analysis._trace import walk


@dataclass
class ReceptiveField:
    """Receptive field of a model's output, one entry per spatial axis.

    Attributes:
        size: input samples the field of one output spans.
        stride: distance between the fields of adjacent outputs (fractional after upsampling).
        padding: TensorFlow convention: output 0's field starts at input ``-padding``.
        layers: the field-changing and costed operations in execution order.
        whole: per axis, whether the field is the whole input (global pooling on the way).
        input_shape: ``(C, *spatial)`` the analysis ran at.
        params: parameters of the model (every parameter, norms included).
        macs: multiply-adds of one forward pass (sum over ``layers``).
        method: ``"fx"``, ``"hooks"`` or ``"empirical"``.
        warnings: misaligned branches and operations the rules did not know.
        support: for an empirical field, the boolean map of input samples that reach the
            centre output (spatial shape of the input); None otherwise.
    """

    size: tuple[int | float, ...]
    stride: tuple[int | float, ...]
    padding: tuple[int | float, ...]
    layers: list[LayerRow] = field(default_factory=list)
    whole: tuple[bool, ...] = ()
    input_shape: tuple[int, ...] = ()
    params: int = 0
    macs: int = 0
    method: str = "fx"
    warnings: list[str] = field(default_factory=list)
    support: torch.Tensor | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: size, stride, padding, layers (one dict each), params and macs."""
        return {
            "size": list(self.size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "whole_input": list(self.whole),
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "method": self.method,
            "layers": [row.as_dict() for row in self.layers],
            "warnings": list(self.warnings),
        }

    def table(self) -> str:
        """The per-layer table as Markdown: field, stride and cost of every layer, and totals."""
        header = ("Layer", "Op", "Kernel", "Stride", "Dilation", "RF", "Jump", "Params", "MACs")
        rows = [
            (row.name, row.op, _axes(row.kernel), _axes(row.stride), _axes(row.dilation), _axes(row.size),
             _axes(row.jump), f"{row.params:,}", f"{row.macs:,}")
            for row in self.layers
        ]
        rows.append(("total", "", "", "", "", _axes(self.size), _axes(self.stride), f"{self.params:,}", f"{self.macs:,}"))
        return markdown_table(header, rows)


def _axes(values: Sequence | None) -> str:
    if values is None:
        return "-"
    values = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return values[0] if len(set(values)) == 1 else "x".join(values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned Markdown table with columns padded to their widest cell."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    lines = [header, tuple("-" * w for w in widths), *rows]
    return "\n".join("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |" for line in lines)


def receptive_field(model: nn.Module, input_shape: Sequence[int]) -> ReceptiveField:
    """Analytic receptive field of ``model`` at one input size.

    Traced with torch.fx where possible (forward hooks otherwise) on ``meta`` tensors, so no
    arithmetic runs. Convolutions of any kernel, stride, dilation, padding and groups, the
    atrous layers, pooling, adaptive and global pooling (field = whole input, flagged),
    upsampling (fractional stride), padding, slicing, shape-preserving ops, residual sums and
    concatenation (union of the branches, with a warning when they are misaligned) are
    understood.

    Args:
        model: any ``nn.Module`` taking one ``(N, C, *spatial)`` tensor.
        input_shape: ``(C, *spatial)``, e.g. ``(3, 512, 512)``; the batch of 1 is added.

    Returns:
        A :class:`ReceptiveField` for the model's output (the union over its outputs when it
        returns several, e.g. a dict of heads).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``input_shape`` is not ``(C, *spatial)`` with positive sizes, or the model
            does not run on it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    input_shape = check_input_shape(input_shape)
    state, fields, method = walk(model, input_shape)
    for message in state.recorder.warnings:
        warnings.warn(message, stacklevel=2)
    seen, params = set(), 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            params += parameter.numel()
    return ReceptiveField(
        size=tuple(_fields.as_number(a.size) for a in fields),
        stride=tuple(_fields.as_number(a.jump) for a in fields),
        padding=tuple(_fields.as_number(-a.start) for a in fields),
        layers=state.recorder.rows,
        whole=tuple(a.whole for a in fields),
        input_shape=input_shape,
        params=params,
        macs=sum(row.macs for row in state.recorder.rows),
        method=method,
        warnings=list(state.recorder.warnings),
    )


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Validate ``(C, *spatial)``: 2 to 4 positive ints."""
    return check_ints(input_shape, "input_shape", length=range(2, 5),
                      example="(3, 64, 64) (channels, then 1 to 3 spatial sizes)")
