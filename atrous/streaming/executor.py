"""Run a lowered :class:`~atrous.streaming.program.Program` with PyTorch ops, in place.

The fallback of :class:`~atrous.streaming.FusedStreamer` when the C++ step cannot be built. Every
value is a view of one preallocated workspace ``(B, width)``; each causal convolution reads its
``k - 1`` past taps from a ring buffer ``((k - 1) * d, B, C)`` at slots ``(t - m d) mod (k - 1) d``
and writes its input at ``t mod (k - 1) d`` after reading (Paine et al. 2016, "Fast WaveNet
generation algorithm"). What each op computes comes from :data:`~atrous.streaming.opset.OPS`
(its in-place form); this module only resolves operands and keeps the rings. No tensor is
allocated per step except PyTorch's own temporaries, and no ``torch.cat``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from atrous.ops.padding import causal_padding
from atrous.streaming.opset import OPS, IdSource, Op, Operands, Span
from atrous.streaming.program import Program


class TorchExecutor:
    """Executes a program on views of ``work`` with the ring buffers ``rings``.

    Args:
        program: the lowered model.
        rings: one ``((k - 1) * d, B, C)`` tensor per entry of ``program.rings``, zeros at the start.
        work: ``(B, program.width)`` workspace.
    """

    def __init__(self, program: Program, rings: list[torch.Tensor], work: torch.Tensor) -> None:
        self.program = program
        self.work = work
        self.rings = rings
        self.ids: list[torch.Tensor | None] = [None] * len(IdSource)  # set per step, read by every op
        self.steps = [self._bind(op) for op in program.ops]

    def view(self, span: Span) -> torch.Tensor:
        return self.work[:, span.offset : span.offset + span.width]

    def _bind(self, op: Op) -> Callable[[int], None]:
        """A closure ``time -> None`` that performs ``op`` in place."""
        weights, write, dst = self.program.weights, OPS[op.code].writer(), self.view(op.dst)
        src = None if op.src is None else self.view(op.src)
        weight = None if op.weight is None else weights[op.weight]
        x = Operands(
            src=src, init=None if op.init is None else self.view(op.init), weight=weight,
            blocks=() if src is None or weight is None else weight.split(op.src.width),
            bias=None if op.bias is None else weights[op.bias], ids=self.ids, arg=op.arg,
        )
        if op.ring is None:
            return lambda time: write(x, dst)
        k, d = op.kernel_size, op.dilation
        context = causal_padding(k, d)[0]
        slots = list(self.rings[op.ring].unbind(0))  # a view per ring slot, (B, C) each

        def with_past(time: int) -> None:
            x.past = [slots[(time - m * d) % context] for m in range(k - 1, 0, -1)]
            write(x, dst)
            slots[time % context].copy_(src)  # after the reads: for k = 2 it is the slot just read

        return with_past

    def run(self, chunk: torch.Tensor, local: torch.Tensor | None, global_ids: torch.Tensor | None,
            out: torch.Tensor, start: int) -> None:
        """Run ``L = chunk.shape[-1]`` steps from time ``start``; write ``out`` ``(B, C_out, L)``."""
        program = self.program
        if program.classes:
            _check_ids(chunk, program.classes, "class ids")
        if global_ids is not None:
            _check_ids(global_ids, program.global_classes, "global_condition ids")
        input_view = None if program.input is None else self.view(program.input)
        local_view = None if program.local is None else self.view(program.local)
        output_view = self.view(program.output)
        self.ids[IdSource.GLOBAL] = global_ids
        for t in range(chunk.shape[-1]):
            if input_view is None:
                self.ids[IdSource.INPUT] = chunk[:, t]
            else:
                input_view.copy_(chunk[:, :, t])
            if local_view is not None:
                local_view.copy_(local[:, :, t])
            for step in self.steps:
                step(start + t)
            out[:, :, t].copy_(output_view)


def _check_ids(ids: torch.Tensor, bound: int, name: str) -> None:
    low, high = torch.aminmax(ids)
    if low < 0 or high >= bound:
        raise ValueError(f"{name} must lie in [0, {bound}), got values in [{int(low)}, {int(high)}]")
