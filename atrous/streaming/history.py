"""The state one streamed node keeps between chunks, for a batch of streams.

* :class:`CausalRing`: a causal convolution at stride 1 (``pad_left = (k - 1) d``, nothing else)
  keeps its last ``(k - 1) d`` inputs in a ring buffer and computes one sample as one matrix
  product (the queues of Paine et al. 2016, "Fast WaveNet generation algorithm").
* :class:`Window`: any window along time (strided, padded on both sides, cropped, pooling,
  padding or cropping alone) keeps the inputs its next output needs and the outputs it may yet
  have to crop; at the end of the stream it adds the right padding.
* :class:`Transposed`: a transposed convolution keeps the inputs whose kernel still reaches
  outputs to come.
* :class:`Aligner`: an op with several inputs waits until each has the same samples.

A state counts the input samples it has received. :meth:`Stateful.reset` of some streams at
input position ``p`` takes effect when the state's input reaches ``p``: a state behind its input
(because a window before it looks ahead) must still finish the old sequence up to there, then
sees zeros (the left padding of the new sequence) in place of everything before ``p``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from atrous.streaming.graph import Geometry

Op = Callable[..., torch.Tensor]


def conv_at_one_step(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     groups: int) -> torch.Tensor:
    """A convolution with one output step, ``(B, C_in, k) -> (B, C_out, 1)``, as a single matmul."""
    if groups != 1:
        return F.conv1d(window, weight, bias, 1, 0, 1, groups)
    flat, matrix = window.reshape(window.shape[0], -1), weight.reshape(weight.shape[0], -1).t()
    out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
    return out.unsqueeze(2)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """A 1x1 convolution; one time step runs as a matmul (conv1d's overhead dominates there)."""
    if x.shape[2] == 0:
        return x.new_empty(x.shape[0], weight.shape[0], 0)
    if x.shape[2] == 1:
        return conv_at_one_step(x, weight, bias, groups)
    return F.conv1d(x, weight, bias, 1, 0, 1, groups)


class Stateful:
    """Counts received input samples; applies resets of some streams at their input position."""

    def __init__(self) -> None:
        self.received = 0
        self.resets: list[tuple[int, torch.Tensor]] = []

    def reset(self, rows: torch.Tensor, position: int) -> None:
        """Start streams ``rows`` afresh at input sample ``position`` (now, or when it arrives)."""
        if position <= self.received:
            self.zero(rows)
        else:
            self.resets.append((position, rows))

    def push(self, x: torch.Tensor, *params, final: bool = False, axis: int = -1, end: int | None = None
             ) -> torch.Tensor:
        """Feed the next input samples (``x`` along ``axis``); return the outputs now complete.

        ``end``: the input's length if the streams ended now (more than the samples received
        when the input holds some back); it bounds what a crop at the right end lets out.
        """
        if not self.resets:
            return self.step(x, *params, final=final, end=end)
        outs = []
        while self.resets and self.resets[0][0] - self.received <= x.shape[axis]:
            position, rows = self.resets.pop(0)
            cut = position - self.received
            if cut:  # without ``end``: holding back more than needed is safe, the rest comes later
                outs.append(self.step(x.narrow(axis, 0, cut), *params, final=False, end=None))
                x = x.narrow(axis, cut, x.shape[axis] - cut)
            self.zero(rows)
        outs.append(self.step(x, *params, final=final, end=end))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=axis)

    def step(self, x: torch.Tensor, *params, final: bool, end: int | None) -> torch.Tensor:
        raise NotImplementedError

    def zero(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def context(self) -> int:
        """Input samples held between chunks (excluding outputs held back)."""
        return 0


class CausalRing(Stateful):
    """Ring buffer of the last ``(k - 1) d`` inputs of a causal convolution at stride 1."""

    def __init__(self, kernel_size: int, dilation: int, groups: int) -> None:
        super().__init__()
        self.dilation, self.groups = dilation, groups
        self.size = (kernel_size - 1) * dilation
        self.buffer: torch.Tensor | None = None  # (B, C_in, size); time t lives at t % size
        self.slot = 0
        # taps[p]: ring slots of x[t - (k-1) d], ..., x[t - d] when x[t] is about to go to slot p
        offsets = dilation * torch.arange(kernel_size - 1, 0, -1)
        self.taps = (torch.arange(max(self.size, 1)).unsqueeze(1) - offsets) % max(self.size, 1)

    @property
    def context(self) -> int:
        return self.size

    def step(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, final: bool,
             end: int | None = None) -> torch.Tensor:
        size = self.size
        self.received += x.shape[2]
        if size == 0 or x.shape[2] == 0:
            return pointwise_conv(x, weight, bias, self.groups)
        if self.buffer is None:
            self.buffer = x.new_zeros(x.shape[0], x.shape[1], size)
            self.taps = self.taps.to(x.device)
        if x.shape[2] == 1:
            # One sample: gather only the k - 1 past taps instead of the whole window.
            if self.taps.shape[1] == 1:
                slot = int(self.taps[self.slot, 0])
                past = self.buffer[:, :, slot : slot + 1]
            else:
                past = self.buffer[:, :, self.taps[self.slot]]
            out = conv_at_one_step(torch.cat([past, x], dim=2), weight, bias, self.groups)
            self.buffer[:, :, self.slot] = x[:, :, 0]
            self.slot = (self.slot + 1) % size
            return out
        past = self.buffer
        if self.slot:
            past = past[:, :, (self.slot + torch.arange(size, device=x.device)) % size]
        full = torch.cat([past, x], dim=2)  # (B, C_in, size + L), oldest first
        out = F.conv1d(full, weight, bias, 1, 0, self.dilation, self.groups)
        self.buffer = full[:, :, -size:].clone()
        self.slot = 0
        return out

    def zero(self, rows: torch.Tensor) -> None:
        if self.buffer is not None:
            self.buffer[rows] = 0


class _Cropped(Stateful):
    """Raw outputs numbered from 0; emits those in ``[crop_left, end - crop_right)`` once final."""

    def __init__(self, geometry: Geometry, op: Op, empty: Callable[[torch.Tensor], torch.Tensor], axis: int) -> None:
        super().__init__()
        self.geometry, self.op, self.empty, self.axis = geometry, op, empty, axis
        self.done = 0  # raw outputs computed
        self.first = 0  # raw index of pending[..., 0]
        self.pending: torch.Tensor | None = None  # computed raw outputs [first, done) not yet emitted

    def emit(self, new: torch.Tensor | None, x: torch.Tensor, final: bool, raw_end: int) -> torch.Tensor:
        g, axis = self.geometry, self.axis
        parts = [p for p in (self.pending, new) if p is not None]
        if not parts:
            return self.empty(x)
        everything = parts[0] if len(parts) == 1 else torch.cat(parts, dim=axis)
        low = min(max(self.first, g.crop_left), self.done)
        high = min(self.done, max(low, raw_end - g.crop_right))
        out = everything.narrow(axis, low - self.first, high - low)
        rest = everything.shape[axis] - (high - self.first)
        self.pending = everything.narrow(axis, high - self.first, rest) if rest and not final else None
        self.first = high
        return out


class Window(_Cropped):
    """A window along time (conv, pooling, padding, cropping), any stride, padding and crop."""

    def __init__(self, geometry: Geometry, op: Op, empty: Callable[[torch.Tensor], torch.Tensor],
                 axis: int = -1) -> None:
        super().__init__(geometry, op, empty, axis)
        self.buffer: torch.Tensor | None = None  # padded inputs [start, available)
        self.start = 0

    @property
    def context(self) -> int:
        return max(0, self.geometry.extent - self.geometry.stride)

    def step(self, x: torch.Tensor, *params, final: bool, end: int | None) -> torch.Tensor:
        g, axis = self.geometry, self.axis
        if self.buffer is None:
            shape = list(x.shape)
            shape[axis] = max(g.pad_left, 0)
            self.buffer = x.new_full(shape, g.pad_value)
        available = g.pad_left + self.received  # padded samples so far
        drop = min(max(0, self.start - available), x.shape[axis])  # before the next window, or cut by a negative pad
        self.buffer = torch.cat([self.buffer, x.narrow(axis, drop, x.shape[axis] - drop)], dim=axis)
        self.received += x.shape[axis]
        if final and g.pad_right > 0:
            shape = list(x.shape)
            shape[axis] = g.pad_right
            self.buffer = torch.cat([self.buffer, x.new_full(shape, g.pad_value)], dim=axis)
        raw = g.window_raw(self.received, final=final)
        new = None
        if raw > self.done:
            offset = self.done * g.stride - self.start
            span = (raw - self.done - 1) * g.stride + g.extent
            new = self.op(self.buffer.narrow(axis, offset, span), *params)
            self.done = raw
        keep_from = self.done * g.stride  # the next window starts there
        cut = min(max(0, keep_from - self.start), self.buffer.shape[axis])
        self.buffer = self.buffer.narrow(axis, cut, self.buffer.shape[axis] - cut)
        # past the buffer's end: a gap (stride > extent) or a negative pad, inputs still to come are skipped
        self.start = max(self.start + cut, keep_from)
        return self.emit(new, x, final, g.window_raw(self.received if end is None else end, final=True))

    def zero(self, rows: torch.Tensor) -> None:
        if self.buffer is not None:
            self.buffer[rows] = self.geometry.pad_value


class Transposed(_Cropped):
    """A transposed convolution: padded input ``i`` adds to raw outputs ``i s + j d``."""

    def __init__(self, geometry: Geometry, op: Op, empty: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(geometry, op, empty, -1)
        self.reach = (geometry.kernel_size - 1) * geometry.dilation // geometry.stride  # inputs kept
        self.history: torch.Tensor | None = None

    @property
    def context(self) -> int:
        return self.reach

    def step(self, x: torch.Tensor, *params, final: bool, end: int | None) -> torch.Tensor:
        g = self.geometry
        self.received += x.shape[2]
        if self.history is None:
            self.history = x.new_zeros(x.shape[0], x.shape[1], self.reach)
            x = torch.cat([x.new_zeros(x.shape[0], x.shape[1], g.pad_left), x], dim=2)
        raw_end = g.transposed_raw(self.received if end is None else end, final=True)
        if final:  # zeros after the end: the outputs that the last inputs still reach
            missing = max(0, raw_end - g.crop_right - (self.done + x.shape[2] * g.stride))
            x = torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], -(-missing // g.stride))], dim=2)
        new = None
        if x.shape[2]:
            window = torch.cat([self.history, x], dim=2)
            if g.extent < g.stride:  # a zero input after the window: its gap outputs exist (the bias)
                full = self.op(torch.cat([window, x.new_zeros(x.shape[0], x.shape[1], 1)], dim=2), *params)
            else:
                full = self.op(window, *params)
            new = full[:, :, self.reach * g.stride: (self.reach + x.shape[2]) * g.stride]
            self.done += x.shape[2] * g.stride
            self.history = window[:, :, window.shape[2] - self.reach:]
        return self.emit(new, x, final, raw_end)

    def zero(self, rows: torch.Tensor) -> None:
        if self.history is not None:
            self.history[rows] = 0


class Aligner:
    """Holds back the samples of an op's inputs until all of them have them."""

    def __init__(self, axes: list[int]) -> None:
        self.axes = axes
        self.queues: list[torch.Tensor | None] = [None] * len(axes)
        self.holding = False

    def align(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        axes = self.axes
        if not self.holding:
            length = chunks[0].shape[axes[0]]
            if all(chunk.shape[axis] == length for chunk, axis in zip(chunks, axes)):
                return chunks
        joined = [chunk if queue is None else torch.cat([queue, chunk], dim=axis)
                  for queue, chunk, axis in zip(self.queues, chunks, axes)]
        ready = min(chunk.shape[axis] for chunk, axis in zip(joined, axes))
        self.queues = [chunk.narrow(axis, ready, chunk.shape[axis] - ready) if chunk.shape[axis] > ready else None
                       for chunk, axis in zip(joined, axes)]
        self.holding = any(queue is not None for queue in self.queues)
        return [chunk.narrow(axis, 0, ready) for chunk, axis in zip(joined, axes)]
