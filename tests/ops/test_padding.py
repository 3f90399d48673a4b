"""``same_padding`` against its defining formula, on plain ints and on the symbolic sizes a tracer sees.

The reference is the definition: output ``ceil(n / s)``, total padding
``max((ceil(n / s) - 1) s + e - n, 0)`` with ``e = (k - 1) d + 1``, the extra sample on the
high side. The op computes it with ``+``, ``*`` and ``//`` only, so it must also hold
elementwise on a tensor of sizes (what ``torch.jit.trace`` hands it): it never branches on the size.
"""

import itertools
import math

import pytest
import torch

from atrous.ops.padding import conv_output_size, same_padding

SIZES = range(1, 41)
GEOMETRIES = list(itertools.product(range(1, 8), range(1, 6), range(1, 5)))  # kernel, dilation, stride


def ceil_same_padding(size: int, kernel_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """The definition, with ``math.ceil`` and ``max`` (what ``same_padding`` computed before)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def test_equals_the_ceil_definition_on_ints():
    for (kernel, dilation, stride), size in itertools.product(GEOMETRIES, SIZES):
        expected = ceil_same_padding(size, kernel, stride, dilation)
        assert same_padding(size, kernel, stride, dilation) == expected, (size, kernel, stride, dilation)
        low, high = expected
        assert conv_output_size(size, kernel, stride, dilation, low, high) == math.ceil(size / stride)


@pytest.mark.parametrize(("kernel", "dilation", "stride"), GEOMETRIES[::3] + [(1, 1, 4), (2, 1, 3), (2, 2, 4)])
def test_follows_a_tensor_of_sizes_elementwise(kernel, dilation, stride):
    """A tensor stands in for the sizes ``torch.jit.trace`` records: one evaluation must give
    every size's amounts, so nothing in the formula may read a size's value in Python."""
    sizes = torch.tensor(list(SIZES))
    low, high = same_padding(sizes, kernel, stride, dilation)
    expected = torch.tensor([ceil_same_padding(n, kernel, stride, dilation) for n in SIZES])
    assert torch.equal(torch.broadcast_to(torch.as_tensor(low), sizes.shape), expected[:, 0])
    assert torch.equal(torch.broadcast_to(torch.as_tensor(high), sizes.shape), expected[:, 1])


@pytest.mark.parametrize(("kernel", "dilation"), [(1, 1), (2, 3), (3, 2), (4, 5)])
def test_unit_stride_amounts_are_plain_ints_whatever_the_size(kernel, dilation):
    """At stride 1 the padding does not depend on the size; plain ints let the convolution pad
    by itself when they are equal, even while a graph is captured."""
    extent = (kernel - 1) * dilation + 1
    low, high = same_padding(torch.tensor(17), kernel, 1, dilation)
    assert type(low) is int and type(high) is int
    assert (low, high) == ((extent - 1) // 2, extent - 1 - (extent - 1) // 2)


def impulse_response_width(kernel_size: int, rates: list[int]) -> int:
    """The brute force: push a unit impulse through all-ones dilated kernels with NumPy and
    measure the span from the first to the last input offset that reaches one output (holes,
    the gridding effect, lie inside the span and do not shrink the field)."""
    import numpy as np

    response = np.ones(1)
    for rate in rates:
        kernel = np.zeros((kernel_size - 1) * rate + 1)
        kernel[::rate] = 1.0
        response = np.convolve(response, kernel)
    reached = np.flatnonzero(response)
    return int(reached[-1] - reached[0] + 1)


@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("rates", [[], [1], [1, 2, 4, 8], [2, 2, 2], [3, 1, 6], [1, 2, 4, 1, 2, 4], [16]])
def test_stack_receptive_field_is_the_impulse_response_width(kernel, rates):
    from atrous.ops.padding import stack_receptive_field

    assert stack_receptive_field(kernel, rates) == impulse_response_width(kernel, rates)


def test_stack_receptive_field_of_the_tutorial():
    from atrous.ops.padding import stack_receptive_field

    assert [stack_receptive_field(3, [1, 2, 4, 8][:n]) for n in range(1, 5)] == [3, 7, 15, 31]  # Yu & Koltun 2016
