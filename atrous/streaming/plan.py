"""Execute a :class:`~atrous.streaming.graph.StreamGraph` one chunk at a time with PyTorch ops.

Each node gets a small runner: ``STATIC`` and ``POINTWISE`` nodes call their op on the current
values (weights are read from the model at every step), ``WINDOW`` and ``TRANSPOSED`` nodes feed
a state of :mod:`atrous.streaming.history`, ``OPAQUE`` nodes run their module with its causal
convolutions routed through ring buffers. A node's output is whatever of it is complete: a
chunk of any length, empty while a strided window waits for its next frame. A node with
several inputs that do not have the same samples yet (a residual path around a window that
looks ahead) holds back the earlier ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atrous.streaming.graph import Geometry, Kind, Node, Ref, StreamGraph, refs_in
from atrous.streaming.history import Aligner, CausalRing, Stateful, Transposed, Window
from atrous.streaming.routed import Route
from atrous.streaming.timing import counts, position

Getter = Callable[[list], Any]


def _compile(value: Any, slot: Callable[[int], int] = lambda index: index) -> Getter:
    """A function of the value list that rebuilds ``value`` with every :class:`Ref` resolved."""
    if isinstance(value, Ref):
        at = slot(value.index)
        return lambda values: values[at]
    if isinstance(value, (tuple, list)):
        if all(not _has_ref(item) for item in value):
            return lambda values: value
        if all(isinstance(item, Ref) or not _has_ref(item) for item in value):  # flat: the common case
            positions = [(i, slot(item.index)) for i, item in enumerate(value) if isinstance(item, Ref)]
            if len(positions) == len(value) == 1:
                (_, a), = positions
                return lambda values: (values[a],)
            if len(positions) == len(value) == 2:
                (_, a), (_, b) = positions
                return lambda values: (values[a], values[b])
            template, kind = list(value), type(value)

            def flat(values: list) -> Any:
                items = template.copy()
                for i, at in positions:
                    items[i] = values[at]
                return kind(items)
            return flat
        parts = [_compile(item, slot) for item in value]
        kind = type(value)
        return lambda values: kind(part(values) for part in parts)
    if isinstance(value, dict):
        parts = {key: _compile(item, slot) for key, item in value.items()}
        return lambda values: {key: part(values) for key, part in parts.items()}
    if isinstance(value, slice):
        start, stop, step = (_compile(v, slot) for v in (value.start, value.stop, value.step))
        return lambda values: slice(start(values), stop(values), step(values))
    return lambda values: value


def _has_ref(value: Any) -> bool:
    return bool(refs_in(value))


def _fetch(root: nn.Module, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _is_causal(g: Geometry) -> bool:
    """Exactly causal at stride 1 (or 1x1): a ring buffer of ``(k - 1) d`` inputs serves it."""
    return (g.stride == 1 and g.pad_left == g.extent - 1 and g.pad_right == 0 and g.crop_left == 0
            and g.crop_right == 0 and g.pad_value == 0)


class _Call:
    """A ``STATIC``, ``SIZE``, ``POINTWISE`` or ``OPAQUE`` node: its op on (aligned) inputs."""

    def __init__(self, graph: StreamGraph, node: Node, model: nn.Module) -> None:
        inputs = node.inputs
        self.aligned = [i for i in dict.fromkeys(inputs) if graph.nodes[i].axis is not None]
        self.aligner = None
        if node.kind in (Kind.POINTWISE, Kind.OPAQUE) and len(self.aligned) > 1:
            self.aligner = Aligner([graph.nodes[i].axis for i in self.aligned])
            local = {index: at for at, index in enumerate(self.aligned)}
            others = [i for i in dict.fromkeys(inputs) if i not in local]
            local.update({index: len(self.aligned) + at for at, index in enumerate(others)})
            self.others = others
            self.args, self.kwargs = _compile(node.args, local.__getitem__), _compile(node.kwargs, local.__getitem__)
        else:
            self.args, self.kwargs = _compile(node.args), _compile(node.kwargs)
        self.no_kwargs = not node.kwargs
        self.route = None
        if node.kind is Kind.OPAQUE:
            path = next(name for name, module in model.named_modules() if module is node.target)
            self.route = Route(node.target, path)
            self.function = self.route
        elif node.op == "get_attr":
            target = node.target
            self.function = lambda: _fetch(model, target)
        elif node.op == "constant":
            constant = node.target
            self.function = lambda: constant
        elif node.op == "call_method":
            name = node.target
            self.function = lambda obj, *args, **kwargs: getattr(obj, name)(*args, **kwargs)
        else:
            self.function = node.target  # a function or a module

    def __call__(self, values: list, final: bool) -> Any:
        if self.aligner is not None:
            values = self.aligner.align([values[i] for i in self.aligned]) + [values[i] for i in self.others]
        if self.no_kwargs:
            return self.function(*self.args(values))
        return self.function(*self.args(values), **self.kwargs(values))


class _Temporal:
    """A ``WINDOW`` or ``TRANSPOSED`` node: its state, fed the input and the current weights."""

    def __init__(self, graph: StreamGraph, node: Node) -> None:
        self.node, self.source = node, node.args[0].index
        self.input_rate = graph.nodes[self.source].rate
        self.params = _compile(node.args[1:])
        self.module = node.target if isinstance(node.target, nn.Module) else None
        self.axis = node.axis
        g = node.geometry
        # a crop at the right end of a value that holds samples back must know the value's length
        self.needs_end = bool(graph.timing.waiting and graph.timing.waiting[self.source]) and (
            g.crop_right != 0 or g.pad_right < 0)
        self.state = self.fresh()

    def fresh(self) -> Stateful:
        node, g = self.node, self.node.geometry
        groups = node.kwargs.get("groups", 1)
        channels = node.examples[0].shape[1] if node.op in ("conv", "conv_transpose") else None
        if node.op == "conv":
            if _is_causal(g):
                return CausalRing(g.kernel_size, g.dilation, groups)
            s, d = g.stride, g.dilation
            return Window(g, lambda w, weight, bias: F.conv1d(w, weight, bias, s, 0, d, groups),
                          lambda x: x.new_empty(x.shape[0], channels, 0))
        if node.op == "conv_transpose":
            s, d = g.stride, g.dilation
            return Transposed(g, lambda w, weight, bias: F.conv_transpose1d(w, weight, bias, s, 0, 0, groups, d),
                              lambda x: x.new_empty(x.shape[0], channels, 0))
        if node.op == "avg_pool":
            k, s = g.kernel_size, g.stride
            return Window(g, lambda w: F.avg_pool1d(w, k, s), lambda x: x[:, :, :0])
        if node.op == "max_pool":
            k, s, d = g.kernel_size, g.stride, g.dilation
            return Window(g, lambda w: F.max_pool1d(w, k, s, 0, d), lambda x: x[:, :, :0])
        axis, s = self.axis, g.stride
        every = (slice(None),) * axis + (slice(None, None, s),)
        return Window(g, (lambda w: w) if s == 1 else (lambda w: w[every]), lambda x: x.narrow(axis, 0, 0), axis)

    def __call__(self, values: list, final: bool, end: int | None = None) -> torch.Tensor:
        x = values[self.source]
        module = self.module
        if module is not None:
            if module._forward_pre_hooks:
                for hook in module._forward_pre_hooks.values():  # the old weight_norm computes the weight here
                    hook(module, (x,))
            return self.state.push(x, module.weight, module.bias, final=final, axis=self.axis, end=end)
        return self.state.push(x, *self.params(values), final=final, axis=self.axis, end=end)


class Plan:
    """Runners for every node of ``graph``, and the values of the current step.

    Args:
        graph: the analysed graph.
        model: the model (for attributes read at every step).
    """

    def __init__(self, graph: StreamGraph, model: nn.Module) -> None:
        self.graph, self.model = graph, model
        self.runners: list[tuple[int, Any]] = []
        for index, node in enumerate(graph.nodes):
            if node.kind is Kind.INPUT:
                continue
            temporal = node.kind in (Kind.WINDOW, Kind.TRANSPOSED)
            runner = _Temporal(graph, node) if temporal else _Call(graph, node, model)
            self.runners.append((index, runner))
        self.needs_ends = any(getattr(runner, "needs_end", False) for _, runner in self.runners)
        self.eval_only = list(graph.eval_only)
        for _, runner in self.runners:
            if getattr(runner, "route", None) is not None:
                self.eval_only += runner.route.eval_only

    @property
    def context(self) -> int:
        total = 0
        for _, runner in self.runners:
            if isinstance(runner, _Temporal):
                total += runner.state.context
            elif runner.route is not None:
                total += runner.route.context
        return total

    def run(self, inputs: dict[str, Any], samples: int, final: bool = False) -> torch.Tensor:
        """Outputs complete after this chunk.

        Args:
            inputs: per argument name of ``forward``, its value for this chunk.
            samples: input samples fed so far, this chunk included.
            final: the streams end after this chunk (add the right padding, emit everything).
        """
        values: list[Any] = [None] * len(self.graph.nodes)
        for name, index in self.graph.inputs.items():
            values[index] = inputs[name]
        ends = counts(self.graph, samples) if self.needs_ends else None
        for index, runner in self.runners:
            if ends is not None and getattr(runner, "needs_end", False):
                values[index] = runner(values, final, ends[runner.source][1])
            else:
                values[index] = runner(values, final)
        return values[self.graph.output]

    def fresh(self) -> None:
        """Every stream starts afresh."""
        for _, runner in self.runners:
            if isinstance(runner, _Temporal):
                runner.state = runner.fresh()
            else:
                if runner.aligner is not None:
                    runner.aligner = Aligner(runner.aligner.axes)
                if runner.route is not None:
                    runner.route.reset(None)

    def reset(self, rows: torch.Tensor, samples: int) -> None:
        """Streams ``rows`` start afresh at input sample ``samples``."""
        timing = self.graph.timing
        if samples % timing.period:
            raise ValueError(f"cannot reset single streams after {samples} input samples: this model changes the "
                             f"sample rate, so a stream can restart only at a multiple of {timing.period} samples "
                             "(a whole frame); feed up to one, or reset all streams with reset()")
        if timing.lead is not None:
            raise ValueError(f"cannot reset single streams of this model: {self.graph.nodes[timing.lead].label} emits "
                             "samples ahead of its input (a left pad not followed by a convolution), so the restarted "
                             "streams would see the old sequence there; reset all streams with reset()")
        routes = [runner.route for _, runner in self.runners if getattr(runner, "route", None) is not None]
        for route in routes:
            if route.received != samples and any(conv.ring is not None for conv in route.convs):
                raise ValueError(f"cannot reset single streams of this model: {type(route.module).__name__} runs "
                                 "whole behind a window that looks ahead; reset all streams with reset()")
        for _, runner in self.runners:
            if isinstance(runner, _Temporal):
                runner.state.reset(rows, position(samples, runner.input_rate))
        for route in routes:
            route.reset(rows)
