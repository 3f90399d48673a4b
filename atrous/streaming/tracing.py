"""Trace a model with torch.fx while running it on two example inputs of different lengths.

:func:`trace` records the model's forward as a ``torch.fx`` graph (Reed et al. 2022, "torch.fx:
practical program capture and transformation for deep learning in Python") and computes, for
every node, its value on two example inputs that differ only in their length along time. The
two values tell the analysis in :mod:`atrous.streaming.graph` which axis of each tensor is time
(the one whose size differs) and give it a reference to check its length arithmetic against.

The proxies know what the examples know, so a forward may read what does not depend on the
input's length: ``x.ndim``, ``x.dtype``, ``x.is_floating_point()``, the channel count
``x.shape[1]``. The time length ``x.shape[-1]`` stays symbolic (a ``size`` node), and a branch
on it, or on the input's values, cannot be traced: it raises :class:`Untraceable`, which names
the node. A module whose class sets ``streamable = True`` and whose forward cannot be traced is
kept whole, as one ``call_module`` node marked ``opaque``; it promises to be pointwise in time
apart from its ``CausalConv1d`` children, which the streamer routes through ring buffers.

Leaves (kept as ``call_module`` nodes, not traced into): modules of ``torch.nn`` (convolutions,
norms, activations, pooling, dropout, parametrised and weight-normalised convolutions among
them) and atrous's ``DilatedConv1d``/``CausalConv1d``. A subclass of ``nn.Conv1d`` with a
forward of its own (one that pads first, say) is traced into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import Node, map_arg

from atrous.ops.layers import DilatedConvNd

# Layers that are pointwise in time in eval mode only: the streamer checks their mode at every step.
EVAL_ONLY = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
             nn.modules.batchnorm._BatchNorm, nn.RReLU)
_STANDARD_FORWARDS = (nn.Conv1d.forward, nn.ConvTranspose1d.forward, DilatedConvNd.forward)


class Untraceable(ValueError):
    """The forward cannot be recorded as one graph for every chunk (a branch on a traced value)."""


class ExampleFailed(ValueError):
    """Running a node on the example inputs failed (the examples may be too short)."""

    def __init__(self, label: str, error: BaseException) -> None:
        super().__init__(f"cannot stream {label}: it fails on an example input shaped like the chunk "
                         f"({type(error).__name__}: {error})")
        self.error = error


def module_label(path: str, module: nn.Module) -> str:
    """``layer 'blocks.0.net.0' (Conv1d)``: how messages name a module."""
    return f"layer {path or '<root>'!r} ({type(module).__name__})"


def _fetch(root: nn.Module, target: str) -> Any:
    value = root
    for part in target.split(".") if target else ():
        value = getattr(value, part)
    return value


def time_dims(first: Any, second: Any) -> list[int]:
    """The dims whose size differs between the two examples of a tensor (its time axis)."""
    if not isinstance(first, torch.Tensor) or not isinstance(second, torch.Tensor) or first.ndim != second.ndim:
        return []
    return [i for i, (a, b) in enumerate(zip(first.shape, second.shape)) if a != b]


class ShapedProxy(fx.Proxy):
    """A proxy that answers questions about its value which do not depend on the input's length."""

    def _examples(self) -> tuple[Any, Any] | None:
        return self.node.meta.get("examples")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("node", "tracer"):
            return super().__getattr__(name)
        examples = self._examples()
        if examples is None or not isinstance(examples[0], torch.Tensor):
            return super().__getattr__(name)
        first = examples[0]
        if name in ("ndim", "dtype", "device", "layout", "is_cuda", "is_sparse", "is_quantized"):
            return getattr(first, name)
        if name in ("dim", "ndimension"):
            return lambda: first.ndim
        if name in ("is_floating_point", "is_complex", "is_signed", "element_size"):
            return getattr(first, name)
        if name == "shape":
            return self._shape()
        if name == "size":
            return lambda dim=None: self._shape() if dim is None else self._shape()[dim]
        if name == "numel" and not time_dims(*examples):
            return first.numel
        return super().__getattr__(name)

    def _shape(self) -> tuple[Any, ...]:
        first, second = self._examples()
        varying = set(time_dims(first, second))
        return tuple(self.tracer.create_proxy("call_method", "size", (self, i), {}) if i in varying else size
                     for i, size in enumerate(first.shape))

    def __len__(self) -> int:
        examples = self._examples()
        if examples is not None and isinstance(examples[0], (tuple, list)):
            return len(examples[0])
        if examples is not None and isinstance(examples[0], torch.Tensor) and 0 not in time_dims(*examples):
            return len(examples[0])
        return super().__len__()

    def __iter__(self):
        examples = self._examples()
        if examples is not None and isinstance(examples[0], (tuple, list)):
            return iter([self[i] for i in range(len(examples[0]))])
        return super().__iter__()


