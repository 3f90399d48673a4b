"""Turn a traced fx graph into the typed nodes of :mod:`atrous.streaming.graph`.

Every fx node that the output needs becomes one :class:`~atrous.streaming.graph.Node` (or an
alias of its input: eval-mode dropout, ``Identity``, ``contiguous``). Which axis of a value is
time is read from its two example values; what an op does along time is read from what it is:

* convolutions, pooling, ``F.pad``/``ConstantPad1d``/``ZeroPad1d`` and slices of the time axis
  become ``WINDOW`` nodes, transposed convolutions ``TRANSPOSED`` ones, with their geometry;
* every other op on values with a time axis must keep the time axis and its length and act on
  each time step on its own. That is checked, not assumed: the op is run again on the
  examples cut to an inner time range, and must give the same cut of its output. An op that
  fails it (softmax over time, a recurrent layer, attention) is refused by name, and so is an
  op that removes the time axis (a mean over time) or changes its length in another way.

The ops along time are read in :mod:`atrous.streaming.time_ops`; then pads and crops are folded
into the windows next to them (:mod:`atrous.streaming.folding`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import map_arg

from atrous.streaming.folding import fold, prune
from atrous.streaming.graph import Kind, Node, Ref, StreamGraph
from atrous.streaming.time_ops import TimeOps, bind
from atrous.streaming.tracing import EVAL_ONLY, ExampleFailed, module_label, time_dims

_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout)
_TIME_MIXING_NORMS = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_SEQUENCE_LAYERS = (nn.RNNBase, nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder,
                    nn.TransformerDecoder, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
_OWN_SAMPLE_PADS = (nn.ReflectionPad1d, nn.ReplicationPad1d, nn.CircularPad1d)


def _cut(value: Any, other: Any, start: int, stop: int) -> Any:
    """``value`` cut to ``[start, stop)`` along its time axis (found against ``other``, its twin)."""
    if isinstance(value, torch.Tensor):
        dims = time_dims(value, other)
        return value.narrow(dims[0], start, stop - start) if dims else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, o, start, stop) for v, o in zip(value, other))
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        scale = float(a.abs().max()) if a.numel() else 0.0
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6 + 1e-4 * scale, equal_nan=True))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class _Normaliser(TimeOps):
    def __init__(self, graph: fx.Graph, model: nn.Module, time_inputs: set[str]) -> None:
        self.fx = graph
        self.model = model
        self.time_inputs = time_inputs
        self.nodes: list[Node] = []
        self.index_of: dict[fx.Node, int] = {}
        self.inputs: dict[str, int] = {}
        self.eval_only: list[tuple[str, nn.Module]] = []

    # helpers ------------------------------------------------------------------------------
    def label(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return module_label(node.target, self.model.get_submodule(node.target))
        return self.fx.describe(node)

    def refuse(self, node: fx.Node, why: str) -> None:
        raise ValueError(f"cannot stream {self.label(node)}: {why}")

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def refs(self, value: Any) -> Any:
        return map_arg(value, lambda n: Ref(self.index_of[n]))

    def source(self, node: fx.Node, arg: Any) -> Node:
        return self.nodes[self.index_of[arg]] if isinstance(arg, fx.Node) else None

    def time_length(self, value: Any, other: Any) -> tuple[int, int] | None:
        dims = time_dims(value, other)
        return (value.shape[dims[0]], other.shape[dims[0]]) if dims else None

    # conversion ---------------------------------------------------------------------------
    def run(self) -> StreamGraph:
        output = next(n for n in self.fx.nodes if n.op == "output")
        live, stack = set(), [output]
        while stack:
            node = stack.pop()
            if node not in live:
                live.add(node)
                stack.extend(node.all_input_nodes)
        for node in self.fx.nodes:
            if node in live and node.op != "output":
                self.index_of[node] = self.convert(node)
        result = output.args[0]
        if not isinstance(result, fx.Node) or self.nodes[self.index_of[result]].axis is None:
            raise ValueError("cannot stream the model: its forward must return one tensor with a time axis, got "
                             f"{type(output.args[0]).__name__}" + (" without a time axis" if isinstance(result, fx.Node)
                                                                    else ""))
        graph = StreamGraph(self.nodes, self.index_of[result], self.inputs, self.eval_only)
        return prune(fold(graph))

    def convert(self, node: fx.Node) -> int:
        examples = node.meta["examples"]
        if node.op == "placeholder":
            timed = node.target in self.time_inputs
            index = self.add(Node(node.target, Kind.INPUT, f"input {node.target!r}", op="placeholder",
                                  target=node.target, axis=examples[0].ndim - 1 if timed else None, timed=timed,
                                  examples=examples))
            self.inputs[node.target] = index
            return index
        if node.op == "get_attr":
            constant = node.target.startswith("_streaming_constant_")
            return self.add(Node(node.name, Kind.STATIC, f"attribute {node.target!r}",
                                 op="constant" if constant else "get_attr",
                                 target=examples[0] if constant else node.target, examples=examples))
        module = self.model.get_submodule(node.target) if node.op == "call_module" else None
        target = module if module is not None else node.target
        args, kwargs = self.refs(node.args), self.refs(node.kwargs)
        timed = [n for n in node.all_input_nodes if self.nodes[self.index_of[n]].timed]
        if not timed:
            return self.add(Node(node.name, Kind.STATIC, self.label(node), op=node.op, target=target, args=args,
                                 kwargs=kwargs, examples=examples))
        if node.meta.get("opaque"):
            return self.add(Node(node.name, Kind.OPAQUE, self.label(node), op=node.op, target=module, args=args,
                                 kwargs=kwargs, axis=self._axis(node), timed=True, examples=examples))
        if module is not None:
            return self.convert_module(node, module)
        if node.op == "call_function":
            return self.convert_function(node)
        return self.convert_method(node)

    def _axis(self, node: fx.Node) -> int:
        examples = node.meta["examples"]
        dims = time_dims(*examples)
        if not dims and any(0 in example.shape for example in examples if isinstance(example, torch.Tensor)):
            # empty in both examples: they are too short for this layer (the streamer tries longer ones)
            raise ExampleFailed(self.label(node), ValueError("its output is empty for both example lengths"))
        if len(dims) != 1:
            what = "has no time axis (it reduces over time)" if not dims else f"has time in dims {dims}"
            self.refuse(node, f"its output {what}")
        return dims[0]

    def alias(self, node: fx.Node, arg: fx.Node) -> int:
        return self.index_of[arg]

    def convert_module(self, node: fx.Node, module: nn.Module) -> int:
        label = self.label(node)
        if isinstance(module, EVAL_ONLY):
            self.eval_only.append((label, module))
        if isinstance(module, nn.Conv1d):
            return self.conv(node, module)
        if isinstance(module, nn.ConvTranspose1d):
            return self.conv_transpose(node, module)
        if isinstance(module, (nn.AvgPool1d, nn.MaxPool1d)):
            return self.pool(node, module, {name: getattr(module, name) for name in (
                "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "dilation", "return_indices")
                if hasattr(module, name)}, isinstance(module, nn.MaxPool1d))
        if isinstance(module, nn.ConstantPad1d):
            x = node.args[0]
            return self.pad(node, x, tuple(module.padding), module.value, "constant")
        if isinstance(module, _OWN_SAMPLE_PADS):
            self.refuse(node, "it pads with the sequence's own samples (reflection, replication or circular "
                        "padding); only constant padding streams")
        if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                               nn.Identity)):
            return self.alias(node, node.args[0])
        if isinstance(module, _TIME_MIXING_NORMS):
            self.refuse(node, "it normalises over channels and time together, so each output depends on the whole "
                        "sequence; a causal model normalises over the channels of each time step (e.g. "
                        "nn.LayerNorm over the channel axis, the channel-wise norm of causal Conv-TasNet)")
        if isinstance(module, nn.LayerNorm):
            x = node.args[0]
            axis = self.source(node, x).axis
            ndim = x.meta["examples"][0].ndim
            if axis is not None and axis >= ndim - len(module.normalized_shape):
                self.refuse(node, f"it normalises over its last {len(module.normalized_shape)} dims, which include "
                            "the time axis; normalise over channels only (transpose time away from the last dim)")
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            self.refuse(node, "without running statistics it normalises over the batch and time")
        if isinstance(module, _SEQUENCE_LAYERS):
            self.refuse(node, "it is a recurrent or attention layer over the whole sequence")
        if isinstance(module, _GLOBAL_POOLS):
            self.refuse(node, "it pools over the whole time axis")
        return self.pointwise(node)

    def convert_function(self, node: fx.Node) -> int:
        target = node.target
        if target in (F.conv1d, torch.conv1d):
            return self.conv_function(node)
        if target in (F.conv_transpose1d, torch.conv_transpose1d):
            return self.conv_transpose_function(node)
        if target in (F.avg_pool1d, torch.avg_pool1d):
            return self.pool(node, None, bind(node, ["input", "kernel_size", "stride", "padding", "ceil_mode",
                                                       "count_include_pad"], {}), False)
        if target in (F.max_pool1d, torch.max_pool1d):
            return self.pool(node, None, bind(node, ["input", "kernel_size", "stride", "padding", "dilation",
                                                       "ceil_mode", "return_indices"], {}), True)
        if target is F.pad:
            bound = bind(node, ["input", "pad", "mode", "value"], {"mode": "constant", "value": None})
            return self.pad(node, bound["input"], tuple(bound["pad"]), bound["value"], bound["mode"])
        if target is operator.getitem:
            return self.getitem(node)
        if target in _DROPOUT_FUNCTIONS:
            if bind(node, ["input", "p", "training", "inplace"], {"training": True})["training"]:
                self.refuse(node, "dropout in training mode is random at every step; call model.eval() first")
            return self.alias(node, node.args[0])
        if target in (F.group_norm, F.instance_norm):
            self.refuse(node, "it normalises over channels and time together, so each output depends on the "
                        "whole sequence; normalise over the channels of each time step instead")
        if target in (torch.cat, torch.concat, torch.concatenate):
            self.check_cat(node)
        return self.pointwise(node)

    def convert_method(self, node: fx.Node) -> int:
        if node.target == "contiguous":
            return self.alias(node, node.args[0])
        return self.pointwise(node)

    # everything else ----------------------------------------------------------------------
    def pointwise(self, node: fx.Node, check: bool = True) -> int:
        first, second = node.meta["examples"]
        if isinstance(first, torch.Tensor):
            axis = self._axis(node)
            out_lengths = (first.shape[axis], second.shape[axis])
        elif isinstance(first, (tuple, list)) and first and all(isinstance(v, torch.Tensor) for v in first):
            axis, out_lengths = None, None
            for item, other in zip(first, second):
                if not time_dims(item, other):
                    self.refuse(node, "part of its output has no time axis (it reduces over time)")
                out_lengths = out_lengths or self.time_length(item, other)
        elif isinstance(first, (int, float)) and all(self.nodes[self.index_of[n]].kind is Kind.SIZE or (
                node.target in ("size", "numel")) for n in node.all_input_nodes if self.nodes[self.index_of[n]].timed):
            return self.add(Node(node.name, Kind.SIZE, self.label(node), op=node.op, target=node.target,
                                 args=self.refs(node.args), kwargs=self.refs(node.kwargs), timed=True,
                                 examples=node.meta["examples"]))
        else:
            self.refuse(node, f"it turns values with a time axis into a {type(first).__name__}")
        tensors = []
        for arg in node.all_input_nodes:
            source = self.nodes[self.index_of[arg]]
            if source.kind is not Kind.SIZE and source.timed:
                tensors.append(arg)
                examples = arg.meta["examples"]
                lengths = (self.time_length(*examples) if isinstance(examples[0], torch.Tensor)
                           else self.time_length(examples[0][0], examples[1][0]))
                if lengths != out_lengths:
                    self.refuse(node, f"it changes the length of the time axis ({lengths[0]} samples in, "
                                f"{out_lengths[0]} out)")
        if not tensors:  # a constant spread along time to a chunk's length (repeat, expand)
            if not isinstance(first, torch.Tensor) or not bool((first == first.narrow(axis, 0, 1)).all()):
                self.refuse(node, "it builds a sequence from the input's length (positions?), which depends on "
                            "where a chunk starts")
        elif check and out_lengths[0] >= 4:
            self.check_pointwise(node, out_lengths[0])
        module = self.model.get_submodule(node.target) if node.op == "call_module" else None
        return self.add(Node(node.name, Kind.POINTWISE, self.label(node), op=node.op,
                             target=module if module is not None else node.target, args=self.refs(node.args),
                             kwargs=self.refs(node.kwargs), axis=axis, timed=True, examples=node.meta["examples"]))

    def check_pointwise(self, node: fx.Node, length: int) -> None:
        """Run ``node`` on its inputs cut to ``[1, length - 2)`` along time: it must give that cut of its output.

        The cut is asymmetric so that reversing time cannot pass; sizes read from the time axis
        shrink with it, so an op that uses the length (dividing by it, normalising over time) fails.
        """
        start, stop = 1, length - 2
        shrink = length - (stop - start)

        def cut(arg: fx.Node) -> Any:
            first, second = arg.meta["examples"]
            source = self.nodes[self.index_of[arg]]
            if source.kind is Kind.SIZE:
                return _shrink(first, second, shrink)
            if not source.timed:
                return first
            value = _cut(first, second, start, stop)
            return value.clone() if isinstance(value, torch.Tensor) else value

        args, kwargs = map_arg(node.args, cut), map_arg(node.kwargs, cut)
        try:
            with torch.no_grad():
                if node.op == "call_module":
                    got = self.model.get_submodule(node.target)(*args, **kwargs)
                elif node.op == "call_method":
                    got = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    got = node.target(*args, **kwargs)
        except Exception as error:  # the op's own refusal of a shorter input is the answer
            raise ValueError(f"cannot stream {self.label(node)}: it fails on a shorter input ({type(error).__name__}: "
                             f"{error}), so it is not pointwise in time") from error
        if not _same(got, _cut(*node.meta["examples"], start, stop)):
            self.refuse(node, "it mixes samples along the time axis: run on part of the sequence, it does not give "
                        "that part of its output")


def _shrink(first: Any, second: Any, by: int) -> Any:
    """A size read from the time axis (an int, or the entries of a shape that differ between the two
    examples) made ``by`` samples shorter; sizes of other axes as they are."""
    if isinstance(first, int) and not isinstance(first, bool):
        return first - by if first != second else first
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)) and len(first) == len(second):
        return type(first)(_shrink(a, b, by) for a, b in zip(first, second))
    return first


def normalise(graph: fx.Graph, model: nn.Module, time_inputs: set[str]) -> StreamGraph:
    """The :class:`StreamGraph` of a graph recorded by :func:`atrous.streaming.tracing.trace`.

    Raises:
        ValueError: a node that cannot be streamed; the message names it and says why.
    """
    return _Normaliser(graph, model, time_inputs).run()
