"""The streaming step as a pure function of explicit state: ``(x_t, *states) -> (y_t, *new_states)``.

A model at one sample rate without lookahead (every op on every tick, each ring a convolution's
own) steps one input sample per call. Any other program (strided or upsampling layers,
lookahead, pooling, delay lines: ops on clocks of their own or rings shared across ticks,
:mod:`atrous.streaming.clocked`) steps one *block* per call, the input samples after which
every clock's pattern repeats (:attr:`StreamingStep.block`): ``x`` ``(B, C_in, block)`` ->
``y`` ``(B, C_out, outputs_per_block)``, with two more states: ``work`` (the values kept from
one tick to the next, ``(B, width)``) and ``time`` (``(B,)`` int64, blocks since the stream
began, which switches each op on when its clock starts). The first :attr:`StreamingStep.leading`
outputs of a stream come before its first output sample and are dropped; the last
:attr:`StreamingStep.delay` outputs wait for input that comes after the end.

:class:`StreamingStep` runs one time step of a lowered model
(:func:`~atrous.streaming.program.lower`) with every causal convolution's past passed in and
returned as a tensor, so the step can be traced, exported to ONNX
(:func:`atrous.export.streaming.export_streaming_onnx`) and driven by another runtime that
feeds the new states back in: the queues of fast WaveNet generation (Paine et al. 2016, "Fast
WaveNet generation algorithm") as graph inputs and outputs. State ``i`` is ``(B, C_i,
(k_i - 1) d_i)``, the layer's last inputs, oldest first; a new stream starts from zeros (the
causal padding). The step uses only slicing, ``torch.cat``/``stack``, matrix products,
embedding lookups, reductions over channels and pointwise functions (``torch.where`` for the
ops whose clocks have not started): each op's ``evaluate`` from
:data:`~atrous.streaming.opset.OPS`.
"""

from __future__ import annotations

import torch
from torch import nn

from atrous.streaming.opset import OPS, IdSource, OpCode, Operands, Span
from atrous.streaming.program import Program, lower