class ExampleTracer(fx.Tracer):
    """``fx.Tracer`` that runs every node on two examples as it records it (``node.meta["examples"]``).

    Args:
        examples: per placeholder name, its value in the first and in the second example.
    """

    def __init__(self, examples: dict[str, tuple[Any, Any]]) -> None:
        super().__init__()
        self.examples = examples
        self.constants: dict[str, torch.Tensor] = {}
        self._eager = 0  # > 0 while running an example: module calls run, parameters are plain tensors

    def proxy(self, node: Node) -> fx.Proxy:
        return ShapedProxy(node, self)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            return type(m).forward in _STANDARD_FORWARDS  # a conv with a forward of its own is traced into
        return type(m).__module__.startswith(("torch.nn", "torch.ao.nn"))

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, fx.Proxy]) -> Any:
        if self._eager:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_arg(self, a: Any) -> Any:
        if (isinstance(a, torch.Tensor) and not isinstance(a, nn.Parameter)
                and not any(a is buffer for _, buffer in self.root.named_buffers())):
            # A tensor made in forward: kept here, not set on the user's model as fx would.
            name = f"_streaming_constant_{len(self.constants)}"
            self.constants[name] = a
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def to_bool(self, obj: fx.Proxy) -> bool:
        raise Untraceable(f"cannot stream the model: {self.describe(obj.node)} is used in a branch (if/while/and/or): "
                          "its value depends on the input's length or values, so one graph cannot serve every chunk")

    def iter(self, obj: fx.Proxy):
        raise Untraceable(f"cannot stream the model: {self.describe(obj.node)} is iterated over: its length is not "
                          "known while tracing")

    def describe(self, node: Node) -> str:
        """``node 'add_1' (add in layer 'blocks.0' (TemporalBlock))``, or the layer of a module call."""
        if node.op == "call_module":
            return module_label(node.target, self.root.get_submodule(node.target))
        path, module_type = node.meta.get("scope", ("", None))
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        where = f" in layer {path or '<root>'!r} ({module_type.__name__})" if module_type is not None else ""
        return f"node {node.name!r} ({target}{where})"

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self._eager:
            return forward(*args, **kwargs)
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return self._scoped(path, m, lambda: self.create_proxy("call_module", path, args, kwargs))
        last = next(reversed(self.graph.nodes))
        try:
            return self._scoped(path, m, lambda: forward(*args, **kwargs))
        except (Untraceable, fx.proxy.TraceError):
            if not getattr(type(m), "streamable", False):
                raise
        # streamable = True and not traceable: erase what was recorded of it, keep it whole
        for node in reversed(list(self.graph.nodes)):
            if node is last:
                break
            self.graph.erase_node(node)
        proxy = self._scoped(path, m, lambda: self.create_proxy("call_module", path, args, kwargs))
        proxy.node.meta["opaque"] = True
        return proxy

    def _scoped(self, path: str, module: nn.Module, record: Callable[[], Any]) -> Any:
        saved = self.scope.module_path, self.scope.module_type
        self.scope.module_path, self.scope.module_type = path, type(module)
        try:
            return record()
        finally:
            self.scope.module_path, self.scope.module_type = saved

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["scope"] = (self.scope.module_path, self.scope.module_type)
        if kind != "output":
            node.meta["examples"] = tuple(self._run(node, i) for i in (0, 1))
        return node

    def _run(self, node: Node, which: int) -> Any:
        if node.op == "placeholder":
            default = node.args[0] if node.args else None
            return self.examples.get(node.target, (default, default))[which]
        if node.op == "get_attr":
            if node.target in self.constants:
                return self.constants[node.target]
            self._eager += 1  # fx's patched module getattr would record the parameter again
            try:
                return _fetch(self.root, node.target)
            finally:
                self._eager -= 1

        def value(arg: Node) -> Any:
            result = arg.meta["examples"][which]
            # a copy, so that an in-place op cannot change the examples of the nodes before it
            return result.clone() if isinstance(result, torch.Tensor) and arg.op != "get_attr" else result

        args, kwargs = map_arg(node.args, value), map_arg(node.kwargs, value)
        self._eager += 1
        try:
            with torch.no_grad():
                if node.op == "call_module":
                    return _fetch(self.root, node.target)(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], node.target)(*args[1:], **kwargs)
                return node.target(*args, **kwargs)
        except Exception as error:  # the model's own failure on an example: reported with the node
            raise ExampleFailed(self.describe(node), error) from error
        finally:
            self._eager -= 1


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode, as it is streamed (dropout off, batch norm on its running
    statistics, which the examples leave untouched); each module gets its own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def trace(model: nn.Module, examples: dict[str, tuple[Any, Any]], concrete: dict[str, Any]) -> fx.Graph:
    """Record ``model``'s forward, each node with its values on the two examples.

    Args:
        model: the model.
        examples: per argument of ``forward`` given as a tensor, its two example values.
        concrete: the other arguments, fixed at their values (defaults, non-tensor values).

    Returns:
        The graph; ``node.meta`` holds ``examples``, ``scope`` (module path and type) and, for
        a module kept whole, ``opaque``. Tensors made in forward are in ``graph.constants``.

    Raises:
        Untraceable: the forward branches on a traced value (named).
        ExampleFailed: a node fails on the examples.
    """
    tracer = ExampleTracer(examples)
    tracer.scope.module_type = type(model)
    if tracer.is_leaf_module(model, ""):  # a single layer: fx would trace into its forward
        tracer, graph = _whole(model, examples, {}, opaque=False)
        graph.constants, graph.describe = tracer.constants, tracer.describe
        return graph
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except (Untraceable, fx.proxy.TraceError) as error:
        if not getattr(type(model), "streamable", False):
            message = str(error)
            raise Untraceable(message if isinstance(error, Untraceable) else f"cannot stream the model: {message}") \
                from None
        tracer, graph = _whole(model, examples, concrete, opaque=True)
    except ExampleFailed:
        raise
    except Exception as error:  # the forward itself refuses the examples (a missing argument?)
        raise ExampleFailed(f"the forward of {type(model).__name__}", error) from error
    graph.constants = tracer.constants
    graph.describe = tracer.describe
    return graph


def _whole(model: nn.Module, examples: dict[str, tuple[Any, Any]], concrete: dict[str, Any], *, opaque: bool
           ) -> tuple[ExampleTracer, fx.Graph]:
    """A graph of one ``call_module`` node that runs the whole model (a layer, or ``streamable``)."""
    tracer = ExampleTracer(examples)
    tracer.root, tracer.graph = model, fx.Graph()
    tracer.scope.module_type = type(model)
    proxies = {name: tracer.create_proxy("placeholder", name, (), {}) for name in examples}
    first = next(iter(proxies))
    proxy = tracer.create_proxy("call_module", "", (proxies.pop(first),), {**proxies, **concrete})
    proxy.node.meta["opaque"] = opaque
    tracer.graph.output(proxy.node)
    return tracer, tracer.graph
