"""The streaming step as a pure function of explicit state: ``(x_t, *states) -> (y_t, *new_states)``.

:class:`StreamingStep` runs one time step of a lowered model
(:func:`~atrous.streaming.program.lower`) with every causal convolution's past passed in and
returned as a tensor, so the step can be traced, exported to ONNX
(:func:`atrous.export.streaming.export_streaming_onnx`) and driven by another runtime that
feeds the new states back in: the queues of fast WaveNet generation (Paine et al. 2016, "Fast
WaveNet generation algorithm") as graph inputs and outputs. State ``i`` is ``(B, C_i,
(k_i - 1) d_i)``, the layer's last inputs, oldest first; a new stream starts from zeros (the
causal padding). The step uses only slicing, ``torch.cat``, matrix products, embedding lookups
and pointwise functions: each op's ``evaluate`` from :data:`~atrous.streaming.opset.OPS`.
"""

from __future__ import annotations

import torch
from torch import nn

from atrous.streaming.opset import OPS, IdSource, Operands, Span
from atrous.streaming.program import Program, lower


class StreamingStep(nn.Module):
    """One step with explicit state, built from a causal model.

    ``forward(x, [global_condition], [local_condition], *states) -> (y, *new_states)``: the
    conditioning inputs are present only when the model has them (a WaveNet with
    ``global_classes`` / ``local_channels``).

    Args:
        model: a model that :func:`~atrous.streaming.program.lower` accepts (weights are
            copied).

    Shape:
        ``x``: ``(B, C_in)`` float, or ``(B,)`` int64 class ids for a WaveNet;
        ``global_condition``: ``(B,)`` int64; ``local_condition``: ``(B, C_cond)``;
        ``states[i]``: ``(B, C_i, (k_i - 1) d_i)`` -> ``y``: ``(B, C_out)``, new states alike.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.program: Program = lower(model)
        for i, weight in enumerate(self.program.weights):
            self.register_buffer(f"weight_{i}", weight, persistent=False)

    @property
    def input_names(self) -> list[str]:
        """Names of the forward's inputs: ``x``, the conditioning present, ``state_0``, ..."""
        program = self.program
        names = ["x"] + ["global_condition"] * bool(program.global_classes) + ["local_condition"] * bool(program.local)
        return names + [f"state_{i}" for i in range(len(program.rings))]

    def initial_states(self, batch_size: int) -> list[torch.Tensor]:
        """Zero states for ``batch_size`` new streams."""
        return [torch.zeros(batch_size, channels, context) for context, channels in self.program.rings]

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        program = self.program
        expected = len(self.input_names) - 1
        if len(inputs) != expected:
            names = ", ".join(self.input_names[1:])
            raise ValueError(f"expected {expected} tensors after x ({names}), got {len(inputs)}")
        inputs = list(inputs)
        global_ids = inputs.pop(0) if program.global_classes else None
        local = inputs.pop(0) if program.local is not None else None
        states, weights = inputs, [getattr(self, f"weight_{i}") for i in range(len(program.weights))]
        values: list[tuple[Span, torch.Tensor]] = []  # (span, tensor (B, span.width)) written so far

        def read(span: Span) -> torch.Tensor:
            pieces, position, end = [], span.offset, span.offset + span.width
            while position < end:  # newest value covering `position` (the workspace is written in order)
                owner, tensor = next((s, t) for s, t in reversed(values) if s.offset <= position < s.offset + s.width)
                stop = min(end, owner.offset + owner.width)
                pieces.append(tensor[:, position - owner.offset : stop - owner.offset])
                position = stop
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

        if program.input is not None:
            values.append((program.input, x))
        if local is not None:
            values.append((program.local, local))
        ids = [None] * len(IdSource)
        ids[IdSource.INPUT], ids[IdSource.GLOBAL] = x if program.input is None else None, global_ids
        new_states = []
        for op in program.ops:
            src, past = None if op.src is None else read(op.src), ()
            if op.ring is not None:  # state oldest first: x[t - m d] is at column context - m d
                state, d = states[op.ring], op.dilation
                context = state.shape[2]
                past = [state[:, :, context - m * d] for m in range(op.kernel_size - 1, 0, -1)]
                new_states.append(torch.cat([state[:, :, 1:], src.unsqueeze(2)], dim=2))
            out = OPS[op.code].evaluate(Operands(
                src=src, past=past, init=None if op.init is None else read(op.init),
                weight=None if op.weight is None else weights[op.weight],
                bias=None if op.bias is None else weights[op.bias], ids=ids, arg=op.arg,
            ))
            values.append((op.dst, out))
        return (read(program.output), *new_states)
