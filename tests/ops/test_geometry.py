"""ConvSpec and the padding and autocast helpers the formulations share, against NumPy and F.convNd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atrous.ops.geometry import ConvSpec, autocast_inputs, pad_high, pad_input


@pytest.mark.parametrize(
    ("mode", "numpy_mode"),
    [("constant", "constant"), ("reflect", "reflect"), ("replicate", "edge"), ("circular", "wrap")],
)
def test_pad_input_matches_numpy(mode, numpy_mode):
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 7))
    spec = ConvSpec((1, 1), (1, 1), ((2, 0), (1, 3)), pad_mode=mode)
    expected = np.pad(x, [(0, 0), (0, 0), (2, 0), (1, 3)], mode=numpy_mode)
    np.testing.assert_array_equal(pad_input(torch.from_numpy(x), spec).numpy(), expected)


def test_pad_high_pads_and_crops():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    expected = np.pad(x.numpy()[..., :2], [(0, 0), (0, 0), (0, 1), (0, 0)])
    np.testing.assert_array_equal(pad_high(x, [1, -2]).numpy(), expected)


def test_spec_properties():
    assert ConvSpec((1, 1), (2, 2), ((2, 2), (1, 1))).symmetric
    assert not ConvSpec((1, 1), (2, 2), ((2, 2), (1, 2))).symmetric
    assert not ConvSpec((1,), (2,), ((2, 2),), pad_mode="reflect").symmetric
    assert not ConvSpec((1, 2), (1, 1), ((0, 0), (0, 0))).unit_stride
    spec = ConvSpec((2,), (3,), ((4, 1),), groups=2)
    assert spec.as_2d() == ConvSpec((1, 2), (1, 3), ((0, 0), (4, 1)), groups=2)


def test_as_2d_is_the_same_convolution():
    torch.manual_seed(0)
    x, w = torch.randn(2, 4, 17), torch.randn(6, 2, 3)
    spec = ConvSpec((2,), (3,), ((4, 1),), groups=2)
    flat = spec.as_2d()
    padded = pad_input(x.unsqueeze(2), flat)
    y = F.conv2d(padded, w.unsqueeze(2), None, flat.stride, 0, flat.dilation, flat.groups).squeeze(2)
    torch.testing.assert_close(y, F.conv1d(F.pad(x, (4, 1)), w, None, 2, 0, 3, 2))


def test_autocast_inputs_cast_as_conv_does():
    x, w, b = torch.randn(1, 2, 5), torch.randn(3, 2, 2), torch.randn(3)
    assert all(a is b for a, b in zip(autocast_inputs(x, w, b), (x, w, b)))  # autocast off: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.conv1d(x, w, b).dtype
        assert {t.dtype for t in autocast_inputs(x, w, b)} == {expected} == {torch.bfloat16}
        doubles = autocast_inputs(x.double(), w.double(), None)[:2]
        assert {t.dtype for t in doubles} == {F.conv1d(x.double(), w.double()).dtype} == {torch.float64}
