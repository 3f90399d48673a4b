"""WaveNet: an autoregressive model of raw audio built from causal dilated convolutions.

van den Oord et al. (2016), "WaveNet: a generative model for raw audio". Each residual layer is
a causal dilated convolution of kernel 2 feeding a gated activation ``tanh(f) * sigmoid(g)``,
followed by a 1x1 residual convolution (added back to the layer's input) and a 1x1 skip
convolution. Dilations double from 1 to 512 within a block and the block is repeated. The summed
skips go through ``ReLU -> 1x1 -> ReLU -> 1x1`` to a softmax over 256 mu-law classes. Global
conditioning (e.g. a speaker id) adds a learned vector in every gate; local conditioning adds
a 1x1 projection of a conditioning sequence at the sample rate in every gate.

One block of rates 1..512 sees ``1 + 1023 = 1024`` samples; three blocks see ``3070``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atrous._checks import check_int
from atrous.models._registry import register_model
from atrous.ops.layers import CausalConv1d
from atrous.ops.padding import stack_receptive_field

MAX_LAYERS = 32  # layers per block: dilation 2**31 in the last
MAX_BLOCKS = 1024


@dataclass
class WaveNetConfig:
    """Hyper-parameters of :class:`WaveNet` (defaults: the paper's 3 blocks x 10 layers)."""

    classes: int = 256
    blocks: int = 3
    layers: int = 10
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 64
    kernel_size: int = 2
    global_classes: int = 0
    local_channels: int = 0

    def __post_init__(self) -> None:
        for name in ("classes", "residual_channels", "gate_channels", "skip_channels"):
            check_int(getattr(self, name), name, low=1)
        check_int(self.blocks, "blocks", low=1, high=MAX_BLOCKS)
        check_int(self.layers, "layers", low=1, high=MAX_LAYERS)
        if self.gate_channels % 2:
            raise ValueError(f"gate_channels must be even (filter and gate halves), got {self.gate_channels}")
        check_int(self.kernel_size, "kernel_size", low=2)  # a dilated stack needs two taps or more
        for name in ("global_classes", "local_channels"):  # 0 disables them
            check_int(getattr(self, name), name, low=0)


class GatedResidualLayer(nn.Module):
    """``z = tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h)``; returns ``(x + 1x1(z), 1x1(z))``.

    Args:
        config: the model's configuration.
        dilation: dilation of the causal convolution.
        residual: whether to have the 1x1 residual convolution (the last layer's residual
            output feeds nothing, so it has none).

    Shape:
        ``x``: ``(B, residual, T)``; ``global_bias``: ``(B, gate, 1)`` or ``None``;
        ``local``: ``(B, local_channels, T)`` or ``None`` -> ``(B, residual, T)``, ``(B, skip, T)``.
    """

    streamable = True  # forward is pointwise in time apart from its CausalConv1d

    def __init__(self, config: WaveNetConfig, dilation: int, *, residual: bool = True) -> None:
        super().__init__()
        half = config.gate_channels // 2
        self.dilated = CausalConv1d(config.residual_channels, config.gate_channels, config.kernel_size,
                                    dilation=dilation)
        self.local = None
        if config.local_channels:
            self.local = nn.Conv1d(config.local_channels, config.gate_channels, 1, bias=False)
        self.residual = nn.Conv1d(half, config.residual_channels, 1) if residual else None
        self.skip = nn.Conv1d(half, config.skip_channels, 1)

    def forward(
        self, x: torch.Tensor, global_bias: torch.Tensor | None = None, local: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dilated(x)  # (B, gate, T)
        if global_bias is not None:
            h = h + global_bias
        if local is not None and self.local is not None:
            h = h + self.local(local)
        filt, gate = h.chunk(2, dim=1)
        z = torch.tanh(filt) * torch.sigmoid(gate)  # (B, gate / 2, T)
        return (x if self.residual is None else x + self.residual(z)), self.skip(z)


class WaveNet(nn.Module):
    """WaveNet over mu-law classes; ``logits[:, :, t]`` predicts sample ``t + 1`` from ``x[<= t]``.

    Args:
        config: a :class:`WaveNetConfig`.

    Shape:
        ``x``: ``(B, T)`` int64 class ids, or ``(B, classes, T)`` float (one-hot or soft)
        -> ``(B, classes, T)`` logits.
    """

    streamable = True

    def __init__(self, config: WaveNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WaveNetConfig()
        self.in_channels = config.classes
        self.input = nn.Conv1d(config.classes, config.residual_channels, 1)
        self.dilations = [2**i for i in range(config.layers)] * config.blocks
        last = len(self.dilations) - 1
        self.layers = nn.ModuleList(
            GatedResidualLayer(config, d, residual=i < last) for i, d in enumerate(self.dilations)
        )
        self.speaker = nn.Embedding(config.global_classes, config.gate_channels) if config.global_classes else None
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(config.skip_channels, config.skip_channels, 1),
            nn.ReLU(), nn.Conv1d(config.skip_channels, config.classes, 1),
        )

    @property
    def receptive_field(self) -> int:
        """Samples one output sees: ``1 + sum (k - 1) * d`` (3070 for 3 blocks of 1..512)."""
        return stack_receptive_field(self.config.kernel_size, self.dilations)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids ``(B, T)`` or one-hot ``(B, classes, T)`` -> ``(B, residual, T)``."""
        classes = self.config.classes
        if x.ndim == 2 and not x.is_floating_point():
            if x.numel() and (x.min() < 0 or x.max() >= classes):
                raise ValueError(f"class ids must lie in [0, {classes}), got values in [{x.min()}, {x.max()}]")
            weight = self.input.weight[:, :, 0].t()  # a 1x1 conv on a one-hot input is a lookup
            return (F.embedding(x, weight) + self.input.bias).transpose(1, 2)
        if x.ndim == 3 and x.is_floating_point() and x.shape[1] == classes:
            return self.input(x)
        raise ValueError(
            f"x must be (B, T) int64 class ids or (B, {classes}, T) float, got shape {tuple(x.shape)} dtype {x.dtype}"
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        global_condition: torch.Tensor | None = None,
        local_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            x: ``(B, T)`` class ids or ``(B, classes, T)`` float.
            global_condition: ``(B,)`` int64 ids in ``[0, global_classes)``.
            local_condition: ``(B, local_channels, T)`` at the sample rate (see
                :func:`upsample_condition`).

        Returns:
            ``(B, classes, T)`` logits.
        """
        cfg = self.config
        h = self.embed(x)
        global_bias = None
        if cfg.global_classes:
            if global_condition is None or global_condition.shape != (h.shape[0],):
                shape = None if global_condition is None else tuple(global_condition.shape)
                raise ValueError(
                    f"global_condition must be ({h.shape[0]},) ids in [0, {cfg.global_classes}), got {shape}"
                )
            global_bias = self.speaker(global_condition).unsqueeze(2)  # (B, gate, 1)
        elif global_condition is not None:
            raise ValueError("global_condition given but the model has global_classes=0")
        if cfg.local_channels:
            expected = (h.shape[0], cfg.local_channels, h.shape[2])
            if local_condition is None or tuple(local_condition.shape) != expected:
                shape = None if local_condition is None else tuple(local_condition.shape)
                raise ValueError(f"local_condition must have shape {expected} (sample rate), got {shape}")
        elif local_condition is not None:
            raise ValueError("local_condition given but the model has local_channels=0")
        skips = 0
        for layer in self.layers:
            h, skip = layer(h, global_bias, local_condition)
            skips = skips + skip
        return self.head(skips)


def upsample_condition(condition: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each frame of a conditioning sequence ``factor`` times to reach the sample rate.

    Args:
        condition: ``(B, C, T_frames)``.
        factor: samples per frame (hop length).

    Returns:
        ``(B, C, T_frames * factor)``.
    """
    check_int(factor, "factor", low=1)
    return condition.repeat_interleave(factor, dim=2)


@register_model(task="sequence")
def wavenet(
    *,
    classes: int = WaveNetConfig.classes,
    blocks: int = WaveNetConfig.blocks,
    layers: int = WaveNetConfig.layers,
    residual_channels: int = WaveNetConfig.residual_channels,
    gate_channels: int = WaveNetConfig.gate_channels,
    skip_channels: int = WaveNetConfig.skip_channels,
    kernel_size: int = WaveNetConfig.kernel_size,
    global_classes: int = WaveNetConfig.global_classes,
    local_channels: int = WaveNetConfig.local_channels,
) -> WaveNet:
    """WaveNet (van den Oord et al. 2016); defaults: the paper's 3 blocks x 10 layers on 256 mu-law classes.

    Args:
        classes: quantisation levels of the samples, in and out (256 for 8-bit mu-law).
        blocks: repetitions of the dilation pattern 1, 2, ..., 2**(layers - 1).
        layers: layers per block.
        residual_channels, gate_channels, skip_channels: widths; ``gate_channels`` holds the
            filter and gate halves, so it is even.
        kernel_size: kernel of the causal dilated convolutions (2 in the paper).
        global_classes: ids of the global condition (e.g. speakers); 0 disables it.
        local_channels: channels of the local condition at the sample rate; 0 disables it.
    """
    return WaveNet(WaveNetConfig(classes=classes, blocks=blocks, layers=layers, residual_channels=residual_channels,
                                 gate_channels=gate_channels, skip_channels=skip_channels, kernel_size=kernel_size,
                                 global_classes=global_classes, local_channels=local_channels))
