"""Lower a causal dilated model to a flat list of per-sample ops for fused streaming.

A streaming step of a causal stack is a fixed sequence of small matrix products and pointwise
functions on one vector per stream: the queue formulation of fast WaveNet generation (Paine et
al. 2016, "Fast WaveNet generation algorithm"), where each causal convolution
``y[t] = b + sum_j W_j x[t - (k - 1 - j) d]`` reads its ``k - 1`` past inputs from a queue of
the last ``(k - 1) * d`` samples. :func:`lower` writes that sequence down once, with the
weights resolved (weight-norm parametrisations applied, grouped convolutions made dense, the
1x1 skip convolutions of all WaveNet layers stacked into one matrix), so that an executor
(C++ in ``fused_step.cpp``, or PyTorch ops) runs a step without the model's Python code.

Every value lives in a column range (:class:`~atrous.streaming.opset.Span`) of one workspace row
per stream; the ops and what they compute are defined in :mod:`atrous.streaming.opset`.
Supported: :class:`~atrous.models.sequence.WaveNet` (class-id input, global and local
conditioning), :class:`~atrous.models.sequence.TCN` and ``nn.Sequential`` stacks of
``CausalConv1d``, 1x1 ``Conv1d``, ``TemporalBlock``, ReLU/Tanh/Sigmoid/GELU/SiLU, ``Identity``
and ``Dropout`` or ``BatchNorm1d`` in eval mode. Anything else raises a ``ValueError`` naming
the layer; :class:`~atrous.streaming.Streamer` streams any causal stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from atrous._checks import is_int
from atrous.models.sequence import TCN, TemporalBlock, WaveNet
from atrous.ops.layers import DilatedConv1d
from atrous.ops.padding import causal_padding
from atrous.streaming.opset import ACTIVATIONS, ActKind, IdSource, Op, OpCode, Span

_ACTIVATION_OF = {activation.module: kind for kind, activation in ACTIVATIONS.items()}


@dataclass
class Program:
    """A lowered model: ops over a workspace of ``width`` floats per stream."""

    ops: list[Op] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    rings: list[tuple[int, int]] = field(default_factory=list)  # (context (k - 1) * d, channels) per CONV
    width: int = 0
    input: Span | None = None  # float input channels; None when the input is class ids
    classes: int = 0  # number of input class ids (WaveNet), else 0
    local: Span | None = None  # local conditioning channels
    global_classes: int = 0
    output: Span | None = None

    def alloc(self, width: int) -> Span:
        span = Span(self.width, width)
        self.width += width
        return span

    def weight(self, tensor: torch.Tensor) -> int:
        self.weights.append(tensor.detach().to(torch.float32).contiguous().clone())
        return len(self.weights) - 1

    def emit(self, code: OpCode, src: Span | None, width: int, **fields) -> Span:
        dst = fields.pop("dst", None) or self.alloc(width)
        self.ops.append(Op(code, src, dst, **fields))
        return dst

    def linear(self, src: Span, matrix: torch.Tensor, bias: torch.Tensor | None, *, init: Span | None = None,
               dst: Span | None = None) -> Span:
        """``matrix``: ``(src.width, out)``."""
        bias_index = None if bias is None else self.weight(bias)
        return self.emit(OpCode.LINEAR, src, matrix.shape[1], init=init, weight=self.weight(matrix), bias=bias_index,
                         dst=dst)

    def conv(self, src: Span, conv: nn.Conv1d, *, init: Span | None = None) -> Span:
        k, d = conv.kernel_size[0], conv.dilation[0]
        weight = _dense_weight(conv)  # (out, in, k)
        matrix = weight.permute(2, 1, 0).reshape(k * src.width, -1)  # tap j (oldest first) in rows j*in..
        bias = conv.bias
        if k == 1:
            return self.linear(src, matrix, bias, init=init)
        self.rings.append((causal_padding(k, d)[0], src.width))
        return self.emit(OpCode.CONV, src, weight.shape[0], init=init, weight=self.weight(matrix),
                         bias=None if bias is None else self.weight(bias), ring=len(self.rings) - 1,
                         kernel_size=k, dilation=d)

    def act(self, src: Span, kind: ActKind) -> Span:
        return self.emit(OpCode.ACT, src, src.width, arg=kind)


def _dense_weight(conv: nn.Conv1d) -> torch.Tensor:
    """The conv weight ``(out, in, k)`` with groups expanded to a block-diagonal dense weight."""
    weight = conv.weight.detach()  # evaluates a weight-norm parametrisation
    if conv.groups == 1:
        return weight
    out_per, in_per = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = weight.new_zeros(conv.out_channels, conv.in_channels, weight.shape[2])
    for g in range(conv.groups):
        dense[g * out_per : (g + 1) * out_per, g * in_per : (g + 1) * in_per] = weight[g * out_per : (g + 1) * out_per]
    return dense


def _label(name: str, module: nn.Module) -> str:
    return f"layer {name or '<root>'!r} ({type(module).__name__})"


def _lower_module(program: Program, name: str, module: nn.Module, x: Span) -> Span:
    """Append the ops of ``module`` applied to ``x``; return the span of its output."""
    label = _label(name, module)
    prefix = f"{name}." if name else ""
    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            x = _lower_module(program, prefix + child_name, child, x)
        return x
    if isinstance(module, TemporalBlock):
        out = _lower_module(program, prefix + "net", module.net, x)
        residual = x
        if module.downsample is not None:
            residual = _lower_module(program, prefix + "downsample", module.downsample, x)
        return program.act(program.emit(OpCode.ADD, out, out.width, init=residual), ActKind.RELU)
    if isinstance(module, TCN):
        features = _lower_module(program, prefix + "blocks", module.blocks, x)
        return _lower_module(program, prefix + "head", module.head, features)
    if isinstance(module, nn.Conv1d):
        causal = isinstance(module, DilatedConv1d) and module.padding == "causal"
        pointwise = module.kernel_size == (1,) and (module.padding in ("valid", "same") or module.padding == (0,))
        if module.stride != (1,) or not (causal or pointwise) or module.padding_mode != "zeros":
            raise ValueError(
                f"cannot fuse {label}: a convolution must be a CausalConv1d or a 1x1 Conv1d with stride 1, got "
                f"kernel_size={module.kernel_size[0]}, stride={module.stride[0]}, padding={module.padding!r}"
            )
        if module.in_channels != x.width:
            raise ValueError(f"cannot fuse {label}: it takes {module.in_channels} channels but receives {x.width}")
        return program.conv(x, module)
    if isinstance(module, (nn.Dropout, nn.BatchNorm1d)) and module.training:
        raise ValueError(f"cannot fuse {label} in training mode: call model.eval() first")
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return x
    if isinstance(module, nn.BatchNorm1d):
        if not module.track_running_stats:
            raise ValueError(f"cannot fuse {label}: without running statistics it normalises over time")
        scale = (module.running_var + module.eps).rsqrt() * (module.weight if module.affine else 1.0)
        shift = (module.bias if module.affine else 0.0) - module.running_mean * scale
        return program.linear(x, torch.diag(scale.detach()), shift.detach())
    if type(module) in _ACTIVATION_OF:
        if isinstance(module, nn.GELU) and module.approximate != "none":
            raise ValueError(f"cannot fuse {label}: only approximate='none' is supported, got {module.approximate!r}")
        return program.act(x, _ACTIVATION_OF[type(module)])
    raise ValueError(
        f"cannot fuse {label}: supported are WaveNet, TCN and nn.Sequential stacks of CausalConv1d, 1x1 Conv1d, "
        f"TemporalBlock, {', '.join(sorted(t.__name__ for t in _ACTIVATION_OF))}, Dropout and BatchNorm1d (eval); "
        "atrous.streaming.Streamer streams any causal stack"
    )


def _lower_wavenet(model: WaveNet) -> Program:
    cfg = model.config
    program = Program(classes=cfg.classes, global_classes=cfg.global_classes)
    half, layers = cfg.gate_channels // 2, len(model.layers)
    table = model.input.weight[:, :, 0].t() + model.input.bias  # a 1x1 conv of a one-hot input is a lookup
    h = program.emit(OpCode.EMBED, None, cfg.residual_channels, weight=program.weight(table), arg=IdSource.INPUT)
    speaker = None
    if cfg.global_classes:
        speaker = program.emit(OpCode.EMBED, None, cfg.gate_channels, weight=program.weight(model.speaker.weight),
                               arg=IdSource.GLOBAL)
    local = None
    if cfg.local_channels:
        program.local = program.alloc(cfg.local_channels)
        stacked = torch.cat([layer.local.weight[:, :, 0].t() for layer in model.layers], dim=1)
        local = program.linear(program.local, stacked, None)  # every layer's projection in one product
    gated = program.alloc(layers * half)  # all z, so the skip convs become one product
    for i, layer in enumerate(model.layers):
        init = speaker
        if local is not None:
            local_i = Span(local.offset + i * cfg.gate_channels, cfg.gate_channels)
            init = local_i if speaker is None else program.emit(OpCode.ADD, speaker, cfg.gate_channels, init=local_i)
        pre = program.conv(h, layer.dilated, init=init)
        z = program.emit(OpCode.GATE, pre, half, dst=Span(gated.offset + i * half, half))
        if layer.residual is not None:
            h = program.linear(z, layer.residual.weight[:, :, 0].t(), layer.residual.bias, init=h)
    skip_matrix = torch.cat([layer.skip.weight[:, :, 0].t() for layer in model.layers], dim=0)
    skip_bias = torch.stack([layer.skip.bias for layer in model.layers]).sum(0)
    y = program.act(program.linear(gated, skip_matrix, skip_bias), ActKind.RELU)
    y = program.act(program.linear(y, model.head[1].weight[:, :, 0].t(), model.head[1].bias), ActKind.RELU)
    program.output = program.linear(y, model.head[3].weight[:, :, 0].t(), model.head[3].bias)
    return program


@torch.no_grad()
def lower(model: nn.Module) -> Program:
    """Lower a causal model to a :class:`Program` (weights are copied: rebuild after training).

    Args:
        model: a WaveNet, a TCN, or an ``nn.Sequential`` of supported layers, float32 on the CPU.

    Raises:
        ValueError: a layer that cannot be fused (named), or a model not on the CPU in float32.
    """
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        raise ValueError("fused streaming needs a float32 model on the CPU; use Streamer for other dtypes and devices")
    if isinstance(model, WaveNet):
        return _lower_wavenet(model)
    channels = getattr(model, "in_channels", None)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv1d)), None)
    channels = channels if is_int(channels) else getattr(first, "in_channels", None)
    if channels is None:
        raise ValueError(f"cannot fuse {_label('', model)}: it has no Conv1d to read the input channels from")
    program = Program()
    program.input = program.alloc(channels)
    program.output = _lower_module(program, "", model, program.input)
    return program
