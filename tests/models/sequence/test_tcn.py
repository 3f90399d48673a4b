"""TCN (Bai, Kolter & Koltun 2018): block structure, size, and a quick learning check."""

import pytest
import torch
from torch import nn

from atrous.engine.sequence import SequenceTrainConfig, train_sequence
from atrous.models import create
from atrous.models.sequence import TCNConfig


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k + c_out + c_out  # weight (as v), bias, weight-norm gain g


def test_paper_adding_model_has_about_70k_parameters():
    expected = conv_params(2, 24, 8) + conv_params(24, 24, 8) + (2 * 24 + 24)  # block 0 with 1x1 projection
    expected += 7 * 2 * conv_params(24, 24, 8) + (24 + 1)  # blocks 1..7 and the 1x1 head
    model = create("tcn")
    assert sum(p.numel() for p in model.parameters()) == expected
    assert 65_000 < expected < 75_000  # "about 70K" in the paper's Table 1


def test_receptive_field_closed_form():
    # two convs per level, dilation 2**i: 1 + 2 (k - 1) (1 + 2 + ... + 2**(L-1))
    assert create("tcn", kernel_size=8, levels=8).receptive_field == 1 + 2 * 7 * 255
    assert create("tcn", kernel_size=3, levels=2).receptive_field == 1 + 2 * 2 * 3


def test_block_is_relu_of_net_plus_projected_residual():
    torch.manual_seed(0)
    block = create("tcn", in_channels=3, hidden=4, levels=1, kernel_size=2).blocks[0]
    x = torch.randn(2, 3, 10)
    conv1, conv2 = block.net[0], block.net[3]
    h = torch.relu(conv2(torch.relu(conv1(x))))
    torch.testing.assert_close(block(x), torch.relu(h + block.downsample(x)))
    assert hasattr(conv1, "parametrizations") and "weight" in conv1.parametrizations  # weight norm


def test_same_variant_sees_the_future():
    torch.manual_seed(0)
    model = create("tcn", in_channels=2, hidden=8, levels=2, kernel_size=3, causal=False, init_std=0.0)
    x = torch.randn(1, 2, 20)
    changed = x.clone()
    changed[:, :, 13] += 1
    assert not torch.equal(model(x)[:, :, 10], model(changed)[:, :, 10])
    assert model(x).shape == (1, 1, 20)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dropout must be a finite number >= 0 and < 1, got 1.5"):
        TCNConfig(dropout=1.5)
    with pytest.raises(TypeError, match="levels must be an int from 1 to 32, got 2.0"):
        TCNConfig(levels=2.0)
    with pytest.raises(ValueError, match="levels must be an int from 1 to 32, got 0"):
        TCNConfig(levels=0)
    with pytest.raises(ValueError, match=r"in_channels=2"):
        create("tcn")(torch.randn(1, 3, 5))


@pytest.mark.slow
def test_tiny_tcn_learns_the_adding_problem():
    """T = 50; predicting the mean gives MSE 1/6, the trained model must reach < 0.01."""
    torch.manual_seed(0)
    model = create("tcn", in_channels=2, out_channels=1, hidden=16, levels=4, kernel_size=4, init_std=0.0)
    config = SequenceTrainConfig(task="adding", steps=500, batch_size=32, length=50, lr=1e-2, log_every=100,
                                 eval_size=500, seed=0)
    history, _ = train_sequence(model, config)
    assert history[-1]["eval_loss"] < 0.01
    assert isinstance(model.blocks[0].net[2], nn.Dropout)
