"""Same-rate runs of a DilatedStack in the space_to_batch domain: equal to the layers one by one,
and timed against them through the same autotune path and settings as dilated_conv."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from atrous import DilatedStack, batch_to_space, space_to_batch
from atrous.ops import backend_choices, deterministic_backend, tuning_settings


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


def test_stack_timing_follows_the_tuning_settings_and_fixed_modes(clock):
    stack = DilatedStack(2, (3, 3), activation=nn.Sigmoid)
    x = torch.randn(1, 2, 11, 11)
    with tuning_settings(min_macs=10**9):
        small = stack(x)
    with deterministic_backend():
        fixed = stack(x)
    assert clock.reads == 0 and backend_choices() == {}
    torch.testing.assert_close(small, _one_by_one(stack, x))
    torch.testing.assert_close(fixed, small, rtol=0, atol=0)  # both fuse without timing


def test_stack_timing_with_gradients_writes_no_grad(clock):
    torch.manual_seed(0)
    stack = DilatedStack(2, (2, 2), activation=nn.Tanh)
    x = torch.randn(1, 2, 9, 9, requires_grad=True)
    y = stack(x)  # times forward + backward of both ways on detached copies
    assert clock.reads > 0 and x.grad is None and all(p.grad is None for p in stack.parameters())
    stack_keys = [key for key in backend_choices() if key[0] == "stack"]
    assert [key[5:7] for key in stack_keys] == [(True, True)]  # gradient wanted, input requires it
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    _one_by_one(stack, x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
