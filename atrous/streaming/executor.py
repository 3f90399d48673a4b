"""Run a lowered :class:`~atrous.streaming.program.Program` with PyTorch ops, in place.

The fallback of :class:`~atrous.streaming.FusedStreamer` when the C++ step cannot be built, and
the runner of its flush. Every value is a view of one preallocated workspace ``(B, width)``; each
causal convolution reads its ``k - 1`` past taps from a ring buffer ``((k - 1) * d, B, C)`` at
slots ``(n - m d) mod (k - 1) d`` and writes its input at ``n mod (k - 1) d`` after reading, ``n``
counting its runs (Paine et al. 2016, "Fast WaveNet generation algorithm"); the ops on clocks of
their own run at their ticks (:mod:`atrous.streaming.clocked`). What each op computes comes from
:data:`~atrous.streaming.opset.OPS` (its in-place form); this module only resolves operands and
keeps the rings. No tensor is allocated per step except PyTorch's own temporaries, and no
``torch.cat``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from atrous.streaming.clocked import emitted
from atrous.streaming.opset import OPS, IdSource, Op, OpCode, Operands, Span
from atrous.streaming.program import Program


class TorchExecutor:
    """Executes a program on views of ``work`` with the ring buffers ``rings``.

    Args:
        program: the lowered model.
        rings: one ``(samples, B, C)`` tensor per entry of ``program.rings``, zeros at the start.
        work: ``(B, program.width)`` workspace.

    Attributes:
        ends: ``None``, or while a stream is flushed, per graph node the ``(B,)`` index of each
            stream's first sample past its end: samples from there on are zeroed as they are
            computed, the right padding of the offline forward (:mod:`atrous.streaming.clocked`).
    """

    def __init__(self, program: Program, rings: list[torch.Tensor], work: torch.Tensor) -> None:
        self.program = program
        self.work = work
        self.rings = rings
        self.ids: list[torch.Tensor | None] = [None] * len(IdSource)  # set per step, read by every op
        self.steps = [self._bind(op) for op in program.ops]
        self.clocks = [(op.start, op.period) for op in program.ops]
        self.unclocked = program.ticks == 1 and all(clock == (0, 1) for clock in self.clocks)  # no op skips a tick
        self.ends: dict[int, torch.Tensor] | None = None

    def view(self, span: Span) -> torch.Tensor:
        return self.work[:, span.offset : span.offset + span.width]

    def _bind(self, op: Op) -> Callable[[int, int], None]:
        """A closure ``(tick, n) -> None`` that performs ``op`` in place (``n``: its run index)."""
        weights, write, dst = self.program.weights, OPS[op.code].writer(), self.view(op.dst)
        src = None if op.src is None else self.view(op.src)
        weight = None if op.weight is None else weights[op.weight]
        x = Operands(
            src=src, init=None if op.init is None else self.view(op.init), weight=weight,
            blocks=() if src is None or weight is None else weight.split(op.src.width),
            bias=None if op.bias is None else weights[op.bias], ids=self.ids, arg=op.arg,
        )
        if op.ring is None:
            return lambda tick, n: write(x, dst)
        k, d = op.kernel_size, op.dilation
        slots = list(self.rings[op.ring].unbind(0))  # a view per ring slot, (B, C) each
        size = len(slots)
        if op.code == OpCode.CONV:
            def with_past(tick: int, n: int) -> None:
                x.past = [slots[(n - m * d) % size] for m in range(k - 1, 0, -1)]
                write(x, dst)
                slots[n % size].copy_(src)  # after the reads: for k = 2 it is the slot just read
            return with_past
        if op.code == OpCode.PUSH:
            return lambda tick, n: slots[n % size].copy_(src)
        ring_start, ring_period = self.program.ring_clocks[op.ring]
        if weight is not None:
            x.blocks = weight.split(weight.shape[0] // k)

        def from_ring(tick: int, n: int) -> None:  # TAPS, MAX and READ
            newest = (tick - ring_start) // ring_period - op.lag
            taps = [slots[(newest - m * d) % size] for m in range(k - 1, -1, -1)]
            x.past, x.src = taps[:-1], taps[-1]
            write(x, dst)

        return from_ring

    def run(self, chunk: torch.Tensor | None, local: torch.Tensor | None, global_ids: torch.Tensor | None,
            out: torch.Tensor, start: int, *, ticks: int | None = None, x_first: int | None = None,
            out_first: int | None = None) -> None:
        """Run the ticks ``[start, start + ticks)``; write the outputs they complete to ``out``.

        Args:
            chunk: ``(B, C_in, L)`` inputs (``(B, L)`` ids), column 0 being input sample
                ``x_first``; ``None`` past the end of the streams (zeros go in).
            local, global_ids: a WaveNet's conditioning, or the model's second input along time
                (``local``), like ``chunk``.
            out: ``(B, C_out, n)``; column 0 is output sample ``out_first``.
            start: the first tick; ``ticks`` defaults to the chunk's, ``x_first`` and
                ``out_first`` to the samples before ``start``.
        """
        program = self.program
        per_input = program.ticks
        if program.classes:
            _check_ids(chunk, program.classes, "class ids")
        if global_ids is not None:
            _check_ids(global_ids, program.global_classes, "global_condition ids")
        ticks = chunk.shape[-1] * per_input if ticks is None else ticks
        x_first = start // per_input if x_first is None else x_first
        out_start, out_period = program.out_clock
        out_first = emitted(program.out_clock, start) if out_first is None else out_first
        input_view = None if program.input is None else self.view(program.input)
        local_view = None if program.local is None else self.view(program.local)
        output_view = self.view(program.output)
        self.ids[IdSource.GLOBAL] = global_ids
        columns = 0 if chunk is None else chunk.shape[-1]
        for tick in range(start, start + ticks):
            if tick % per_input == 0:
                column = tick // per_input - x_first
                if input_view is None:
                    self.ids[IdSource.INPUT] = chunk[:, column]
                elif 0 <= column < columns:
                    input_view.copy_(chunk[:, :, column])
                else:
                    input_view.zero_()
                if local_view is not None and local is not None and 0 <= column < local.shape[-1]:
                    local_view.copy_(local[:, :, column])
                elif local_view is not None:  # past the end of the streams (a flush)
                    local_view.zero_()
            if self.unclocked and self.ends is None:
                for step in self.steps:
                    step(tick, tick)
            else:
                self._tick(tick)
            if tick >= out_start and (tick - out_start) % out_period == 0:
                column = (tick - out_start) // out_period - out_first
                if 0 <= column < out.shape[2]:
                    out[:, :, column].copy_(output_view)

    def _tick(self, tick: int) -> None:
        for step, (start, period), op in zip(self.steps, self.clocks, self.program.ops):
            if tick < start or (tick - start) % period:
                continue
            step(tick, (tick - start) // period)
            if self.ends is not None and op.value is not None:
                value_start, value_period, node = op.value
                past = self.ends[node] <= (tick - value_start) // value_period
                if bool(past.any()):
                    self.view(op.dst)[past] = 0.0


def _check_ids(ids: torch.Tensor, bound: int, name: str) -> None:
    low, high = torch.aminmax(ids)
    if low < 0 or high >= bound:
        raise ValueError(f"{name} must lie in [0, {bound}), got values in [{int(low)}, {int(high)}]")
