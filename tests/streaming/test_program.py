"""Lowering (atrous/streaming/program.py) must write down the model: its program, run over whole
sequences by a NumPy interpreter written here (no ring buffers, no executor of the library),
equals the offline forward; and the rewrites it promises (dense groups, folded batch norm, one
skip product) are there."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from fused_models import causal_stacks
from test_opset import NUMPY_ACTIVATIONS as ACTIVATIONS  # one NumPy reference per activation
from test_opset import sigmoid
from torch import nn

from atrous.models import create
from atrous.ops.layers import CausalConv1d
from atrous.streaming.opset import IdSource, OpCode
from atrous.streaming.program import Program, lower


def delayed(x: np.ndarray, shift: int) -> np.ndarray:
    """``x[..., t - shift]``, zeros before the start (the causal padding)."""
    if shift == 0:
        return x
    out = np.zeros_like(x)
    out[..., shift:] = x[..., :-shift]
    return out


def interpret(program: Program, x: torch.Tensor, *, global_ids: torch.Tensor | None = None,
              local: torch.Tensor | None = None) -> np.ndarray:
    """Every op over the whole sequence at once, in float64: ``(B, C_out, T)``."""
    batch, length = x.shape[0], x.shape[-1]
    work = np.zeros((batch, program.width, length))
    weights = [w.double().numpy() for w in program.weights]
    if program.input is not None:
        work[:, program.input.offset : program.input.offset + program.input.width] = x.double().numpy()
    if program.local is not None:
        work[:, program.local.offset : program.local.offset + program.local.width] = local.double().numpy()

    def read(span):
        return work[:, span.offset : span.offset + span.width]

    for op in program.ops:
        if op.code in (OpCode.LINEAR, OpCode.CONV):
            src, weight = read(op.src), weights[op.weight]
            # tap j of k (oldest first) multiplies x[t - (k - 1 - j) d]
            out = sum(np.einsum("bct,cn->bnt", delayed(src, (op.kernel_size - 1 - j) * op.dilation),
                                weight[j * op.src.width : (j + 1) * op.src.width]) for j in range(op.kernel_size))
            if op.bias is not None:
                out = out + weights[op.bias][None, :, None]
            if op.init is not None:
                out = out + read(op.init)
        elif op.code == OpCode.ACT:
            out = ACTIVATIONS[op.arg](read(op.src))
        elif op.code == OpCode.GATE:
            pre = read(op.src)
            out = np.tanh(pre[:, : op.dst.width]) * sigmoid(pre[:, op.dst.width :])
        elif op.code == OpCode.ADD:
            out = read(op.src) + read(op.init)
        elif op.code == OpCode.MUL:
            out = read(op.src) * read(op.init)
        elif op.code == OpCode.PRELU:
            pre = read(op.src)
            out = np.where(pre > 0, pre, pre * weights[op.weight][None, :, None])
        elif op.code == OpCode.GLU:
            pre = read(op.src)
            out = pre[:, : op.dst.width] * sigmoid(pre[:, op.dst.width :])
        elif op.code == OpCode.LAYER_NORM:  # over channels, axis 1 of (B, C, T)
            pre, channels = read(op.src), op.src.width
            scale, shift, eps = np.split(weights[op.weight], [channels, 2 * channels])
            centred = pre - pre.mean(axis=1, keepdims=True)
            out = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + eps) * scale[:, None] + shift[:, None]
        elif op.code == OpCode.EMBED:
            table = weights[op.weight]
            if op.arg == IdSource.INPUT:
                out = table[x.numpy()].transpose(0, 2, 1)  # (B, T) ids -> (B, N, T)
            else:
                out = np.repeat(table[global_ids.numpy()][:, :, None], length, axis=2)
        else:  # PUSH, TAPS, READ run on clocks: test_fused_families checks them against the offline forward
            raise AssertionError(f"the interpreter does not know {op.code!r}: add it with the op")
        work[:, op.dst.offset : op.dst.offset + op.dst.width] = out
    return read(program.output)


def assert_lowered_like_offline(model: nn.Module, x: torch.Tensor, *, global_condition: torch.Tensor | None = None,
                                local_condition: torch.Tensor | None = None) -> Program:
    program = lower(model)
    conditions = {name: value for name, value in (("global_condition", global_condition),
                                                  ("local_condition", local_condition)) if value is not None}
    with torch.no_grad():
        expected = model(x, **conditions).double().numpy()
    got = interpret(program, x, global_ids=global_condition, local=local_condition)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    return program


@settings(max_examples=25, deadline=None)
@given(model=causal_stacks(), seed=st.integers(0, 2**16))
def test_random_stacks_lower_to_their_offline_forward(model, seed):
    x = torch.randn(2, model[-1].in_channels, 30, generator=torch.Generator().manual_seed(seed))
    assert_lowered_like_offline(model, x)


def test_wavenet_with_conditioning_lowers_to_its_offline_forward():
    torch.manual_seed(0)
    model = create("wavenet", classes=16, blocks=2, layers=3, residual_channels=4, gate_channels=6, skip_channels=5,
                   global_classes=3, local_channels=2).eval()
    ids, speakers, local = torch.randint(0, 16, (3, 40)), torch.tensor([2, 0, 1]), torch.randn(3, 2, 40)
    program = assert_lowered_like_offline(model, ids, global_condition=speakers, local_condition=local)
    layers = list(model.layers)
    # one ring per dilated conv, in layer order; one product for all 6 skip convolutions
    assert program.rings == [(layer.dilated.dilation[0] * (layer.dilated.kernel_size[0] - 1), 4) for layer in layers]
    gated = [op for op in program.ops if op.code == OpCode.GATE]
    skip = [op for op in program.ops if op.code == OpCode.LINEAR and op.src.width == len(layers) * 3]
    assert len(gated) == len(layers) and len(skip) == 1
    assert skip[0].src.offset == gated[0].dst.offset  # the gates write side by side into its input
    assert program.classes == 16 and program.global_classes == 3 and program.input is None


def test_tcn_with_weight_norm_and_downsampling_lowers_to_its_offline_forward():
    torch.manual_seed(0)
    model = create("tcn", in_channels=3, out_channels=2, hidden=5, levels=3, kernel_size=3, dropout=0.2).eval()
    program = assert_lowered_like_offline(model, torch.randn(2, 3, 50))
    assert [context for context, _ in program.rings] == [2, 2, 4, 4, 8, 8]  # (k - 1) d, two convs a level


def test_grouped_convolutions_become_dense_block_diagonal_products():
    torch.manual_seed(0)
    conv = CausalConv1d(4, 6, 3, dilation=2, groups=2)
    program = assert_lowered_like_offline(nn.Sequential(conv).eval(), torch.randn(2, 4, 20))
    (op,) = program.ops
    matrix = program.weights[op.weight].reshape(3, 4, 6)  # (tap, in, out)
    assert torch.count_nonzero(matrix[:, :2, 3:]) == 0 and torch.count_nonzero(matrix[:, 2:, :3]) == 0
    torch.testing.assert_close(matrix[:, :2, :3], conv.weight[:3].permute(2, 1, 0))


def test_eval_mode_batch_norm_and_dropout_add_no_work_of_their_own():
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(3)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv1d(2, 3, 1), norm, nn.Dropout(0.5), nn.ReLU()).eval()
    program = assert_lowered_like_offline(model, torch.randn(2, 2, 10))
    assert [op.code for op in program.ops] == [OpCode.LINEAR, OpCode.ACT]  # the norm folded into the conv
    alone = nn.Sequential(CausalConv1d(2, 3, 2), nn.ReLU(), norm).eval()  # after an activation: a diagonal
    program = assert_lowered_like_offline(alone, torch.randn(2, 2, 10))
    assert [op.code for op in program.ops] == [OpCode.CONV, OpCode.ACT, OpCode.LINEAR]


def test_residual_sums_fold_into_the_product_that_computes_a_term():
    torch.manual_seed(0)
    model = create("tcn", in_channels=3, out_channels=2, hidden=4, levels=2, kernel_size=2).eval()
    program = assert_lowered_like_offline(model, torch.randn(2, 3, 20))
    # level 0's 1x1 downsample runs before its convs, so the other term is not ready for it; level
    # 1 adds its input to an activation, not a product: an ADD each
    assert [op.code for op in program.ops].count(OpCode.ADD) == 2
    width = program.width
    assert width == len({c for op in program.ops for s in (op.src, op.dst, op.init) if s
                         for c in range(s.offset, s.offset + s.width)})  # no unused columns


def test_the_program_holds_copies_of_the_resolved_weights():
    torch.manual_seed(0)
    model = create("tcn", in_channels=2, out_channels=2, hidden=3, levels=1, kernel_size=2).eval()
    program = lower(model)
    x = torch.randn(1, 2, 12)
    before = interpret(program, x)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    np.testing.assert_array_equal(interpret(program, x), before)


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(CausalConv1d(2, 2, 2), nn.Softmax()), r"'1' \(Softmax\).*implicit dim"),
    (nn.Sequential(CausalConv1d(2, 2, 2), nn.BatchNorm1d(2, track_running_stats=False)),
     r"'1' \(BatchNorm1d\).*running statistics"),
    (nn.Sequential(CausalConv1d(2, 3, 2), nn.Conv1d(2, 2, 1)), r"'1' \(Conv1d\).*expected input.*to have 2 channels"),
    (nn.Sequential(CausalConv1d(2, 2, 2), nn.MaxPool1d(3, 1, padding=1)),
     r"'1' \(MaxPool1d\).*pads with -inf.*Streamer"),
    (nn.Sequential(nn.ReLU()), r"cannot fuse Sequential: the fused step needs the input's channels"),
    (nn.Sequential(CausalConv1d(2, 4, 2), nn.Softsign()), r"layer '1' \(Softsign\): no fused op for Softsign"),
    (nn.Sequential(nn.Conv1d(2, 2, 3, padding=1)), r"'0' \(Conv1d\) needs 1 later sample"),
    (nn.Sequential(CausalConv1d(2, 2, 2)).double(), r"float32 model on the CPU"),
])
@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")  # softmax over the batch, refused
def test_what_cannot_be_lowered_is_named(model, message):
    with pytest.raises(ValueError, match=message):
        lower(model.eval(), allow_lookahead="later sample" not in message)


def test_a_product_of_two_signals_is_one_mul():
    class Masked(nn.Module):  # a mask times a signal, as a separator applies it
        def __init__(self):
            super().__init__()
            self.signal, self.mask = CausalConv1d(2, 3, 2, dilation=2), nn.Conv1d(2, 3, 1)

        def forward(self, x):
            return self.signal(x) * torch.sigmoid(self.mask(x))

    torch.manual_seed(0)
    model, x = Masked().eval(), torch.randn(2, 2, 20)
    program = lower(model)
    assert [op.code for op in program.ops].count(OpCode.MUL) == 1
    with torch.no_grad():
        np.testing.assert_allclose(interpret(program, x), model(x).double().numpy(), atol=1e-5)
