"""Causal models from plain PyTorch modules that the fused lowering expresses, shared by the
fused-streaming tests and the ONNX export tests of the streaming step."""

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from test_families import LocuslabBlock
from torch import nn

from atrous.ops.layers import CausalConv1d


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


class NormGLU(nn.Module):
    """A Conv-TasNet-style block from plain modules: a causal conv, a per-channel ``PReLU``, a
    channel-wise ``LayerNorm`` through transposes, ``nn.GLU`` over channels, ``F.elu``, a 1x1
    conv, ``F.layer_norm`` without affine, ``F.glu``, a single-slope ``PReLU``, ``F.leaky_relu``
    and a residual sum."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv1d(channels, 2 * channels, 3, dilation=2)
        self.prelu = nn.PReLU(2 * channels)
        self.norm = nn.LayerNorm(2 * channels)
        self.glu = nn.GLU(dim=1)
        self.mix = nn.Conv1d(channels, 2 * channels, 1)
        self.slope = nn.PReLU(init=0.1)

    def forward(self, x):
        y = self.prelu(self.conv(F.pad(x, (4, 0))))
        y = F.elu(self.glu(self.norm(y.transpose(1, 2)).transpose(1, 2)))
        y = F.layer_norm(self.mix(y).transpose(1, 2), (2 * self.channels,), eps=1e-3).transpose(1, 2)
        return F.leaky_relu(self.slope(F.glu(y, dim=1)), 0.2) + x


def norm_glu() -> nn.Module:
    torch.manual_seed(0)
    model = NormGLU()
    with torch.no_grad():
        model.prelu.weight.uniform_(-0.5, 0.5)
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    return model.eval()


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


@st.composite
def causal_stacks(draw):
    """A random eval-mode nn.Sequential of the layers the fused step supports."""
    channels = draw(st.sampled_from([2, 4, 5]))
    layers = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["causal", "causal", "pointwise", "act", "norm"]))
        if kind == "causal":
            groups = draw(st.sampled_from([1, 2])) if channels % 2 == 0 else 1
            kernel, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 6))
            layers.append(CausalConv1d(channels, channels, kernel, dilation=dilation, groups=groups))
        elif kind == "pointwise":
            layers.append(nn.Conv1d(channels, channels, 1, bias=draw(st.booleans())))
        elif kind == "norm":
            norm = nn.BatchNorm1d(channels, affine=draw(st.booleans()))
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            layers.append(draw(st.sampled_from([norm, nn.Dropout(0.3)])))
        else:
            layers.append(draw(st.sampled_from([nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.ELU, nn.PReLU,
                                                 nn.LeakyReLU, nn.Identity]))())
    layers.append(CausalConv1d(channels, 3, 2, dilation=draw(st.integers(1, 8))))
    return nn.Sequential(*layers).eval()


class StridedLookahead(nn.Module):
    """A strided conv that looks ahead, a residual path around another to align (a delay line),
    a cropping transposed conv and a product of two signals."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv1d(2, 4, 5, stride=2, padding=2)
        self.mid = nn.Conv1d(4, 4, 3, dilation=2, padding=2)
        self.up = nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1)

    def forward(self, x):
        h = self.down(x)
        y = self.up(torch.tanh(self.mid(h) + h))
        return y * torch.sigmoid(y)


class Pooled(nn.Module):
    """Average and max pooling along time: strided, at stride 1 with padding, after a chomped conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=2)
        self.average = nn.AvgPool1d(2)
        self.max = nn.MaxPool1d(3, stride=2)
        self.smooth = nn.AvgPool1d(3, stride=1, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv(x)[..., :-2])
        return self.smooth(self.max(self.average(h)))


class Activations(nn.Module):
    """Every activation with a parameter or an approximation the fused step lowers, and a
    log-softmax and a softmax over the channels of each step."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 2, dilation=d) for d in (1, 2, 4))
        self.acts = nn.ModuleList([nn.GELU(approximate="tanh"), nn.Softplus(), nn.ELU(alpha=0.5)])
        self.softmax = nn.Softmax(dim=-2)

    def forward(self, x):
        for conv, act in zip(self.convs, self.acts):
            x = x + act(conv(F.pad(x, ((conv.kernel_size[0] - 1) * conv.dilation[0], 0))))
        x = F.selu(x) + torch.selu(x) + F.elu(x, alpha=2.0) + F.softplus(x)
        return torch.log_softmax(x, dim=1) + self.softmax(x) + x.softmax(1)


class _Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class _Gated(nn.Module):
    def __init__(self, signal: nn.Module, gate: nn.Module) -> None:
        super().__init__()
        self.signal, self.gate = signal, gate

    def forward(self, x):
        return self.signal(x) * torch.sigmoid(self.gate(x))


class _Split(nn.Module):
    """A conv with its padding split between the left (past) and the right (lookahead)."""

    def __init__(self, channels: int, kernel: int, dilation: int, left: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.pad = (left, (kernel - 1) * dilation - left)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


@st.composite
def multirate_stacks(draw):
    """A random eval-mode stack of strided convs, transposed convs (kernel at least the stride),
    convs that look ahead, residual sums around them and gated products, from plain modules."""
    channels, layers = 3, [nn.Conv1d(2, 3, 1)]

    def split():
        kernel, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        return _Split(channels, kernel, dilation, draw(st.integers(0, (kernel - 1) * dilation)))

    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["down", "up", "residual", "gated", "act"]))
        if kind == "down":
            kernel, stride, dilation = draw(st.integers(1, 5)), draw(st.sampled_from([2, 3])), draw(st.integers(1, 2))
            padding = draw(st.integers(0, (kernel - 1) * dilation))
            layers.append(nn.Conv1d(channels, channels, kernel, stride, padding, dilation))
        elif kind == "up":
            stride = draw(st.sampled_from([2, 3]))
            kernel = draw(st.sampled_from([stride, stride + 1, 2 * stride]))
            layers.append(nn.ConvTranspose1d(channels, channels, kernel, stride, draw(st.integers(0, (kernel - 1) // 2)),
                                             groups=draw(st.sampled_from([1, channels]))))
        elif kind == "residual":
            layers.append(_Residual(nn.Sequential(split(), nn.Tanh(), split())))
        elif kind == "gated":
            layers.append(_Gated(split(), split()))
        else:
            layers.append(draw(st.sampled_from([nn.ReLU, nn.ELU, nn.Tanh]))())
    return nn.Sequential(*layers).eval()
