"""Lowering of the ops that act on each time step alone: sums and products, activations and
gates, norms over channels, concatenation, slicing and splitting along channels.

:class:`PointwiseLowering` is a part of :class:`~atrous.streaming.lowering._Lowering` (a mixin): at
one tick a value with a time axis is a column range of the workspace, so these nodes become one
op or a few (see :mod:`atrous.streaming.lowering` for the list), and many become none: a slice is
a sub-span, a sum folds into the product that computes a term, batch norm into the weights
before it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous.streaming.graph import Node, StreamGraph
from atrous.streaming.opset import ACTIVATIONS, ActKind, OpCode, Span

_ACTIVATION_OF_MODULE = {activation.module: kind for kind, activation in ACTIVATIONS.items() if not activation.options}
_GELU = {"none": ActKind.GELU, "tanh": ActKind.GELU_TANH}  # by its approximate argument
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # torch.nn.SELU's constants
_SOFTMAXES = {torch.softmax: OpCode.SOFTMAX, F.softmax: OpCode.SOFTMAX, "softmax": OpCode.SOFTMAX,
              torch.log_softmax: OpCode.LOG_SOFTMAX, F.log_softmax: OpCode.LOG_SOFTMAX,
              "log_softmax": OpCode.LOG_SOFTMAX}
_ACTIVATION_OF_FUNCTION = {
    torch.relu: ActKind.RELU, F.relu: ActKind.RELU, torch.tanh: ActKind.TANH, F.tanh: ActKind.TANH,
    torch.sigmoid: ActKind.SIGMOID, F.sigmoid: ActKind.SIGMOID, F.silu: ActKind.SILU,
}
_ACTIVATION_OF_METHOD = {"relu": ActKind.RELU, "tanh": ActKind.TANH, "sigmoid": ActKind.SIGMOID}
_SAME = {"contiguous", "float", "clone", "detach"}  # methods that change nothing of a value at one step
_TRANSPOSES = {"transpose", "permute", "mT", torch.transpose, torch.permute}
_ADDS = {operator.add, torch.add, operator.iadd, "add", "add_", "__add__", "__radd__"}
_MULS = {operator.mul, torch.mul, "mul", "__mul__"}


class _Stacked(tuple):
    """Signals stacked along a new first dim (``torch.stack(..., dim=0)``), to be summed over it."""


class CannotFuse(ValueError):
    """A node the fused program cannot express."""


def unsupported(node: Node, why: str) -> CannotFuse:
    return CannotFuse(f"cannot fuse {node.label}: {why}; atrous.streaming.Streamer streams it")


def dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A conv weight ``(out, in / groups, k)`` as a dense ``(out, in, k)``, block diagonal."""
    if groups == 1:
        return weight
    out_channels, in_per, k = weight.shape
    out_per = out_channels // groups
    dense = weight.new_zeros(out_channels, in_per * groups, k)
    for g in range(groups):
        dense[g * out_per : (g + 1) * out_per, g * in_per : (g + 1) * in_per] = weight[g * out_per : (g + 1) * out_per]
    return dense


