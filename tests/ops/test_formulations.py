"""Every formulation, called directly, against the NumPy reference; border_split's plan of runs."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrous.ops.formulations import FORMULATIONS, applicable, border_plan
from atrous.ops.geometry import ConvSpec
from atrous.ops.reference import dilated_conv_reference

NUMPY_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@st.composite
def geometries(draw):
    """A convolution with any (low, high) padding, stride, groups and padding mode."""
    ndim = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 9 if ndim == 1 else 4)) for _ in range(ndim))
    # Half the cases stride 1 with zero padding, where every formulation applies.
    unit = draw(st.booleans())
    stride = (1,) * ndim if unit else tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    pad_mode = "constant" if unit else draw(st.sampled_from(list(NUMPY_PAD_MODES)))
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    # Reflect padding needs fewer samples than the size; at least one output on each axis.
    sizes = [draw(st.integers(max(2, e // 2), e + (10 if ndim == 1 else 3))) for e in extents]
    limit = [n - 1 if pad_mode == "reflect" else n for n in sizes]
    pads = tuple((draw(st.integers(0, m)), draw(st.integers(0, m))) for m in limit)
    sizes = [max(n, e - lo - hi) for n, e, (lo, hi) in zip(sizes, extents, pads)]
    spec = ConvSpec(stride, dilation, pads, groups, pad_mode)
    return spec, kernel, tuple(sizes), draw(st.booleans())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geometries(), st.integers(0, 2**31 - 1))
def test_every_applicable_formulation_matches_the_numpy_reference(case, seed):
    spec, kernel, sizes, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2 * spec.groups, *sizes))
    w = rng.standard_normal((2 * spec.groups, 2, *kernel))
    b = rng.standard_normal(2 * spec.groups) if bias else None
    padded = np.pad(x, [(0, 0), (0, 0), *spec.pads], mode=NUMPY_PAD_MODES[spec.pad_mode])
    expected = dilated_conv_reference(
        padded, w, b, dilation=spec.dilation, stride=spec.stride, padding="valid", groups=spec.groups
    )
    tensors = [None if t is None else torch.from_numpy(t) for t in (x, w, b)]
    ran = 0
    for name, formulation in FORMULATIONS.items():
        if not applicable(name, spec):
            continue
        got = formulation(*tensors, spec)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10, err_msg=name)
        ran += 1
    assert ran >= 4  # native, pad, channels_last and mixed_layout apply to every convolution


def test_applicable_follows_each_formulations_limits():
    one_d = ConvSpec((1,), (3,), ((3, 3),))
    assert all(applicable(name, one_d) for name in FORMULATIONS)
    strided_2d = ConvSpec((2, 1), (2, 2), ((1, 1), (2, 2)), groups=2, pad_mode="reflect")
    assert [name for name in FORMULATIONS if applicable(name, strided_2d)] == [
        "native", "pad", "channels_last", "mixed_layout"
    ]  # fmt: skip
    grouped_1d = ConvSpec((1,), (3,), ((3, 3),), groups=2)
    assert not applicable("gemm", grouped_1d) and applicable("fold", grouped_1d)


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

