"""Run a lowered :class:`~atrous.streaming.program.Program` with PyTorch ops, in place.

The fallback of :class:`~atrous.streaming.FusedStreamer` when the C++ step cannot be built,
and the table the C++ step reads. Every value is a view of one preallocated workspace
``(B, width)``; each causal convolution reads its ``k - 1`` past taps from a ring buffer
``((k - 1) * d, B, C)`` at slots ``(t - m d) mod (k - 1) d`` and writes its input at
``t mod (k - 1) d`` after reading (Paine et al. 2016, "Fast WaveNet generation algorithm"). No
tensor is allocated per step except PyTorch's own temporaries, and no ``torch.cat``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from atrous.streaming.program import ACT, ADD, CONV, EMBED, GATE, LINEAR, Op, Program, Span

_FIELDS = 12  # columns of the op table, as in fused_step.cpp
_ACT_OUT = {0: None, 1: torch.clamp_min, 2: torch.tanh, 3: torch.sigmoid}
_ACT_FN = {4: F.gelu, 5: F.silu}


def op_table(program: Program) -> torch.Tensor:
    """The ops as an ``(n_ops, 12)`` int64 table for ``fused_step.cpp``."""
    rows = []
    for op in program.ops:
        src = op.src or Span(0, 0)
        rows.append([
            op.code, src.offset, src.width, op.dst.offset, op.dst.width, -1 if op.init is None else op.init.offset,
            -1 if op.weight is None else op.weight, -1 if op.bias is None else op.bias,
            -1 if op.ring is None else op.ring, op.kernel_size, op.dilation, op.arg,
        ])
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, _FIELDS)


class TorchExecutor:
    """Executes a program on views of ``work`` with the ring buffers ``rings``.

    Args:
        program: the lowered model.
        rings: one ``((k - 1) * d, B, C)`` tensor per ``CONV`` op, zeros at the start.
        work: ``(B, program.width)`` workspace.
    """

    def __init__(self, program: Program, rings: list[torch.Tensor], work: torch.Tensor) -> None:
        self.program = program
        self.work = work
        self.rings = rings
        self.steps = [self._compile(op) for op in program.ops]

    def view(self, span: Span) -> torch.Tensor:
        return self.work[:, span.offset : span.offset + span.width]

    def _compile(self, op: Op) -> Callable[[int, torch.Tensor | None, torch.Tensor | None], None]:
        """A closure ``(time, ids, global_ids) -> None`` that performs ``op`` in place."""
        weights = self.program.weights
        dst = self.view(op.dst)
        src = None if op.src is None else self.view(op.src)
        init = None if op.init is None else self.view(op.init)
        bias = None if op.bias is None else weights[op.bias]
        if op.code in (LINEAR, CONV):
            k, d = op.kernel_size, op.dilation
            blocks = weights[op.weight].split(op.src.width) if op.code == CONV else [weights[op.weight]]
            first = bias if bias is not None else init

            def product(lhs: list[torch.Tensor]) -> None:  # dst = init + bias + sum lhs[j] @ blocks[j]
                if first is None:
                    torch.mm(lhs[0], blocks[0], out=dst)
                else:
                    torch.addmm(first, lhs[0], blocks[0], out=dst)
                if bias is not None and init is not None:
                    dst.add_(init)
                for tap, block in zip(lhs[1:], blocks[1:]):
                    dst.addmm_(tap, block)

            if op.code == LINEAR:
                return lambda time, ids, gids: product([src])
            context = (k - 1) * d
            slots = list(self.rings[op.ring].unbind(0))  # a view per ring slot, (B, C) each

            def conv(time: int, ids, gids) -> None:
                product([slots[(time - m * d) % context] for m in range(k - 1, 0, -1)] + [src])
                slots[time % context].copy_(src)  # after the reads: for k = 2 it is the slot just read

            return conv
        if op.code == ACT:
            if op.arg in _ACT_FN:
                fn = _ACT_FN[op.arg]
                return lambda time, ids, gids: dst.copy_(fn(src))
            out_fn = _ACT_OUT[op.arg]
            if out_fn is None:
                return lambda time, ids, gids: dst.copy_(src)
            if op.arg == 1:  # relu has no out= form
                return lambda time, ids, gids: torch.clamp_min(src, 0.0, out=dst)
            return lambda time, ids, gids: out_fn(src, out=dst)
        if op.code == GATE:
            width = op.dst.width

            def gate(time: int, ids, gids) -> None:
                torch.tanh(src[:, :width], out=dst)
                dst.mul_(torch.sigmoid(src[:, width:]))

            return gate
        if op.code == ADD:
            return lambda time, ids, gids: torch.add(src, init, out=dst)
        if op.code == EMBED:
            table = weights[op.weight]
            if op.arg == 0:
                return lambda time, ids, gids: dst.copy_(table.index_select(0, ids))
            return lambda time, ids, gids: dst.copy_(table.index_select(0, gids))
        raise ValueError(f"unknown op code {op.code}")

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
        for t in range(chunk.shape[-1]):
            ids = None
            if input_view is None:
                ids = chunk[:, t]
            else:
                input_view.copy_(chunk[:, :, t])
            if local_view is not None:
                local_view.copy_(local[:, :, t])
            for step in self.steps:
                step(start + t, ids, global_ids)
            out[:, :, t].copy_(output_view)


def _check_ids(ids: torch.Tensor, bound: int, name: str) -> None:
    low, high = torch.aminmax(ids)
    if low < 0 or high >= bound:
        raise ValueError(f"{name} must lie in [0, {bound}), got values in [{int(low)}, {int(high)}]")
