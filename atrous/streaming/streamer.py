"""Exact, batched streaming inference for any causal model whose forward can be traced.

A causal convolution ``y[t] = sum_j w[j] x[t - j * d]`` (van den Oord et al. 2016, "WaveNet: a
generative model for raw audio"; Bai, Kolter & Koltun 2018, "An empirical evaluation of generic
convolutional and recurrent networks for sequence modeling") needs only the last ``(k - 1) * d``
inputs of each layer to produce its next output. :class:`Streamer` keeps exactly those samples,
per layer and per stream, in buffers held by the streamer itself (never in the model's
``state_dict``), so a model runs a chunk at a time on a batch of independent streams and gives
the numbers of the offline forward up to float rounding. Fast queue-based generation for
WaveNet is described by Paine et al. (2016), "Fast WaveNet generation algorithm"; here the same
cache serves any causal model.

The model is traced with ``torch.fx`` (:mod:`atrous.streaming.graph`): plain ``nn.Conv1d`` made
causal by ``F.pad``, ``nn.ConstantPad1d``/``nn.ZeroPad1d`` or by ``padding=`` and slicing off the
right end (``Chomp1d``), atrous's ``CausalConv1d``, weight-normalised convolutions (both APIs),
strided convolutions and pooling (outputs come out as their frames complete),
``ConvTranspose1d`` (upsampling), and every op that acts on each time step on its own (residual
sums, gates, concatenation and slicing along channels, activations, ``Linear`` and norms over
channels, eval-mode batch norm and dropout). A model that looks a bounded number of samples
ahead (a "same"-padded TCN) streams with that delay when asked (``allow_lookahead=True``). An op
that needs the whole sequence is refused by name when the streamer is built. A module whose
forward cannot be traced (WaveNet's class-id input, which checks the ids) and whose class sets
``streamable = True`` runs whole, with its ``CausalConv1d`` layers routed through ring buffers.

For WaveNet, TCN and causal ``nn.Sequential`` stacks, :class:`~atrous.streaming.FusedStreamer`
gives the same outputs with one fused call per step.
"""

from __future__ import annotations

import inspect
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from atrous.streaming.base import StreamerBase
from atrous.streaming.graph import StreamGraph, build_graph
from atrous.streaming.plan import Plan
from atrous.streaming.tracing import ExampleFailed

# example lengths tried in turn: pairs of unrelated lengths, long enough for every window; then
# pairs of multiples of many strides, for a model that only takes lengths its strides divide (a
# skip connection around a downsampling and an upsampling layer)
_LENGTHS = tuple((n, 2 * n + 3) for n in (16, 64, 256, 1024, 4096)) + tuple(
    (n, 2 * n) for n in (720, 27720, 30240, 40320))  # 2^4 3^2 5; 2^3 3^2 5 7 11; 2^5 3^3 5 7; 2^7 3^2 5 7


def _expected_in_channels(model: nn.Module) -> int | None:
    if isinstance(getattr(model, "in_channels", None), int) and not isinstance(model.in_channels, bool):
        return model.in_channels
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    if isinstance(first, nn.Conv1d):
        return first.in_channels
    return None


