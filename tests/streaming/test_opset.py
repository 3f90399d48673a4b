"""The op set is defined once (atrous/streaming/opset.py): the C++ step must mirror its codes and
layouts, and each op must compute what a NumPy reference computes, in both of its PyTorch forms."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fused_models import Activations, Pooled, StridedLookahead, norm_glu

from atrous.models import create
from atrous.streaming import opset
from atrous.streaming.opset import (
    ACTIVATIONS, KERNEL_ENUMS, OPS, ActKind, Field, IdSource, Op, OpCode, Operands, Span, op_table,
)
from atrous.streaming.program import lower

SOURCE = Path(opset.__file__).with_name("fused_step.cpp")


def without_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def cpp_enums(text: str) -> dict[str, list[tuple[str, int]]]:
    """``enum Name [: type] { A = 1, B, ... }`` -> ``{"Name": [("A", 1), ("B", 2), ...]}``."""
    enums = {}
    for match in re.finditer(r"\benum\s+(\w+)\s*(?::\s*\w+\s*)?\{([^}]*)\}", without_comments(text)):
        value, members = -1, []
        for item in filter(None, (part.strip() for part in match.group(2).split(","))):
            name, _, explicit = (part.strip() for part in item.partition("="))
            value = int(explicit) if explicit else value + 1
            members.append((name, value))
        enums[match.group(1)] = members
    return enums


def disagreements(text: str) -> list[str]:
    """Where the C++ source differs from KERNEL_ENUMS: names, values, order, missing ``case``s."""
    enums, cases = cpp_enums(text), set(re.findall(r"\bcase\s+(\w+)\s*:", without_comments(text)))
    problems = []
    for kernel_enum in KERNEL_ENUMS:
        name = kernel_enum.members.__name__
        expected = [(kernel_enum.prefix + member.name, member.value) for member in kernel_enum.members]
        if kernel_enum.count:
            expected.append((kernel_enum.count, len(kernel_enum.members)))
        if enums.get(name) != expected:
            problems.append(f"enum {name}: C++ has {enums.get(name)}, Python {expected}")
        if kernel_enum.dispatched:
            names = [kernel_enum.prefix + member.name for member in kernel_enum.members]
            missing = [name for name in names if name not in cases]
            if missing:
                problems.append(f"enum {name}: no case for {missing}")
    return problems


def test_the_cpp_step_mirrors_every_code_and_layout():
    assert disagreements(SOURCE.read_text()) == []


@pytest.mark.parametrize("edit", [
    ("GATE = 3", "GATE = 6"),  # another code
    ("TANH = 2, SIGMOID = 3", "SIGMOID = 2, TANH = 3"),  # two codes swapped
    ("SRC_WIDTH, DST,", "DST, SRC_WIDTH,"),  # table columns swapped
    ("CALL_STEPS, CALL_START", "CALL_START, CALL_STEPS"),  # call slots swapped
    ("STATUS_BAD_GLOBAL_ID = 2", "STATUS_BAD_GLOBAL_ID = 2, STATUS_EXTRA = 3"),  # a code Python lacks
    ("case ADD:", "case 4:"),  # an op without its case
    ("case SILU:", "case 5:"),  # an activation without its case
])
def test_a_cpp_source_that_disagrees_is_caught(edit):
    text = SOURCE.read_text()
    assert edit[0] in text
    assert disagreements(text.replace(edit[0], edit[1], 1))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


NUMPY_ACTIVATIONS = {
    ActKind.IDENTITY: lambda x: x,
    ActKind.RELU: lambda x: np.maximum(x, 0.0),
    ActKind.TANH: np.tanh,
    ActKind.SIGMOID: sigmoid,
    ActKind.GELU: lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    ActKind.SILU: lambda x: x * sigmoid(x),
    ActKind.ELU: lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    ActKind.GELU_TANH: lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    ActKind.SOFTPLUS: lambda x: np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20.0)))),
}


def random_case(code: OpCode, arg: int, generator: torch.Generator):
    """Random operands of an op and what NumPy says it computes (float64)."""
    batch, width, out_width, k = 3, 4, 5, 3

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    src, init, bias = rand(batch, width), rand(batch, out_width), rand(out_width)
    n = {name: tensor.double().numpy() for name, tensor in (("src", src), ("init", init), ("bias", bias))}
    if code in (OpCode.LINEAR, OpCode.CONV, OpCode.TAPS):  # TAPS: its newest tap comes in as src
        past = [rand(batch, width) for _ in range(k - 1)] if code != OpCode.LINEAR else []
        weight = rand((len(past) + 1) * width, out_width)
        lhs = np.concatenate([t.double().numpy() for t in (*past, src)], axis=1)
        expected = lhs @ weight.double().numpy() + n["bias"] + n["init"]
        return Operands(src=src, past=past, init=init, weight=weight, bias=bias), expected
    if code == OpCode.ACT:
        return Operands(src=src, arg=arg), NUMPY_ACTIVATIONS[arg](n["src"])
    if code == OpCode.GATE:
        return Operands(src=src), np.tanh(n["src"][:, :2]) * sigmoid(n["src"][:, 2:])
    if code == OpCode.ADD:
        src = rand(batch, out_width)
        return Operands(src=src, init=init), src.double().numpy() + n["init"]
    if code == OpCode.MUL:
        src = rand(batch, out_width)
        return Operands(src=src, init=init), src.double().numpy() * n["init"]
    if code in (OpCode.PUSH, OpCode.READ):  # the sample written to (read from) a ring, as it is
        return Operands(src=src), n["src"]
    if code in (OpCode.SOFTMAX, OpCode.LOG_SOFTMAX):
        shifted = n["src"] - n["src"].max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return Operands(src=src), log_softmax if code == OpCode.LOG_SOFTMAX else np.exp(log_softmax)
    if code == OpCode.MAX:  # the newest tap comes in as src
        past = [rand(batch, width) for _ in range(k - 1)]
        return Operands(src=src, past=past), np.max([t.double().numpy() for t in (*past, src)], axis=0)
    if code == OpCode.EMBED:
        table = rand(7, out_width)
        ids = [torch.randint(0, 7, (batch,), generator=generator) for _ in IdSource]
        return Operands(weight=table, ids=ids, arg=arg), table.double().numpy()[ids[arg].numpy()]
    if code == OpCode.PRELU:
        slope = rand(width)
        return Operands(src=src, weight=slope), np.where(n["src"] > 0, n["src"], n["src"] * slope.double().numpy())
    if code == OpCode.GLU:
        return Operands(src=src), n["src"][:, :2] * sigmoid(n["src"][:, 2:])
    if code == OpCode.LAYER_NORM:
        scale, shift, eps = rand(width).double().numpy(), rand(width).double().numpy(), 1e-3
        weight = torch.tensor(np.concatenate([scale, shift, [eps]]), dtype=torch.float32)
        centred = n["src"] - n["src"].mean(axis=1, keepdims=True)
        deviation = np.sqrt((centred**2).mean(axis=1, keepdims=True) + eps)
        return Operands(src=src, weight=weight), centred / deviation * scale + shift
    raise AssertionError(f"no NumPy reference for {code!r}: add one with the op")


CASES = [(code, kind) for code in OpCode
         for kind in ({OpCode.ACT: ActKind, OpCode.EMBED: IdSource}.get(code, [0]))]


@pytest.mark.parametrize("code, arg", CASES, ids=[f"{OpCode(c).name}-{a}" for c, a in CASES])
def test_each_op_computes_its_numpy_reference_in_both_forms(code, arg):
    operands, expected = random_case(code, arg, torch.Generator().manual_seed(int(code) * 10 + int(arg)))
    spec = OPS[code]
    got = spec.evaluate(operands)
    np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-5, rtol=1e-5)
    out = torch.full_like(got, math.nan)  # the in-place form must write every element
    spec.writer()(operands, out)
    torch.testing.assert_close(out, got, atol=1e-6, rtol=1e-6)
    operands.blocks = operands.weight.split(operands.src.shape[1]) if code in (
        OpCode.LINEAR, OpCode.CONV, OpCode.TAPS) else ()
    spec.writer()(operands, out.fill_(math.nan))  # blocks given by the executor, as it does
    torch.testing.assert_close(out, got, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", list(ActKind))
def test_each_activation_is_the_module_it_lowers(kind):
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(int(kind)))
    activation = ACTIVATIONS[kind]
    torch.testing.assert_close(activation.function(x), activation.module(**dict(activation.options))(x), atol=0, rtol=0)


def test_every_op_and_activation_has_an_entry():
    assert set(OPS) == set(OpCode) and all(spec.code == code for code, spec in OPS.items())
    assert set(ACTIVATIONS) == set(ActKind) and all(a.kind == kind for kind, a in ACTIVATIONS.items())


@pytest.mark.parametrize("make, message", [
    (lambda: Op(OpCode.LINEAR, Span(0, 2), Span(2, 3)), "LINEAR op needs weight"),
    (lambda: Op(OpCode.CONV, Span(0, 2), Span(2, 3), weight=0), "CONV op needs ring"),
    (lambda: Op(OpCode.ACT, Span(0, 2), Span(2, 2), weight=0), "ACT op takes no weight"),
    (lambda: Op(OpCode.LINEAR, Span(0, 2), Span(2, 3), weight=0, arg=1), "LINEAR op takes no arg"),
    (lambda: Op(OpCode.GATE, Span(0, 5), Span(5, 2)), "GATE op from 5 columns writes 2.5"),
    (lambda: Op(OpCode.GLU, Span(0, 4), Span(4, 3)), "GLU op from 4 columns writes 2"),
    (lambda: Op(OpCode.PRELU, Span(0, 2), Span(2, 2)), "PRELU op needs weight"),
    (lambda: Op(OpCode.ADD, Span(0, 2), Span(2, 3), init=Span(0, 2)), "ADD op from 2 columns writes 2"),
    (lambda: Op(OpCode.LINEAR, Span(0, 2), Span(2, 3), weight=0, init=Span(0, 2)), "init must be as wide as its dst"),
    (lambda: Op(OpCode.ACT, Span(0, 2), Span(2, 2), arg=9), "9 is not a valid ActKind"),
    (lambda: Op(OpCode.EMBED, None, Span(0, 2), weight=0, arg=2), "2 is not a valid IdSource"),
    (lambda: Op(17, Span(0, 2), Span(2, 2)), "17 is not a valid OpCode"),
])
def test_an_op_with_wrong_operands_is_refused(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_the_table_holds_each_op_field_in_its_column():
    """Decoded column by column, the table gives back every op of a program that uses all codes."""
    torch.manual_seed(0)
    model = create("wavenet", classes=8, blocks=1, layers=2, residual_channels=3, gate_channels=4, skip_channels=2,
                   global_classes=2, local_channels=2).eval()
    tcn = create("tcn", in_channels=2, out_channels=2, hidden=3, levels=2, kernel_size=2).eval()  # an ADD
    # PRELU, GLU, LAYER_NORM; PUSH, TAPS, READ, MUL and MAX with clocks and lags
    programs = [lower(model), lower(tcn), lower(norm_glu()), lower(StridedLookahead().eval(), allow_lookahead=True),
                lower(Pooled().eval(), allow_lookahead=True), lower(Activations().eval())]
    assert {op.code for program in programs for op in program.ops} == set(OpCode)
    ops = [op for program in programs for op in program.ops]
    table = op_table(ops)
    assert table.dtype == torch.int64 and tuple(table.shape) == (len(ops), len(Field))

    def span(offset, width):
        return None if width == 0 else Span(int(offset), int(width))

    def index(value):
        return None if value < 0 else int(value)

    for row, op in zip(table.tolist(), ops):
        init = None if row[Field.INIT] < 0 else Span(row[Field.INIT], op.dst.width)
        decoded = Op(row[Field.CODE], span(row[Field.SRC], row[Field.SRC_WIDTH]),
                     span(row[Field.DST], row[Field.DST_WIDTH]), init=init, weight=index(row[Field.WEIGHT]),
                     bias=index(row[Field.BIAS]), ring=index(row[Field.RING]), kernel_size=row[Field.KERNEL_SIZE],
                     dilation=row[Field.DILATION], arg=row[Field.ARG], start=row[Field.START],
                     period=row[Field.PERIOD], lag=row[Field.LAG])
        assert decoded == op
    assert {(op.period, op.lag > 0) for op in ops} >= {(1, False), (2, False), (2, True)}


def test_op_table_of_no_ops_has_the_row_width():
    assert tuple(op_table([]).shape) == (0, len(Field))


def test_an_activation_module_not_in_the_set_is_not_lowered():
    with pytest.raises(ValueError, match=r"cannot fuse layer '1' \(Hardswish\)"):
        lower(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Hardswish()))
