"""Run a module's own forward with its causal convolutions routed through ring buffers.

This serves modules whose forward cannot be traced as one graph and whose class declares
``streamable = True``: it promises that the forward combines its children pointwise in time
(residual sums, gates, slicing channels). WaveNet's class-id input is one (its forward checks
the ids' range). Every ``CausalConv1d`` inside gets a :class:`~atrous.streaming.history.CausalRing`;
during a step its forward is routed through it, then restored. The children are checked when
the route is built: a ``CausalConv1d`` at stride 1, a layer pointwise in time (activations,
1x1 convolutions, eval-mode dropout and batch norm, ``Embedding``, containers, weight
parametrisations) or another ``streamable`` module; anything else is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from atrous.ops.layers import CausalConv1d, DilatedConv1d
from atrous.streaming.history import CausalRing, pointwise_conv
from atrous.streaming.tracing import EVAL_ONLY

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


def _label(name: str, module: nn.Module) -> str:
    return f"layer {name or '<root>'!r} ({type(module).__name__})"


def _check_layer(name: str, module: nn.Module) -> str:
    """Classify one module: ``"causal"``, ``"conv1x1"``, ``"pointwise"``, ``"eval"``, ``"container"``.

    Raises:
        ValueError: the module cannot be streamed; the message names it and says why.
    """
    label = _label(name, module)
    if isinstance(module, CausalConv1d) or (isinstance(module, DilatedConv1d) and module.padding == "causal"):
        if module.stride != (1,):
            raise ValueError(f"cannot stream {label}: stride must be 1 inside a module run whole, got "
                             f"stride={module.stride[0]}")
        if module.padding_mode != "zeros":
            raise ValueError(f"cannot stream {label}: padding_mode must be 'zeros', got {module.padding_mode!r}")
        return "causal"
    if isinstance(module, nn.Conv1d):
        padding = module.padding
        zero_pad = padding in ("valid", "same") or (not isinstance(padding, str) and all(p == 0 for p in padding))
        if module.kernel_size == (1,) and module.stride == (1,) and zero_pad:
            return "conv1x1"
        raise ValueError(
            f"cannot stream {label}: inside a module run whole (streamable = True, its forward not traceable), a "
            f"convolution with a time extent must be a CausalConv1d; got kernel_size={module.kernel_size[0]}, "
            f"stride={module.stride[0]}, padding={padding!r}"
        )
    if isinstance(module, _ALWAYS_POINTWISE):
        return "pointwise"
    if isinstance(module, _CHANNEL_DIM_OPS):
        if module.dim in (1, -2):
            return "pointwise"
        raise ValueError(f"cannot stream {label}: it acts along dim={module.dim}; only the channel dim 1 is pointwise")
    if isinstance(module, EVAL_ONLY):
        return "eval"
    if isinstance(module, _CONTAINERS) or getattr(type(module), "streamable", False):
        return "container"
    raise ValueError(
        f"cannot stream {label}: inside a module run whole (streamable = True, its forward not traceable), every "
        "layer must be a CausalConv1d, a known pointwise layer or streamable itself"
    )


def _walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """named_modules, minus weight parametrisations (they act on weights, not on time)."""
    yield prefix, module
    for child_name, child in module.named_children():
        if child_name == "parametrizations":
            continue
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


class _RoutedConv:
    """A causal (or 1x1) convolution's forward for the duration of a step."""

    def __init__(self, name: str, conv: nn.Conv1d, ring: CausalRing | None) -> None:
        self.name, self.conv, self.ring = name, conv, ring
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if self.ring is None:
            return pointwise_conv(x, conv.weight, conv.bias, conv.groups)
        self.calls += 1
        return self.ring.step(x, conv.weight, conv.bias, final=False, end=None)


class Route:
    """The ring buffers of one module run whole.

    Args:
        module: a ``streamable = True`` module.
        path: its name in the model, for messages.

    Raises:
        ValueError: a layer inside that cannot be streamed this way (named).
    """

    def __init__(self, module: nn.Module, path: str) -> None:
        self.module = module
        self.convs: list[_RoutedConv] = []
        self.eval_only: list[tuple[str, nn.Module]] = []
        seen: dict[int, str] = {}
        for name, child in _walk(module, path):
            kind = _check_layer(name, child)
            if kind == "causal" and id(child) in seen:
                raise ValueError(f"cannot stream layer {name!r}: it is the same CausalConv1d as {seen[id(child)]!r}; "
                                 "a shared causal layer would need one state per use")
            seen[id(child)] = name
            if kind == "causal":
                self.convs.append(_RoutedConv(name, child, CausalRing(child.kernel_size[0], child.dilation[0],
                                                                      child.groups)))
            elif kind == "conv1x1":
                self.convs.append(_RoutedConv(name, child, None))
            elif kind == "eval":
                self.eval_only.append((_label(name, child), child))

    @property
    def context(self) -> int:
        return sum(conv.ring.context for conv in self.convs if conv.ring is not None)

    @property
    def received(self) -> int:
        return next((conv.ring.received for conv in self.convs if conv.ring is not None), 0)

    @contextmanager
    def _routed(self) -> Iterator[None]:
        patched = []
        try:
            for routed in self.convs:
                # The instance dict shadows the class's forward; nn.Module.__setattr__ is skipped for speed.
                patched.append((routed.conv, routed.conv.__dict__.get("forward")))
                routed.conv.__dict__["forward"] = routed.forward
            yield
        finally:
            for conv, previous in patched:
                if previous is None:
                    conv.__dict__.pop("forward", None)
                else:
                    conv.__dict__["forward"] = previous

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        for routed in self.convs:
            routed.calls = 0
        with self._routed():
            out = self.module(*args, **kwargs)
        for routed in self.convs:
            if routed.calls > 1:
                raise ValueError(f"cannot stream layer {routed.name!r}: the forward called it {routed.calls} times in "
                                 "one step; each CausalConv1d must be called once per forward")
        return out

    def reset(self, rows: torch.Tensor | None) -> None:
        for routed in self.convs:
            if routed.ring is not None:
                if rows is None:
                    routed.ring = CausalRing(routed.conv.kernel_size[0], routed.conv.dilation[0], routed.conv.groups)
                else:
                    routed.ring.zero(rows)
