"""backend="auto": the chooser times once per key, picks the fastest, and stays out of the way
when asked to (opt-out, deterministic mode, tracing)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous import DilatedConv1d, DilatedConv2d, DilatedStack, dilated_conv
from atrous.ops import backend_choices, clear_backend_cache, deterministic_backend
from atrous.ops.backend import CHOOSER, Chooser
from atrous.ops.formulations import FORMULATIONS, ConvSpec, border_plan, candidates


class CountingClock:
    """A clock for the chooser that counts how often it is read."""

    def __init__(self):
        self.reads = 0
        self.now = 0.0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 1e-4
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """A fresh, fast chooser state: empty cache, a counting clock, every call large enough to time."""
    counter = CountingClock()
    monkeypatch.setattr(CHOOSER, "cache", {})
    monkeypatch.setattr(CHOOSER, "timer", counter)
    monkeypatch.setattr(CHOOSER, "min_macs", 0)
    monkeypatch.setattr(CHOOSER, "max_rounds", 2)
    return counter


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


def test_undilated_and_tiny_calls_are_never_timed(clock, monkeypatch):
    x, w = torch.randn(1, 2, 12, 12), torch.randn(3, 2, 3, 3)
    dilated_conv(x, w, dilation=1)
    monkeypatch.setattr(CHOOSER, "min_macs", 10**9)
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


def _fake_run(costs: dict[str, float], clock: CountingClock):
    def run(name):
        clock.now += costs[name]

    return run


@pytest.mark.parametrize(
    ("costs", "winner"),
    [
        ({"native": 3.0, "pad": 2.0, "gemm": 1.0}, "gemm"),
        ({"native": 1.0, "pad": 2.0, "gemm": 3.0}, "native"),
        ({"native": 1.0, "pad": 0.99, "gemm": 3.0}, "native"),  # within the margin: keep the default
    ],
)
def test_chooser_picks_the_lowest_median(costs, winner):
    clock = CountingClock()
    chooser = Chooser(timer=clock, budget_s=100.0, max_rounds=3)
    assert chooser.choose("key", list(costs), _fake_run(costs, clock), torch.device("cpu")) == winner
    assert chooser.cache == {"key": winner}


@pytest.mark.parametrize(("cost", "calls"), [(1.0, 1 + 1), (3.9e-3, 1 + 3), (0.7e-3, 1 + 7), (1e-6, 1 + 10)])
def test_chooser_budget_bounds_the_rounds(cost, calls):
    # A warm-up, then one round when a call is slower than the budget; otherwise at least
    # min_rounds (3) rounds and more until the budget (0.01 s; a call costs cost + 1e-4 on this
    # clock) or max_rounds (10) is reached.
    clock = CountingClock()
    chooser = Chooser(timer=clock, budget_s=0.01, max_rounds=10)
    costs = {"native": cost, "pad": cost}
    chooser.choose("key", list(costs), _fake_run(costs, clock), torch.device("cpu"))
    assert clock.reads == 2 * 2 * calls  # two candidates, two clock reads per call


def test_a_slow_first_call_does_not_decide():
    # The default's first call builds its kernels (10x slower); the warm-up absorbs that.
    clock, calls = CountingClock(), {"native": 0, "pad": 0}

    def run(name):
        calls[name] += 1
        clock.now += {"native": 10.0 if calls[name] == 1 else 1.0, "pad": 1.2}[name]

    chooser = Chooser(timer=clock, budget_s=0.5)
    assert chooser.choose("key", ["native", "pad"], run, torch.device("cpu")) == "native"


def test_chooser_skips_a_candidate_that_fails():
    def run(name):
        if name == "gemm":
            raise RuntimeError("not implemented for this dtype")

    chooser = Chooser(timer=CountingClock(), max_rounds=1)
    assert chooser.choose("key", ["native", "gemm"], run, torch.device("cpu")) == "native"


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


def test_stack_times_fused_against_layers_and_restores_the_rng(clock, monkeypatch):
    torch.manual_seed(0)
    stack = DilatedStack(2, (3, 3, 3), activation=lambda: nn.Dropout(0.5))  # draws random numbers
    x = torch.randn(1, 2, 11, 11)
    torch.manual_seed(1)
    first = stack(x)  # times both ways, then runs the winner
    state = torch.get_rng_state()
    assert "stack" in {key[0] for key in backend_choices()}
    reads = clock.reads
    torch.manual_seed(1)
    torch.testing.assert_close(stack(x), first, rtol=0, atol=0)  # cached: no timing, same draws
    assert clock.reads == reads and torch.equal(torch.get_rng_state(), state)
    assert {v for k, v in backend_choices().items() if k[0] == "stack"} <= {"space_to_batch", "layers"}
    # A fixed backend fuses as before, without timing.
    monkeypatch.setattr(stack, "backend", "native")
    assert stack(torch.randn(1, 2, 13, 13)).shape == (1, 2, 13, 13)
    assert clock.reads == reads


def test_cpu_candidates():
    # Same padding at a rate past the map: border_split joins; a channels-last input skips that layout.
    x, w = torch.zeros(1, 2, 8, 8), torch.zeros(2, 2, 3, 3)
    spec = ConvSpec((1, 1), (8, 8), ((8, 8), (8, 8)))
    assert candidates(x, w, spec) == ["native", "channels_last", "border_split"]
    assert candidates(x.to(memory_format=torch.channels_last), w, spec) == ["native", "border_split"]
    spec_1d = ConvSpec((1,), (4,), ((4, 0),))  # causal, k = 2: too little padding for border_split
    assert candidates(torch.zeros(1, 2, 64), torch.zeros(2, 2, 2), spec_1d) == ["native", "channels_last", "fold"]
    # With a gradient wanted, the per-direction layouts join (for a channels-last input too: its
    # weight gradient then runs on a contiguous copy).
    assert candidates(x, w, spec, training=True) == ["native", "channels_last", "mixed_layout", "border_split"]
    x_last = x.to(memory_format=torch.channels_last)
    assert candidates(x_last, w, spec, training=True) == ["native", "mixed_layout", "border_split"]


def _conv_by_hand(x, w, b, dilation, stride, pads, groups):
    """F.pad, then F.convNd with no padding: independent of atrous's formulations."""
    padded = F.pad(x, [amount for lo, hi in reversed(pads) for amount in (lo, hi)])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.ndim - 2]
    return conv(padded, w, b, stride, 0, dilation, groups)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize(("stride", "groups", "bias"), [(1, 1, True), (2, 2, False), (3, 1, True)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mixed_layout_matches_the_convolution_both_ways(ndim, stride, groups, bias, channels_last, symmetric):
    # Forward, both gradients and the second derivative against F.pad + F.convNd; stride 3 leaves
    # samples at the end that no output reads, whose gradient must be zero. Output and input
    # gradient keep the input's layout. Symmetric padding runs inside the convolutions.
    torch.manual_seed(ndim * 10 + stride)
    sizes = {1: (15,), 2: (9, 8), 3: (6, 5, 7)}[ndim]
    x = torch.randn(2, 4, *sizes, dtype=torch.float64)
    if channels_last and ndim > 1:
        x = x.contiguous(memory_format={2: torch.channels_last, 3: torch.channels_last_3d}[ndim])
    x.requires_grad_(True)
    w = torch.randn(6, 4 // groups, *([3] * ndim), dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if bias else None
    pads = ((2, 2),) * ndim if symmetric else ((2, 1),) + ((1, 2),) * (ndim - 1)
    spec = ConvSpec((stride,) * ndim, (2,) * ndim, pads, groups)
    inputs = (x, w) if b is None else (x, w, b)
    y = FORMULATIONS["mixed_layout"](x, w, b, spec)
    expected = _conv_by_hand(x, w, b, spec.dilation, spec.stride, pads, groups)
    torch.testing.assert_close(y, expected)
    assert y.is_contiguous(memory_format=x_layout(x))
    probe = torch.randn_like(expected)
    got = torch.autograd.grad(y, inputs, probe)
    for g, e in zip(got, torch.autograd.grad(expected, inputs, probe)):
        torch.testing.assert_close(g, e)
    assert got[0].is_contiguous(memory_format=x_layout(x))
    if stride == 3 and not channels_last:
        assert torch.autograd.gradgradcheck(lambda *t: FORMULATIONS["mixed_layout"](*t, *([None] * (3 - len(t))), spec), inputs)


def x_layout(x):
    if x.ndim == 4 and not x.is_contiguous():
        return torch.channels_last
    if x.ndim == 5 and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def test_mixed_layout_under_autocast_matches_native():
    # Under bfloat16 autocast both run the same bfloat16 convolutions, so they agree to bf16 rounding.
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    results = []
    for backend in ("native", "mixed_layout"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = dilated_conv(x, w, dilation=3, backend=backend)
        results.append((y, *torch.autograd.grad(y.float().square().sum(), (x, w))))
    assert results[1][0].dtype == torch.bfloat16
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("size", "rate"), [(16, 16), (16, 40), (5, 5)])
def test_border_split_turns_a_rate_past_the_map_into_a_1x1_conv(size, rate):
    spec = ConvSpec((1, 1), (rate, rate), ((rate, rate), (rate, rate)))
    plan, fraction = border_plan((size, size), (3, 3), spec)
    assert plan == [[(0, size, 1, 2)]] * 2  # one run per axis, the centre tap only
    assert fraction == pytest.approx(1 / 9)


@pytest.mark.parametrize(
    ("size", "kernel", "rate", "pads"), [(64, 3, 36, (36, 36)), (600, 8, 128, (896, 0)), (9, 4, 2, (3, 3))]
)
def test_border_runs_cover_every_output_and_every_real_tap(size, kernel, rate, pads):
    spec = ConvSpec((1,), (rate,), (pads,))
    (runs,), _ = border_plan((size,), (kernel,), spec)
    out = size + sum(pads) - (kernel - 1) * rate
    assert runs[0][0] == 0 and runs[-1][1] == out
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    for start, stop, first, last in runs:
        for i in range(start, stop):
            real = [j for j in range(kernel) if 0 <= i + rate * j - pads[0] < size]
            assert all(first <= j < last for j in real)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch's vmap
@pytest.mark.parametrize("ndim", [1, 2])
def test_mixed_layout_under_torch_func_forward_ad_and_batched_gradients(ndim):
    # Whatever auto picks must work under the autograd transforms: torch.func.grad, forward-mode AD, vectorised Jacobians and is_grads_batched (vmap over the backward), equal
    # to native's results.
    torch.manual_seed(ndim)
    sizes = (11,) if ndim == 1 else (6, 5)
    x = torch.randn(2, 4, *sizes, dtype=torch.float64)
    w = torch.randn(6, 2, *([3] * ndim), dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)

    def conv(backend):
        return lambda x, w, b: dilated_conv(x, w, b, dilation=2, stride=2, padding="same", groups=2, backend=backend)

    mixed, native = conv("mixed_layout"), conv("native")
    grads = torch.func.grad(lambda *t: mixed(*t).square().sum(), argnums=(0, 1, 2))(x, w, b)
    expected = torch.func.grad(lambda *t: native(*t).square().sum(), argnums=(0, 1, 2))(x, w, b)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    tangents = (torch.randn_like(x), torch.randn_like(w), torch.randn_like(b))
    torch.testing.assert_close(torch.func.jvp(mixed, (x, w, b), tangents), torch.func.jvp(native, (x, w, b), tangents))
    bias_only = (lambda b: mixed(x, w, b), lambda b: native(x, w, b))  # the tangent of a bias alone fills the output
    torch.testing.assert_close(*(torch.func.jvp(f, (b,), (tangents[2],)) for f in bias_only))
    jacobian = torch.autograd.functional.jacobian
    torch.testing.assert_close(jacobian(lambda t: mixed(t, w, b), x, vectorize=True), jacobian(lambda t: native(t, w, b), x))
    torch.testing.assert_close(jacobian(lambda t: mixed(x, t, b), w, vectorize=True), jacobian(lambda t: native(x, t, b), w))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = mixed(xg, wg, b)
    probes = torch.randn(3, *y.shape, dtype=torch.float64)
    batched = torch.autograd.grad(y, (xg, wg), probes, is_grads_batched=True)
    y_native = native(xg, wg, b)
    for i in range(3):
        for got, want in zip(batched, torch.autograd.grad(y_native, (xg, wg), probes[i], retain_graph=True)):
            torch.testing.assert_close(got[i], want)


def test_auto_inside_torch_func_runs_native_untimed(clock):
    # Timing needs tensors of its own that require grad, which torch.func transforms forbid.
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 12, 12, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    grad = torch.func.grad(lambda w: dilated_conv(x, w, dilation=2).square().sum())(w)
    expected = torch.func.grad(lambda w: F.conv2d(x, w, padding=2, dilation=2).square().sum())(w)
    torch.testing.assert_close(grad, expected)
    assert clock.reads == 0 and backend_choices() == {}


def test_mixed_layout_called_directly_under_autocast():
    # The formulation casts its inputs itself, so its backward runs in the forward's dtype.
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    spec = ConvSpec((1, 1), (2, 2), ((2, 2), (2, 2)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FORMULATIONS["mixed_layout"](x, w, None, spec)
        expected = FORMULATIONS["native"](x, w, None, spec)
    assert y.dtype == torch.bfloat16
    gx, gw = torch.autograd.grad(y.float().sum(), (x, w))
    ex, ew = torch.autograd.grad(expected.float().sum(), (x, w))
    torch.testing.assert_close(gx, ex, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, ew, rtol=2e-2, atol=2e-2)
