"""Exact, batched streaming inference for causal dilated stacks.

A causal convolution ``y[t] = sum_j w[j] x[t - j * d]`` (van den Oord et al. 2016, "WaveNet: a
generative model for raw audio"; Bai, Kolter & Koltun 2018, "An empirical evaluation of generic
convolutional and recurrent networks for sequence modeling") needs only the last ``(k - 1) * d``
inputs of each layer to produce its next output. :class:`Streamer` keeps exactly those samples,
per :class:`~atrous.ops.layers.CausalConv1d`, in ring buffers held by the streamer itself (never
in the model's ``state_dict``), so a model can be run a chunk at a time, on a batch of
independent streams, and give bit-for-bit the numbers of the offline forward up to float
rounding. Fast queue-based generation for WaveNet is described by Paine et al. (2016), "Fast
WaveNet generation algorithm"; here the same cache serves any causal stack.

A model can be streamed when every layer with a time extent is a ``CausalConv1d`` (stride 1)
and everything else is pointwise in time. That is checked when the streamer is built:

* ``CausalConv1d`` layers (and ``DilatedConv1d(padding="causal")``) get a state; during a
  step their forward is routed through it, then restored.
* Known pointwise layers pass: activations, 1x1 convolutions with stride 1 and no padding,
  dropout and batch norm (in eval mode), ``Identity``, ``Embedding``, containers
  (``Sequential``, ``ModuleList``, ``ModuleDict``) and weight parametrisations.
* A custom module whose own ``forward`` only combines its children pointwise in time (residual
  sums, gating, slicing channels) declares it with a class attribute ``streamable = True``;
  its children are still checked.
* Anything else raises a ``ValueError`` naming the layer.

Each step runs the model's own Python forward, a few microseconds of PyTorch overhead per
operator. For WaveNet, TCN and causal ``nn.Sequential`` stacks,
:class:`~atrous.streaming.FusedStreamer` gives the same outputs with one fused call per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from atrous.ops.layers import CausalConv1d, DilatedConv1d
from atrous.ops.padding import causal_padding
from atrous.streaming.base import StreamerBase

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ALWAYS_POINTWISE = (
    nn.Identity,
    nn.Embedding,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold,
)
# Pointwise only along one axis: the channel axis of (B, C, T) is 1 (or -2).
_CHANNEL_DIM_OPS = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU)
# Pointwise in eval mode only (dropout is random and batch norm uses batch statistics in training).
_EVAL_ONLY = (nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.BatchNorm1d, nn.RReLU)


def _check_layer(name: str, module: nn.Module) -> str:
    """Classify one module: ``"causal"``, ``"conv1x1"``, ``"pointwise"``, ``"eval"``, ``"container"``.

    Raises:
        ValueError: the module cannot be streamed; the message names it and says why.
    """
    label = f"layer {name or '<root>'!r} ({type(module).__name__})"
    if isinstance(module, CausalConv1d) or (isinstance(module, DilatedConv1d) and module.padding == "causal"):
        if module.stride != (1,):
            raise ValueError(f"cannot stream {label}: stride must be 1 to stream, got stride={module.stride[0]}")
        if module.padding_mode != "zeros":
            raise ValueError(f"cannot stream {label}: padding_mode must be 'zeros', got {module.padding_mode!r}")
        return "causal"
    if isinstance(module, nn.Conv1d):
        padding = module.padding
        zero_pad = padding in ("valid", "same") or (not isinstance(padding, str) and all(p == 0 for p in padding))
        if module.kernel_size == (1,) and module.stride == (1,) and zero_pad:
            return "conv1x1"
        raise ValueError(
            f"cannot stream {label}: a convolution with a time extent must be a CausalConv1d; got kernel_size="
            f"{module.kernel_size[0]}, stride={module.stride[0]}, padding={padding!r} (allowed: CausalConv1d, "
            "or kernel_size=1, stride=1, no padding)"
        )
    if isinstance(module, _ALWAYS_POINTWISE):
        return "pointwise"
    if isinstance(module, _CHANNEL_DIM_OPS):
        if module.dim in (1, -2):
            return "pointwise"
        raise ValueError(f"cannot stream {label}: it acts along dim={module.dim}; only the channel dim 1 is pointwise")
    if isinstance(module, _EVAL_ONLY):
        return "eval"
    if isinstance(module, _CONTAINERS) or getattr(type(module), "streamable", False):
        return "container"
    raise ValueError(
        f"cannot stream {label}: it is not a CausalConv1d or a known pointwise layer; if its forward is "
        "pointwise in time apart from its submodules, set the class attribute `streamable = True`"
    )


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """named_modules, minus weight parametrisations (they act on weights, not on time)."""
    yield prefix, module
    for child_name, child in module.named_children():
        if child_name == "parametrizations":
            continue
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


def _expected_in_channels(model: nn.Module) -> int | None:
    if isinstance(getattr(model, "in_channels", None), int):
        return model.in_channels
    first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    if isinstance(first, nn.Conv1d):
        return first.in_channels
    return None


def _conv_at_one_step(
    window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """A convolution with one output step, ``(B, C_in, k) -> (B, C_out, 1)``, as a single matmul."""
    if groups != 1:
        return F.conv1d(window, weight, bias, 1, 0, 1, groups)
    flat, matrix = window.reshape(window.shape[0], -1), weight.reshape(weight.shape[0], -1).t()
    out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
    return out.unsqueeze(2)


class _Pointwise:
    """A 1x1 convolution; a single time step runs as a matmul (conv1d's overhead dominates there)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        self.conv = conv

    def step(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.shape[2] == 1:
            return _conv_at_one_step(x, conv.weight, conv.bias, conv.groups)
        return F.conv1d(x, conv.weight, conv.bias, 1, 0, 1, conv.groups)


class _LayerState:
    """Ring buffer of the last ``context`` inputs of one causal conv, for a batch of streams."""

    def __init__(self, conv: DilatedConv1d) -> None:
        self.conv = conv
        self.context = causal_padding(conv.kernel_size[0], conv.dilation[0])[0]
        self.buffer: torch.Tensor | None = None  # (B, C_in, context); time t lives at t % context
        self.position = 0
        self.calls = 0  # per streamer step; a second call would advance the state twice
        k, d = conv.kernel_size[0], conv.dilation[0]
        # taps[p]: ring slots of x[t - (k-1) d], ..., x[t - d] when x[t] is about to go to slot p
        offsets = d * torch.arange(k - 1, 0, -1)
        self.taps = (torch.arange(max(self.context, 1)).unsqueeze(1) - offsets) % max(self.context, 1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        conv, context = self.conv, self.context
        self.calls += 1
        if context == 0:
            return _Pointwise(conv).step(x)
        if self.buffer is None:
            self.buffer = x.new_zeros(x.shape[0], x.shape[1], context)
            self.taps = self.taps.to(x.device)
        if x.shape[2] == 1:
            # One sample: gather only the k - 1 past taps instead of the whole window.
            if self.taps.shape[1] == 1:
                slot = int(self.taps[self.position, 0])
                past = self.buffer[:, :, slot : slot + 1]
            else:
                past = self.buffer[:, :, self.taps[self.position]]
            out = _conv_at_one_step(torch.cat([past, x], dim=2), conv.weight, conv.bias, conv.groups)
            self.buffer[:, :, self.position] = x[:, :, 0]
            self.position = (self.position + 1) % context
            return out
        past = self.buffer
        if self.position:
            past = past[:, :, (self.position + torch.arange(context, device=x.device)) % context]
        full = torch.cat([past, x], dim=2)  # (B, C_in, context + L), oldest first
        out = F.conv1d(full, conv.weight, conv.bias, 1, 0, conv.dilation[0], conv.groups)
        self.buffer = full[:, :, -context:].clone()
        self.position = 0
        return out

    def reset(self, rows: torch.Tensor | None) -> None:
        if self.buffer is None:
            return
        if rows is None:
            self.buffer.zero_()
            self.position = 0
        else:
            self.buffer[rows] = 0


class Streamer(StreamerBase):
    """Run a causal model one chunk at a time on ``batch_size`` independent streams.

    The concatenation of the outputs of :meth:`step` equals ``model(concatenated inputs)`` for
    any chunking. State lives here, not in the model: the model's ``state_dict`` is untouched
    and several streamers can share one model.

    Args:
        model: a causal model: ``CausalConv1d`` layers (stride 1) and layers pointwise in time
            (see the module docstring). Run in eval mode if it has dropout or batch norm.
        batch_size: number of independent streams, the first dim of every chunk.

    Raises:
        ValueError: a layer that cannot be streamed (named), or a bad ``batch_size``.

    Example:
        >>> streamer = Streamer(model, batch_size=4)
        >>> y = torch.cat([streamer.step(x[:, :, t : t + 1]) for t in range(x.shape[2])], dim=2)
    """

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        super().__init__(model, batch_size)
        self.model = model
        self._states: dict[str, _LayerState] = {}
        self._pointwise: list[_Pointwise] = []
        self._eval_only: list[tuple[str, nn.Module]] = []
        seen: dict[int, str] = {}
        for name, module in _walk(model):
            kind = _check_layer(name, module)
            if kind == "causal" and id(module) in seen:
                raise ValueError(
                    f"cannot stream layer {name!r}: it is the same CausalConv1d as {seen[id(module)]!r}; a shared "
                    "causal layer would need one state per use"
                )
            seen[id(module)] = name
            if kind == "causal":
                self._states[name] = _LayerState(module)
            elif kind == "conv1x1":
                self._pointwise.append(_Pointwise(module))
            elif kind == "eval":
                self._eval_only.append((name, module))
        self.in_channels = _expected_in_channels(model)
        # (B, C, L) chunks must match the weights: the offline forward would refuse another dtype too
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)

    @property
    def context(self) -> int:
        """Total past samples held across layers (the sum of ``(k - 1) * d``)."""
        return sum(state.context for state in self._states.values())

    def _check_chunk(self, chunk: torch.Tensor) -> None:
        self._check_batch(chunk)
        if chunk.ndim == 3 and self.dtype is not None and chunk.dtype != self.dtype:
            raise TypeError(
                f"chunk of shape {tuple(chunk.shape)} has dtype {chunk.dtype} but the model's parameters are "
                f"{self.dtype}; convert it first (chunk.to({self.dtype}))"
            )
        if chunk.ndim == 3 and chunk.is_floating_point() and self.in_channels is not None:
            if chunk.shape[1] != self.in_channels:
                raise ValueError(
                    f"chunk has {chunk.shape[1]} channels but the model expects in_channels={self.in_channels}; "
                    f"got shape {tuple(chunk.shape)}"
                )
        for name, module in self._eval_only:
            if module.training:
                raise ValueError(
                    f"cannot stream layer {name!r} ({type(module).__name__}) in training mode: it is only "
                    "pointwise in time in eval mode; call model.eval() first"
                )

    @contextmanager
    def _routed(self) -> Iterator[None]:
        """Route every CausalConv1d's forward through its state for the duration of one step."""
        patched = []
        try:
            for state in (*self._states.values(), *self._pointwise):
                # The instance dict shadows the class's forward; nn.Module.__setattr__ is skipped for speed.
                patched.append((state.conv, state.conv.__dict__.get("forward")))
                state.conv.__dict__["forward"] = state.step
            yield
        finally:
            for conv, previous in patched:
                if previous is None:
                    conv.__dict__.pop("forward", None)
                else:
                    conv.__dict__["forward"] = previous

    @torch.no_grad()
    def step(self, chunk: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Feed the next ``L`` samples of every stream; return the model's next ``L`` outputs.

        Args:
            chunk: ``(B, C_in, L)`` of the model's dtype (or whatever the model takes with time
                last, e.g. ``(B, L)`` class ids for WaveNet), ``B == batch_size``, any ``L >= 1``.
            *args, **kwargs: passed to the model's forward with the chunk, e.g. the matching
                chunk of a local conditioning sequence ``(B, C_cond, L)``.

        Returns:
            The model's output for these ``L`` steps, e.g. ``(B, C_out, L)``.

        Raises:
            TypeError: ``chunk`` is not a tensor, or a ``(B, C, L)`` chunk of another dtype than
                the model's parameters (it is not converted: convert it, or the model, first).
            ValueError: a shape that does not fit ``batch_size`` or the model's channels.
        """
        self._check_chunk(chunk)
        for state in self._states.values():
            state.calls = 0
        with self._routed():
            out = self.model(chunk, *args, **kwargs)
        for name, state in self._states.items():
            if state.calls > 1:
                raise ValueError(
                    f"cannot stream layer {name!r}: the model's forward called it {state.calls} times in one step; "
                    "each CausalConv1d must be called once per forward"
                )
        self.samples_seen += chunk.shape[-1]
        return out

    def _zero_streams(self, rows: torch.Tensor | None) -> None:
        for state in self._states.values():
            state.reset(rows)
