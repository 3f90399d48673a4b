"""The op set of a lowered streaming program, in one place: op codes, operands, activation codes,
the table and call layout that ``fused_step.cpp`` reads, and what each op computes.

A streaming step of a causal stack is a fixed list of small matrix products and pointwise
functions on one vector per stream: the queue formulation of Paine et al. (2016), "Fast WaveNet
generation algorithm". :func:`~atrous.streaming.program.lower` writes a model down as
:class:`Op` rows over one workspace, and three executors run them: the PyTorch executor
(:mod:`~atrous.streaming.executor`, in place, past inputs in ring buffers), the explicit-state
step (:mod:`~atrous.streaming.functional`, for export) and the C++ step (``fused_step.cpp``).
Both PyTorch executors take each op's meaning from :data:`OPS`. The C++ file mirrors every enum
of :data:`KERNEL_ENUMS` by name and value, with a ``case`` per op and activation;
``tests/streaming/test_opset.py`` reads the file and fails when the two disagree.

Time runs in *ticks*: ``Program.ticks`` per input sample (more than one when a layer upsamples
past the input rate). Every op has a clock: it runs at ticks ``start + n * period`` (``n`` its
run index), so a strided convolution runs once per frame, and each phase of a transposed
convolution once per input sample at its own tick. A ``CONV`` keeps its own past in its ring; a
ring shared by readers at other clocks is filled by a ``PUSH`` at the rate of its signal and
read by ``TAPS`` (a window of taps ending ``lag`` samples before the newest) and ``READ`` (one
sample, ``lag`` back: a delay line aligning two paths; ``MAX``, the maximum over a window of
taps: max pooling).

Adding an op: a member of :class:`OpCode`, its :class:`OpSpec` in :data:`OPS` (operands and
meaning), and its ``case`` in ``fused_step.cpp``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import nn


class OpCode(IntEnum):
    """What an op computes; :data:`OPS` says how."""

    LINEAR = 0
    CONV = 1
    ACT = 2
    GATE = 3
    ADD = 4
    EMBED = 5
    PRELU = 6
    GLU = 7
    LAYER_NORM = 8
    PUSH = 9
    TAPS = 10
    READ = 11
    MUL = 12
    MAX = 13
    SOFTMAX = 14
    LOG_SOFTMAX = 15


class ActKind(IntEnum):
    """The pointwise function of an ``ACT`` op (its ``arg``); :data:`ACTIVATIONS` says which."""

    IDENTITY = 0
    RELU = 1
    TANH = 2
    SIGMOID = 3
    GELU = 4
    SILU = 5
    ELU = 6  # alpha = 1; the lowering gives another alpha (and SELU) a PRELU after it
    GELU_TANH = 7  # GELU(approximate="tanh")
    SOFTPLUS = 8  # beta = 1, threshold = 20


class IdSource(IntEnum):
    """Which ids an ``EMBED`` op looks up (its ``arg``)."""

    INPUT = 0  # the class ids fed at each step
    GLOBAL = 1  # the global condition id of each stream


class Field(IntEnum):
    """The columns of one row of the op table (:func:`op_table`); absent indices are -1."""

    CODE = 0
    SRC = 1  # workspace offset of the input
    SRC_WIDTH = 2
    DST = 3
    DST_WIDTH = 4
    INIT = 5  # workspace offset of a term added to the result
    WEIGHT = 6  # index into Program.weights
    BIAS = 7
    RING = 8  # index into Program.rings
    KERNEL_SIZE = 9
    DILATION = 10
    ARG = 11  # ActKind (ACT) or IdSource (EMBED)
    START = 12  # the op runs at ticks START, START + PERIOD, ... (its run index n counts them)
    PERIOD = 13
    LAG = 14  # TAPS, READ: the newest tap is this many ring samples before the newest pushed


class ConfigSlot(IntEnum):
    """The ``config`` vector of ``atrous_fused_run``, fixed per streamer; pointers as int64."""

    OPS = 0  # the op table (n_ops, len(Field))
    N_OPS = 1
    WEIGHTS = 2  # float* per Program.weights entry
    WEIGHT_ROWS = 3  # rows of each weight (the bound of EMBED ids)
    RINGS = 4  # float* per ring, (context, B, C) each
    WORK = 5  # (B, width) workspace
    BATCH = 6
    WIDTH = 7
    X_CHANNELS = 8
    X_OFFSET = 9
    LOCAL_CHANNELS = 10
    LOCAL_OFFSET = 11
    OUT_CHANNELS = 12
    OUT_OFFSET = 13
    RING_LAYOUT = 14  # int64 (n_rings, 3): (start, period, samples) of each ring: its clock and length
    TICKS = 15  # ticks per input sample: the input is copied in at ticks 0, TICKS, 2 TICKS, ...
    OUT_START = 16  # the output is copied out at ticks OUT_START + j OUT_PERIOD (output sample j)
    OUT_PERIOD = 17


class CallSlot(IntEnum):
    """The ``call`` vector of ``atrous_fused_run``, set per call; pointers as int64, 0 when absent."""

    X = 0  # (B, C_in, L) float input
    IDS = 1  # (B, L) int64 class ids
    LOCAL = 2  # (B, C_local, L)
    GLOBAL_IDS = 3  # (B,) int64
    OUT = 4  # (B, C_out, OUT_LENGTH)
    STEPS = 5  # ticks to run
    START = 6  # the tick of the first of them
    THREADS = 7
    BAD_ID = 8  # written by the kernel: the id it refused
    X_LENGTH = 9  # columns of X, IDS and LOCAL (their row stride)
    X_FIRST = 10  # input sample index of column 0 of X
    OUT_LENGTH = 11  # columns of OUT
    OUT_FIRST = 12  # output sample index of column 0 of OUT


class Status(IntEnum):
    """What ``atrous_fused_run`` returns; nothing has run when it is not ``OK``."""

    OK = 0
    BAD_INPUT_ID = 1
    BAD_GLOBAL_ID = 2


@dataclass(frozen=True)
class KernelEnum:
    """An enum that ``fused_step.cpp`` mirrors as ``enum <name> { <prefix><MEMBER> = value, ... }``.

    ``count`` names an extra last C++ member that counts the others; ``dispatched`` asks for a
    ``case <prefix><MEMBER>:`` of every member.
    """

    members: type[IntEnum]
    prefix: str = ""
    count: str | None = None
    dispatched: bool = False


KERNEL_ENUMS = (
    KernelEnum(OpCode, dispatched=True),
    KernelEnum(ActKind, dispatched=True),
    KernelEnum(IdSource, "IDS_"),
    KernelEnum(Field, count="NFIELDS"),
    KernelEnum(ConfigSlot, "CONFIG_"),
    KernelEnum(CallSlot, "CALL_"),
    KernelEnum(Status, "STATUS_"),
)


@dataclass(frozen=True)
class Activation:
    """A pointwise function: the module it lowers (built with ``options``), its PyTorch form, and
    ``into(src, out)``, the same without a temporary where PyTorch has one (else
    ``out.copy_(function(src))``)."""

    kind: ActKind
    module: type[nn.Module]
    function: Callable[[torch.Tensor], torch.Tensor]
    into: Callable[[torch.Tensor, torch.Tensor], object] | None = None
    options: tuple[tuple[str, object], ...] = ()  # the module's arguments that make it this function


ACTIVATIONS: dict[ActKind, Activation] = {a.kind: a for a in (
    Activation(ActKind.IDENTITY, nn.Identity, lambda x: x),
    Activation(ActKind.RELU, nn.ReLU, torch.relu, lambda src, out: torch.clamp_min(src, 0.0, out=out)),
    Activation(ActKind.TANH, nn.Tanh, torch.tanh, lambda src, out: torch.tanh(src, out=out)),
    Activation(ActKind.SIGMOID, nn.Sigmoid, torch.sigmoid, lambda src, out: torch.sigmoid(src, out=out)),
    Activation(ActKind.GELU, nn.GELU, F.gelu),  # exact (erf) GELU only: the lowering checks approximate
    Activation(ActKind.SILU, nn.SiLU, F.silu),
    Activation(ActKind.ELU, nn.ELU, F.elu),
    Activation(ActKind.GELU_TANH, nn.GELU, lambda x: F.gelu(x, approximate="tanh"), options=(("approximate", "tanh"),)),
    Activation(ActKind.SOFTPLUS, nn.Softplus, F.softplus),
)}


@dataclass(frozen=True)
class Span:
    """Columns ``[offset, offset + width)`` of the workspace."""

    offset: int
    width: int


@dataclass
class Op:
    """One step of a program: ``dst = OPS[code](operands)``. Fields its :class:`OpSpec` does
    not list keep their defaults; a wrong combination raises ``ValueError`` here."""

    code: OpCode
    src: Span | None
    dst: Span
    init: Span | None = None
    weight: int | None = None  # index into Program.weights
    bias: int | None = None
    ring: int | None = None  # index into Program.rings
    kernel_size: int = 1
    dilation: int = 1
    arg: int = 0  # ActKind (ACT) or IdSource (EMBED)
    lag: int = 0  # TAPS, READ
    start: int = 0  # the clock: the op runs at ticks start + n * period
    period: int = 1
    # (start, period, node) of the values written to dst: dst holds sample (tick - start) // period
    # of graph node `node` (None: not a value of the graph); the executors zero samples past a
    # stream's end when it is flushed. Not part of the table.
    value: tuple[int, int, int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.code = OpCode(self.code)
        OPS[self.code].check(self)


# the value of each operand an op does not use (src, a positional field, is then None); every op
# has a clock and may carry its value's clock
_OPERAND_DEFAULTS = {f.name: None if f.default is MISSING else f.default for f in fields(Op)
                     if f.name not in ("code", "dst", "start", "period", "value")}


class Operands:
    """What one op reads, resolved by an executor; tensors are ``(B, width)`` for ``B`` streams.

    Attributes:
        src: the op's input now.
        past: a ``CONV``'s earlier inputs ``x[t - (k - 1) d], ..., x[t - d]``, oldest first.
        init: a term added to the result.
        weight, bias: the op's weights.
        blocks: the rows of ``weight`` that multiply each tap, oldest first (split from
            ``weight`` when not given).
        ids: the id tensors ``(B,)`` of this step, indexed by :class:`IdSource`.
        arg: the op's ``arg``.
    """

    __slots__ = ("src", "past", "init", "weight", "blocks", "bias", "ids", "arg")

    def __init__(self, *, src: torch.Tensor | None = None, past: Sequence[torch.Tensor] = (),
                 init: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                 blocks: Sequence[torch.Tensor] = (), bias: torch.Tensor | None = None,
                 ids: Sequence[torch.Tensor | None] = (), arg: int = 0) -> None:
        self.src, self.past, self.init, self.weight, self.blocks = src, past, init, weight, blocks
        self.bias, self.ids, self.arg = bias, ids, arg


def _affine(x: Operands) -> torch.Tensor:
    lhs = torch.cat([*x.past, x.src], dim=1) if x.past else x.src  # (B, k C_in), oldest tap first
    out = lhs @ x.weight
    if x.bias is not None:
        out = out + x.bias
    return out if x.init is None else out + x.init


def _affine_into(x: Operands, out: torch.Tensor) -> None:
    # tap by tap into `out`: no concatenated input, no temporary
    taps, blocks = [*x.past, x.src], x.blocks or x.weight.split(x.src.shape[1])
    first = x.bias if x.bias is not None else x.init
    if first is None:
        torch.mm(taps[0], blocks[0], out=out)
    else:
        torch.addmm(first, taps[0], blocks[0], out=out)
    if x.bias is not None and x.init is not None:
        out.add_(x.init)
    for tap, block in zip(taps[1:], blocks[1:]):
        out.addmm_(tap, block)


def _activate(x: Operands) -> torch.Tensor:
    return ACTIVATIONS[x.arg].function(x.src)


def _activate_into(x: Operands, out: torch.Tensor) -> None:
    activation = ACTIVATIONS[x.arg]
    if activation.into is None:
        out.copy_(activation.function(x.src))
    else:
        activation.into(x.src, out)


def _gate(x: Operands) -> torch.Tensor:
    filt, gate = x.src.chunk(2, dim=1)
    return torch.tanh(filt) * torch.sigmoid(gate)


def _gate_into(x: Operands, out: torch.Tensor) -> None:
    filt, gate = x.src.chunk(2, dim=1)
    torch.tanh(filt, out=out)
    out.mul_(torch.sigmoid(gate))


def _prelu(x: Operands) -> torch.Tensor:
    return torch.where(x.src > 0, x.src, x.src * x.weight)


def _prelu_into(x: Operands, out: torch.Tensor) -> None:
    torch.mul(x.src, x.weight, out=out)
    torch.where(x.src > 0, x.src, out, out=out)


def _glu(x: Operands) -> torch.Tensor:
    value, gate = x.src.chunk(2, dim=1)
    return value * torch.sigmoid(gate)


def _glu_into(x: Operands, out: torch.Tensor) -> None:
    value, gate = x.src.chunk(2, dim=1)
    torch.sigmoid(gate, out=out)
    out.mul_(value)


def _layer_norm(x: Operands) -> torch.Tensor:
    # weight = [scale (C), shift (C), eps]: written out, so that eps stays a tensor when traced
    channels = x.src.shape[1]
    scale, shift, eps = x.weight[:channels], x.weight[channels : 2 * channels], x.weight[2 * channels]
    centred = x.src - x.src.mean(dim=1, keepdim=True)
    variance = (centred * centred).mean(dim=1, keepdim=True)  # biased, as nn.LayerNorm
    return centred * torch.rsqrt(variance + eps) * scale + shift


@dataclass(frozen=True)
class OpSpec:
    """One op of the set.

    Attributes:
        code: its :class:`OpCode`.
        required, optional: the :class:`Op` fields (besides ``code`` and ``dst``) it must / may set.
        dst_width: the width of ``dst`` from that of ``src``; ``None`` when the weight sets it.
        arg: the enum of ``Op.arg`` (``None``: ``arg`` stays 0).
        evaluate: what it computes, ``Operands -> (B, dst.width)``, in traceable PyTorch.
        into: the same written into a preallocated ``out``; ``None``: ``out.copy_(evaluate(x))``.
    """

    code: OpCode
    required: tuple[str, ...]
    optional: tuple[str, ...]
    evaluate: Callable[[Operands], torch.Tensor]
    into: Callable[[Operands, torch.Tensor], object] | None = None
    dst_width: Callable[[int], float] | None = None
    arg: type[IntEnum] | None = None

    def writer(self) -> Callable[[Operands, torch.Tensor], object]:
        """``(operands, out) -> None``: the op computed into ``out``."""
        if self.into is not None:
            return self.into
        return lambda x, out: out.copy_(self.evaluate(x))

    def check(self, op: Op) -> None:
        """Raise ``ValueError`` when ``op`` misses an operand, sets one it has not, or has bad widths."""
        allowed = (*self.required, *self.optional) + (("arg",) if self.arg else ())
        for name, default in _OPERAND_DEFAULTS.items():
            value = getattr(op, name)
            if name in self.required and default is None and value is None:
                raise ValueError(f"a {self.code.name} op needs {name}, got {op}")
            if name not in allowed and value != default:
                raise ValueError(f"a {self.code.name} op takes no {name}, got {op}")
        if self.arg is not None:
            op.arg = self.arg(op.arg)
        if self.dst_width is not None and op.dst.width != self.dst_width(op.src.width):
            raise ValueError(f"a {self.code.name} op from {op.src.width} columns writes "
                             f"{self.dst_width(op.src.width)}, got {op}")
        if op.init is not None and op.init.width != op.dst.width:  # the table keeps one width for both
            raise ValueError(f"a {self.code.name} op's init must be as wide as its dst, got {op}")
        if op.start < 0 or op.period < 1 or op.lag < 0:
            raise ValueError(f"a {self.code.name} op needs start >= 0, period >= 1 and lag >= 0, got {op}")


OPS: dict[OpCode, OpSpec] = {spec.code: spec for spec in (
    # dst = init + bias + src @ weight
    OpSpec(OpCode.LINEAR, required=("src", "weight"), optional=("init", "bias"), evaluate=_affine,
           into=_affine_into),
    # dst = init + bias + [x[t - (k-1) d], ..., x[t - d], x[t]] @ weight with x[t] = src: the k taps,
    # oldest first, stacked along the rows of weight; the past comes from ring `ring`
    OpSpec(OpCode.CONV, required=("src", "weight", "ring", "kernel_size", "dilation"), optional=("init", "bias"),
           evaluate=_affine, into=_affine_into),
    OpSpec(OpCode.ACT, required=("src",), optional=(), evaluate=_activate, into=_activate_into,
           dst_width=lambda width: width, arg=ActKind),
    # dst = tanh(src[:w]) * sigmoid(src[w:]), w = dst.width
    OpSpec(OpCode.GATE, required=("src",), optional=(), evaluate=_gate, into=_gate_into,
           dst_width=lambda width: width / 2),
    OpSpec(OpCode.ADD, required=("src", "init"), optional=(), evaluate=lambda x: x.src + x.init,
           into=lambda x, out: torch.add(x.src, x.init, out=out), dst_width=lambda width: width),
    # dst = weight[ids], the ids chosen by arg
    OpSpec(OpCode.EMBED, required=("weight",), optional=(), evaluate=lambda x: F.embedding(x.ids[x.arg], x.weight),
           arg=IdSource),
    # dst = max(src, 0) + weight * min(src, 0), a slope per channel (nn.PReLU, nn.LeakyReLU)
    OpSpec(OpCode.PRELU, required=("src", "weight"), optional=(), evaluate=_prelu, into=_prelu_into,
           dst_width=lambda width: width),
    # dst = src[:w] * sigmoid(src[w:]), w = dst.width (nn.GLU over channels)
    OpSpec(OpCode.GLU, required=("src",), optional=(), evaluate=_glu, into=_glu_into,
           dst_width=lambda width: width / 2),
    # dst = (src - mean) / sqrt(var + eps) * scale + shift over the src columns, weight = [scale, shift, eps]
    OpSpec(OpCode.LAYER_NORM, required=("src", "weight"), optional=(), evaluate=_layer_norm,
           dst_width=lambda width: width),
    OpSpec(OpCode.MUL, required=("src", "init"), optional=(), evaluate=lambda x: x.src * x.init,
           into=lambda x, out: torch.mul(x.src, x.init, out=out), dst_width=lambda width: width),
    # ring[n mod len] = src (dst: the same span; nothing else is written)
    OpSpec(OpCode.PUSH, required=("src", "ring"), optional=(), evaluate=lambda x: x.src,
           dst_width=lambda width: width),
    # dst = init + bias + [r[m - lag - (k-1) d], ..., r[m - lag]] @ weight, r the ring, m its newest
    # sample; the taps come in as past (all but the newest) and src (the newest)
    OpSpec(OpCode.TAPS, required=("weight", "ring", "kernel_size", "dilation"), optional=("init", "bias", "lag"),
           evaluate=_affine, into=_affine_into),
    # dst = max(r[m - lag - (k-1) d], ..., r[m - lag]) per column (max pooling), taps as for TAPS
    OpSpec(OpCode.MAX, required=("ring", "kernel_size", "dilation"), optional=("lag",),
           evaluate=lambda x: torch.stack([*x.past, x.src]).amax(dim=0)),
    # dst = softmax (log-softmax) of the src columns of each row: a softmax over channels
    OpSpec(OpCode.SOFTMAX, required=("src",), optional=(), evaluate=lambda x: torch.softmax(x.src, dim=1),
           dst_width=lambda width: width),
    OpSpec(OpCode.LOG_SOFTMAX, required=("src",), optional=(), evaluate=lambda x: torch.log_softmax(x.src, dim=1),
           dst_width=lambda width: width),
    # dst = r[m - lag], one sample of the ring (in as src)
    OpSpec(OpCode.READ, required=("ring",), optional=("lag",), evaluate=lambda x: x.src,
           into=lambda x, out: out.copy_(x.src)),
)}


def op_row(op: Op) -> list[int]:
    """``op`` as one row of the table ``fused_step.cpp`` reads, columns as in :class:`Field`."""
    src, init = op.src or Span(0, 0), op.init or Span(-1, 0)
    values = {
        Field.CODE: op.code, Field.SRC: src.offset, Field.SRC_WIDTH: src.width, Field.DST: op.dst.offset,
        Field.DST_WIDTH: op.dst.width, Field.INIT: init.offset, Field.WEIGHT: op.weight, Field.BIAS: op.bias,
        Field.RING: op.ring, Field.KERNEL_SIZE: op.kernel_size, Field.DILATION: op.dilation, Field.ARG: op.arg,
        Field.START: op.start, Field.PERIOD: op.period, Field.LAG: op.lag,
    }
    return [-1 if values[field] is None else int(values[field]) for field in Field]


def op_table(ops: Sequence[Op]) -> torch.Tensor:
    """The ops as an ``(n_ops, len(Field))`` int64 table for ``fused_step.cpp``."""
    return torch.tensor([op_row(op) for op in ops], dtype=torch.int64).reshape(-1, len(Field))