class PointwiseLowering:
    """The pointwise part of a lowering; it reads ``program``, ``graph``, ``values``, ``written``,
    ``emit``, ``product``, ``producer`` and ``exclusive`` of the lowering."""

    program: Any
    graph: StreamGraph
    values: list[Any]
    written: dict[Span, int]

    def add(self, node: Node, index: int, a: Any, b: Any) -> Any:
        if not isinstance(a, Span):
            a, b = b, a
        if not isinstance(b, Span):
            if isinstance(b, (int, float)) and b == 0:
                return a
            raise unsupported(node, "a sum with a constant that is not 0")
        if a.width != b.width:
            raise unsupported(node, f"a sum of {a.width} and {b.width} channels (broadcasting)")
        ops = self.program.ops
        for term, other in ((b, a), (a, b)):  # fold into the product that writes `term`, if `other` is ready then
            at = self.producer(term)
            if (at is not None and at >= 0 and ops[at].code in (OpCode.LINEAR, OpCode.CONV) and ops[at].init is None
                    and ops[at].dst == term and self.exclusive(term, index) and self.ready_before(other, at)
                    and self.in_step(other, ops[at])):
                ops[at].init = other
                return term
        return self.emit(OpCode.ADD, a, a.width, init=b)

    def in_step(self, span: Span, op) -> bool:
        """Whether ``span`` holds the sample ``op`` computes whenever ``op`` writes it: the same
        period, and a clock that starts no later, less than a period earlier."""
        clock, value = self.clock_of(span), op.value
        if clock is None or value is None:
            return False
        return clock[1] == value[1] and 0 <= value[0] - clock[0] < value[1]

    def ready_before(self, span: Span, at: int) -> bool:
        """Whether every column of ``span`` is written before op ``at`` runs (and not after)."""
        for other, writer in self.written.items():
            overlaps = other.offset < span.offset + span.width and span.offset < other.offset + other.width
            if overlaps and writer >= at:
                return False
        return any(other.offset <= span.offset and span.offset + span.width <= other.offset + other.width
                   for other in self.written)

    def mul(self, node: Node, index: int, a: Any, b: Any) -> Span:
        ops = self.program.ops
        if isinstance(a, Span) and isinstance(b, Span):
            at_a, at_b = self.producer(a), self.producer(b)
            if at_a is not None and at_b is not None and at_a >= 0 and at_b >= 0:
                first, second = ops[at_a], ops[at_b]
                if (first.code == OpCode.ACT and second.code == OpCode.ACT and
                        {first.arg, second.arg} == {ActKind.TANH, ActKind.SIGMOID}):
                    if first.arg == ActKind.SIGMOID:
                        first, second = second, first
                    filt, gate = first.src, second.src
                    if (filt.width == gate.width and filt.offset + filt.width == gate.offset and a != b
                            and first.dst in (a, b) and second.dst in (a, b)
                            and self.exclusive(a, index) and self.exclusive(b, index)):
                        for at in sorted((at_a, at_b), reverse=True):
                            self.drop(at)
                        return self.emit(OpCode.GATE, Span(filt.offset, 2 * filt.width), filt.width)
        if isinstance(a, Span) and isinstance(b, Span) and a.width == b.width:
            return self.emit(OpCode.MUL, a, a.width, init=b)
        raise unsupported(node, "a product that is not of two signals of as many channels")

    def drop(self, at: int) -> None:
        """Remove op ``at`` (its output has no other reader)."""
        ops = self.program.ops
        del ops[at]
        self.written = {span: (i if i < at else i - 1) for span, i in self.written.items() if i != at}

    def cat(self, node: Node, parts: list, dim: int) -> Span:
        if not all(isinstance(part, Span) for part in parts):
            raise unsupported(node, "a concatenation of signals and constants")
        if self.channel_dim(node) != dim:
            raise unsupported(node, "a concatenation along a dim that is not channels")
        if all(x.offset + x.width == y.offset for x, y in zip(parts, parts[1:])):
            return Span(parts[0].offset, sum(part.width for part in parts))
        out = self.program.alloc(sum(part.width for part in parts))
        offset = out.offset
        for part in parts:  # identity activations copy each part into place
            self.emit(OpCode.ACT, part, part.width, arg=ActKind.IDENTITY, dst=Span(offset, part.width))
            offset += part.width
        self.written[out] = len(self.program.ops) - 1
        return out

    def channel_dim(self, node: Node) -> int:
        """The channel dim of a 3-dim value (batch, channels and time in some order)."""
        axis = node.axis if node.axis is not None else 2
        return 3 - axis

    def getitem(self, node: Node, value: Any, key: Any) -> Any:
        if isinstance(value, tuple):
            return value[key]
        if not isinstance(value, Span):
            raise unsupported(node, "indexing a value that is not a signal")
        key = key if isinstance(key, tuple) else (key,)
        source = self.graph.nodes[node.inputs[0]]
        if source.axis is None and getattr(source.examples[0], "ndim", 0) == 2 and None in key:
            if all(item == slice(None) or item is None or item is Ellipsis for item in key):
                return value  # a per-stream constant (B, D) given an axis of 1: t[:, :, None], t[..., None]
        channel = self.source_channel_dim(node)
        items = list(key)
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at : at + 1] = [slice(None)] * (3 - len(items) + 1)
        items += [slice(None)] * (3 - len(items))
        whole = slice(None)
        if len(items) != 3 or any(item != whole for i, item in enumerate(items) if i != channel):
            raise unsupported(node, f"indexing {key} is not a slice of channels")
        start, stop, step = items[channel].indices(value.width)
        if step != 1:
            raise unsupported(node, "a strided slice of channels")
        return Span(value.offset + start, max(0, stop - start))

    def source_channel_dim(self, node: Node) -> int:
        source = self.graph.nodes[node.inputs[0]]
        return self.channel_dim(source)

    def affine_channels(self, node: Node, index: int, src: Span, scale: torch.Tensor, shift: torch.Tensor) -> Span:
        """``src * scale + shift`` per channel: folded into the product that writes ``src``, or a diagonal."""
        program, at = self.program, self.producer(src)
        if (at is not None and at >= 0 and program.ops[at].code in (OpCode.LINEAR, OpCode.CONV)
                and program.ops[at].init is None and program.ops[at].dst == src and self.exclusive(src, index)):
            op = program.ops[at]
            program.weights[op.weight] = (program.weights[op.weight] * scale).contiguous()
            bias = shift if op.bias is None else program.weights[op.bias] * scale + shift
            if op.bias is None:
                op.bias = program.weight(bias)
            else:
                program.weights[op.bias] = bias.contiguous()
            return src
        return self.emit(OpCode.LINEAR, src, src.width, weight=program.weight(torch.diag(scale)),
                         bias=program.weight(shift))

    def pointwise(self, index: int, node: Node) -> Any:
        target, args = node.target, self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        first = args[0] if args else None
        if node.op == "call_module":
            module = target
            if isinstance(module, (nn.Dropout, nn.Identity)):
                return first
            if isinstance(module, nn.GELU):
                return self.activation(node, first, _GELU[module.approximate])
            if isinstance(module, nn.ELU):
                return self.elu(node, index, first, module.alpha)
            if isinstance(module, nn.SELU):
                return self.elu(node, index, first, _SELU_ALPHA, _SELU_SCALE)
            if isinstance(module, nn.Softplus) and (module.beta != 1 or module.threshold != 20):
                raise unsupported(node, f"only beta=1, threshold=20 are supported, got {module.beta}, "
                                        f"{module.threshold}")
            if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
                code = OpCode.SOFTMAX if isinstance(module, nn.Softmax) else OpCode.LOG_SOFTMAX
                return self.softmax(node, first, module.dim, code)
            if type(module) in _ACTIVATION_OF_MODULE:
                return self.activation(node, first, _ACTIVATION_OF_MODULE[type(module)])
            if isinstance(module, nn.PReLU):
                return self.prelu(node, first, module.weight.detach())
            if isinstance(module, nn.LeakyReLU):
                return self.prelu(node, first, torch.tensor([module.negative_slope]))
            if isinstance(module, nn.GLU):
                return self.glu(node, first, module.dim)
            if isinstance(module, nn.LayerNorm):
                return self.layer_norm(node, first, module.normalized_shape, module.weight, module.bias, module.eps)
            if isinstance(module, nn.BatchNorm1d):
                if not module.track_running_stats or module.running_var is None:
                    raise unsupported(node, "without running statistics it normalises over time")
                scale = (module.running_var + module.eps).rsqrt() * (module.weight if module.affine else 1.0)
                shift = (module.bias if module.affine else 0.0) - module.running_mean * scale
                return self.affine_channels(node, index, self.signal(node, first), scale.detach(), shift.detach())
            if isinstance(module, nn.Linear):
                source = self.graph.nodes[node.inputs[0]]
                constant = source.axis is None and getattr(source.examples[0], "ndim", 0) == 2  # (B, D) per stream
                if not constant and self.source_channel_dim(node) != 2:
                    raise unsupported(node, "a Linear over a dim that is not channels")
                weight = module.weight.detach()[:, :, None]
                bias = None if module.bias is None else module.bias.detach()
                return self.product(node, self.signal(node, first), weight, bias, 1, 1)
            if isinstance(module, nn.Conv1d) and module.kernel_size == (1,):
                return self.product(node, self.signal(node, first), dense_weight(module.weight.detach(),
                                    module.groups), None if module.bias is None else module.bias.detach(), 1, 1)
            raise unsupported(node, f"no fused op for {type(module).__name__}")
        if node.op == "call_method" and target in _SAME or target in _TRANSPOSES:
            if target in _TRANSPOSES and not isinstance(first, Span):
                raise unsupported(node, "a transpose of a value that is not a signal")
            return first
        if target is F.gelu:
            approximate = kwargs.get("approximate", "none")
            return self.activation(node, first, _GELU[approximate])
        if target is F.elu:
            return self.elu(node, index, first, kwargs.get("alpha", args[1] if len(args) > 1 else 1.0))
        if target is F.softplus:
            beta, threshold = kwargs.get("beta", args[1] if len(args) > 1 else 1), kwargs.get(
                "threshold", args[2] if len(args) > 2 else 20)
            if beta != 1 or threshold != 20:
                raise unsupported(node, f"only beta=1, threshold=20 are supported, got {beta}, {threshold}")
            return self.activation(node, first, ActKind.SOFTPLUS)
        if target in (F.selu, torch.selu):
            return self.elu(node, index, first, _SELU_ALPHA, _SELU_SCALE)
        if target in _SOFTMAXES and (node.op == "call_method") == isinstance(target, str):
            return self.softmax(node, first, kwargs.get("dim", args[1] if len(args) > 1 else None), _SOFTMAXES[target])
        if target in _ACTIVATION_OF_FUNCTION or (node.op == "call_method" and target in _ACTIVATION_OF_METHOD):
            kind = _ACTIVATION_OF_FUNCTION.get(target) if node.op != "call_method" else _ACTIVATION_OF_METHOD[target]
            return self.activation(node, first, kind)
        if target is F.prelu:
            return self.prelu(node, first, kwargs.get("weight", args[1] if len(args) > 1 else None))
        if target is F.leaky_relu:
            slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            return self.prelu(node, first, torch.tensor([float(slope)]))
        if target is F.glu:
            return self.glu(node, first, kwargs.get("dim", args[1] if len(args) > 1 else -1))
        if target is F.layer_norm:
            names = ("normalized_shape", "weight", "bias", "eps")
            given = {**dict(zip(names, args[1:])), **kwargs}
            return self.layer_norm(node, first, given["normalized_shape"], given.get("weight"), given.get("bias"),
                                   given.get("eps", 1e-5))
        if target in (F.dropout,):
            return first
        if target in _ADDS and len(args) == 2 and not kwargs:
            return self.add(node, index, *args)
        if target in _MULS and len(args) == 2 and not kwargs:
            return self.mul(node, index, *args)
        if target is operator.getitem:
            return self.getitem(node, first, args[1])
        if target in (torch.cat, torch.concat):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return self.cat(node, list(first), dim % 3)
        if target is torch.stack and kwargs.get("dim", args[1] if len(args) > 1 else 0) == 0:
            return _Stacked(self.signal(node, part) for part in first)  # summed below, else refused
        if target in (torch.sum, "sum") and isinstance(first, _Stacked):
            if kwargs.get("dim", args[1] if len(args) > 1 else None) != 0 or kwargs.get("keepdim"):
                raise unsupported(node, "a sum of stacked signals over a dim other than the stack's")
            total = first[0]
            for part in first[1:]:
                total = self.add(node, index, total, part)
            return total
        if target in (torch.chunk, "chunk") or target in (torch.split, "split"):
            return self.split(node, first, args[1:], kwargs, chunk=target in (torch.chunk, "chunk"))
        if node.op == "call_method" and target == "unsqueeze" and isinstance(first, Span):
            return first  # a per-stream constant given a time axis of 1, broadcast along time
        if node.op == "call_method" and target in ("repeat", "expand", "expand_as") and isinstance(first, Span):
            before, after = self.graph.nodes[node.inputs[0]].examples[0], node.examples[0]
            time = node.axis
            if (time is not None and before.ndim == after.ndim
                    and all(b == a for i, (b, a) in enumerate(zip(before.shape, after.shape)) if i != time)):
                return first  # spread along time only (the graph checked it acts on each step alone)
            raise unsupported(node, "a repeat or expand along a dim that is not time")
        raise unsupported(node, f"no fused op for {getattr(target, '__name__', target)!s}")

    def signal(self, node: Node, value: Any) -> Span:
        if not isinstance(value, Span):
            raise unsupported(node, "its input is not a signal")
        return value

    def activation(self, node: Node, value: Any, kind: ActKind) -> Span:
        src = self.signal(node, value)
        return self.emit(OpCode.ACT, src, src.width, arg=kind)

    def elu(self, node: Node, index: int, value: Any, alpha: float, scale: float = 1.0) -> Span:
        """``scale * ELU_alpha(x)``: ``ELU`` (alpha 1), then ``alpha`` as a ``PRELU`` slope (ELU_1 is
        negative where x is), then ``scale`` per channel (SELU)."""
        out = self.activation(node, value, ActKind.ELU)
        if alpha != 1.0:
            out = self.prelu(node, out, torch.tensor([float(alpha)]))
        if scale != 1.0:
            out = self.affine_channels(node, index, out, torch.full((out.width,), scale), torch.zeros(out.width))
        return out

    def softmax(self, node: Node, value: Any, dim: Any, code: OpCode) -> Span:
        """A softmax (or log-softmax) over the channels of each step."""
        src = self.signal(node, value)
        if dim is None:
            raise unsupported(node, "a softmax with an implicit dim (for 3 dims PyTorch takes dim 0, the batch)")
        if dim % 3 != self.source_channel_dim(node):
            raise unsupported(node, "a softmax over a dim that is not channels")
        return self.emit(code, src, src.width)

    def prelu(self, node: Node, value: Any, slope: Any) -> Span:
        """``max(x, 0) + slope * min(x, 0)``: one slope, or one per channel (dim 1 of the input)."""
        src = self.signal(node, value)
        if not isinstance(slope, torch.Tensor) or slope.dim() != 1:
            raise unsupported(node, "its slope is not a parameter")
        if slope.numel() != 1 and (slope.numel() != src.width or self.source_channel_dim(node) != 1):
            raise unsupported(node, f"{slope.numel()} slopes for {src.width} channels on dim 1")
        weight = self.program.weight(slope.detach().float().expand(src.width))
        return self.emit(OpCode.PRELU, src, src.width, weight=weight)

    def glu(self, node: Node, value: Any, dim: int) -> Span:
        """``a * sigmoid(b)`` of the two halves along channels."""
        src = self.signal(node, value)
        if dim % 3 != self.source_channel_dim(node):
            raise unsupported(node, "a GLU along a dim that is not channels")
        if src.width % 2:
            raise unsupported(node, f"a GLU of an odd number of channels ({src.width})")
        return self.emit(OpCode.GLU, src, src.width // 2)

    def layer_norm(self, node: Node, value: Any, shape: Any, scale: Any, shift: Any, eps: float) -> Span:
        """A layer norm over channels alone, each time step on its own (the last dim of ``(B, T, C)``)."""
        src = self.signal(node, value)
        if tuple(shape) != (src.width,) or self.source_channel_dim(node) != 2:
            raise unsupported(node, f"a layer norm over {tuple(shape)} that is not the channels "
                                     f"({src.width}) as the last dim")
        scale = torch.ones(src.width) if scale is None else scale.detach().float()
        shift = torch.zeros(src.width) if shift is None else shift.detach().float()
        weight = self.program.weight(torch.cat([scale, shift, torch.tensor([float(eps)])]))
        return self.emit(OpCode.LAYER_NORM, src, src.width, weight=weight)

    def split(self, node: Node, value: Any, args: tuple, kwargs: dict, *, chunk: bool) -> tuple:
        src = self.signal(node, value)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim % 3 != self.source_channel_dim(node):
            raise unsupported(node, "a split along a dim that is not channels")
        size = args[0] if args else kwargs.get("chunks", kwargs.get("split_size_or_sections"))
        if chunk:
            size = -(-src.width // size)
        sizes = [size] * (src.width // size) + ([src.width % size] if src.width % size else []) \
            if isinstance(size, int) else list(size)
        parts, offset = [], src.offset
        for width in sizes:
            parts.append(Span(offset, width))
            offset += width
        return tuple(parts)
