"""Lower a traced :class:`~atrous.streaming.graph.StreamGraph` to a fused op program, node by node.

One lowering serves every model: the graph of :func:`~atrous.streaming.graph.build_graph` already
says, per node, whether it is a window along time (a convolution: its geometry), an op on each
time step alone (pointwise), a parameter-only value (static) or an input. At one time step a
value with a time axis is a vector per stream, so it lives in a column range
(:class:`~atrous.streaming.opset.Span`) of the workspace, and each node becomes a few ops of
:mod:`atrous.streaming.opset` at most, most of them one or none:

* a window at stride 1 or a 1x1 convolution: ``CONV`` with a ring of ``(k - 1) d`` past
  inputs, or ``LINEAR`` (grouped weights made dense, weight norm evaluated, ``nn.Linear`` over
  channels);

and the ops on each time step alone (:mod:`atrous.streaming.pointwise`):

* activations: ``ACT`` (ELU with another alpha and SELU add a ``PRELU`` slope and a scale);
  ``tanh(a) * sigmoid(b)`` of the two halves of one value: ``GATE``; any other product of two
  signals: ``MUL``; ``PReLU`` and ``LeakyReLU``: ``PRELU`` (a slope per channel); ``GLU`` over
  channels: ``GLU``; softmax and log-softmax over channels: ``SOFTMAX``, ``LOG_SOFTMAX``;
* ``LayerNorm`` over channels (after a transpose to ``(B, T, C)``): ``LAYER_NORM``;
* a sum: folded into the ``init`` of the product that computes one of its terms when the other
  is ready before it (residual connections and skip sums cost no op), else ``ADD``;
* slicing and ``chunk`` along channels, ``transpose``, ``contiguous``, dropout and identity, a
  per-stream constant spread along time (``unsqueeze``, ``repeat``, ``expand``): no op (a
  sub-span or the same span); ``torch.cat`` along channels: no op when its parts lie side by
  side, else copies (``ACT`` identity) into one span;
* eval-mode ``BatchNorm1d``: folded into the product before it, else a diagonal ``LINEAR``.

After the last node, :mod:`atrous.streaming.rewrites` stacks summed products into one and
narrows the workspace. Windows along time at any stride (convolutions, average pooling as a depthwise one, max pooling:
``MAX``), with lookahead, transposed convolutions and the alignment of paths on different clocks
are lowered by :mod:`atrous.streaming.clocked`. Anything else (opaque modules, norms over time,
broadcasting products, padding with another value than zero) raises ``ValueError`` naming
the node; the PyTorch :class:`~atrous.streaming.Streamer` streams those. Weights are evaluated
once here: a program (and a :class:`~atrous.streaming.FusedStreamer`) holds a snapshot of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atrous.streaming.clocked import ClockedLowering, fused_delay, ticks_per_input
from atrous.streaming.graph import Kind, Node, Ref, StreamGraph
from atrous.streaming.opset import OpCode, Span
from atrous.streaming.pointwise import CannotFuse, PointwiseLowering, dense_weight, unsupported
from atrous.streaming.rewrites import compact, stack_sums

__all__ = ["CannotFuse", "lower_graph"]


class _Lowering(PointwiseLowering, ClockedLowering):
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

    def extra_input(self, node: Node) -> Span:
        """A second input along time (``(B, C, L)``, at the chunk's rate), or a per-stream constant
        (``(B, D)`` floats), in the workspace: the executors copy them in."""
        program, example = self.program, node.examples[0]
        if not isinstance(example, torch.Tensor) or not example.is_floating_point():
            raise unsupported(node, "an input that is not a float tensor")
        if node.axis is not None:
            if program.local is not None or example.ndim != 3 or node.axis != 2:
                raise unsupported(node, "the fused step takes one more (B, C, L) input along time besides the chunk")
            program.local, program.local_name = self.input(example.shape[1]), node.target
            return program.local
        if example.ndim != 2:
            raise unsupported(node, f"a per-stream constant of shape {tuple(example.shape)}: only (B, D) is taken")
        span = self.input(example.shape[1])
        program.constants.append((node.target, span))
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
            raise unsupported(node, f"it takes {weight.shape[1]} channels but receives {src.width}")
        program, k = self.program, kernel_size
        matrix = weight.permute(2, 1, 0).reshape(k * src.width, -1)  # tap j (oldest first) in rows j*in..
        weight_index = program.weight(matrix)
        bias_index = None if bias is None else program.weight(bias)
        if k == 1:
            return self.emit(OpCode.LINEAR, src, matrix.shape[1], weight=weight_index, bias=bias_index)
        ring = program.add_ring((k - 1) * dilation, src.width, self.clock)
        return self.emit(OpCode.CONV, src, matrix.shape[1], weight=weight_index, bias=bias_index,
                         ring=ring, kernel_size=k, dilation=dilation)

    def window(self, node: Node) -> Span:
        g = node.geometry
        src = self.resolve(node.args[0])
        if not isinstance(src, Span):
            raise unsupported(node, "its input is not a signal")
        if node.op == "identity" and g.extent == 1:  # cropping or decimation: the same span on another clock
            return self.held_span(node, src)
        if node.op == "max_pool":
            return self.max_window(node, src)
        if node.op == "avg_pool":  # a depthwise convolution with weights 1 / k (the pad counted, as PyTorch does)
            k = g.kernel_size
            weight = torch.eye(src.width)[:, :, None].expand(-1, -1, k) / k
            return self.strided_product(node, src, weight, None)
        if node.op != "conv":
            raise unsupported(node, f"a {node.op.replace('_', ' ')} window has no fused op")
        weight, bias, groups = self.conv_parameters(node)
        weight = dense_weight(weight, groups)
        if weight.shape[1] != src.width:
            raise unsupported(node, f"it takes {weight.shape[1]} channels but receives {src.width}")
        return self.strided_product(node, src, weight, bias)

    def conv_parameters(self, node: Node) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(weight, bias, groups) of a convolution node, a module's (a weight-norm parametrisation
        evaluated) or a function's arguments, detached."""
        if isinstance(node.target, nn.Module):
            conv = node.target
            weight, bias, groups = conv.weight, conv.bias, conv.groups
            if getattr(conv, "padding_mode", "zeros") != "zeros":
                raise unsupported(node, f"padding_mode={conv.padding_mode!r}")
        else:
            weight, bias = self.resolve(node.args[1]), self.resolve(node.args[2]) if len(node.args) > 2 else None
            bias = self.resolve(node.kwargs.get("bias", bias))
            groups = self.resolve(node.kwargs.get("groups", 1))
        if not isinstance(weight, torch.Tensor):
            raise unsupported(node, "its weight is not a parameter")
        return weight.detach(), None if bias is None else bias.detach(), groups

    def strided_product(self, node: Node, src: Span, weight: torch.Tensor, bias: torch.Tensor | None) -> Span:
        """A window's product, ``weight`` ``(out, in, k)``: a ``CONV`` at stride 1, else ``TAPS``."""
        g = node.geometry
        source_clock, out_clock, hold = self.window_clocks(node)
        if g.stride == 1 and not hold:  # runs with its input; with lookahead its outputs lag it
            self.begin(self.node_index, source_clock, out_clock)
            return self.product(node, src, weight, bias, g.kernel_size, g.dilation)
        return self.taps_window(node, src, weight, bias)

    # pointwise ------------------------------------------------------------------------------


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
                value = lowering.extra_input(node)
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
                raise unsupported(node, "its input is not a signal")
            value, clock = lowering.transposed(node, src)
        else:
            raise unsupported(node, "a module run whole (its forward cannot be traced)")
        lowering.values[index] = value
        lowering.clocks[index] = clock if node.timed else None
    output = lowering.values[graph.output]
    if not isinstance(output, Span):
        raise unsupported(graph.nodes[graph.output], "the output is not a signal")
    program.out_clock = lowering.output_clock(graph.output)
    program.delay = fused_delay(graph, program.out_clock, ticks)
    stack_sums(program, output)
    return compact(program, output)
