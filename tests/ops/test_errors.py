"""Bad input gets an error that names the argument, the value and what is allowed."""

import pytest
import torch

from atrous import CausalConv1d, DilatedConv2d, DilatedStack, atrous_conv2d, dilated_conv, space_to_batch

X = torch.zeros(1, 4, 8, 8)
W = torch.zeros(2, 4, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"dilation": 0}, ValueError, r"dilation must be an int >= 1 or a sequence of 2 ints >= 1, got 0"),
        ({"dilation": -2}, ValueError, r"dilation must be an int >= 1"),
        ({"dilation": 1.5}, TypeError, r"dilation must be an int >= 1 .*got 1.5"),
        ({"dilation": True}, TypeError, r"dilation must be an int >= 1 .*got True"),
        ({"dilation": (1, True)}, TypeError, r"dilation must be .*got \(1, True\)"),
        ({"dilation": (1, 2, 3)}, ValueError, r"dilation must be .*a sequence of 2 ints >= 1, got \(1, 2, 3\)"),
        ({"stride": 0}, ValueError, r"stride must be an int >= 1"),
        ({"stride": "2"}, TypeError, r"stride must be an int >= 1 .*got '2'"),
        ({"padding": "full"}, ValueError, r"padding must be one of .*'full'"),
        ({"padding": -1}, ValueError, r"padding must be an int >= 0 or a sequence of 2 ints >= 0, got -1"),
        ({"padding": "causal"}, ValueError, r"causal.*1D.*2D"),
        ({"groups": 0}, ValueError, r"groups must be an int >= 1, got 0"),
        ({"groups": 1.0}, TypeError, r"groups must be an int >= 1, got 1.0"),
        ({"groups": 3}, ValueError, r"groups"),
        ({"padding_mode": "mirror"}, ValueError, r"padding_mode"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        dilated_conv(X, W, **kwargs)


def test_valid_input_smaller_than_kernel_extent():
    with pytest.raises(ValueError, match=r"input size 8 .*smaller than the kernel's extent 9"):
        dilated_conv(X, W, dilation=4, padding="valid")


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"x must have 4 dims"):
        dilated_conv(torch.zeros(4, 8, 8), W)
    with pytest.raises(ValueError, match=r"weight must have 3, 4 or 5 dims"):
        dilated_conv(X, torch.zeros(3, 3))


def test_channel_mismatch():
    with pytest.raises(ValueError, match=r"x has 4 channels but weight expects in_channels = 3"):
        dilated_conv(X, torch.zeros(2, 3, 3, 3))


def test_dtype_and_device_mismatch():
    with pytest.raises(TypeError, match=r"dtype"):
        dilated_conv(X.double(), W)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        dilated_conv(X, W, torch.zeros(3))
    meta = torch.zeros(2, 4, 3, 3, device="meta")
    with pytest.raises(ValueError, match=r"one device"):
        dilated_conv(X, meta)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        dilated_conv([[1.0]], W)


def test_module_errors():
    with pytest.raises(ValueError, match=r"causal.*1D"):
        DilatedConv2d(1, 1, 3, padding="causal")
    with pytest.raises(ValueError, match=r"dilation must be an int >= 1 or a sequence of 1 ints >= 1, got 0"):
        CausalConv1d(1, 1, 2, dilation=0)
    with pytest.raises(ValueError, match=r"rates must be a sequence of ints >= 1 such as \(1, 2, 4\), got \[1, 0\]"):
        DilatedStack(2, [1, 0])
    with pytest.raises(TypeError, match=r"rates must be a sequence of ints >= 1"):
        DilatedStack(2, [1, 2.0])
    with pytest.raises(ValueError, match=r"dims must be an int from 1 to 3, got 4"):
        DilatedStack(2, [1], dims=4)
    with pytest.raises(TypeError, match=r"use_space_to_batch must be True or False, got 1"):
        DilatedStack(2, [1], use_space_to_batch=1)
    with pytest.raises(ValueError, match=r"rate must be an int >= 1, got 0"):
        atrous_conv2d(torch.zeros(1, 5, 5, 1), torch.zeros(3, 3, 1, 1), 0)
    with pytest.raises(TypeError, match=r"rate must be an int >= 1, got True"):
        atrous_conv2d(torch.zeros(1, 5, 5, 1), torch.zeros(3, 3, 1, 1), True)
    with pytest.raises(ValueError, match=r"not a multiple of block_size 2"):
        space_to_batch(torch.zeros(1, 1, 5), 2, paddings=[(0, 0)])
    with pytest.raises(ValueError, match=r"paddings\[0\] must be a sequence of 2 ints >= 0, got \(0, -1\)"):
        space_to_batch(torch.zeros(1, 1, 5), 2, paddings=[(0, -1)])
    with pytest.raises(TypeError, match=r"paddings\[0\] must be a sequence of 2 ints >= 0, got \(0, 1.0\)"):
        space_to_batch(torch.zeros(1, 1, 5), 2, paddings=[(0, 1.0)])
    with pytest.raises(TypeError, match=r"x must be a tensor"):
        space_to_batch([[0.0]], 2)
