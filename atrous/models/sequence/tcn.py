"""Temporal convolutional network (TCN).

Bai, Kolter & Koltun (2018), "An empirical evaluation of generic convolutional and recurrent
networks for sequence modeling". A TCN is a stack of residual blocks; block ``i`` holds two
dilated convolutions of dilation ``2**i``, each with weight normalisation, ReLU and dropout,
and adds its input back through a 1x1 convolution when the channel count changes. With causal
convolutions ``y[t]`` depends on ``x[<= t]`` only; the "same" variant pads both sides and sees
the future as well (for tasks where the whole sequence is known).

Receptive field: ``1 + 2 (k - 1) (2**levels - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from atrous._checks import check_bool, check_float, check_int
from atrous.models._registry import register_model
from atrous.ops.layers import CausalConv1d, DilatedConv1d
from atrous.ops.padding import stack_receptive_field

MAX_LEVELS = 32  # dilation 2**31 in the last level


@dataclass
class TCNConfig:
    """Hyper-parameters of :class:`TCN` (defaults: the paper's adding-problem model, ~70K weights)."""

    in_channels: int = 2
    out_channels: int = 1
    hidden: int = 24
    levels: int = 8
    kernel_size: int = 8
    dropout: float = 0.0
    causal: bool = True
    init_std: float = 0.01  # the 1x1 projection and head only; see _conv

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "hidden", "kernel_size"):
            check_int(getattr(self, name), name, low=1)
        check_int(self.levels, "levels", low=1, high=MAX_LEVELS)
        check_float(self.dropout, "dropout", low=0.0, high=1.0, high_open=True)
        check_float(self.init_std, "init_std", low=0.0)  # 0 keeps PyTorch's default init
        check_bool(self.causal, "causal")


def _conv(in_channels: int, out_channels: int, kernel_size: int, dilation: int, causal: bool) -> nn.Module:
    if causal:
        conv = CausalConv1d(in_channels, out_channels, kernel_size, dilation=dilation)
    else:
        conv = DilatedConv1d(in_channels, out_channels, kernel_size, padding="same", dilation=dilation)
    # No N(0, std) here: in the paper's code the normal init of the weight-normalised convs is
    # overwritten by weight norm's pre-forward hook (confirmed by its authors, locuslab/TCN#1),
    # so its results come from PyTorch's default init of these convs.
    return weight_norm(conv)


class TemporalBlock(nn.Module):
    """``relu(x + net(x))`` with ``net = (conv -> ReLU -> dropout) x 2``, conv weight-normalised.

    Args:
        in_channels: channels entering the block.
        out_channels: channels leaving it; a 1x1 projection matches the residual when they differ.
        kernel_size: kernel of both convolutions.
        dilation: dilation of both convolutions.
        dropout: dropout probability after each activation.
        causal: causal (left) padding, else "same" padding.
        init_std: std of the normal init of the 1x1 residual projection (0: PyTorch's default);
            the weight-normalised convs keep PyTorch's default, as in the paper's code.

    Shape:
        ``(B, in_channels, T)`` -> ``(B, out_channels, T)``.
    """

    streamable = True  # the residual sum is pointwise in time

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int,
        *,
        dropout: float,
        causal: bool,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv(in_channels, out_channels, kernel_size, dilation, causal), nn.ReLU(), nn.Dropout(dropout),
            _conv(out_channels, out_channels, kernel_size, dilation, causal), nn.ReLU(), nn.Dropout(dropout),
        )
        self.downsample = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        if self.downsample is not None and init_std > 0:
            nn.init.normal_(self.downsample.weight, 0.0, init_std)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.net(x) + residual)


class TCN(nn.Module):
    """A TCN with a 1x1 output head applied at every time step.

    For sequence-to-one tasks (the adding problem) read the output at the last step.

    Args:
        config: a :class:`TCNConfig`.

    Shape:
        ``(B, in_channels, T)`` -> ``(B, out_channels, T)``.
    """

    streamable = True

    def __init__(self, config: TCNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TCNConfig()
        self.in_channels = config.in_channels
        widths = [config.in_channels] + [config.hidden] * config.levels
        self.blocks = nn.Sequential(
            *(
                TemporalBlock(
                    widths[i],
                    widths[i + 1],
                    config.kernel_size,
                    2**i,
                    dropout=config.dropout,
                    causal=config.causal,
                    init_std=config.init_std,
                )
                for i in range(config.levels)
            )
        )
        self.head = nn.Conv1d(config.hidden, config.out_channels, 1)
        if config.init_std > 0:
            nn.init.normal_(self.head.weight, 0.0, config.init_std)

    @property
    def receptive_field(self) -> int:
        """Samples one output sees: ``1 + 2 (k - 1) (2**levels - 1)``, level ``i``'s two convolutions
        each adding their extent at dilation ``2**i`` less one."""
        rates = [2**i for i in range(self.config.levels) for _ in range(2)]
        return stack_receptive_field(self.config.kernel_size, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x must have shape (B, in_channels={self.config.in_channels}, T), got {tuple(x.shape)}"
            )
        return self.head(self.blocks(x))


@register_model(task="sequence")
def tcn(
    *,
    in_channels: int = TCNConfig.in_channels,
    out_channels: int = TCNConfig.out_channels,
    hidden: int = TCNConfig.hidden,
    levels: int = TCNConfig.levels,
    kernel_size: int = TCNConfig.kernel_size,
    dropout: float = TCNConfig.dropout,
    causal: bool = TCNConfig.causal,
    init_std: float = TCNConfig.init_std,
) -> TCN:
    """TCN (Bai et al. 2018); defaults: the paper's adding-problem model.

    Args:
        in_channels: input channels per time step.
        out_channels: outputs per time step (of the 1x1 head).
        hidden: channels of every temporal block.
        levels: temporal blocks; block ``i`` has dilation ``2**i``.
        kernel_size: kernel of every dilated convolution.
        dropout: dropout after each activation, in [0, 1).
        causal: causal (left) padding; ``False`` pads both sides and sees the future.
        init_std: std of the normal init of the 1x1 projections and head (0: PyTorch's default).
    """
    return TCN(TCNConfig(in_channels=in_channels, out_channels=out_channels, hidden=hidden, levels=levels,
                         kernel_size=kernel_size, dropout=dropout, causal=causal, init_std=init_std))
