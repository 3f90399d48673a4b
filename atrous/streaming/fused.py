"""Fused streaming: one call per step for any model whose graph lowers to the fused ops.

:class:`~atrous.streaming.Streamer` runs the model's own forward on one sample, which costs a
few microseconds of PyTorch dispatch per operator: about 300 operators per WaveNet sample, so
the default WaveNet streams a few hundred samples per second although a sample needs only
1.5 MFLOP. :class:`FusedStreamer` lowers the model's traced graph once
(:func:`~atrous.streaming.program.lower`: convolutions at any stride and dilation, transposed
convolutions, pooling, bounded lookahead, 1x1 convolutions and ``Linear`` over channels,
activations, softmax over channels, gates and products, sums, concatenation and slicing along
channels, norms over channels, eval-mode batch norm; a second input sequence and per-stream
constants; WaveNet with class ids and conditioning) and runs each step as a single C++ call
(``fused_step.cpp``, compiled on first use with the system compiler in about a second and
cached): per layer a matrix-vector
product over the stacked taps, the gate and the 1x1 convolutions, reading each causal
convolution's past from a preallocated ring buffer, the queues of Paine et al. (2016), "Fast
WaveNet generation algorithm". The batch is split across ``torch.get_num_threads()`` threads.
Without a compiler the same program runs as PyTorch ops on preallocated buffers
(``backend="torch"``). Building and caching the library: :mod:`atrous.streaming.kernel_cache`.

Every op runs on a clock of its own (:mod:`atrous.streaming.clocked`): a strided layer once per
frame, each phase of an upsampling layer at its own tick. Outputs come out as their ticks come,
which after upsampling can be later than :class:`~atrous.streaming.Streamer` emits a frame's
samples at once; :attr:`FusedStreamer.delay` counts the outputs held back, :meth:`flush` gives
them at the end of the streams.

The state (ring buffers) lives in the streamer, not in the model's ``state_dict``; weights are
copied when the streamer is built, so rebuild it after changing the model.
"""

from __future__ import annotations

import ctypes
import inspect
import warnings
from fractions import Fraction

import torch
from torch import nn

from atrous._checks import check_bool
from atrous.models.sequence import WaveNet
from atrous.streaming.base import StreamerBase
from atrous.streaming.clocked import emitted, stream_ends
from atrous.streaming.executor import TorchExecutor
from atrous.streaming.kernel_cache import load_kernel
from atrous.streaming.opset import CallSlot, ConfigSlot, Status, op_table
from atrous.streaming.program import Program, lower

BACKENDS = ("auto", "cpp", "torch")


class _Config(ctypes.Structure):
    """The ``config`` vector of ``atrous_fused_run``: one int64 per :class:`ConfigSlot`, in order."""

    _fields_ = [(slot.name.lower(), ctypes.c_int64) for slot in ConfigSlot]


class _Call(ctypes.Structure):
    """The ``call`` vector: one int64 per :class:`CallSlot`, named fields (an Enum lookup per write
    would cost more than the write)."""

    _fields_ = [(slot.name.lower(), ctypes.c_int64) for slot in CallSlot]


_INT64S = ctypes.POINTER(ctypes.c_int64)


def _filled(kind: type[ctypes.Structure], **values: int) -> ctypes.Structure:
    """``kind`` with every field set: a field left out would silently be 0."""
    names = [name for name, _ in kind._fields_]
    if sorted(values) != sorted(names):
        raise TypeError(f"{kind.__name__} takes the fields {names}, got {sorted(values)}")
    return kind(**values)


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    try:
        load_kernel()
    except RuntimeError as error:
        if backend == "cpp":
            raise
        warnings.warn(f"{error}; FusedStreamer uses PyTorch ops instead (backend='torch')", stacklevel=3)
        return "torch"
    return "cpp"