class StreamingStep(nn.Module):
    """One step (or block) with explicit state, built from a model the fused lowering takes.

    ``forward(x, [global_condition], [local_condition], *states) -> (y, *new_states)``: the
    conditioning inputs are present only when the model has them (a WaveNet with
    ``global_classes`` / ``local_channels``; for another model, its own constants and second
    sequence by name, :meth:`float_inputs`); ``states`` are :attr:`state_names`.

    Args:
        model: a model that :func:`~atrous.streaming.program.lower` accepts (weights are
            copied).
        allow_lookahead: take a model that looks ahead; its outputs come :attr:`leading` late.
        example: ``(chunk, *args)``, an example of the model's inputs when its forward takes more
            than the chunk (a per-stream constant ``(B, D)``, a second sequence ``(B, C, L)``).

    Attributes:
        block: input samples per call (1 for a program at one rate without lookahead).
        outputs_per_block: output samples per call.
        leading: outputs at a stream's start that precede its first output sample.
        delay: outputs still held back after the last input (they need the right padding).

    Shape:
        One sample a call: ``x``: ``(B, C_in)`` float, or ``(B,)`` int64 class ids for a
        WaveNet; ``global_condition``: ``(B,)`` int64; ``local_condition``: ``(B, C_cond)``;
        ``states[i]``: ``(B, C_i, (k_i - 1) d_i)`` -> ``y``: ``(B, C_out)``, new states alike.
        A block a call: ``x``: ``(B, C_in, block)``; ``states[i]``: ``(B, C_i, samples_i)`` (the
        program's rings), ``work``: ``(B, width)``, ``time``: ``(B,)`` int64 -> ``y``:
        ``(B, C_out, outputs_per_block)``, new states alike.
    """

    def __init__(self, model: nn.Module, *, allow_lookahead: bool = False, example: tuple = ()) -> None:
        super().__init__()
        if not isinstance(example, (tuple, list)) or example and not isinstance(example[0], torch.Tensor):
            raise TypeError(f"example must be a tuple (chunk, *args) starting with the chunk tensor, "
                            f"got {example!r:.80}")
        chunk, *args = example or (None,)
        program = lower(model, allow_lookahead=allow_lookahead, chunk=chunk, args=tuple(args))
        self.program: Program = program
        for i, weight in enumerate(program.weights):
            self.register_buffer(f"weight_{i}", weight, persistent=False)
        self.clocked = not program.every_tick  # ops on clocks or rings read across ticks: a block step
        if self.clocked and (program.input is None or program.global_classes):
            raise ValueError("a block step takes float inputs; class ids step one sample a call")
        self.block = program.graph.timing.period if self.clocked else 1
        out_start, out_period = program.out_clock
        self.outputs_per_block = self.block * program.ticks // out_period
        self.leading = out_start // out_period if self.clocked else 0
        self.delay = program.delay

    @property
    def state_names(self) -> list[str]:
        """Names of the state inputs: ``state_0``, ... (and ``work``, ``time`` for a clocked program)."""
        names = [f"state_{i}" for i in range(len(self.program.rings))]
        return names + ["work", "time"] * self.clocked

    @property
    def input_names(self) -> list[str]:
        """Names of the forward's inputs: ``x``, the conditioning present (a WaveNet's, or the
        model's own per-stream constants and second input along time, by their names), then
        :attr:`state_names`."""
        names = ["x"] + ["global_condition"] * bool(self.program.global_classes)
        return names + [name for name, _, _ in self.float_inputs()] + self.state_names

    def float_inputs(self) -> list[tuple[str, Span, bool]]:
        """The float inputs after ``x`` (and a WaveNet's global ids), in order: (name, span, along
        time): a WaveNet's local conditioning, or the model's own constants then its second sequence."""
        program = self.program
        if program.local is not None and program.local_name is None:
            return [("local_condition", program.local, True)]
        inputs = [(name, span, False) for name, span in program.constants]
        return inputs + [(program.local_name, program.local, True)] * (program.local_name is not None)

    def _split(self, inputs: tuple) -> tuple[torch.Tensor | None, list[tuple[Span, torch.Tensor]], list[torch.Tensor]]:
        """``inputs`` after ``x``: (global ids, the (span, value) of the float inputs, the states)."""
        names = self.input_names[1:]
        if len(inputs) != len(names):
            raise ValueError(f"expected {len(names)} tensors after x ({', '.join(names)}), got {len(inputs)}")
        inputs = list(inputs)
        global_ids = inputs.pop(0) if self.program.global_classes else None
        given = [(span, inputs.pop(0)) for _, span, _ in self.float_inputs()]
        return global_ids, given, inputs

    def initial_states(self, batch_size: int) -> list[torch.Tensor]:
        """Zero states for ``batch_size`` new streams."""
        states = [torch.zeros(batch_size, channels, length) for length, channels in self.program.rings]
        if self.clocked:
            states += [torch.zeros(batch_size, self.program.width), torch.zeros(batch_size, dtype=torch.long)]
        return states

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.clocked:
            return self._block(x, *inputs)
        program = self.program
        global_ids, given, rings = self._split(inputs)
        values: list[tuple[Span, torch.Tensor]] = []  # (span, tensor (B, span.width)) written so far
        read = _reader(values)
        if program.input is not None:
            values.append((program.input, x))
        values += given
        ids = [None] * len(IdSource)
        ids[IdSource.INPUT], ids[IdSource.GLOBAL] = x if program.input is None else None, global_ids
        for op in program.ops:
            self._run_op(op, read, values, rings, self._weights(), None, ids)
        return (read(program.output), *rings)

    def _weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"weight_{i}") for i in range(len(self.program.weights))]

    def _block(self, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One block of a clocked program: every tick unrolled, each op gated by its clock."""
        program = self.program
        _, given, states = self._split(inputs)
        *rings, work, time = states
        rings = list(rings)
        weights = self._weights()
        constants = [(span, value) for span, value in given if value.ndim == 2]  # the second input is (B, C, block)
        values: list[tuple[Span, torch.Tensor]] = [(Span(0, program.width), work), *constants]
        read = _reader(values)
        per_block = self.block * program.ticks
        out_start, out_period = program.out_clock
        outs = []
        for tick in range(per_block):
            if tick % program.ticks == 0:
                values.append((program.input, x[:, :, tick // program.ticks]))
                values += [(span, value[:, :, tick // program.ticks]) for span, value in given if value.ndim == 3]
            for op in program.ops:
                if (tick - op.start) % op.period:
                    continue
                first_block = -(-(op.start - tick) // per_block) if op.start > tick else 0  # its clock starts then
                on = None if first_block == 0 else (time >= first_block)
                self._run_op(op, read, values, rings, weights, on)
            if (tick - out_start) % out_period == 0:
                outs.append(read(program.output))
        return (torch.stack(outs, dim=2), *rings, read(Span(0, program.width)), time + 1)

    def _run_op(self, op, read, values, rings, weights, on: torch.Tensor | None, ids=()) -> None:
        """Op ``op`` at one tick on the explicit rings (oldest sample first, replaced in ``rings``);
        only where ``on`` (everywhere when ``None``)."""
        def gated(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return new if on is None else torch.where(on.view(-1, *([1] * (new.dim() - 1))), new, old)

        src = None if op.src is None else read(op.src)
        past = ()
        if op.code in (OpCode.CONV, OpCode.PUSH):  # a shift register: the new sample goes in last
            ring = rings[op.ring]
            if op.code == OpCode.CONV:
                length = ring.shape[2]
                past = [ring[:, :, length - m * op.dilation] for m in range(op.kernel_size - 1, 0, -1)]
            rings[op.ring] = gated(torch.cat([ring[:, :, 1:], src.unsqueeze(2)], dim=2), ring)
            if op.code == OpCode.PUSH:
                return
        elif op.code in (OpCode.TAPS, OpCode.MAX, OpCode.READ):
            ring = rings[op.ring]
            newest = ring.shape[2] - 1 - op.lag
            taps = [ring[:, :, newest - m * op.dilation] for m in range(op.kernel_size - 1, -1, -1)]
            past, src = taps[:-1], taps[-1]
        out = OPS[op.code].evaluate(Operands(
            src=src, past=past, init=None if op.init is None else read(op.init),
            weight=None if op.weight is None else weights[op.weight],
            bias=None if op.bias is None else weights[op.bias], ids=ids, arg=op.arg,
        ))
        values.append((op.dst, out if on is None else gated(out, read(op.dst))))


def _reader(values: list[tuple[Span, torch.Tensor]]):
    """``read(span)``: the newest values written to the columns of ``span``, ``(B, span.width)``."""
    def read(span: Span) -> torch.Tensor:
        pieces, position, end = [], span.offset, span.offset + span.width
        while position < end:  # newest value covering `position` (the workspace is written in order)
            owner, tensor = next((s, t) for s, t in reversed(values) if s.offset <= position < s.offset + s.width)
            stop = min(end, owner.offset + owner.width)
            pieces.append(tensor[:, position - owner.offset : stop - owner.offset])
            position = stop
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    return read
