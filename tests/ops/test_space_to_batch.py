"""space_to_batch / batch_to_space and the same-rate DilatedStack built on them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from atrous import DilatedStack, batch_to_space, space_to_batch


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.data())
def test_space_to_batch_matches_strided_slicing(ndim, block, data):
    sizes = tuple(data.draw(st.integers(1, 9)) for _ in range(ndim))
    x = torch.randn(2, 3, *sizes)
    y = space_to_batch(x, block)
    padded = np.pad(x.numpy(), [(0, 0), (0, 0)] + [(0, -n % block) for n in sizes])
    # Batch index = offset * N + n, offsets in row-major order (TensorFlow's layout).
    offsets = np.stack(np.meshgrid(*[np.arange(block)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    for i, offset in enumerate(offsets):
        index = (slice(None), slice(None), *(slice(o, None, block) for o in offset))
        np.testing.assert_array_equal(y[i * 2 : (i + 1) * 2].numpy(), padded[index])
    crops = [(0, -n % block) for n in sizes]
    torch.testing.assert_close(batch_to_space(y, block, crops=crops), x, rtol=0, atol=0)


def test_explicit_paddings_and_per_axis_blocks():
    x = torch.randn(1, 2, 5, 7)
    pads = [(1, 0), (2, 3)]
    y = space_to_batch(x, (2, 3), paddings=pads)
    assert y.shape == (6, 2, 3, 4)
    torch.testing.assert_close(batch_to_space(y, (2, 3), crops=pads), x, rtol=0, atol=0)


def _one_by_one(stack: DilatedStack, x: torch.Tensor) -> torch.Tensor:
    """The stack as plain nn.Conv layers with padding = dilation (odd kernel 3)."""
    for conv, act in zip(stack.convs, stack.activations):
        x = act(F.conv2d(x, conv.weight, conv.bias, padding=conv.dilation, dilation=conv.dilation))
    return x


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from([1, 2, 3, 4]), min_size=2, max_size=6),
    st.integers(5, 19),
    st.integers(5, 19),
    st.sampled_from([nn.ReLU, nn.Sigmoid, None]),
)
def test_stack_equals_layers_one_by_one_on_odd_sizes(rates, height, width, activation):
    torch.manual_seed(0)
    stack = DilatedStack(3, rates, activation=activation)
    for conv in stack.convs:
        assert isinstance(conv, nn.Conv2d)
    x = torch.randn(2, 3, height, width)
    torch.testing.assert_close(stack(x), _one_by_one(stack, x), rtol=1e-5, atol=1e-5)


def test_stack_fuses_same_rate_runs():
    stack = DilatedStack(2, [1, 2, 2, 2, 4, 4, 1])
    assert stack.groups_of_layers() == [(0, 1, False), (1, 4, True), (4, 6, True), (6, 7, False)]
    assert stack.receptive_field == 1 + 2 * (1 + 2 + 2 + 2 + 4 + 4 + 1)


def test_rezeroing_is_what_makes_unaligned_sizes_exact():
    # Without re-zeroing, the padding added to reach a multiple of the rate leaks into the
    # border after the first layer; this checks the test above could catch that mistake.
    torch.manual_seed(0)
    stack = DilatedStack(2, [2, 2], activation=nn.Sigmoid)
    x = torch.randn(1, 2, 7, 7)
    y = space_to_batch(x, 2)
    for conv, act in zip(stack.convs, stack.activations):
        y = act(F.conv2d(y, conv.weight, conv.bias, padding=1))
    leaky = batch_to_space(y, 2, crops=[(0, 1), (0, 1)])
    assert not torch.allclose(leaky, _one_by_one(stack, x), atol=1e-4)
    torch.testing.assert_close(stack(x), _one_by_one(stack, x))


@pytest.mark.parametrize("dims", [1, 3])
def test_stack_other_ranks(dims):
    torch.manual_seed(0)
    stack = DilatedStack(2, [3, 3, 1], dims=dims)
    plain = DilatedStack(2, [3, 3, 1], dims=dims, use_space_to_batch=False)
    plain.load_state_dict(stack.state_dict())
    x = torch.randn(2, 2, *([10] * dims))
    torch.testing.assert_close(stack(x), plain(x), rtol=1e-5, atol=1e-5)