def _example(value: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """A tensor like ``value`` (time last) of ``length`` samples: random floats, or ids in its range."""
    shape = (*value.shape[:-1], length)
    if value.is_floating_point() or value.is_complex():
        return torch.randn(shape, generator=generator, dtype=value.dtype).to(value.device)
    if value.dtype == torch.bool:
        return (torch.rand(shape, generator=generator) < 0.5).to(value.device)
    low = min(0, int(value.min())) if value.numel() else 0
    high = max(1, int(value.max())) if value.numel() else 1
    return torch.randint(low, high + 1, shape, generator=generator, dtype=value.dtype).to(value.device)


class Streamer(StreamerBase):
    """Run a causal model one chunk at a time on ``batch_size`` independent streams.

    The concatenation of the outputs of :meth:`step` equals ``model(concatenated inputs)`` for
    any chunking: exactly for a causal model; for a model with lookahead, all but the last
    :attr:`delay` outputs, which :meth:`flush` returns at the end. With strided layers a step
    returns the outputs whose frames are complete (possibly none), with upsampling layers
    ``factor`` outputs per input sample. State lives here, not in the model: its ``state_dict`` is
    untouched, several streamers can share one model, and every step reads the model's current
    weights.

    Args:
        model: a model whose forward can be traced with ``torch.fx`` (see the module docstring),
            in eval mode if it has dropout or batch norm.
        batch_size: number of independent streams, the first dim of every chunk.
        allow_lookahead: stream a model that looks ahead (a "same"-padded or non-causal
            convolution) with a delay of :attr:`delay` outputs instead of refusing it.

    Raises:
        ValueError: a node that cannot be streamed (named, with the reason), a model that looks
            ahead without ``allow_lookahead=True`` (the layers named, with their lookahead), or a
            bad ``batch_size``.

    Example:
        >>> streamer = Streamer(model.eval(), batch_size=4)
        >>> y = torch.cat([streamer.step(x[:, :, t : t + 1]) for t in range(x.shape[2])], dim=2)
    """

    def __init__(self, model: nn.Module, batch_size: int, *, allow_lookahead: bool = False) -> None:
        super().__init__(model, batch_size)
        if not isinstance(allow_lookahead, bool):
            raise TypeError(f"allow_lookahead must be True or False, got {allow_lookahead!r}")
        self.model = model
        self.allow_lookahead = allow_lookahead
        self._forward = inspect.signature(model.forward)
        self.in_channels = _expected_in_channels(model)
        # (B, C, L) chunks must match the weights: the offline forward would refuse another dtype too
        parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
        self.dtype = None if parameter is None else parameter.dtype
        self._signature: tuple | None = None
        self._plan: Plan | None = None
        self._first, self._chunk_only = "", None  # the chunk's argument name; what a chunk-only step looks like
        self._last: dict[str, Any] = {}
        channels = self.in_channels or next((m.in_channels for m in model.modules()
                                             if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))), None)
        if channels is not None and self._takes_one_input():
            chunk = torch.zeros(batch_size, channels, 1, dtype=self.dtype or torch.float32,
                                device=None if parameter is None else parameter.device)
            try:
                self._build(chunk, (), {})
            except ExampleFailed:
                self._plan = self._signature = None  # built at the first step, from the real chunk

    def _takes_one_input(self) -> bool:
        parameters = list(self._forward.parameters.values())
        return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in parameters[1:])

    # what the graph says ------------------------------------------------------------------
    @property
    def graph(self) -> StreamGraph | None:
        """The analysed graph (``None`` until built: at construction, or at the first step)."""
        return None if self._plan is None else self._plan.graph

    @property
    def delay(self) -> int | None:
        """Outputs held back for later input (0 for a causal model); :meth:`flush` returns them."""
        return None if self._plan is None else self._plan.graph.timing.delay

    @property
    def lookahead(self) -> int | None:
        """Future input samples the model's output needs (0 for a causal model)."""
        return None if self._plan is None else self._plan.graph.timing.lookahead

    @property
    def rate(self) -> Fraction | None:
        """Output samples per input sample (1 without strides or upsampling)."""
        return None if self._plan is None else self._plan.graph.timing.rate

    @property
    def period(self) -> int | None:
        """Input samples after which every layer's frames line up again (1 without strides);
        single streams restart only at multiples of it."""
        return None if self._plan is None else self._plan.graph.timing.period

    @property
    def context(self) -> int:
        """Past samples held across layers (for causal convolutions, the sum of ``(k - 1) * d``)."""
        return 0 if self._plan is None else self._plan.context

    # building -----------------------------------------------------------------------------
    def _bind(self, chunk: torch.Tensor, args: tuple, kwargs: dict) -> dict[str, Any]:
        try:
            bound = self._forward.bind(chunk, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"the step's arguments do not fit {type(self.model).__name__}.forward: {error}") from None
        return dict(bound.arguments)

    def _signature_of(self, arguments: dict[str, Any], first: str) -> tuple:
        parts = []
        for name, value in arguments.items():
            if isinstance(value, torch.Tensor):
                timed = name == first or value.ndim >= 3
                shape = tuple(value.shape[1:-1]) if timed else tuple(value.shape[1:])
                parts.append((name, "time" if timed else "constant", value.dtype, value.device, shape))
            else:
                parts.append((name, "value", id(value) if not isinstance(value, (int, float, str, bool, type(None)))
                              else value))
        return tuple(parts)

    def _build(self, chunk: torch.Tensor, args: tuple, kwargs: dict) -> None:
        arguments = self._bind(chunk, args, kwargs)
        first = next(iter(arguments))
        signature = self._signature_of(arguments, first)
        forward = self._forward.parameters
        concrete = {name: p.default for name, p in forward.items() if name not in arguments
                    and p.default is not inspect.Parameter.empty}
        timed = {name for name, kind, *_ in signature if kind == "time"}
        error: ExampleFailed | None = None
        for lengths in _LENGTHS:
            generator = torch.Generator().manual_seed(lengths[0])
            examples, fixed = {}, dict(concrete)
            for name, value in arguments.items():
                if name in timed:
                    examples[name] = tuple(_example(value, n, generator) for n in lengths)
                elif isinstance(value, torch.Tensor):
                    examples[name] = (value, value)
                else:
                    fixed[name] = value
            try:
                graph = build_graph(self.model, examples, fixed, timed, lengths)
                break
            except ExampleFailed as failure:
                error = failure
        else:
            tried = ", ".join(str(n) for n, _ in _LENGTHS)
            error.args = (f"{error}; every example length tried failed ({tried}, and about twice each): a model "
                          "that takes only lengths its strides divide streams when their product divides one",)
            raise error
        timing = graph.timing
        if timing.delay and not self.allow_lookahead:
            layers = "; ".join(dict.fromkeys(
                f"{graph.nodes[i].label} needs {own} later sample{'s' * (own != 1)} of its input"
                for i, own in timing.sources)) or "a layer looks ahead"
            raise ValueError(f"cannot stream the model causally: {layers}. Its output needs {timing.lookahead} future "
                             f"input sample{'s' * (timing.lookahead != 1)}; pass allow_lookahead=True to stream it "
                             f"with a delay of {timing.delay} output sample{'s' * (timing.delay != 1)} "
                             "(Streamer.delay), or make those layers causal")
        self._plan, self._signature = Plan(graph, self.model), signature

    # streaming ----------------------------------------------------------------------------
    def _check_chunk(self, chunk: torch.Tensor) -> None:
        self._check_batch(chunk)
        if chunk.ndim == 3 and self.dtype is not None and chunk.dtype != self.dtype:
            raise TypeError(
                f"chunk of shape {tuple(chunk.shape)} has dtype {chunk.dtype} but the model's parameters are "
                f"{self.dtype}; convert it first (chunk.to({self.dtype}))"
            )
        if (chunk.ndim == 3 and chunk.is_floating_point() and self.in_channels is not None
                and chunk.shape[1] != self.in_channels):
            raise ValueError(
                f"chunk has {chunk.shape[1]} channels but the model expects in_channels={self.in_channels}; "
                f"got shape {tuple(chunk.shape)}"
            )

    def _inputs(self, chunk: torch.Tensor, args: tuple, kwargs: dict) -> dict[str, Any]:
        if not args and not kwargs and self._plan is not None and self._chunk_only == (
                chunk.dtype, chunk.device, chunk.shape[1:-1]):
            return {self._first: chunk}  # the usual step: a chunk like the last one, nothing else
        arguments = self._bind(chunk, args, kwargs)
        first = next(iter(arguments))
        signature = self._signature_of(arguments, first)
        if signature != self._signature:
            if self.samples_seen:
                raise ValueError(f"the step's arguments {_describe(signature)} differ from those of the earlier steps "
                                 f"{_describe(self._signature)}; they must keep their shapes (but time) and dtypes "
                                 "until reset()")
            self._build(chunk, args, kwargs)
        for name, kind, *_ in signature:
            if kind == "time" and name != first and arguments[name].shape[-1] != chunk.shape[-1]:
                raise ValueError(f"{name} has {arguments[name].shape[-1]} samples but the chunk has {chunk.shape[-1]};"
                                 " a tensor argument with 3 or more dims is a sequence along time, chunked like x")
        self._first = first
        self._chunk_only = (chunk.dtype, chunk.device, chunk.shape[1:-1]) if len(arguments) == 1 else None
        return arguments

    @torch.no_grad()
    def step(self, chunk: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Feed the next ``L`` samples of every stream; return the outputs now complete.

        Args:
            chunk: ``(B, C_in, L)`` of the model's dtype (or whatever the model takes with time
                last, e.g. ``(B, L)`` class ids for WaveNet), ``B == batch_size``, any ``L >= 1``.
            *args, **kwargs: passed to the model's forward with the chunk. A tensor of 3 or more
                dims is a sequence along time, chunked like ``chunk`` (a local conditioning
                sequence ``(B, C_cond, L)``); a tensor of 1 or 2 dims (``(B,)`` speaker ids, a
                ``(B, D)`` embedding) or any other value holds for every time step.

        Returns:
            The outputs complete after this chunk, e.g. ``(B, C_out, L)`` for a causal model at
            one rate; fewer while a strided layer waits for its frame or a model with lookahead
            waits for later input, more after upsampling.

        Raises:
            TypeError: ``chunk`` is not a tensor, or a ``(B, C, L)`` chunk of another dtype than
                the model's parameters (it is not converted: convert it, or the model, first).
            ValueError: a shape that does not fit ``batch_size`` or the model, arguments that
                change between steps, or a layer switched to training mode.
        """
        self._check_chunk(chunk)
        inputs = self._inputs(chunk, args, kwargs)
        self._check_modes()
        out = self._plan.run(inputs, self.samples_seen + chunk.shape[-1])
        self._last = inputs
        self.samples_seen += chunk.shape[-1]
        return out

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End every stream: return the outputs still held back, then start all streams afresh.

        The held-back outputs (:attr:`delay` of them for a model with lookahead, and the last
        frame of an upsampling layer whose kernel reaches past the end) are computed as the
        offline forward computes them, with the right padding in place of the input to come.

        Returns:
            The last outputs, e.g. ``(B, C_out, delay)``.

        Raises:
            ValueError: nothing was fed since the last reset.
        """
        if self._plan is None or not self.samples_seen:
            raise ValueError("nothing to flush: no chunk was fed since the last reset")
        self._check_modes()
        inputs = {name: self._last[name][..., :0] if kind == "time" else self._last[name]
                  for name, kind, *_ in self._signature if name in self._last}
        out = self._plan.run(inputs, self.samples_seen, final=True)
        self.reset()
        return out

    def _check_modes(self) -> None:
        for label, module in self._plan.eval_only:
            if module.training:
                raise ValueError(f"cannot stream {label} in training mode: it is only pointwise in time in eval "
                                 "mode; call model.eval() first")

    def _zero_streams(self, rows: torch.Tensor | None) -> None:
        if self._plan is None:
            return
        if rows is None:
            self._plan.fresh()
        else:
            self._plan.reset(rows, self.samples_seen)


def _describe(signature: tuple | None) -> str:
    if signature is None:
        return "(none)"
    return "(" + ", ".join(f"{name}: {kind} {' '.join(str(p) for p in rest)}" for name, kind, *rest in signature) + ")"
