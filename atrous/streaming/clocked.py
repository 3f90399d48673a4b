"""Time in a lowered program: the clock of every value, windows at any stride, transposed
convolutions as phases, and delay lines that align two paths.

A fused step runs in *ticks*, ``ticks`` per input sample: one unless a layer upsamples past the
input's rate (the least common multiple of the numerators of the nodes' rates, so that every
value has a whole number of ticks per sample). A value's *clock* ``(start, period)`` says that
its sample ``i`` of a stream started at tick 0 is computed at tick ``start + i * period``; an op
runs on a clock of its own (:class:`~atrous.streaming.opset.Op` ``start``/``period``). From a
window's geometry (:class:`~atrous.streaming.graph.Geometry`: output ``m`` reads the padded input
``[m s, m s + K)``) its output ``m`` is computed at the tick its last input sample arrives:

* stride 1: a ``CONV`` that runs with its input and keeps ``(k - 1) d`` past inputs; with
  ``r = K - 1 - pad_left`` samples of lookahead its output lags its input by ``r`` samples
  (the values it computes before then are the left padding's, read by nothing);
* stride ``s > 1``: a ``PUSH`` of every input sample into a ring, and ``TAPS`` at the output's
  clock, one frame per ``s`` input samples (``MAX`` for max pooling, at any stride);
* a transposed convolution (stride ``s``): raw output ``o = n s + phase`` of input ``n`` is
  computed at tick ``start_in + o * period_out``, one ``TAPS`` per phase over the input's ring
  with the kernel taps ``j`` where ``j d = phase (mod s)``, so outputs come out one per output
  period as they complete (later than a streamer that emits a frame's samples at once);
* an op combining values whose clocks start at different ticks reads the earlier ones through
  a delay line (``PUSH`` and ``READ``) when they are a whole period or more ahead.
* a window that crops more outputs at its end than its right padding adds, and a transposed
  convolution whose kernel is shorter than its stride, hold that many outputs back (their ops
  read ``lag`` samples back): no output comes out that the offline forward of the samples so
  far might not have.

Before a value's clock starts, nothing reads it, and a ring holds zeros for the samples before
a stream's first: the left padding. Padding on the right (lookahead) is applied when a stream
is flushed: each value's samples past its end are zeroed as they are computed (the executors
read the ends from :func:`~atrous.streaming.timing.counts`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from atrous.streaming.graph import Node, StreamGraph
from atrous.streaming.opset import OpCode, Span
from atrous.streaming.pointwise import dense_weight, unsupported
from atrous.streaming.timing import FAR, counts

Clock = tuple[int, int]  # (start, period) in ticks


def ticks_per_input(graph: StreamGraph) -> int:
    """Ticks per input sample: every value then has a whole number of ticks per sample."""
    return math.lcm(*(node.rate.numerator for node in graph.nodes if node.timed)) if graph.nodes else 1


def emitted(clock: Clock, ticks: int) -> int:
    """Samples of a value on ``clock`` computed in the first ``ticks`` ticks."""
    start, period = clock
    return max(0, -(-(ticks - start) // period))


class ClockedLowering:
    """The time-related part of :class:`~atrous.streaming.lowering._Lowering` (a mixin).

    It uses ``program``, ``graph``, ``values``, ``written``, ``resolve``, ``emit`` and
    ``conv_parameters`` of the lowering and keeps the clock
    of every node in ``clocks``; ``clock`` is the run clock and ``value_clock`` the value clock
    of the node being lowered, which :meth:`emit` gives the ops it writes.
    """

    program: Any
    graph: StreamGraph
    values: list[Any]
    written: dict[Span, int]

    def init_clocks(self) -> None:
        self.clocks: list[Clock | None] = [None] * len(self.graph.nodes)
        self.clock: Clock = (0, 1)
        self.value_clock: Clock | None = None
        self.node_index = -1
        self.overrides: dict[int, Any] = {}  # a node's inputs read through a delay line
        self._rings: dict[tuple[Span, Clock], int] = {}  # (span, clock) -> ring filled by a PUSH
        self._delayed: dict[tuple[int, int, Clock], Span] = {}

    def begin(self, index: int, clock: Clock | None, value_clock: Clock | None = None) -> None:
        """Start lowering node ``index``: its ops run on ``clock`` and write values on ``value_clock``."""
        self.node_index, self.overrides = index, {}
        self.clock = clock or (0, 1)
        self.value_clock = value_clock if value_clock is not None else clock

    def clock_fields(self, start: int | None = None) -> dict[str, Any]:
        """The clock fields of an op of the node being lowered (``start``: another first tick)."""
        run_start, run_period = self.clock
        value = None if self.value_clock is None else (*self.value_clock, self.node_index)
        return {"start": run_start if start is None else start, "period": run_period, "value": value}

    def timed_inputs(self, node: Node) -> list[int]:
        return [i for i in dict.fromkeys(node.inputs) if self.graph.nodes[i].timed and self.clocks[i] is not None]

    # pointwise ops: one clock for all inputs ---------------------------------------------------
    def align(self, index: int, node: Node) -> Clock:
        """The clock of a pointwise node: its latest input's; inputs a period or more ahead are
        read through delay lines (set in ``overrides``)."""
        timed = self.timed_inputs(node)
        if not timed:
            self.begin(index, (0, 1))
            return (0, 1)
        clocks = [self.clocks[i] for i in timed]
        periods = {period for _, period in clocks}
        if len(periods) != 1:  # the graph's rate check rules this out; a lowering bug otherwise
            raise unsupported(node, f"it combines values on clocks {clocks}")
        period = periods.pop()
        start = max(start for start, _ in clocks)
        self.begin(index, (start, period))
        for source, (source_start, _) in zip(timed, clocks):
            lag = (start - source_start) // period
            if lag:
                self.overrides[source] = self.delayed(node, source, lag)
        return (start, period)

    def delayed(self, node: Node, source: int, lag: int) -> Span:
        """The value of node ``source``, ``lag`` of its samples late: a ``READ`` from its ring."""
        key = (source, lag, self.clock)
        if key not in self._delayed:
            value = self.values[source]
            if not isinstance(value, Span):
                raise unsupported(node, f"it needs {self.graph.nodes[source].label} delayed by {lag} samples, "
                                        "which is not one signal")
            ring = self.ring_of(value, self.clocks[source], lag + 1)
            start, period = self.clock  # the copy holds `source`'s samples on this node's clock
            self._delayed[key] = self.emit(OpCode.READ, None, value.width, ring=ring, lag=lag, start=start,
                                           period=period, value=(start, period, source))
        return self._delayed[key]

    def ring_of(self, span: Span, clock: Clock, length: int) -> int:
        """The ring a ``PUSH`` fills with ``span`` on ``clock``, at least ``length`` samples long."""
        program, key = self.program, (span, clock)
        if key not in self._rings:
            self._rings[key] = program.add_ring(length, span.width, clock)
            self.emit(OpCode.PUSH, span, span.width, dst=span, ring=self._rings[key], start=clock[0], period=clock[1],
                      value=None)
        ring = self._rings[key]
        if program.rings[ring][0] < length:
            program.rings[ring] = (length, span.width)
        return ring

    # windows along time ------------------------------------------------------------------------
    def window_clocks(self, node: Node) -> tuple[Clock, Clock, int]:
        """(input clock, output clock, hold) of a window: output ``m`` comes when its last input
        sample does, ``hold`` frames later when the window crops that many outputs at the end that
        its right padding does not make up for (they must not come out before the end is known);
        refuses what cannot be clocked."""
        g, source = node.geometry, node.args[0].index
        clock = self.clocks[source]
        if clock is None:
            raise unsupported(node, "its input has no time axis")
        start, period = clock
        lookahead = g.extent - 1 - g.pad_left
        if lookahead < 0:
            raise unsupported(node, f"it pads {g.pad_left} samples on the left, more than its extent {g.extent} needs")
        if g.pad_value != 0 and (g.pad_left > 0 or g.pad_right > 0):
            raise unsupported(node, f"it pads with {g.pad_value}, not zeros")
        hold = g.early(False, FAR)  # outputs a crop at the end removes: held back until the end is known
        out = (start + (lookahead + (g.crop_left + hold) * g.stride) * period, g.stride * period)
        return clock, out, hold

    def taps_window(self, node: Node, src: Span, weight: torch.Tensor, bias: torch.Tensor | None) -> Span:
        """A window as ``TAPS`` over a ring of its input, once per frame. ``weight``: ``(out, in, k)``."""
        g = node.geometry
        source_clock, out_clock, hold = self.window_clocks(node)
        ring = self.ring_of(src, source_clock, g.extent + hold * g.stride)
        program = self.program
        k = g.kernel_size
        matrix = weight.permute(2, 1, 0).reshape(k * src.width, -1)  # tap j (oldest first) in rows j*in..
        self.begin(self.node_index, out_clock)
        return self.emit(OpCode.TAPS, None, matrix.shape[1], weight=program.weight(matrix),
                         bias=None if bias is None else program.weight(bias), ring=ring, kernel_size=k,
                         dilation=g.dilation, lag=hold * g.stride)

    def max_window(self, node: Node, src: Span) -> Span:
        """Max pooling: its input pushed into a ring, a ``MAX`` over the taps per output."""
        g = node.geometry
        source_clock, out_clock, hold = self.window_clocks(node)
        ring = self.ring_of(src, source_clock, g.extent + hold * g.stride)
        self.begin(self.node_index, out_clock)
        return self.emit(OpCode.MAX, None, src.width, ring=ring, kernel_size=g.kernel_size, dilation=g.dilation,
                         lag=hold * g.stride)

    def held_span(self, node: Node, src: Span) -> Span:
        """A crop or decimation: the same span on the output's clock, read from a delay line when
        it holds outputs back."""
        source_clock, out_clock, hold = self.window_clocks(node)
        self.begin(self.node_index, out_clock)
        if not hold:
            return src
        lag = hold * node.geometry.stride
        ring = self.ring_of(src, source_clock, lag + 1)
        return self.emit(OpCode.READ, None, src.width, ring=ring, lag=lag)

    def transposed(self, node: Node, src: Span) -> tuple[Span, Clock]:
        """A transposed convolution as ``stride`` phases over its input's ring; its span and clock."""
        g, program = node.geometry, self.program
        (start, period), s = self.clocks[node.args[0].index], g.stride
        if g.pad_left:
            raise unsupported(node, f"its input is padded by {g.pad_left} samples")
        if period % s:  # ticks_per_input makes every period a multiple of the upsampling: a bug otherwise
            raise unsupported(node, f"{period} ticks per input sample do not divide by {s}")
        weight, bias, groups = self.conv_parameters(node)
        in_channels, _, k = weight.shape  # (in, out / groups, k)
        if in_channels != src.width:
            raise unsupported(node, f"it takes {in_channels} channels but receives {src.width}")
        dense = dense_weight(weight, groups)  # (in, out, k), block diagonal: the same layout as a conv's
        step, d = period // s, g.dilation
        hold = g.early(True, FAR)  # raw outputs past the end a shorter kernel or a crop leaves: held back
        out_clock = (start + (g.crop_left + hold) * step, step)
        phases = []  # raw output n s + phase comes at tick start + (n s + phase + hold) step
        for phase in range(s):
            later = (phase + hold) // s  # inputs that have come since input n by then
            taps = sorted((((j * d - phase) // s + later), j) for j in range(k) if (j * d - phase) % s == 0)[::-1]
            phases.append(taps)  # (lag, tap), oldest (largest lag) first
        ring = self.ring_of(src, (start, period), 1 + max((taps[0][0] for taps in phases if taps),
                                                          default=(s - 1 + hold) // s))
        bias_index = None if bias is None else program.weight(bias)
        dst = program.alloc(dense.shape[1])
        self.begin(self.node_index, (start, period), out_clock)
        for phase, taps in enumerate(phases):
            if taps:
                matrix = torch.cat([dense[:, :, j] for _, j in taps], dim=0)
                lag = taps[-1][0]
                dilation = taps[0][0] - taps[1][0] if len(taps) > 1 else 1
            else:  # a phase no tap reaches: the bias alone
                matrix, lag, dilation = dense.new_zeros(in_channels, dense.shape[1]), 0, 1
            self.emit(OpCode.TAPS, None, dense.shape[1], dst=dst, weight=program.weight(matrix), bias=bias_index,
                      ring=ring, kernel_size=max(1, len(taps)), dilation=dilation, lag=lag,
                      **self.clock_fields(start=start + (phase + hold) * step))
        self.written[dst] = -2  # several writers: nothing folds into it
        return dst, out_clock

    def output_clock(self, index: int) -> Clock:
        clock = self.clocks[index]
        return clock if clock is not None else (0, 1)


def fused_delay(graph: StreamGraph, out_clock: Clock, ticks: int) -> int:
    """Outputs a fused step holds back at most: those the offline forward has after ``A`` input
    samples but whose ticks come later (lookahead, frames and upsampled samples spread out)."""
    period = graph.timing.period
    return max(counts(graph, samples)[graph.output][1] - emitted(out_clock, samples * ticks)
               for samples in range(FAR * period, FAR * period + period))


def stream_ends(graph, samples: int, starts: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per timed node, ``(B,)``: the index of each stream's first sample past its end after
    ``samples`` inputs, its sequence having begun at input ``starts[b]`` (a multiple of the period)."""
    lengths = (samples - starts).tolist()
    table = {length: counts(graph, length) for length in set(lengths)}
    ends = {}
    for index, node in enumerate(graph.nodes):
        if node.timed:
            ends[index] = torch.tensor([int(begin * node.rate) + table[length][index][1]
                                        for begin, length in zip(starts.tolist(), lengths)])
    return ends
