"""How each operation changes the receptive field, and what it costs.

One rule per kind of operation (convolution, pooling, adaptive/global pooling, upsampling,
padding, slicing, merges), applied to the functional calls that every PyTorch module reduces
to (``conv2d``, ``max_pool2d``, ``interpolate``, ``cat``, ``add``...). Anything else is
judged by shapes: same spatial shape -> the field passes through (norms, activations,
dropout, elementwise ops), spatial axes reduced to 1 or flattened away -> the whole input.
The recurrence is Araujo et al. 2019 ("Computing receptive fields of convolutional neural
networks"); see :mod:`atrous.analysis._fields`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from atrous.analysis import _fields as F
from atrous.ops.padding import kernel_extent, resolve_padding

Fields = tuple[F.Axis, ...]


@dataclass
class Ref:
    """A tensor argument as the rules see it: its field (None for weights) and its shape."""

    fields: Fields | None
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class LayerRow:
    """One field-changing or costed operation, in execution order.

    Attributes:
        name: module path (or graph node name for functional calls).
        op: ``conv``, ``conv_transpose``, ``max_pool``, ``avg_pool``, ``adaptive_pool``,
            ``global_pool``, ``upsample``, ``pad``, ``slice``, ``merge`` or ``linear``.
        kernel, stride, dilation, padding: per spatial axis (padding = low side), None when
            the notion does not apply.
        size: cumulative receptive-field size after this operation, per axis.
        jump: cumulative (effective) stride after this operation, per axis.
        params: parameters of the operation.
        macs: multiply-adds for one sample.
        output_shape: ``(C, *spatial)`` of its output.
        note: why the field is what it is (global pooling, misaligned branches...).
    """

    name: str
    op: str
    kernel: tuple[int, ...] | None
    stride: tuple[int | float, ...] | None
    dilation: tuple[int, ...] | None
    padding: tuple[int | float, ...] | None
    size: tuple[int | float, ...]
    jump: tuple[int | float, ...]
    params: int = 0
    macs: int = 0
    output_shape: tuple[int, ...] = ()
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def _ntuple(value: Any, n: int) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value) if len(value) == n else tuple(value) * n
    return (value,) * n


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


@dataclass
class Recorder:
    """Applies the rules, collecting rows and warnings.

    Args:
        ndim: number of spatial axes of the network input.
    """

    ndim: int
    rows: list[LayerRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def is_spatial(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == self.ndim + 2

    def row(self, name: str, op: str, out: Fields, out_shape: tuple, **details: Any) -> None:
        self.rows.append(
            LayerRow(
                name=name,
                op=op,
                kernel=details.get("kernel"),
                stride=details.get("stride"),
                dilation=details.get("dilation"),
                padding=details.get("padding"),
                size=tuple(F.as_number(a.size) for a in out),
                jump=tuple(F.as_number(a.jump) for a in out),
                params=details.get("params", 0),
                macs=details.get("macs", 0),
                output_shape=tuple(out_shape[1:]),
                note=details.get("note", ""),
            )
        )

    def window(self, name: str, op: str, ref: Ref, out_shape: tuple, kernel, stride, dilation, pad_low, **cost):
        """Apply a sliding window of the given per-axis kernel/stride/dilation/low padding."""
        out = tuple(F.window(a, k, s, d, p) for a, k, s, d, p in zip(ref.fields, kernel, stride, dilation, pad_low))
        if op != "pad" and op != "slice" or any(p != 0 for p in pad_low) or any(s != 1 for s in stride):
            self.row(name, op, out, out_shape, kernel=tuple(kernel), stride=tuple(F.as_number(Fraction(s)) for s in stride),
                     dilation=tuple(dilation), padding=tuple(F.as_number(Fraction(p)) for p in pad_low), **cost)
        return out

    def whole(self, name: str, op: str, fields: Fields, out_shape: tuple, note: str, in_shape: tuple = (),
              **cost) -> Fields:
        if self.is_spatial(out_shape) and len(in_shape) == len(out_shape):
            jumps = [a.jump * Fraction(n, m) for a, n, m in zip(fields, in_shape[2:], out_shape[2:])]
        else:
            jumps = [None] * len(fields)
        out = tuple(F.whole(a, j) for a, j in zip(fields, jumps))
        self.row(name, op, out, out_shape, note=note, **cost)
        return out

    def merge(self, name: str, op: str, refs: list[Ref], out_shape: tuple) -> Fields:
        """Union of the fields of several branches (residual sums, concatenation, gating)."""
        merged, misaligned = [], False
        for axes in zip(*(r.fields for r in refs)):
            axis, bad = F.union(list(axes))
            merged.append(axis)
            misaligned |= bad
        note = ""
        if misaligned:
            note = "branches misaligned: their fields differ in stride or neither contains the other"
            self.warnings.append(f"{name}: {note}")
        out = tuple(merged)
        self.row(name, op, out, out_shape, note=note)
        return out

    def dilated_conv(self, name: str, module, ref: Ref, out_shape: tuple) -> Fields:
        """An atrous layer (DilatedConvNd, CausalConv1d) with its own padding spec."""
        pads = module.explicit_padding(ref.shape[2:])
        return self.window(name, "conv", ref, out_shape, module.kernel_size, module.stride, module.dilation,
                           [lo for lo, _ in pads], params=sum(p.numel() for p in module.parameters(recurse=False)),
                           macs=math.prod(out_shape[1:]) * math.prod(module.weight.shape[1:]))

    def function(self, name: str, func: str, args: tuple, kwargs: dict, out_shape: tuple | None) -> Fields | None:
        """Field of the output of a functional call whose tensor arguments are :class:`Ref`."""
        refs = [a for a in _flatten(args) + _flatten(list(kwargs.values())) if isinstance(a, Ref) and a.fields]
        if not refs or out_shape is None:
            return None
        ref, n = refs[0], self.ndim
        func = func.strip("_").removesuffix("_with_indices")
        if func in ("iadd", "isub", "imul"):
            func = func[1:]
        if not self.is_spatial(ref.shape) and func != "linear":
            return ref.fields
        if func in ("conv1d", "conv2d", "conv3d") and self.is_spatial(out_shape):
            weight, bias = args[1], _arg(args, kwargs, 2, "bias", None)
            kernel = weight.shape[2:]
            stride = _ntuple(_arg(args, kwargs, 3, "stride", 1), n)
            dilation = _ntuple(_arg(args, kwargs, 5, "dilation", 1), n)
            padding = _arg(args, kwargs, 4, "padding", 0)
            padding = padding if isinstance(padding, str) else _ntuple(padding, n)
            pads = resolve_padding(padding, ref.shape[2:], kernel, stride, dilation)
            params = weight.numel + (bias.numel if isinstance(bias, Ref) else 0)
            return self.window(name, "conv", ref, out_shape, kernel, stride, dilation, [lo for lo, _ in pads],
                               params=params, macs=math.prod(out_shape[1:]) * math.prod(weight.shape[1:]))
        if func.startswith("conv_transpose") and self.is_spatial(out_shape):
            return self._conv_transpose(name, args, kwargs, ref, out_shape)
        if func in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"):
            kernel = _ntuple(_arg(args, kwargs, 1, "kernel_size", 1), n)
            stride = _arg(args, kwargs, 2, "stride", None)
            stride = kernel if stride in (None, [], ()) else _ntuple(stride, n)
            pad = _ntuple(_arg(args, kwargs, 3, "padding", 0), n)
            dilation = _ntuple(_arg(args, kwargs, 4, "dilation", 1), n) if func.startswith("max") else (1,) * n
            op = func[: -len("2d")]  # max_pool2d -> max_pool
            return self.window(name, op, ref, out_shape, kernel, stride, dilation, pad)
        if func.startswith("adaptive_") and self.is_spatial(out_shape):
            return self._adaptive(name, ref, out_shape)
        if func in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear") and self.is_spatial(out_shape):
            mode = _arg(args, kwargs, 3, "mode", "bilinear" if func == "upsample_bilinear" else "nearest")
            align = _arg(args, kwargs, 4, "align_corners", None) or func == "upsample_bilinear"
            return self._upsample(name, ref, out_shape, mode, bool(align))
        if func == "pixel_shuffle":
            return self._upsample(name, ref, out_shape, "nearest", False)
        if func == "pixel_unshuffle":
            factor = _arg(args, kwargs, 1, "downscale_factor", 1)
            return self.window(name, "avg_pool", ref, out_shape, (factor,) * n, (factor,) * n, (1,) * n, (0,) * n)
        if func == "pad" and self.is_spatial(out_shape):
            flat = list(_arg(args, kwargs, 1, "pad", ()))
            lows = [0] * n
            for i in range(min(len(flat) // 2, n)):
                lows[n - 1 - i] = flat[2 * i]
            return self.window(name, "pad", ref, out_shape, (1,) * n, (1,) * n, (1,) * n, lows)
        if func == "getitem" and self.is_spatial(out_shape):
            sliced = self._slice(name, ref, args[1], out_shape)
            if sliced is not None:
                return sliced
        if func == "linear":
            weight = args[1]
            bias = _arg(args, kwargs, 2, "bias", None)
            params = weight.numel + (bias.numel if isinstance(bias, Ref) else 0)
            macs = math.prod(out_shape[1:]) * weight.shape[1]
            # A dense layer on a spatial map mixes its last axis; on flat features it passes through.
            out = (*ref.fields[:-1], F.whole(ref.fields[-1])) if self.is_spatial(ref.shape) else ref.fields
            self.row(name, "linear", out, out_shape, params=params, macs=macs)
            return out
        return self._by_shape(name, func, refs, out_shape)

    def _by_shape(self, name: str, func: str, refs: list[Ref], out_shape: tuple) -> Fields:
        ref = refs[0]
        if not self.is_spatial(out_shape):
            if len(out_shape) < self.ndim + 2:
                return self.whole(name, "global_pool", ref.fields, out_shape, f"{func} flattens the spatial axes")
            self.warnings.append(f"{name}: {func} changes the number of axes to {len(out_shape)}; field set to the whole input")
            return self.whole(name, func, ref.fields, out_shape, "unknown reshape")
        spatial = out_shape[2:]
        if all(s == 1 for s in spatial) and any(s > 1 for s in ref.shape[2:]):
            return self.whole(name, "global_pool", ref.fields, out_shape, f"{func} reduces the spatial axes",
                              ref.shape)
        matching = [r for r in refs if self.is_spatial(r.shape)]
        if all(tuple(r.shape[2:]) in (tuple(spatial), (1,) * self.ndim) for r in matching):
            if len(matching) == 1:
                return ref.fields
            return self.merge(name, "cat" if func in ("cat", "concat", "concatenate", "stack") else "merge",
                              matching, out_shape)
        self.warnings.append(f"{name}: unknown operation {func!r} changes the spatial shape; field set to the whole input")
        return self.whole(name, func, ref.fields, out_shape, f"unknown spatial operation {func}")

    def _conv_transpose(self, name: str, args: tuple, kwargs: dict, ref: Ref, out_shape: tuple) -> Fields:
        n, weight = self.ndim, args[1]
        kernel = weight.shape[2:]
        stride = _ntuple(_arg(args, kwargs, 3, "stride", 1), n)
        pad = _ntuple(_arg(args, kwargs, 4, "padding", 0), n)
        dilation = _ntuple(_arg(args, kwargs, 7, "dilation", 1), n)
        out = []
        for a, k, s, p, d in zip(ref.fields, kernel, stride, pad, dilation):
            # Output o gathers inputs i with i * s = o + p - j * d, j < k: at most floor((k-1)d/s)+1.
            span = kernel_extent(k, d) - 1
            taps = span // s + 1
            out.append(F.upsample(a, Fraction(s), taps, Fraction(p - span, s) + Fraction(taps - 1, 2)))
        bias = _arg(args, kwargs, 2, "bias", None)
        params = weight.numel + (bias.numel if isinstance(bias, Ref) else 0)
        out = tuple(out)
        self.row(name, "conv_transpose", out, out_shape, kernel=tuple(kernel), stride=tuple(F.as_number(Fraction(1, s)) for s in stride),
                 dilation=tuple(dilation), padding=tuple(pad), params=params, macs=ref.numel * math.prod(weight.shape[1:]))
        return out

    def _adaptive(self, name: str, ref: Ref, out_shape: tuple) -> Fields:
        if all(o == 1 for o in out_shape[2:]):
            return self.whole(name, "global_pool", ref.fields, out_shape, "global pooling: the field is the whole input",
                              ref.shape)
        kernel, stride = [], []
        for size, out in zip(ref.shape[2:], out_shape[2:]):
            # PyTorch's bins are [floor(i * n / m), ceil((i + 1) * n / m)): take the widest.
            widest = max(-((-(i + 1) * size) // out) - (i * size) // out for i in range(out))
            kernel.append(widest)
            stride.append(Fraction(size, out))
        note = "" if all(s.denominator == 1 for s in stride) else "uneven adaptive bins: widest bin shown"
        return self.window(name, "adaptive_pool", ref, out_shape, kernel, stride, (1,) * self.ndim, (0,) * self.ndim,
                           note=note)

    def _upsample(self, name: str, ref: Ref, out_shape: tuple, mode: str, align_corners: bool) -> Fields:
        taps = {"nearest": 1, "nearest-exact": 1, "area": 1, "bicubic": 4}.get(mode, 2)
        out = []
        for a, size, new in zip(ref.fields, ref.shape[2:], out_shape[2:]):
            factor = Fraction(new, size)
            if taps == 1 or align_corners:
                centre = Fraction(0)
            else:  # half-pixel centres: output o samples input (o + 1/2) / factor - 1/2
                centre = Fraction(1, 2) / factor - Fraction(1, 2)
            out.append(F.upsample(a, factor, taps, centre))
        out = tuple(out)
        self.row(name, "upsample", out, out_shape, kernel=(taps,) * self.ndim,
                 stride=tuple(F.as_number(Fraction(s, o)) for s, o in zip(ref.shape[2:], out_shape[2:])), note=mode)
        return out

    def _slice(self, name: str, ref: Ref, index: Any, out_shape: tuple) -> Fields | None:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None or isinstance(i, (int, Ref)) or (i is not Ellipsis and not isinstance(i, slice)) for i in index):
            return None
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (len(ref.shape) - len(index) + 1) + index[at + 1:]
        index = index + (slice(None),) * (len(ref.shape) - len(index))
        starts, steps = [], []
        for size, part in zip(ref.shape[2:], index[2:]):
            start, _, step = part.indices(size)
            starts.append(-start)
            steps.append(step)
        return self.window(name, "slice", ref, out_shape, (1,) * self.ndim, steps, (1,) * self.ndim, starts)


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, dict):
        return _flatten(list(value.values()))
    return [value]
