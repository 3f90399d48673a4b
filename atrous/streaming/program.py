"""Lower a model to a flat list of per-tick ops for fused streaming.

A streaming step of a causal stack is a fixed sequence of small matrix products and pointwise
functions on one vector per stream: the queue formulation of fast WaveNet generation (Paine et
al. 2016, "Fast WaveNet generation algorithm"), where each causal convolution
``y[t] = b + sum_j W_j x[t - (k - 1 - j) d]`` reads its ``k - 1`` past inputs from a queue of
the last ``(k - 1) * d`` samples. :func:`lower` writes that sequence down once: it traces the
model into a :class:`~atrous.streaming.graph.StreamGraph` (the graph
:class:`~atrous.streaming.Streamer` runs) and lowers its nodes one by one
(:mod:`atrous.streaming.lowering`), with the weights resolved (weight norm evaluated, grouped
convolutions made dense, batch norm folded, residual and skip sums folded into products, the
summed 1x1 skip convolutions of a WaveNet stacked into one matrix), so that an executor (C++ in
``fused_step.cpp``, or PyTorch ops) runs a step without the model's Python code. One path serves
every model; a WaveNet's class-id input (an ``EMBED`` lookup of its 1x1 input convolution) and
its speaker embedding are looked up first and the rest of it is traced as a float model.

Every value lives in a column range (:class:`~atrous.streaming.opset.Span`) of one workspace row
per stream; the ops and what they compute are defined in :mod:`atrous.streaming.opset`. A node
the ops cannot express raises a ``ValueError`` naming it; :class:`~atrous.streaming.Streamer`
streams any model it can trace. Strided, upsampling and lookahead layers put their ops on clocks
of their own (:mod:`atrous.streaming.clocked`). The program holds a copy of the weights taken
when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from atrous.models.sequence import WaveNet
from atrous.streaming.graph import StreamGraph
from atrous.streaming.lowering import lower_graph
from atrous.streaming.opset import IdSource, Op, OpCode, Span
from atrous.streaming.streamer import Streamer


@dataclass
class Program:
    """A lowered model: ops over a workspace of ``width`` floats per stream."""

    ops: list[Op] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    rings: list[tuple[int, int]] = field(default_factory=list)  # (samples, channels) per ring
    ring_clocks: list[tuple[int, int]] = field(default_factory=list)  # (start, period) of each ring's writes
    width: int = 0
    ticks: int = 1  # ticks per input sample (see atrous.streaming.clocked)
    out_clock: tuple[int, int] = (0, 1)  # output sample j is ready at tick start + j * period
    graph: StreamGraph | None = None  # what the program was lowered from (its counts give the ends)
    delay: int = 0  # outputs held back at most (atrous.streaming.clocked.fused_delay)
    input: Span | None = None  # float input channels; None when the input is class ids
    classes: int = 0  # number of input class ids (WaveNet), else 0
    local: Span | None = None  # local conditioning channels, or a second input along time
    local_name: str | None = None  # the forward's argument that fills `local` (a model's own second input)
    constants: list[tuple[str, Span]] = field(default_factory=list)  # per-stream constant inputs (B, width)
    global_classes: int = 0
    output: Span | None = None

    def alloc(self, width: int) -> Span:
        span = Span(self.width, width)
        self.width += width
        return span

    def add_ring(self, length: int, channels: int, clock: tuple[int, int]) -> int:
        """A ring of ``length`` samples of ``channels``, written on ``clock``; its index."""
        self.rings.append((length, channels))
        self.ring_clocks.append(clock)
        return len(self.rings) - 1

    @property
    def every_tick(self) -> bool:
        """Whether every op runs at every tick, one tick per input sample, each ring a ``CONV``'s own:
        a step of one sample needs nothing from the ticks before it but the rings."""
        return self.ticks == 1 and self.out_clock == (0, 1) and all(
            (op.start, op.period) == (0, 1) and (op.ring is None or op.code == OpCode.CONV) for op in self.ops)

    def weight(self, tensor: torch.Tensor) -> int:
        self.weights.append(tensor.detach().to(torch.float32).contiguous().clone())
        return len(self.weights) - 1

    def emit(self, code: OpCode, src: Span | None, width: int, **fields) -> Span:
        dst = fields.pop("dst", None) or self.alloc(width)
        self.ops.append(Op(code, src, dst, **fields))
        return dst


class _WaveNetCore(nn.Module):
    """A WaveNet after its class-id lookup: ``(h, global_bias, local) -> logits``, traceable.

    WaveNet's own forward checks its ids and conditioning shapes, which ``torch.fx`` cannot trace;
    the lowering looks up ``h`` (the 1x1 input convolution of a one-hot id) and the speaker's
    bias with ``EMBED`` ops and traces the rest of the model through this forward.
    """

    def __init__(self, model: WaveNet) -> None:
        super().__init__()
        self.wavenet = model
        self.in_channels = model.config.residual_channels

    def forward(self, h: torch.Tensor, global_bias: torch.Tensor | None = None,
                local: torch.Tensor | None = None) -> torch.Tensor:
        bias = None if global_bias is None else global_bias.unsqueeze(2)
        skips = 0
        for layer in self.wavenet.layers:
            h, skip = layer(h, bias, local)
            skips = skips + skip
        return self.wavenet.head(skips)


def trace_graph(model: nn.Module, chunk: torch.Tensor | None = None, args: tuple = (), *,
                kwargs: dict | None = None, allow_lookahead: bool = False) -> StreamGraph:
    """The :class:`~atrous.streaming.graph.StreamGraph` of ``model`` on example inputs (batch 1).

    Raises:
        ValueError: a node that cannot be streamed or looks ahead without ``allow_lookahead``
            (named), or a model whose input channels are unknown.
    """
    try:
        streamer = Streamer(model, 1, allow_lookahead=allow_lookahead)
        if chunk is not None and (streamer.graph is None or args or kwargs):
            streamer._build(chunk, args, kwargs or {})
        elif streamer.graph is None and streamer._takes_one_input():
            # the input channels were guessed wrong, or a node fails: try the channels of every
            # convolution in turn, then report the first guess's error
            guesses = [streamer.in_channels] if streamer.in_channels else []
            guesses += [m.in_channels for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
            failure = None
            for channels in dict.fromkeys(guesses):
                try:
                    streamer._build(torch.zeros(1, channels, 1), (), {})
                    break
                except ValueError as error:
                    failure = failure or error
            if streamer.graph is None and failure is not None:
                raise failure
    except (ValueError, TypeError) as error:
        raise ValueError(f"cannot fuse the model: {error} (the fused step runs what a Streamer can trace; "
                         "atrous.streaming.Streamer streams the rest)") from None
    if streamer.graph is None and not streamer._takes_one_input():
        raise ValueError(f"cannot fuse {type(model).__name__} without an example step: its forward takes more than "
                         "the chunk; pass chunk= and args= (FusedStreamer lowers it at its first step)")
    if streamer.graph is None:
        raise ValueError(f"cannot fuse {type(model).__name__}: the fused step needs the input's channels, read from "
                         "in_channels or the first Conv1d or ConvTranspose1d; atrous.streaming.Streamer streams it")
    graph = streamer.graph
    if graph.timing.lead is not None:
        node = graph.nodes[graph.timing.lead]
        raise ValueError(f"cannot fuse {node.label}: it computes samples ahead of its input (a left pad not folded "
                         "into a window); atrous.streaming.Streamer streams it")
    for label, module in graph.eval_only:
        if module.training:
            raise ValueError(f"cannot fuse {label} in training mode: call model.eval() first")
    return graph


def _lower_wavenet(model: WaveNet) -> Program:
    cfg = model.config
    program = Program(classes=cfg.classes, global_classes=cfg.global_classes)
    table = model.input.weight[:, :, 0].t() + model.input.bias  # a 1x1 conv of a one-hot input is a lookup
    h = program.emit(OpCode.EMBED, None, cfg.residual_channels, weight=program.weight(table), arg=IdSource.INPUT)
    inputs, args = {"h": h}, []
    if cfg.global_classes or cfg.local_channels:
        args.append(torch.zeros(1, cfg.gate_channels) if cfg.global_classes else None)
    if cfg.global_classes:
        inputs["global_bias"] = program.emit(OpCode.EMBED, None, cfg.gate_channels,
                                             weight=program.weight(model.speaker.weight), arg=IdSource.GLOBAL)
    if cfg.local_channels:
        program.local = inputs["local"] = program.alloc(cfg.local_channels)
        args.append(torch.zeros(1, cfg.local_channels, 1))
    program.graph = trace_graph(_WaveNetCore(model), torch.zeros(1, cfg.residual_channels, 1), tuple(args))
    program.output = lower_graph(program, program.graph, inputs=inputs)
    return program


@torch.no_grad()
def lower(model: nn.Module, *, allow_lookahead: bool = False, chunk: torch.Tensor | None = None, args: tuple = (),
          kwargs: dict | None = None) -> Program:
    """Lower a model to a :class:`Program` (weights are copied: rebuild after training).

    Args:
        model: a model whose forward ``torch.fx`` traces (see
            :mod:`atrous.streaming.lowering` for what fuses), or a WaveNet, float32 on the CPU.
        allow_lookahead: lower a model that looks a bounded number of samples ahead (its
            outputs then lag its inputs).
        chunk, args, kwargs: an example step (``forward(chunk, *args, **kwargs)``) for a model
            whose forward takes more than the chunk: one more tensor along time (``(B, C, L)``)
            and per-stream constants (``(B, D)`` floats) become inputs of the program.

    Raises:
        ValueError: a node that cannot be fused (named), or a model not on the CPU in float32.
    """
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        raise ValueError("fused streaming needs a float32 model on the CPU; use Streamer for other dtypes and devices")
    if isinstance(model, WaveNet):
        return _lower_wavenet(model)
    if chunk is not None:
        chunk, args = chunk[:1], tuple(a[:1] if isinstance(a, torch.Tensor) else a for a in args)
        kwargs = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in (kwargs or {}).items()}
    graph = trace_graph(model, chunk, args, kwargs=kwargs, allow_lookahead=allow_lookahead)
    program = Program(graph=graph)
    program.output = lower_graph(program, graph)
    return program
