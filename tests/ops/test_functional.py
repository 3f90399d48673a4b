"""dilated_conv against the NumPy reference written from the definition, with every backend."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrous import atrous_conv2d, dilated_conv
from atrous.ops import BACKENDS
from atrous.ops.reference import dilated_conv_reference


@st.composite
def conv_cases(draw):
    ndim = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))  # odd and even
    max_dilation = 16 if ndim == 1 else (6 if ndim == 2 else 3)
    dilation = tuple(draw(st.integers(1, max_dilation)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    modes = ["same", "valid", "int", "tuple"] + (["causal"] if ndim == 1 else [])
    mode = draw(st.sampled_from(modes))
    padding = {"int": draw(st.integers(0, 5)), "tuple": tuple(draw(st.integers(0, 5)) for _ in range(ndim))}.get(
        mode, mode
    )
    lo_pad = [0] * ndim if mode in ("same", "valid", "causal") else [padding] * ndim if mode == "int" else padding
    # Inputs large enough that at least one output exists even without padding.
    sizes = tuple(
        draw(st.integers(max(1, (k - 1) * d + 1 - 2 * p), (k - 1) * d + 1 + (12 if ndim == 1 else 5)))
        for k, d, p in zip(kernel, dilation, lo_pad)
    )
    if mode == "same":
        sizes = tuple(draw(st.integers(1, 12 if ndim < 3 else 6)) for _ in range(ndim))
    batch = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    return ndim, groups, c_in, c_out, kernel, dilation, stride, padding, sizes, batch, bias


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(), st.integers(0, 2**31 - 1))
def test_matches_numpy_reference(case, seed):
    ndim, groups, c_in, c_out, kernel, dilation, stride, padding, sizes, batch, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c_in, *sizes))
    w = rng.standard_normal((c_out, c_in // groups, *kernel))
    b = rng.standard_normal(c_out) if bias else None
    expected = dilated_conv_reference(x, w, b, dilation=dilation, stride=stride, padding=padding, groups=groups)
    for backend in BACKENDS:  # every formulation that applies, and native where one does not
        got = dilated_conv(
            torch.from_numpy(x),
            torch.from_numpy(w),
            None if b is None else torch.from_numpy(b),
            dilation=dilation,
            stride=stride,
            padding=padding,
            groups=groups,
            backend=backend,
        )
        assert got.shape == expected.shape, backend
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10, err_msg=backend)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40), st.integers(1, 5), st.integers(1, 8), st.integers(1, 4), st.integers(1, 3)
)
def test_same_output_size_is_ceil_of_input_over_stride(size, kernel, dilation, stride, ndim):
    x = torch.zeros(1, 1, *([size] * ndim))
    w = torch.zeros(1, 1, *([kernel] * ndim))
    y = dilated_conv(x, w, dilation=dilation, stride=stride, padding="same")
    assert y.shape[2:] == (math.ceil(size / stride),) * ndim


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_same_split_matches_pytorch_convention(kernel, dilation):
    # PyTorch's own padding="same" (stride 1) puts the odd extra sample on the high side.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 9)
    w = torch.randn(4, 3, kernel, kernel)
    expected = F.conv2d(x, w, padding="same", dilation=dilation)
    torch.testing.assert_close(dilated_conv(x, w, dilation=dilation), expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_causal_output_never_sees_the_future(length, kernel, dilation, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, length, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 2, kernel, generator=gen, dtype=torch.float64)
    y = dilated_conv(x, w, dilation=dilation, padding="causal")
    assert y.shape[-1] == length
    t = int(torch.randint(0, length, (1,), generator=gen))
    x2 = x.clone()
    x2[..., t:] += torch.randn(1, 2, length - t, generator=gen, dtype=torch.float64)
    y2 = dilated_conv(x2, w, dilation=dilation, padding="causal")
    torch.testing.assert_close(y2[..., :t], y[..., :t], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("padding", "ndim"), [(p, n) for n in (1, 2, 3) for p in ("same", "valid", "causal", 2) if p != "causal" or n == 1]
)
def test_gradcheck_float64(padding, ndim):
    torch.manual_seed(0)
    sizes = {1: (9,), 2: (6, 7), 3: (5, 4, 5)}[ndim]
    x = torch.randn(1, 2, *sizes, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, *([2] * ndim), dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return dilated_conv(x, w, b, dilation=2, stride=(1,) * (ndim - 1) + (2,), padding=padding, groups=2)

    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "auto"])
@pytest.mark.parametrize(
    ("ndim", "padding", "groups"), [(1, "causal", 1), (1, "same", 2), (2, "same", 1), (2, 3, 2), (3, "same", 1)]
)
def test_gradcheck_float64_every_backend(backend, ndim, padding, groups):
    # Stride 1, so that every formulation applies (gemm: 1D with one group).
    torch.manual_seed(0)
    sizes = {1: (11,), 2: (5, 6), 3: (3, 4, 3)}[ndim]
    x = torch.randn(1, 2, *sizes, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2 // groups, *([3] * (ndim - 1) + [2]), dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return dilated_conv(x, w, b, dilation=(3,) + (2,) * (ndim - 1), padding=padding, groups=groups, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_padding_by_hand(mode):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 10, 12)
    w = torch.randn(3, 2, 3, 3)
    y = dilated_conv(x, w, dilation=2, padding="same", padding_mode=mode)
    expected = F.conv2d(F.pad(x, (2, 2, 2, 2), mode=mode), w, dilation=2)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("rate", [1, 2, 3])
def test_atrous_conv2d_is_tensorflows_definition(padding, rate):
    # TF: filters upsampled by inserting rate-1 zeros, then a plain conv2d in NHWC/HWIO.
    rng = np.random.default_rng(rate)
    value = rng.standard_normal((2, 9, 8, 3))
    filters = rng.standard_normal((3, 2, 3, 4))  # kH, kW, in, out (even width too)
    upsampled = np.zeros(((3 - 1) * rate + 1, (2 - 1) * rate + 1, 3, 4))
    upsampled[::rate, ::rate] = filters
    expected = dilated_conv_reference(
        value.transpose(0, 3, 1, 2), upsampled.transpose(3, 2, 0, 1), padding=padding.lower()
    ).transpose(0, 2, 3, 1)
    got = atrous_conv2d(torch.from_numpy(value), torch.from_numpy(filters), rate, padding)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("layer_type", ["functional", "module"])
def test_autocast_runs_in_the_autocast_dtype_like_nn_conv(layer_type):
    # torch.autocast casts F.conv2d's inputs to bfloat16; a dilated conv must do the same, not
    # refuse float32 weights against a bfloat16 activation.
    from atrous import DilatedConv2d

    torch.manual_seed(0)
    layer = DilatedConv2d(4, 6, 3, dilation=3)
    x = torch.randn(2, 4, 11, 13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # What a previous autocast layer hands on: a bf16 activation, against float32 weights.
        activation = torch.relu(x).bfloat16()
        if layer_type == "module":
            y = layer(activation)
        else:
            y = dilated_conv(activation, layer.weight, layer.bias, dilation=3)
        expected = F.conv2d(activation, layer.weight, layer.bias, padding=3, dilation=3)
    assert y.dtype == expected.dtype == torch.bfloat16
    exact = F.conv2d(torch.relu(x), layer.weight, layer.bias, padding=3, dilation=3)
    torch.testing.assert_close(y.float(), exact, rtol=0.03, atol=0.03)
    if layer_type == "module":
        y.float().sum().backward()
        assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    # float64 is left alone, as autocast leaves it for F.conv2d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dilated_conv(x.double(), layer.weight.double(), dilation=3).dtype == torch.float64


@pytest.mark.parametrize(
    ("x_shape", "kernel", "dilation", "padding", "live_kernel"),
    [
        ((2, 3, 16, 16), (3, 3), 16, "same", (1, 1)),  # context module's rate 16 on a 16x16 map: a 1x1 conv
        ((2, 3, 16, 40), (3, 3), 18, "same", (1, 3)),  # only the short axis loses its outer taps
        ((1, 2, 100), (2,), 128, "causal", (1,)),  # a WaveNet layer whose rate exceeds the input
        ((1, 2, 9, 9, 9), (3, 3, 3), 9, "same", (1, 1, 1)),
    ],
)
def test_taps_that_read_only_padding_are_skipped_exactly(monkeypatch, x_shape, kernel, dilation, padding, live_kernel):
    from atrous.ops import functional

    dispatched = []
    real_run_conv = functional.run_conv

    def recording(x, w, *args):
        dispatched.append(w.shape[2:])
        return real_run_conv(x, w, *args)

    monkeypatch.setattr(functional, "run_conv", recording)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, x_shape[1], *kernel, generator=generator, dtype=torch.float64, requires_grad=True)
    y = dilated_conv(x, weight, dilation=dilation, padding=padding)
    assert dispatched == [live_kernel]
    # Independent: every tap, through PyTorch's own convolution of the zero-padded input.
    total = [dilation * (k - 1) for k in kernel]
    if padding == "causal":
        pad = (total[0], 0)
    else:
        pad = tuple(p for t in reversed(total) for p in (t // 2, t - t // 2))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    expected = conv(F.pad(x, pad), weight, dilation=dilation)
    torch.testing.assert_close(y, expected)
    probe = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad((y * probe).sum(), (x, weight))
    want = torch.autograd.grad((expected * probe).sum(), (x, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_repeated_calls_reuse_the_plan_and_still_refuse_bad_arguments():
    from atrous.ops import functional

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64)
    functional._PLANS.clear()
    first = dilated_conv(x, weight, dilation=2)
    assert len(functional._PLANS) == 1
    x2 = torch.randn(2, 3, 9, 11, generator=generator, dtype=torch.float64)  # same signature, other values
    torch.testing.assert_close(dilated_conv(x2, weight, dilation=2), F.conv2d(x2, weight, padding=2, dilation=2))
    torch.testing.assert_close(first, F.conv2d(x, weight, padding=2, dilation=2))
    assert len(functional._PLANS) == 1
    # arguments equal to the cached ones as values, but not valid, are still refused
    for bad in (True, 2.0):
        with pytest.raises((TypeError, ValueError), match="dilation must be an int"):
            dilated_conv(x, weight, dilation=bad)
    with pytest.raises(TypeError, match="dtype"):
        dilated_conv(x.float(), weight, dilation=2)