class FusedStreamer(StreamerBase):
    """Stream a model with one fused call per step.

    Same use as :class:`~atrous.streaming.Streamer`: the outputs of :meth:`step` concatenated
    over any chunking, then those of :meth:`flush`, equal the offline forward (within float
    rounding, ~1e-6).

    Args:
        model: a WaveNet (class-id input), or a model with a ``(B, C, T)`` input (and, besides,
            at most one more sequence and any per-stream constants) whose traced graph lowers to
            the fused ops (see :mod:`atrous.streaming.lowering`: TCNs, gated stacks,
            Conv-TasNet-style separators, codec encoders and decoders), float32 on the CPU, in
            eval mode. Its weights are copied when it is lowered: when the streamer is built,
            or at the first step for a forward that takes more than the chunk.
        batch_size: number of independent streams.
        backend: ``"cpp"`` (the compiled step), ``"torch"`` (PyTorch ops) or ``"auto"`` (C++
            when it can be built, else PyTorch ops with a warning).
        allow_lookahead: stream a model that looks ahead (a "same"-padded or non-causal
            convolution) with its outputs :attr:`delay` samples late, instead of refusing it.

    Raises:
        ValueError: a node that cannot be fused (named; norms over time, modules that cannot be
            traced, padding with another value than zero...: use
            :class:`~atrous.streaming.Streamer`), a model that looks ahead without
            ``allow_lookahead``, or a bad ``batch_size``/``backend``.
        RuntimeError: ``backend="cpp"`` and the C++ step cannot be built (the message says why).

    Example:
        >>> streamer = FusedStreamer(create("wavenet").eval(), batch_size=1)
        >>> logits = streamer.step(torch.tensor([[128]]))  # (1, 256, 1)
    """

    def __init__(self, model: nn.Module, batch_size: int, *, backend: str = "auto",
                 allow_lookahead: bool = False) -> None:
        super().__init__(model, batch_size)
        check_bool(allow_lookahead, "allow_lookahead")
        self.model, self.allow_lookahead = model, allow_lookahead
        self.backend = _resolve_backend(backend)
        self.program: Program | None = None
        self._forward = inspect.signature(model.forward)
        self._extras: tuple | None = None  # (name, shape but batch and time, along time) of the extra inputs
        if isinstance(model, WaveNet) or not _needs_more_than_the_chunk(self._forward):
            self._setup(lower(model, allow_lookahead=allow_lookahead))
            self._extras = ()  # lowered without arguments: a first step that gives some lowers it again
        # else: lowered at the first step, from its arguments

    def _setup(self, program: Program) -> None:
        """Buffers, and the C++ step's tables, for ``program``."""
        batch_size = self.batch_size
        self.program = program
        # (samples, B, C) per ring: one time slot of every stream is contiguous
        self._rings = [torch.zeros(length, batch_size, channels) for length, channels in program.rings]
        self._work = torch.zeros(batch_size, program.width)
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (tick, ring, rows): resets still to come
        self._starts = torch.zeros(batch_size, dtype=torch.long)  # input sample each stream's sequence began at
        # every step for backend "torch", and a flush (it zeroes samples past the ends as they come)
        self._executor = TorchExecutor(program, self._rings, self._work) if self.backend == "torch" or program.delay \
            else None
        if self.backend == "torch":
            return
        self._table = op_table(program.ops)
        weights = program.weights
        self._pointers = [
            (ctypes.c_void_p * max(len(weights), 1))(*(w.data_ptr() for w in weights)),
            (ctypes.c_int64 * max(len(weights), 1))(*(w.shape[0] for w in weights)),
            (ctypes.c_void_p * max(len(self._rings), 1))(*(ring.data_ptr() for ring in self._rings)),
            (ctypes.c_int64 * max(3 * len(self._rings), 1))(*(
                value for clock, (length, _) in zip(program.ring_clocks, program.rings) for value in (*clock, length))),
        ]  # the tensors behind these raw pointers live as long as the streamer
        spans = {"x": program.input, "local": program.local, "out": program.output}
        self._config = _filled(
            _Config, ops=self._table.data_ptr(), n_ops=len(self._table), weights=ctypes.addressof(self._pointers[0]),
            weight_rows=ctypes.addressof(self._pointers[1]), rings=ctypes.addressof(self._pointers[2]),
            ring_layout=ctypes.addressof(self._pointers[3]), ticks=program.ticks, out_start=program.out_clock[0],
            out_period=program.out_clock[1], work=self._work.data_ptr(), batch=batch_size, width=program.width,
            **{f"{name}_channels": span.width if span else 0 for name, span in spans.items()},
            **{f"{name}_offset": span.offset if span else -1 for name, span in spans.items()},
        )
        self._call = _Call()  # filled per step
        # the library reads both as int64 vectors; they live as long as the streamer
        self._vectors = tuple(ctypes.cast(ctypes.pointer(v), _INT64S) for v in (self._config, self._call))
        self._run_kernel = load_kernel()

    def _model_inputs(self, chunk: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The model's own inputs besides the chunk: constants written into the workspace, the
        returned tensor along time (or ``None``). Lowers the model at the first step."""
        if not args and not kwargs and not self._extras and self.program is not None:
            return None
        try:
            bound = self._forward.bind(chunk, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"the step's arguments do not fit {type(self.model).__name__}.forward: {error}") from None
        extras = {name: value for name, value in list(bound.arguments.items())[1:]}
        signature = tuple(
            (name, tuple(value.shape[1:-1]) if value.ndim >= 3 else tuple(value.shape[1:]), value.ndim >= 3)
            if isinstance(value, torch.Tensor) else (name, value, None) for name, value in extras.items())
        if self.program is None or (signature != self._extras and not self.samples_seen):
            self._setup(lower(self.model, allow_lookahead=self.allow_lookahead, chunk=chunk, args=args, kwargs=kwargs))
            self._extras = signature
        elif signature != self._extras:
            raise ValueError(f"the step's arguments {signature} differ from those the streamer was built with "
                             f"{self._extras}; build a new FusedStreamer for other arguments")
        for name, span in self.program.constants:
            value = extras[name]
            if value.shape[0] != self.batch_size:
                raise ValueError(f"{name} must have batch_size={self.batch_size} rows, got shape {tuple(value.shape)}")
            self._work[:, span.offset : span.offset + span.width] = value
        name = self.program.local_name
        if name is None:
            return None
        if extras[name].shape[-1] != chunk.shape[-1]:
            raise ValueError(f"{name} has {extras[name].shape[-1]} samples but the chunk has {chunk.shape[-1]}; "
                             "a tensor argument of 3 dims is a sequence along time, chunked like the chunk")
        return extras[name]

    @property
    def rate(self) -> Fraction | None:
        """Output samples per input sample (``None`` until lowered)."""
        return None if self.program is None else self.program.graph.timing.rate

    @property
    def period(self) -> int | None:
        """Input samples after which every layer's frames line up again."""
        return None if self.program is None else self.program.graph.timing.period

    @property
    def delay(self) -> int | None:
        """Outputs held back at most (0 for a causal model at one rate); :meth:`flush` returns them."""
        return None if self.program is None else self.program.delay

    @property
    def context(self) -> int:
        """Total past samples held across layers (the sum of ``(k - 1) * d`` for causal stacks)."""
        return 0 if self.program is None else sum(length for length, _ in self.program.rings)

    def _check(self, chunk, global_condition, local_condition) -> tuple[torch.Tensor, ...]:
        program, batch = self.program, self.batch_size
        self._check_batch(chunk)
        if chunk.device.type != "cpu":
            raise ValueError(f"chunk must be on the CPU like the fused step, got device {chunk.device}")
        if program.classes:
            if chunk.ndim != 2 or chunk.is_floating_point():  # batch and L checked above
                raise ValueError(f"chunk must be (batch_size={batch}, L >= 1) int64 class ids, "
                                 f"got shape {tuple(chunk.shape)} dtype {chunk.dtype}")
            chunk = chunk if chunk.dtype == torch.long else chunk.long()
        else:
            channels = program.input.width
            if chunk.ndim != 3 or chunk.shape[1] != channels:
                raise ValueError(f"chunk must have shape (batch_size={batch}, in_channels={channels}, L >= 1), "
                                 f"got {tuple(chunk.shape)}")
            chunk = chunk if chunk.dtype == torch.float32 else chunk.float()
        length = chunk.shape[-1]
        if program.global_classes:
            if not isinstance(global_condition, torch.Tensor) or tuple(global_condition.shape) != (batch,):
                shape = getattr(global_condition, "shape", None)
                raise ValueError(f"global_condition must be ({batch},) ids in [0, {program.global_classes}), "
                                 f"got {None if shape is None else tuple(shape)}")
            global_condition = global_condition.cpu().long().contiguous()
        elif global_condition is not None:
            raise ValueError("global_condition given but the model has no global conditioning")
        if program.local is not None:
            expected = (batch, program.local.width, length)
            if not isinstance(local_condition, torch.Tensor) or tuple(local_condition.shape) != expected:
                shape = getattr(local_condition, "shape", None)
                name = program.local_name or "local_condition"
                raise ValueError(f"{name} must have shape {expected} (sample rate), "
                                 f"got {None if shape is None else tuple(shape)}")
            local_condition = local_condition.cpu().float().contiguous()
        elif local_condition is not None:
            raise ValueError("local_condition given but the model has no local conditioning")
        return chunk.contiguous(), global_condition, local_condition

    def step(
        self,
        chunk: torch.Tensor,
        *args,
        global_condition: torch.Tensor | None = None,
        local_condition: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Feed the next ``L`` samples of every stream; return the outputs now complete.

        Args:
            chunk: ``(B, C_in, L)`` float, or ``(B, L)`` int64 class ids for a WaveNet.
            *args, **kwargs: the model's other inputs, as its forward takes them: one more tensor
                along time ``(B, C, L)`` chunked like ``chunk``, and per-stream constants
                ``(B, D)``; the same names and shapes at every step (the streamer is lowered
                with those of the first).
            global_condition: ``(B,)`` ids, for a WaveNet with ``global_classes``.
            local_condition: ``(B, C_cond, L)`` at the sample rate, for a WaveNet with
                ``local_channels``.

        Returns:
            ``(B, C_out, L)`` for a causal model at one rate; with strided or upsampling layers
            or lookahead, the outputs whose ticks have come (:attr:`delay` fewer in all).
        """
        if isinstance(self.model, WaveNet):
            if args or kwargs:
                raise TypeError("a WaveNet step takes the ids, global_condition and local_condition only")
        else:
            if global_condition is not None:
                kwargs["global_condition"] = global_condition
            if local_condition is not None:
                kwargs["local_condition"] = local_condition
            self._check_batch(chunk)
            global_condition, local_condition = None, self._model_inputs(chunk, args, kwargs)
        program = self.program
        chunk, global_condition, local_condition = self._check(chunk, global_condition, local_condition)
        length, ticks = chunk.shape[-1], program.ticks
        first, last = self.samples_seen * ticks, (self.samples_seen + length) * ticks
        out_first = emitted(program.out_clock, first)
        out = torch.empty(self.batch_size, program.output.width, emitted(program.out_clock, last) - out_first)
        self._run_ticks((chunk, local_condition, global_condition, out, out_first), first, last)
        self.samples_seen += length
        return out

    def _run_ticks(self, inputs: tuple, start: int, stop: int, *, flushing: bool = False) -> None:
        """Ticks ``[start, stop)``, zeroing the rings of reset streams when their ticks come."""
        while self._pending and self._pending[0][0] < stop:
            at, ring, rows = self._pending.pop(0)
            self._run(inputs, start, at, flushing)
            self._rings[ring][:, rows] = 0
            start = max(start, at)
        self._run(inputs, start, stop, flushing)

    def _run(self, inputs: tuple, start: int, stop: int, flushing: bool) -> None:
        """Ticks ``[start, stop)`` of the current chunk (of a flush: through the PyTorch executor,
        which zeroes the samples past the streams' ends)."""
        if stop <= start:
            return
        chunk, local_condition, global_condition, out, out_first = inputs
        program = self.program
        if self.backend == "torch" or flushing:
            self._executor.run(chunk, local_condition, global_condition, out, start, ticks=stop - start,
                               x_first=self.samples_seen, out_first=out_first)
            return
        call, floats = self._call, program.input is not None
        call.x, call.ids = (chunk.data_ptr(), 0) if floats else (0, chunk.data_ptr())
        call.local = 0 if local_condition is None else local_condition.data_ptr()
        call.global_ids = 0 if global_condition is None else global_condition.data_ptr()
        call.out, call.steps, call.start = out.data_ptr(), stop - start, start
        call.x_length, call.x_first = chunk.shape[-1], self.samples_seen
        call.out_length, call.out_first = out.shape[2], out_first
        call.threads = torch.get_num_threads()
        status = self._run_kernel(*self._vectors)
        if status != Status.OK:
            name, bound = ("class ids", program.classes) if status == Status.BAD_INPUT_ID else (
                "global_condition ids", program.global_classes)
            raise ValueError(f"{name} must lie in [0, {bound}), got {call.bad_id}")

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End every stream: return the outputs still held back, then start all streams afresh.

        The held-back outputs (:attr:`delay` of them) are computed as the offline forward
        computes them, with the right padding (zeros) in place of the input to come.

        Returns:
            The last outputs, ``(B, C_out, n)``; a stream whose sequence ends earlier (one reset
            after the others began) gets zeros past its end.

        Raises:
            ValueError: nothing was fed since the last reset.
        """
        if not self.samples_seen:
            raise ValueError("nothing to flush: no chunk was fed since the last reset")
        program, graph = self.program, self.program.graph
        have = emitted(program.out_clock, self.samples_seen * program.ticks)
        out = torch.empty(self.batch_size, program.output.width, 0)
        if self.delay:
            self._executor.ends = ends = stream_ends(graph, self.samples_seen, self._starts)
            need = int(ends[graph.output].max())
            if need > have:
                out_start, out_period = program.out_clock
                out = torch.zeros(self.batch_size, program.output.width, need - have)
                try:
                    self._run_ticks((None, None, None, out, have), self.samples_seen * program.ticks,
                                    out_start + (need - 1) * out_period + 1, flushing=True)
                finally:
                    self._executor.ends = None
                past = torch.arange(have, need) >= ends[graph.output][:, None]  # (B, n): past a stream's end
                out.masked_fill_(past[:, None, :], 0.0)
        self.reset()
        return out

    def _zero_streams(self, rows: torch.Tensor | None) -> None:
        if self.program is None:
            return
        if rows is None:
            for ring in self._rings:
                ring.zero_()
            self._work.zero_()
            self._pending.clear()
            self._starts.zero_()
            return
        if self.samples_seen % self.period:
            raise ValueError(f"cannot reset single streams after {self.samples_seen} input samples: this model "
                             f"changes the sample rate, so a stream can restart only at a multiple of {self.period} "
                             "samples (a whole frame); feed up to one, or reset all streams with reset()")
        now = self.samples_seen * self.program.ticks
        for ring, (start, _) in enumerate(self.program.ring_clocks):
            if start == 0:
                self._rings[ring][:, rows] = 0
            else:  # when the new sequence's first sample of the ring's signal comes
                self._pending.append((now + start, ring, rows))
        self._pending.sort(key=lambda item: item[0])
        self._starts[rows] = self.samples_seen


def _needs_more_than_the_chunk(forward: inspect.Signature) -> bool:
    """Whether ``forward`` has a required argument after its first."""
    parameters = list(forward.parameters.values())[1:]
    return any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in parameters)
