"""Causal models from plain PyTorch modules that the fused lowering expresses, shared by the
fused-streaming tests and the ONNX export tests of the streaming step."""

import torch
import torch.nn.functional as F
from test_families import LocuslabBlock
from torch import nn


class GatedConcat(nn.Module):
    """A gated residual block from plain modules: ``F.pad`` + ``Conv1d``, ``chunk`` into a
    tanh/sigmoid gate, ``torch.cat`` with the input, a 1x1 conv with batch norm, a ``Linear`` over
    channels through transposes, a channel slice and a residual sum."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, 2 * channels, 3, dilation=2)
        self.mix = nn.Conv1d(2 * channels, channels, 1)
        self.norm = nn.BatchNorm1d(channels)
        self.linear = nn.Linear(channels, channels + 2)

    def forward(self, x):
        a, b = self.conv(F.pad(x, (4, 0))).chunk(2, dim=1)
        y = self.norm(self.mix(torch.cat([torch.tanh(a) * torch.sigmoid(b), x], dim=1)))
        y = self.linear(y.transpose(1, 2)).transpose(1, 2)
        return torch.relu(y[:, 2:] + x)


def gated_concat() -> nn.Module:
    torch.manual_seed(0)
    model = GatedConcat()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    return model.eval()


def locuslab_tcn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[LocuslabBlock(3 if i == 0 else 4, 4 if i < 2 else 5, 3, 2**i) for i in range(3)]).eval()
