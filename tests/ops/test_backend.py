"""backend=: a named formulation runs as asked, "auto" times once per key and stays out of the way
when asked to (opt-out, deterministic mode, tracing), and its choices can be recorded and replayed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous import DilatedConv1d, DilatedConv2d, DilatedStack, dilated_conv
from atrous.ops import (
    backend_choices,
    clear_backend_cache,
    deterministic_backend,
    export_choices,
    replay_choices,
    tuning_settings,
)
from atrous.ops.formulations import FORMULATIONS


def test_first_call_times_second_call_hits_the_cache(clock):
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 12, 12), torch.randn(3, 2, 3, 3)
    expected = F.conv2d(x, w, padding=2, dilation=2)
    torch.testing.assert_close(dilated_conv(x, w, dilation=2), expected)
    assert clock.reads > 0
    assert len(backend_choices()) == 1
    reads = clock.reads
    torch.testing.assert_close(dilated_conv(x, w, dilation=2), expected)
    assert clock.reads == reads
    # A new shape, or the same shape with gradients, is a new key.
    dilated_conv(x.requires_grad_(), w, dilation=2).sum().backward()
    assert clock.reads > reads and len(backend_choices()) == 2
    clear_backend_cache()
    assert backend_choices() == {}


def test_undilated_and_tiny_calls_are_never_timed(clock):
    x, w = torch.randn(1, 2, 12, 12), torch.randn(3, 2, 3, 3)
    dilated_conv(x, w, dilation=1)
    with tuning_settings(min_macs=10**9):
        dilated_conv(x, w, dilation=2)
    assert clock.reads == 0 and backend_choices() == {}


def test_timing_leaves_the_callers_graph_alone(clock):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 16, requires_grad=True)
    conv = DilatedConv1d(2, 3, 2, padding="causal", dilation=4)
    y = conv(x)  # times forward + backward on detached copies
    assert conv.weight.grad is None and x.grad is None
    y.sum().backward()
    expected = torch.autograd.grad(F.conv1d(F.pad(x, (4, 0)), conv.weight, conv.bias, dilation=4).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


def test_opt_out_and_deterministic_mode_never_time(clock):
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 12, 12), torch.randn(3, 2, 3, 3)
    native = dilated_conv(x, w, dilation=3, backend="native")
    with deterministic_backend():
        assert torch.equal(dilated_conv(x, w, dilation=3), native)
        assert DilatedStack(2, (2, 2))(x).shape == (1, 2, 12, 12)
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(dilated_conv(x, w, dilation=3), native)
    finally:
        torch.use_deterministic_algorithms(False)
    assert clock.reads == 0 and backend_choices() == {}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")  # shape arithmetic
def test_jit_trace_records_one_native_convolution(clock):
    conv = DilatedConv2d(2, 3, 3, dilation=2)
    x = torch.randn(1, 2, 10, 10)
    traced = torch.jit.trace(conv, x, check_trace=False)  # the check would rerun conv eagerly
    assert clock.reads == 0
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::_convolution" in kinds
    assert not kinds & {"aten::permute", "aten::cat", "aten::pad", "aten::constant_pad_nd"}
    torch.testing.assert_close(traced(x), conv(x))


def test_unknown_backend_is_an_error_naming_the_choices():
    x, w = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'native'.*got 'fast'"):
        dilated_conv(x, w, backend="fast")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        DilatedConv2d(1, 1, 3, backend="cudnn")
    with pytest.raises(ValueError, match=r"backend must be one of"):
        DilatedStack(1, (2,), backend=None)


def test_backend_is_not_part_of_the_state_dict():
    conv = DilatedConv2d(2, 2, 3, dilation=2, backend="space_to_batch")
    plain = nn.Conv2d(2, 2, 3, dilation=2, padding=2)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 2, 9, 9)
    torch.testing.assert_close(conv(x), plain(x))


def test_auto_inside_torch_func_runs_native_untimed(clock):
    # Timing needs tensors of its own that require grad, which torch.func transforms forbid.
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 12, 12, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    grad = torch.func.grad(lambda w: dilated_conv(x, w, dilation=2).square().sum())(w)
    expected = torch.func.grad(lambda w: F.conv2d(x, w, padding=2, dilation=2).square().sum())(w)
    torch.testing.assert_close(grad, expected)
    assert clock.reads == 0 and backend_choices() == {}


def test_recorded_choices_replay_without_timing(clock):
    # What one process chose, another takes as it is: same choices, same results, no timing.
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 12, 12), torch.randn(3, 2, 3, 3)
    first = dilated_conv(x, w, dilation=3)
    record = export_choices()
    assert len(record) == 1 and set(record.values()) <= set(FORMULATIONS)
    clear_backend_cache()  # a fresh process
    reads = clock.reads
    bogus = {"('conv', 'other')": "not_a_formulation", 3: "native"}
    assert replay_choices({**record, **bogus}) == 1  # entries naming nothing known are left out
    torch.testing.assert_close(dilated_conv(x, w, dilation=3), first, rtol=0, atol=0)
    assert clock.reads == reads and export_choices() == record
    with pytest.raises(TypeError, match="choices must be a dict"):
        replay_choices([("key", "native")])
