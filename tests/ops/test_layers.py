"""Drop-in layers: state_dict compatibility with nn.Conv*, keyword-only geometry, padding, receptive field."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous import CausalConv1d, DilatedConv1d, DilatedConv2d, DilatedConv3d
from atrous.ops import DilatedConvNd


@pytest.mark.parametrize(
    ("cls", "plain", "sizes"),
    [(DilatedConv1d, nn.Conv1d, (17,)), (DilatedConv2d, nn.Conv2d, (9, 11)), (DilatedConv3d, nn.Conv3d, (5, 6, 7))],
)
def test_state_dict_round_trip_with_plain_conv(cls, plain, sizes):
    torch.manual_seed(0)
    ours = cls(4, 6, 3, dilation=2, groups=2)
    theirs = plain(4, 6, 3, dilation=2, groups=2, padding=2)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, plain)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, 4, *sizes)
    # Odd kernel at stride 1: "same" equals symmetric padding = dilation.
    torch.testing.assert_close(ours(x), theirs(x))
    ours2 = cls(4, 6, 3, dilation=2, groups=2)
    ours2.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours2(x), theirs(x))


def test_same_with_stride_and_even_kernel_pads_high_side():
    torch.manual_seed(0)
    conv = DilatedConv2d(2, 3, 4, stride=2, dilation=3)
    x = torch.randn(1, 2, 13, 10)
    # out = ceil(n/2); total = (out-1)*2 + (4-1)*3 + 1 - n: 13 -> 9 = 4 + 5, 10 -> 8 = 4 + 4.
    expected = F.conv2d(F.pad(x, (4, 4, 4, 5)), conv.weight, conv.bias, stride=2, dilation=3)
    assert conv.explicit_padding((13, 10)) == ((4, 5), (4, 4))
    torch.testing.assert_close(conv(x), expected)


def test_causal_conv_pads_left_only_and_reports_context():
    torch.manual_seed(0)
    conv = CausalConv1d(2, 3, kernel_size=3, dilation=4)
    x = torch.randn(2, 2, 20)
    expected = F.conv1d(F.pad(x, (8, 0)), conv.weight, conv.bias, dilation=4)
    torch.testing.assert_close(conv(x), expected)
    assert conv.context == 8
    assert conv.receptive_field == (9,)


@pytest.mark.parametrize(("kernel", "dilation", "field"), [(3, 1, 3), (3, 2, 5), (3, 4, 9), (2, 512, 513), (7, 4, 25)])
def test_receptive_field_property(kernel, dilation, field):
    # A single layer sees (k - 1) * d + 1 samples; check it against the support of a gradient.
    conv = DilatedConv1d(1, 1, kernel, dilation=dilation, padding="valid", bias=False)
    nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, field + 10, requires_grad=True)
    conv(x)[0, 0, 0].backward()
    touched = torch.nonzero(x.grad[0, 0]).flatten()
    assert len(touched) == kernel
    assert int(touched[-1] - touched[0]) + 1 == field == conv.receptive_field[0]


def test_repr_shows_padding_spec():
    assert "padding=same" in repr(DilatedConv2d(1, 1, 3, dilation=2))
    assert "padding=causal" in repr(CausalConv1d(1, 1, 2))


@pytest.mark.parametrize(
    ("cls", "plain"),
    [(DilatedConv1d, nn.Conv1d), (DilatedConv2d, nn.Conv2d), (DilatedConv3d, nn.Conv3d), (CausalConv1d, nn.Conv1d)],
)
def test_a_fourth_positional_argument_is_refused(cls, plain):
    # nn.ConvNd's 4th argument is the stride; CausalConv1d's used to be the dilation: neither is
    # positional here, so the two can never be mixed up.
    with pytest.raises(TypeError, match="positional argument"):
        cls(1, 1, 3, 2)
    conv = cls(1, 1, 3, dilation=2)
    assert isinstance(conv, plain) and isinstance(conv, DilatedConvNd) and conv.dilation == (2,) * conv.spatial_dims


@pytest.mark.parametrize(
    ("cls", "plain"), [(DilatedConv1d, nn.Conv1d), (DilatedConv2d, nn.Conv2d), (DilatedConv3d, nn.Conv3d)]
)
def test_each_layer_is_a_class_statement_a_grep_finds(cls, plain):
    assert inspect.getsource(cls).startswith(f"class {cls.__name__}(DilatedConvNd, nn.{plain.__name__}):")
    assert cls.__module__ == "atrous.ops.layers" and cls.__mro__[1:3] == (DilatedConvNd, plain)
    assert cls.__init__ is DilatedConvNd.__init__ and cls.__doc__.startswith(f"{cls.spatial_dims}D dilated")
