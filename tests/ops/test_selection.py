"""Which formulations backend="auto" times for a call, and that it picks among them only."""

import torch

from atrous import dilated_conv
from atrous.ops import backend_choices
from atrous.ops.geometry import ConvSpec
from atrous.ops.selection import candidates


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



def test_auto_picks_one_of_the_candidates_per_direction(clock):
    # The cached choice of each key is a candidate for that call; with a gradient wanted the
    # key differs and the training candidates are timed.
    x, w = torch.randn(1, 2, 8, 8), torch.randn(2, 2, 3, 3)
    dilated_conv(x, w, dilation=5)
    dilated_conv(x, w.requires_grad_(), dilation=5).sum().backward()
    choices = backend_choices()
    assert sorted(key[5] for key in choices) == [(False, False, False), (False, True, False)]  # which need grads
    for key, name in choices.items():
        assert key[4] == ConvSpec((1, 1), (5, 5), ((5, 5), (5, 5)))
        assert name in candidates(x, w, key[4], training=any(key[5]))
