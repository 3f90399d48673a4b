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

Then a pad is folded into the window that reads it (``F.pad(x, (2, 0))`` then ``Conv1d(k=3)`` is
a causal convolution), a crop into the window that it cuts (``Conv1d(padding=2)`` then
``x[:, :, :-2]``, the ``Chomp1d`` of Bai et al. 2018, is the same causal convolution), and pads
that a crop removes cancel.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import map_arg

from atrous.ops.layers import DilatedConvNd
from atrous.streaming.graph import Geometry, Kind, Node, Ref, StreamGraph
from atrous.streaming.tracing import EVAL_ONLY, module_label, time_dims

_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout)
_TIME_MIXING_NORMS = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_SEQUENCE_LAYERS = (nn.RNNBase, nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder,
                    nn.TransformerDecoder, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)
_OWN_SAMPLE_PADS = (nn.ReflectionPad1d, nn.ReplicationPad1d, nn.CircularPad1d)


def _one(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value


def _bind(node: fx.Node, names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


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


class _Normaliser:
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
        return _prune(_fold(graph))

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
        dims = time_dims(*node.meta["examples"])
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
            return self.pool(node, None, _bind(node, ["input", "kernel_size", "stride", "padding", "ceil_mode",
                                                       "count_include_pad"], {}), False)
        if target in (F.max_pool1d, torch.max_pool1d):
            return self.pool(node, None, _bind(node, ["input", "kernel_size", "stride", "padding", "dilation",
                                                       "ceil_mode", "return_indices"], {}), True)
        if target is F.pad:
            bound = _bind(node, ["input", "pad", "mode", "value"], {"mode": "constant", "value": None})
            return self.pad(node, bound["input"], tuple(bound["pad"]), bound["value"], bound["mode"])
        if target is operator.getitem:
            return self.getitem(node)
        if target in _DROPOUT_FUNCTIONS:
            if _bind(node, ["input", "p", "training", "inplace"], {"training": True})["training"]:
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

    # time ops -----------------------------------------------------------------------------
    def window(self, node: fx.Node, op: str, geometry: Geometry, x: fx.Node, *, target: Any = None,
               args: tuple = (), kwargs: dict | None = None, kind: Kind = Kind.WINDOW) -> int:
        source = self.source(node, x)
        if source is None or source.axis is None:
            self.refuse(node, "its input must be a tensor with a time axis")
        if op != "identity" and (source.axis != 2 or x.meta["examples"][0].ndim != 3):
            self.refuse(node, f"it takes (batch, channels, time) with time last, got time in dim {source.axis} of "
                        f"shape {tuple(x.meta['examples'][0].shape)}")
        if any(isinstance(a, Ref) and self.nodes[a.index].timed for a in args):
            self.refuse(node, "its weights depend on the input")
        axis = self._axis(node)
        return self.add(Node(node.name, kind, self.label(node), op=op, target=target,
                             args=(Ref(self.index_of[x]), *args), kwargs=kwargs or {}, axis=axis, timed=True,
                             geometry=geometry, examples=node.meta["examples"]))

    def _constant(self, node: fx.Node, name: str, value: Any) -> Any:
        if isinstance(value, (fx.Node, Ref)) or (isinstance(value, (tuple, list))
                                                  and any(isinstance(v, (fx.Node, Ref)) for v in value)):
            self.refuse(node, f"its {name} is computed in forward (from the input's length?); it must be a constant")
        return _one(value)

    def conv_pads(self, node: fx.Node, padding: Any, kernel: int, dilation: int) -> tuple[int, int]:
        if isinstance(padding, str):
            total = (kernel - 1) * dilation
            return (0, 0) if padding == "valid" else (total // 2, total - total // 2)
        padding = self._constant(node, "padding", padding)
        return padding, padding

    def conv(self, node: fx.Node, module: nn.Conv1d) -> int:
        x = node.args[0]
        if len(node.args) != 1 or node.kwargs:
            self.refuse(node, "it is called with more than its input")
        if module.padding_mode != "zeros":
            self.refuse(node, f"padding_mode={module.padding_mode!r} pads with the sequence's own samples; only "
                        "zero padding streams")
        k, d, s = module.kernel_size[0], module.dilation[0], module.stride[0]
        if isinstance(module, DilatedConvNd):
            lengths = self.time_length(*x.meta["examples"]) or (1, 1)
            pads = {module.explicit_padding((n,))[0] for n in lengths}
            if len(pads) != 1:
                self.refuse(node, f"its padding={module.padding!r} depends on the input's length at stride {s}")
            pads = pads.pop()
        else:
            pads = self.conv_pads(node, module.padding, k, d)
        return self.window(node, "conv", Geometry(k, d, s, *pads), x, target=module,
                           kwargs={"groups": module.groups})

    def conv_function(self, node: fx.Node) -> int:
        bound = _bind(node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                      {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        weight = bound["weight"].meta["examples"][0]
        k, d, s = weight.shape[-1], self._constant(node, "dilation", bound["dilation"]), \
            self._constant(node, "stride", bound["stride"])
        pads = self.conv_pads(node, bound["padding"], k, d)
        bias = None if bound["bias"] is None else Ref(self.index_of[bound["bias"]])
        return self.window(node, "conv", Geometry(k, d, s, *pads), bound["input"],
                           args=(Ref(self.index_of[bound["weight"]]), bias),
                           kwargs={"groups": self._constant(node, "groups", bound["groups"])})

    def conv_transpose(self, node: fx.Node, module: nn.ConvTranspose1d) -> int:
        if len(node.args) != 1 or node.kwargs:
            self.refuse(node, "it is called with more than its input (output_size is not supported)")
        if module.padding_mode != "zeros":
            self.refuse(node, f"padding_mode={module.padding_mode!r} is not supported; only zeros")
        p, extra = module.padding[0], module.output_padding[0]
        geometry = Geometry(module.kernel_size[0], module.dilation[0], module.stride[0], crop_left=p,
                            crop_right=p - extra)
        return self.window(node, "conv_transpose", geometry, node.args[0], target=module,
                           kwargs={"groups": module.groups}, kind=Kind.TRANSPOSED)

    def conv_transpose_function(self, node: fx.Node) -> int:
        bound = _bind(node, ["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"],
                      {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "dilation": 1})
        weight = bound["weight"].meta["examples"][0]
        p = self._constant(node, "padding", bound["padding"])
        extra = self._constant(node, "output_padding", bound["output_padding"])
        geometry = Geometry(weight.shape[-1], self._constant(node, "dilation", bound["dilation"]),
                            self._constant(node, "stride", bound["stride"]), crop_left=p, crop_right=p - extra)
        bias = None if bound["bias"] is None else Ref(self.index_of[bound["bias"]])
        return self.window(node, "conv_transpose", geometry, bound["input"],
                           args=(Ref(self.index_of[bound["weight"]]), bias),
                           kwargs={"groups": self._constant(node, "groups", bound["groups"])}, kind=Kind.TRANSPOSED)

    def pool(self, node: fx.Node, module: nn.Module | None, bound: dict[str, Any], is_max: bool) -> int:
        kernel = self._constant(node, "kernel_size", bound["kernel_size"])
        stride = self._constant(node, "stride", bound.get("stride") or kernel)
        padding = self._constant(node, "padding", bound.get("padding", 0))
        dilation = self._constant(node, "dilation", bound.get("dilation", 1))
        if bound.get("ceil_mode"):
            self.refuse(node, "ceil_mode=True adds a partial window at the end of the sequence")
        if bound.get("return_indices"):
            self.refuse(node, "return_indices=True returns positions in the whole sequence")
        if padding and not is_max and not bound.get("count_include_pad", True):
            self.refuse(node, "count_include_pad=False averages the edges over fewer samples")
        geometry = Geometry(kernel, dilation, stride, padding, padding, pad_value=-float("inf") if is_max else 0.0)
        x = node.args[0] if module is not None else bound["input"]
        return self.window(node, "max_pool" if is_max else "avg_pool", geometry, x,
                           kwargs={"kernel_size": kernel, "dilation": dilation})

    def pad(self, node: fx.Node, x: fx.Node, pad: tuple, value: Any, mode: str) -> int:
        source = self.source(node, x)
        ndim = x.meta["examples"][0].ndim
        pair = ndim - 1 - source.axis
        amounts = [self._constant(node, "pad", amount) for amount in pad]
        left, right = amounts[2 * pair: 2 * pair + 2] if len(amounts) >= 2 * pair + 2 else (0, 0)
        if not left and not right:
            return self.pointwise(node)
        if any(amounts[: 2 * pair]) or any(amounts[2 * pair + 2:]):
            self.refuse(node, "it pads the time axis and other axes in one call; pad them separately")
        if mode != "constant":
            self.refuse(node, f"mode={mode!r} pads with the sequence's own samples; only constant padding streams")
        value = 0.0 if value is None else float(value)
        geometry = Geometry(pad_left=max(left, 0), pad_right=max(right, 0), crop_left=max(-left, 0),
                            crop_right=max(-right, 0), pad_value=value)
        return self.window(node, "identity", geometry, x)

    def getitem(self, node: fx.Node) -> int:
        x, index = node.args
        source = self.source(node, x)
        if source is None or source.axis is None:
            return self.pointwise(node, check=False)  # an item of a tuple (chunk, split)
        ndim = x.meta["examples"][0].ndim
        entries = list(index) if isinstance(index, tuple) else [index]
        consumed = sum(1 for e in entries if e is not None and e is not Ellipsis)
        if Ellipsis in entries:
            at = entries.index(Ellipsis)
            entries[at: at + 1] = [slice(None)] * (ndim - consumed)
        entries += [slice(None)] * (ndim - sum(1 for e in entries if e is not None))
        dim, position = 0, None
        for i, entry in enumerate(entries):
            if entry is None:
                continue
            if dim == source.axis:
                position = i
            dim += 1
        entry = entries[position]
        if entry == slice(None):
            return self.pointwise(node)
        if not isinstance(entry, slice):
            self.refuse(node, "it selects single time steps, positions in the whole sequence")
        lengths = self.time_length(*x.meta["examples"])
        bounds = []
        for which, length in enumerate(lengths):
            def value(v, which=which):
                return v.meta["examples"][which] if isinstance(v, fx.Node) else v
            bounds.append(slice(value(entry.start), value(entry.stop), value(entry.step)).indices(length))
        (start, stop, step), (start2, stop2, step2) = bounds
        if step != step2 or step < 1:
            self.refuse(node, f"its step along time must be a constant >= 1, got {entry.step!r}")
        if start != start2:
            self.refuse(node, "its slice of the time axis starts at a position counted from the end of the sequence")
        if lengths[0] - stop != lengths[1] - stop2 or stop > lengths[0]:
            self.refuse(node, "its slice of the time axis keeps a fixed number of samples: the output would not "
                        "grow with the input")
        drop = lengths[0] - stop
        rest = list(entries)
        rest[position] = slice(None)
        base = x
        if any(e != slice(None) for e in rest):  # channels selected too: a pointwise getitem first
            base = self.fx.create_node("call_function", operator.getitem, (x, tuple(rest)), {})
            base.meta["scope"] = node.meta["scope"]
            base.meta["examples"] = tuple(e[tuple(rest)] for e in x.meta["examples"])
            self.index_of[base] = self.pointwise(base, check=False)
        if step == 1:
            geometry = Geometry(crop_left=start, crop_right=drop)
        else:
            geometry = Geometry(stride=step, pad_left=-start, pad_right=-drop)
        return self.window(node, "identity", geometry, base)

    def check_cat(self, node: fx.Node) -> None:
        bound = _bind(node, ["tensors", "dim"], {"dim": 0})
        tensors, dim = bound["tensors"], bound["dim"]
        for tensor in tensors:
            source = self.source(node, tensor)
            if source is not None and source.axis is not None:
                ndim = tensor.meta["examples"][0].ndim
                if dim % ndim == source.axis:
                    self.refuse(node, "it concatenates along the time axis")

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
        tensors, sizes = [], False
        for arg in node.all_input_nodes:
            source = self.nodes[self.index_of[arg]]
            if source.kind is Kind.SIZE:
                sizes = True
            elif source.timed:
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
        elif check and not sizes and out_lengths[0] >= 3:
            self.check_pointwise(node, out_lengths[0])
        module = self.model.get_submodule(node.target) if node.op == "call_module" else None
        return self.add(Node(node.name, Kind.POINTWISE, self.label(node), op=node.op,
                             target=module if module is not None else node.target, args=self.refs(node.args),
                             kwargs=self.refs(node.kwargs), axis=axis, timed=True, examples=node.meta["examples"]))

    def check_pointwise(self, node: fx.Node, length: int) -> None:
        """Run ``node`` on its inputs cut to ``[1, length - 1)`` along time: it must give that cut of its output."""
        start, stop = 1, length - 1

        def cut(arg: fx.Node) -> Any:
            first, second = arg.meta["examples"]
            if not self.nodes[self.index_of[arg]].timed:
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
        except Exception as error:
            self.refuse(node, f"it fails on a shorter input ({type(error).__name__}: {error}), so it is not "
                        "pointwise in time")
        if not _same(got, _cut(*node.meta["examples"], start, stop)):
            self.refuse(node, "it mixes samples along the time axis: run on part of the sequence, it does not give "
                        "that part of its output")


def normalise(graph: fx.Graph, model: nn.Module, time_inputs: set[str]) -> StreamGraph:
    """The :class:`StreamGraph` of a graph recorded by :func:`atrous.streaming.tracing.trace`.

    Raises:
        ValueError: a node that cannot be streamed; the message names it and says why.
    """
    return _Normaliser(graph, model, time_inputs).run()


def _canonical(geometry: Geometry, transposed: bool) -> Geometry:
    """Cancel padding against cropping of the outputs that only see it."""
    g, s = geometry, geometry.stride
    if transposed:
        shift = max(0, min(g.pad_left, g.crop_left // s))
        return dataclasses.replace(g, pad_left=g.pad_left - shift, crop_left=g.crop_left - shift * s)
    left = max(0, min(g.crop_left, g.pad_left // s))
    right = max(0, min(g.crop_right, g.pad_right // s))
    return dataclasses.replace(g, pad_left=g.pad_left - left * s, crop_left=g.crop_left - left,
                               pad_right=g.pad_right - right * s, crop_right=g.crop_right - right)


def _is_plain(g: Geometry) -> bool:
    return g.kernel_size == 1 and g.stride == 1


def _fold(graph: StreamGraph) -> StreamGraph:
    nodes = graph.nodes
    for index, node in enumerate(nodes):
        if node.kind not in (Kind.WINDOW, Kind.TRANSPOSED):
            continue
        users = graph.users()
        g = node.geometry
        source = node.args[0].index
        producer = nodes[source]
        # a crop of a window's output: the window crops
        if (node.op == "identity" and _is_plain(g) and g.pad_left == g.pad_right == 0
                and producer.kind in (Kind.WINDOW, Kind.TRANSPOSED) and users[source] == [index]
                and source != graph.output):
            producer.geometry = dataclasses.replace(producer.geometry, crop_left=producer.geometry.crop_left
                                                    + g.crop_left, crop_right=producer.geometry.crop_right
                                                    + g.crop_right)
            producer.examples = node.examples
            _redirect(graph, index, source)
            continue
        # a pad before a window: the window pads
        if (producer.kind is Kind.WINDOW and producer.op == "identity" and _is_plain(producer.geometry)
                and producer.geometry.crop_left == producer.geometry.crop_right == 0 and users[source] == [index]
                and source != graph.output and Ref(source) not in node.args[1:]):
            p = producer.geometry
            own_pads = g.pad_left or g.pad_right
            if node.kind is Kind.WINDOW and (not own_pads or g.pad_value == p.pad_value):
                node.geometry = dataclasses.replace(g, pad_left=g.pad_left + p.pad_left, pad_right=g.pad_right
                                                    + p.pad_right, pad_value=p.pad_value if not own_pads
                                                    else g.pad_value)
                node.args = (producer.args[0], *node.args[1:])
            elif node.kind is Kind.TRANSPOSED and p.pad_right == 0 and p.pad_value == 0:
                node.geometry = dataclasses.replace(g, pad_left=g.pad_left + p.pad_left)
                node.args = (producer.args[0], *node.args[1:])
    for node in nodes:
        if node.geometry is not None:
            node.geometry = _canonical(node.geometry, node.kind is Kind.TRANSPOSED)
    for index, node in enumerate(nodes):  # a pad and a crop that cancel
        if node.kind is Kind.WINDOW and node.op == "identity" and node.geometry == Geometry(
                pad_value=node.geometry.pad_value) and index != graph.output:
            _redirect(graph, index, node.args[0].index)
    return graph


def _redirect(graph: StreamGraph, old: int, new: int) -> None:
    """Every read of node ``old`` reads node ``new`` instead."""
    def swap(value: Any) -> Any:
        if isinstance(value, Ref):
            return Ref(new) if value.index == old else value
        if isinstance(value, (tuple, list)):
            return type(value)(swap(v) for v in value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(swap(value.start), swap(value.stop), swap(value.step))
        return value

    for node in graph.nodes:
        node.args, node.kwargs = swap(node.args), swap(node.kwargs)
    if graph.output == old:
        graph.output = new


def _prune(graph: StreamGraph) -> StreamGraph:
    """Drop the nodes the output does not need and number the rest in order."""
    live, stack = set(), [graph.output]
    while stack:
        index = stack.pop()
        if index not in live:
            live.add(index)
            stack.extend(graph.nodes[index].inputs)
    order = sorted(live)
    new_index = {old: new for new, old in enumerate(order)}

    def renumber(value: Any) -> Any:
        if isinstance(value, Ref):
            return Ref(new_index[value.index])
        if isinstance(value, (tuple, list)):
            return type(value)(renumber(v) for v in value)
        if isinstance(value, dict):
            return {k: renumber(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(renumber(value.start), renumber(value.stop), renumber(value.step))
        return value

    nodes = []
    for old in order:
        node = graph.nodes[old]
        node.args, node.kwargs = renumber(node.args), renumber(node.kwargs)
        nodes.append(node)
    inputs = {name: new_index[i] for name, i in graph.inputs.items() if i in new_index}
    return StreamGraph(nodes, new_index[graph.output], inputs, graph.eval_only, graph.timing)
