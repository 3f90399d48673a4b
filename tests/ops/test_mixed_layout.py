"""The mixed_layout formulation: forward, gradients, second derivatives, autocast and torch.func
transforms against F.pad + F.convNd and the native formulation."""

import pytest
import torch
import torch.nn.functional as F

from atrous import dilated_conv
from atrous.ops.formulations import FORMULATIONS
from atrous.ops.geometry import ConvSpec


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
        mixed = FORMULATIONS["mixed_layout"]
        assert torch.autograd.gradgradcheck(lambda *t: mixed(*t, *([None] * (3 - len(t))), spec), inputs)


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


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # inside torch's vmap
@pytest.mark.parametrize("ndim", [1, 2])
def test_mixed_layout_under_torch_func_forward_ad_and_batched_gradients(ndim):
    # Whatever auto picks must work under the autograd transforms: torch.func.grad, forward-mode
    # AD, vectorised Jacobians and is_grads_batched (vmap over the backward), equal to native's results.
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
    of_x, of_w = (lambda f: lambda t: f(t, w, b)), (lambda f: lambda t: f(x, t, b))
    torch.testing.assert_close(jacobian(of_x(mixed), x, vectorize=True), jacobian(of_x(native), x))
    torch.testing.assert_close(jacobian(of_w(mixed), w, vectorize=True), jacobian(of_w(native), w))
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = mixed(xg, wg, b)
    probes = torch.randn(3, *y.shape, dtype=torch.float64)
    batched = torch.autograd.grad(y, (xg, wg), probes, is_grads_batched=True)
    y_native = native(xg, wg, b)
    for i in range(3):
        for got, want in zip(batched, torch.autograd.grad(y_native, (xg, wg), probes[i], retain_graph=True)):
            torch.testing.assert_close(got[i], want)



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
