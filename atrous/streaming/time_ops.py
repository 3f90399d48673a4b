"""How the ops that act along time become ``WINDOW`` and ``TRANSPOSED`` nodes.

:class:`TimeOps` is the part of the normaliser (:mod:`atrous.streaming.normalise`) that reads
the geometry of convolutions (modules and ``F.conv1d``), transposed convolutions, pooling,
constant padding (``F.pad``, ``ConstantPad1d``, ``ZeroPad1d``) and slices of the time axis
(``x[:, :, a:-b]``, ``x[..., ::2]``, bounds computed from ``x.size(-1)`` included) from the
module's attributes or the call's arguments, and refuses what depends on the whole sequence:
reflection padding, padding that depends on the input's length, a slice counted from the end,
single time steps, concatenation along time.
"""

from __future__ import annotations

import operator
from typing import Any

from torch import fx, nn

from atrous.ops.layers import DilatedConvNd
from atrous.streaming.graph import Geometry, Kind, Node, Ref
from atrous.streaming.tracing import ExampleFailed


def bind(node: fx.Node, names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call node by name (``names`` in positional order)."""
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _one(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value


class TimeOps:
    """Handlers of the ops along time; the normaliser provides ``nodes``, ``index_of``, ``fx``,
    ``add``, ``refuse``, ``label``, ``source``, ``time_length``, ``_axis`` and ``pointwise``."""

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
        bound = bind(node, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
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
        bound = bind(node, ["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"],
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
        if not any(amounts):
            return self.alias(node, x)
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
            def value(v, which=which, length=length):
                bound = v.meta["examples"][which] if isinstance(v, fx.Node) else v
                # x[..., :len - n] with len < n wraps around, x[..., n:] with len < n clamps: too short an example
                if (isinstance(v, fx.Node) and bound < 0) or (isinstance(bound, int) and not -length <= bound <= length):
                    raise ExampleFailed(self.label(node), ValueError(f"the slice does not fit {length} samples"))
                return bound
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
        bound = bind(node, ["tensors", "dim"], {"dim": 0})
        tensors, dim = bound["tensors"], bound["dim"]
        for tensor in tensors:
            source = self.source(node, tensor)
            if source is not None and source.axis is not None:
                ndim = tensor.meta["examples"][0].ndim
                if dim % ndim == source.axis:
                    self.refuse(node, "it concatenates along the time axis")
