"""Lower a traced :class:`~atrous.streaming.graph.StreamGraph` to a fused op program, node by node.

One lowering serves every model: the graph of :func:`~atrous.streaming.graph.build_graph` already
says, per node, whether it is a window along time (a convolution: its geometry), an op on each
time step alone (pointwise), a parameter-only value (static) or an input. At one time step a
value with a time axis is a vector per stream, so it lives in a column range
(:class:`~atrous.streaming.opset.Span`) of the workspace, and each node becomes at most one op of
:mod:`atrous.streaming.opset`:

* a window at stride 1 or a 1x1 convolution: ``CONV`` with a ring of ``(k - 1) d`` past
  inputs, or ``LINEAR`` (grouped weights made dense, weight norm
  evaluated, ``nn.Linear`` over channels);
* activations: ``ACT``; ``tanh(a) * sigmoid(b)`` of the two halves of one value: ``GATE``;
  any other product of two signals: ``MUL``;
  ``PReLU`` and ``LeakyReLU``: ``PRELU`` (a slope per channel); ``GLU`` over channels: ``GLU``;
* ``LayerNorm`` over channels (after a transpose to ``(B, T, C)``): ``LAYER_NORM``;
* a sum: folded into the ``init`` of the product that computes one of its terms when the other
  is ready before it (residual connections and skip sums cost no op), else ``ADD``;
* slicing and ``chunk`` along channels, ``transpose``, ``contiguous``, dropout and identity: no op
  (a sub-span or the same span); ``torch.cat`` along channels: no op when its parts lie side by
  side, else copies (``ACT`` identity) into one span;
* eval-mode ``BatchNorm1d``: folded into the product before it, else a diagonal ``LINEAR``.

Windows along time at any stride, with lookahead, transposed convolutions and the alignment of
paths on different clocks are lowered by :mod:`atrous.streaming.clocked`. Anything else
(pooling, opaque modules, norms over time, broadcasting products) raises ``ValueError`` naming
the node; the PyTorch :class:`~atrous.streaming.Streamer` streams those. Weights are evaluated
once here: a program (and a :class:`~atrous.streaming.FusedStreamer`) holds a snapshot of them.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous.streaming.clocked import ClockedLowering, ticks_per_input
from atrous.streaming.graph import Kind, Node, Ref, StreamGraph
from atrous.streaming.opset import ACTIVATIONS, ActKind, Op, OpCode, Span

_ACTIVATION_OF_MODULE = {activation.module: kind for kind, activation in ACTIVATIONS.items()}
_ACTIVATION_OF_FUNCTION = {
    torch.relu: ActKind.RELU, F.relu: ActKind.RELU, torch.tanh: ActKind.TANH, F.tanh: ActKind.TANH,
    torch.sigmoid: ActKind.SIGMOID, F.sigmoid: ActKind.SIGMOID, F.silu: ActKind.SILU, F.gelu: ActKind.GELU,
    F.elu: ActKind.ELU,
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


def _unsupported(node: Node, why: str) -> CannotFuse:
    return CannotFuse(f"cannot fuse {node.label}: {why}; atrous.streaming.Streamer streams it")


def _dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A conv weight ``(out, in / groups, k)`` as a dense ``(out, in, k)``, block diagonal."""
    if groups == 1:
        return weight
    out_channels, in_per, k = weight.shape
    out_per = out_channels // groups
    dense = weight.new_zeros(out_channels, in_per * groups, k)
    for g in range(groups):
        dense[g * out_per : (g + 1) * out_per, g * in_per : (g + 1) * in_per] = weight[g * out_per : (g + 1) * out_per]
    return dense


class _Lowering(ClockedLowering):
    """The state of one lowering: the program written so far and the value of every node."""

    def __init__(self, program, graph: StreamGraph) -> None:
        self.program, self.graph = program, graph
        self.users = graph.users()
        self.values: list[Any] = [None] * len(graph.nodes)
        # span -> index of the op that writes it (-1: an input, -2: several ops, as the phases of
        # a transposed convolution)
        self.written: dict[Span, int] = {}
        self.init_clocks()

    # values ---------------------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return self.overrides.get(value.index, self.values[value.index])
        if isinstance(value, (tuple, list)):
            return type(value)(self.resolve(item) for item in value)
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        if isinstance(value, slice):
            return slice(self.resolve(value.start), self.resolve(value.stop), self.resolve(value.step))
        return value

    def emit(self, code: OpCode, src: Span | None, width: int, **fields) -> Span:
        """Append an op on the node's clock (unless ``fields`` set it); return its ``dst``."""
        if "start" not in fields:
            fields.update(self.clock_fields())
        dst = self.program.emit(code, src, width, **fields)
        if code != OpCode.PUSH:  # a PUSH writes a ring, not its dst
            self.written[dst] = len(self.program.ops) - 1
        return dst

    def clock_of(self, span: Span) -> tuple[int, int] | None:
        """The value clock of the op that writes ``span`` (an input's for an input; None if unknown)."""
        at = self.producer(span)
        if at == -1:
            return (0, self.program.ticks)
        if at is None or at < 0 or self.program.ops[at].value is None:
            return None
        return self.program.ops[at].value[:2]

    def input(self, width: int) -> Span:
        span = self.program.alloc(width)
        self.written[span] = -1
        return span

    def producer(self, span: Span) -> int | None:
        return self.written.get(span)

    def exclusive(self, span: Span, reader: int) -> bool:
        """Whether node ``reader`` is the only one that reads ``span`` (besides nodes passing it on)."""
        def same(value: Any) -> bool:
            return isinstance(value, Span) and value == span

        for j, value in enumerate(self.values[:reader]):
            if not same(value):
                continue
            if j == self.graph.output:
                return False
            if any(u != reader and not (u < reader and same(self.values[u])) for u in self.users[j]):
                return False
        return True

    # products -------------------------------------------------------------------------------
    def product(self, node: Node, src: Span, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
                dilation: int) -> Span:
        """``weight``: ``(out, in, k)``; a ring when ``k > 1``."""
        if weight.shape[1] != src.width:
            raise _unsupported(node, f"it takes {weight.shape[1]} channels but receives {src.width}")
        program, k = self.program, kernel_size
        matrix = weight.permute(2, 1, 0).reshape(k * src.width, -1)  # tap j (oldest first) in rows j*in..
        weight_index = program.weight(matrix)
        bias_index = None if bias is None else program.weight(bias)
        if k == 1:
            return self.emit(OpCode.LINEAR, src, matrix.shape[1], weight=weight_index, bias=bias_index)
        program.rings.append(((k - 1) * dilation, src.width))
        program.ring_clocks.append(self.clock)
        return self.emit(OpCode.CONV, src, matrix.shape[1], weight=weight_index, bias=bias_index,
                         ring=len(program.rings) - 1, kernel_size=k, dilation=dilation)

    def window(self, node: Node) -> Span:
        g = node.geometry
        source_clock, out_clock, _ = self.window_clocks(node)
        src = self.resolve(node.args[0])
        if node.op == "identity" and g.extent == 1:  # cropping or decimation: the same span on another clock
            self.begin(self.node_index, out_clock)
            return src
        if node.op != "conv":
            raise _unsupported(node, f"a {node.op.replace('_', ' ')} window has no fused op")
        if isinstance(node.target, nn.Module):
            conv = node.target
            weight, bias, groups = conv.weight, conv.bias, conv.groups  # evaluates a weight-norm parametrisation
            if getattr(conv, "padding_mode", "zeros") != "zeros":
                raise _unsupported(node, f"padding_mode={conv.padding_mode!r}")
        else:
            weight, bias = self.resolve(node.args[1]), self.resolve(node.args[2]) if len(node.args) > 2 else None
            bias = node.kwargs.get("bias", bias) if "bias" in node.kwargs else bias
            bias = self.resolve(bias)
            groups = node.kwargs.get("groups", 1)
        if not isinstance(src, Span) or not isinstance(weight, torch.Tensor):
            raise _unsupported(node, "its input or weight is not a signal and a parameter")
        groups = self.resolve(groups) if not isinstance(groups, int) else groups
        weight, bias = _dense_weight(weight.detach(), groups), None if bias is None else bias.detach()
        if weight.shape[1] != src.width:
            raise _unsupported(node, f"it takes {weight.shape[1]} channels but receives {src.width}")
        if g.stride == 1:  # runs with its input; with lookahead its outputs lag it
            self.begin(self.node_index, source_clock, out_clock)
            return self.product(node, src, weight, bias, g.kernel_size, g.dilation)
        return self.taps_window(node, src, weight, bias)

    # pointwise ------------------------------------------------------------------------------
    def add(self, node: Node, index: int, a: Any, b: Any) -> Any:
        if not isinstance(a, Span):
            a, b = b, a
        if not isinstance(b, Span):
            if isinstance(b, (int, float)) and b == 0:
                return a
            raise _unsupported(node, "a sum with a constant that is not 0")
        if a.width != b.width:
            raise _unsupported(node, f"a sum of {a.width} and {b.width} channels (broadcasting)")
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
        raise _unsupported(node, "a product that is not of two signals of as many channels")

    def drop(self, at: int) -> None:
        """Remove op ``at`` (its output has no other reader)."""
        ops = self.program.ops
        del ops[at]
        self.written = {span: (i if i < at else i - 1) for span, i in self.written.items() if i != at}

    def cat(self, node: Node, parts: list, dim: int) -> Span:
        if not all(isinstance(part, Span) for part in parts):
            raise _unsupported(node, "a concatenation of signals and constants")
        if self.channel_dim(node) != dim:
            raise _unsupported(node, "a concatenation along a dim that is not channels")
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
            raise _unsupported(node, "indexing a value that is not a signal")
        key = key if isinstance(key, tuple) else (key,)
        channel = self.source_channel_dim(node)
        items = list(key)
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at : at + 1] = [slice(None)] * (3 - len(items) + 1)
        items += [slice(None)] * (3 - len(items))
        whole = slice(None)
        if len(items) != 3 or any(item != whole for i, item in enumerate(items) if i != channel):
            raise _unsupported(node, f"indexing {key} is not a slice of channels")
        start, stop, step = items[channel].indices(value.width)
        if step != 1:
            raise _unsupported(node, "a strided slice of channels")
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
            if type(module) in _ACTIVATION_OF_MODULE:
                if isinstance(module, nn.GELU) and module.approximate != "none":
                    raise _unsupported(node, f"only approximate='none' is supported, got {module.approximate!r}")
                if isinstance(module, nn.ELU) and module.alpha != 1.0:
                    raise _unsupported(node, f"only alpha=1 is supported, got {module.alpha}")
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
                    raise _unsupported(node, "without running statistics it normalises over time")
                scale = (module.running_var + module.eps).rsqrt() * (module.weight if module.affine else 1.0)
                shift = (module.bias if module.affine else 0.0) - module.running_mean * scale
                return self.affine_channels(node, index, self.signal(node, first), scale.detach(), shift.detach())
            if isinstance(module, nn.Linear):
                if self.source_channel_dim(node) != 2:
                    raise _unsupported(node, "a Linear over a dim that is not channels")
                weight = module.weight.detach()[:, :, None]
                bias = None if module.bias is None else module.bias.detach()
                return self.product(node, self.signal(node, first), weight, bias, 1, 1)
            if isinstance(module, nn.Conv1d) and module.kernel_size == (1,):
                return self.product(node, self.signal(node, first), _dense_weight(module.weight.detach(),
                                    module.groups), None if module.bias is None else module.bias.detach(), 1, 1)
            raise _unsupported(node, f"no fused op for {type(module).__name__}")
        if node.op == "call_method" and target in _SAME or target in _TRANSPOSES:
            if target in _TRANSPOSES and not isinstance(first, Span):
                raise _unsupported(node, "a transpose of a value that is not a signal")
            return first
        if target in _ACTIVATION_OF_FUNCTION or (node.op == "call_method" and target in _ACTIVATION_OF_METHOD):
            kind = _ACTIVATION_OF_FUNCTION.get(target) if node.op != "call_method" else _ACTIVATION_OF_METHOD[target]
            if target is F.gelu and kwargs.get("approximate", "none") != "none":
                raise _unsupported(node, "only exact (erf) GELU is supported")
            if target is F.elu and kwargs.get("alpha", args[1] if len(args) > 1 else 1.0) != 1.0:
                raise _unsupported(node, "only alpha=1 is supported")
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
                raise _unsupported(node, "a sum of stacked signals over a dim other than the stack's")
            total = first[0]
            for part in first[1:]:
                total = self.add(node, index, total, part)
            return total
        if target in (torch.chunk, "chunk") or target in (torch.split, "split"):
            return self.split(node, first, args[1:], kwargs, chunk=target in (torch.chunk, "chunk"))
        if node.op == "call_method" and target == "unsqueeze" and isinstance(first, Span):
            return first  # a per-stream constant given a time axis of 1, broadcast along time
        raise _unsupported(node, f"no fused op for {getattr(target, '__name__', target)!s}")

    def signal(self, node: Node, value: Any) -> Span:
        if not isinstance(value, Span):
            raise _unsupported(node, "its input is not a signal")
        return value

    def activation(self, node: Node, value: Any, kind: ActKind) -> Span:
        src = self.signal(node, value)
        return self.emit(OpCode.ACT, src, src.width, arg=kind)

    def prelu(self, node: Node, value: Any, slope: Any) -> Span:
        """``max(x, 0) + slope * min(x, 0)``: one slope, or one per channel (dim 1 of the input)."""
        src = self.signal(node, value)
        if not isinstance(slope, torch.Tensor) or slope.dim() != 1:
            raise _unsupported(node, "its slope is not a parameter")
        if slope.numel() != 1 and (slope.numel() != src.width or self.source_channel_dim(node) != 1):
            raise _unsupported(node, f"{slope.numel()} slopes for {src.width} channels on dim 1")
        weight = self.program.weight(slope.detach().float().expand(src.width))
        return self.emit(OpCode.PRELU, src, src.width, weight=weight)

    def glu(self, node: Node, value: Any, dim: int) -> Span:
        """``a * sigmoid(b)`` of the two halves along channels."""
        src = self.signal(node, value)
        if dim % 3 != self.source_channel_dim(node):
            raise _unsupported(node, "a GLU along a dim that is not channels")
        if src.width % 2:
            raise _unsupported(node, f"a GLU of an odd number of channels ({src.width})")
        return self.emit(OpCode.GLU, src, src.width // 2)

    def layer_norm(self, node: Node, value: Any, shape: Any, scale: Any, shift: Any, eps: float) -> Span:
        """A layer norm over channels alone, each time step on its own (the last dim of ``(B, T, C)``)."""
        src = self.signal(node, value)
        if tuple(shape) != (src.width,) or self.source_channel_dim(node) != 2:
            raise _unsupported(node, f"a layer norm over {tuple(shape)} that is not the channels "
                                     f"({src.width}) as the last dim")
        scale = torch.ones(src.width) if scale is None else scale.detach().float()
        shift = torch.zeros(src.width) if shift is None else shift.detach().float()
        weight = self.program.weight(torch.cat([scale, shift, torch.tensor([float(eps)])]))
        return self.emit(OpCode.LAYER_NORM, src, src.width, weight=weight)

    def split(self, node: Node, value: Any, args: tuple, kwargs: dict, *, chunk: bool) -> tuple:
        src = self.signal(node, value)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim % 3 != self.source_channel_dim(node):
            raise _unsupported(node, "a split along a dim that is not channels")
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


def lower_graph(program, graph: StreamGraph, *, inputs: dict[str, Span] | None = None) -> Span:
    """Append the ops of ``graph`` to ``program``; return the span of its output.

    Args:
        program: a :class:`~atrous.streaming.program.Program` (its inputs may be allocated).
        graph: the traced model.
        inputs: spans already holding some ``INPUT`` nodes, by argument name; the others are
            allocated as float time inputs (``program.input``, one at most).

    Raises:
        ValueError: a node that cannot be fused, named.
    """
    lowering, inputs = _Lowering(program, graph), dict(inputs or {})
    program.ticks = ticks = ticks_per_input(graph)
    for index, node in enumerate(graph.nodes):
        clock = None
        if node.kind is Kind.INPUT:
            name = node.target
            if name in inputs:
                value = inputs[name]
                lowering.written[value] = -1
            elif node.axis is not None and program.input is None:
                channels = node.examples[0].shape[3 - node.axis] if node.examples[0] is not None else None
                value = program.input = lowering.input(channels)
            else:
                raise _unsupported(node, "the fused step takes one signal input (the chunk)")
            clock = (0, ticks) if node.timed else None
        elif node.kind is Kind.STATIC and any(isinstance(lowering.values[i], Span) for i in node.inputs):
            lowering.begin(index, (0, 1))
            value = lowering.pointwise(index, node)  # computed from a per-stream constant input
        elif node.kind is Kind.STATIC:
            value = node.examples[0]
            value = value.detach() if isinstance(value, torch.Tensor) else value
        elif node.kind is Kind.WINDOW:
            lowering.begin(index, None)
            value = lowering.window(node)
            clock = lowering.value_clock
        elif node.kind is Kind.POINTWISE:
            clock = lowering.align(index, node)
            value = lowering.pointwise(index, node)
        elif node.kind is Kind.SIZE:
            value = None  # read by nothing the fused step runs
        elif node.kind is Kind.TRANSPOSED:
            lowering.begin(index, None)
            src = lowering.resolve(node.args[0])
            if not isinstance(src, Span):
                raise _unsupported(node, "its input is not a signal")
            value, clock = lowering.transposed(node, src)
        else:
            raise _unsupported(node, "a module run whole (its forward cannot be traced)")
        lowering.values[index] = value
        lowering.clocks[index] = clock if node.timed else None
    output = lowering.values[graph.output]
    if not isinstance(output, Span):
        raise _unsupported(graph.nodes[graph.output], "the output is not a signal")
    program.out_clock = lowering.output_clock(graph.output)
    _stack_sums(program, output)
    return _compact(program, output)


def _compact(program, output: Span) -> Span:
    """Drop the workspace columns no op reads or writes (left by folded and dropped ops), keeping
    every span's columns contiguous and in order: a narrower row stays in cache at large batches."""
    ops = program.ops
    spans = [span for op in ops for span in (op.src, op.init, op.dst) if span is not None]
    spans += [span for span in (program.input, program.local, output) if span is not None]
    used = [False] * program.width
    for span in spans:
        used[span.offset : span.offset + span.width] = [True] * span.width
    new_offset, count = [], 0
    for flag in used:
        new_offset.append(count)
        count += flag

    def moved(span: Span | None) -> Span | None:
        if span is None:
            return None
        return Span(new_offset[span.offset] if span.offset < len(new_offset) else count, span.width)

    for op in ops:
        op.src, op.init, op.dst = moved(op.src), moved(op.init), moved(op.dst)
    program.input, program.local = moved(program.input), moved(program.local)
    program.width = count
    return moved(output)


def _overlap(a: Span, b: Span) -> bool:
    return a.offset < b.offset + b.width and b.offset < a.offset + a.width


def _stack_sums(program, output: Span) -> None:
    """Turn chains of products summed through ``init`` (``y = x_1 @ W_1 + ... + x_n @ W_n``: the
    skip connections of a WaveNet) into one product over ``[x_1, ..., x_n]``, with the ``x_i``
    moved side by side in the workspace: one larger matrix product instead of ``n`` small ones."""
    ops = program.ops
    fixed = [span for span in (program.input, program.local, output) if span is not None]

    def reads(span: Span) -> list[tuple[int, str]]:
        return [(i, name) for i, op in enumerate(ops) for name in ("src", "init")
                if getattr(op, name) is not None and _overlap(getattr(op, name), span)]

    def movable(span: Span) -> bool:  # written by one op, read only as a whole, not an input or output
        writers = [i for i, op in enumerate(ops) if _overlap(op.dst, span)]
        return (len(writers) == 1 and ops[writers[0]].dst == span and ops[writers[0]].code != OpCode.EMBED
                and all(getattr(ops[i], name) == span for i, name in reads(span))
                and not any(_overlap(span, other) for other in fixed))

    index = 0
    while index < len(ops):
        chain = [index]
        while True:  # extend: the next op whose init is this one's dst, its only reader
            last = ops[chain[-1]]
            if last.code != OpCode.LINEAR or _overlap(last.dst, output) or any(_overlap(last.dst, f) for f in fixed):
                break
            readers = reads(last.dst)
            if len(readers) != 1 or readers[0][1] != "init" or ops[readers[0][0]].code != OpCode.LINEAR:
                break
            chain.append(readers[0][0])
        chain_ops = [ops[i] for i in chain]
        if (len(chain) < 2 or chain_ops[0].code != OpCode.LINEAR
                or len({(op.start, op.period) for op in chain_ops}) != 1
                or not all(movable(op.src) for op in chain_ops) or len({op.src for op in chain_ops}) != len(chain)):
            index += 1
            continue
        block = program.alloc(sum(op.src.width for op in chain_ops))
        moved, offset = {}, block.offset
        for op in chain_ops:
            moved[op.src] = Span(offset, op.src.width)
            offset += op.src.width
        for op in ops:
            for name in ("src", "init", "dst"):
                value = getattr(op, name)
                if value in moved:
                    setattr(op, name, moved[value])
        first, last = chain_ops[0], chain_ops[-1]
        weights = program.weights
        matrix = torch.cat([weights[op.weight] for op in chain_ops], dim=0)
        biases = [weights[op.bias] for op in chain_ops if op.bias is not None]
        stacked = Op(OpCode.LINEAR, block, last.dst, init=first.init, weight=program.weight(matrix),
                     bias=program.weight(torch.stack(biases).sum(0)) if biases else None, start=last.start,
                     period=last.period, value=last.value)
        ops[chain[-1]] = stacked
        for i in sorted(chain[:-1], reverse=True):
            del ops[i]
        index = 0  # indices moved: look again from the start
