"""WaveNet (van den Oord et al. 2016): structure and receptive field from the paper."""

import pytest
import torch
from tiny_models import create_tiny

from atrous.models import create
from atrous.models.sequence import WaveNetConfig, upsample_condition


def test_default_is_three_blocks_of_rates_1_to_512():
    model = create("wavenet")
    assert model.dilations == [2**i for i in range(10)] * 3
    conv = model.layers[0].dilated
    assert (conv.in_channels, conv.out_channels, conv.kernel_size[0]) == (64, 128, 2)
    assert model.layers[0].skip.out_channels == 64 and model.head[-1].out_channels == 256


@pytest.mark.parametrize("blocks, field", [(1, 1024), (3, 3070)])
def test_receptive_field_matches_the_paper(blocks, field):
    # one block of kernel-2 layers at rates 1..512 adds 1 + 2 + ... + 512 = 1023 samples
    model = create("wavenet", blocks=blocks, residual_channels=2, gate_channels=2, skip_channels=2)
    assert model.receptive_field == field


def test_class_ids_equal_their_one_hot_input():
    torch.manual_seed(0)
    model = create_tiny("wavenet")
    ids = torch.randint(0, 8, (2, 15))
    one_hot = torch.nn.functional.one_hot(ids, 8).float().transpose(1, 2)
    torch.testing.assert_close(model(ids), model(one_hot), atol=1e-6, rtol=0)


def test_gate_is_tanh_times_sigmoid():
    torch.manual_seed(0)
    layer = create_tiny("wavenet").layers[0]
    x = torch.randn(1, 4, 9)
    h = layer.dilated(x)
    z = torch.tanh(h[:, :3]) * torch.sigmoid(h[:, 3:])
    residual, skip = layer(x)
    torch.testing.assert_close(residual, x + layer.residual(z))
    torch.testing.assert_close(skip, layer.skip(z))


def test_global_and_local_conditioning_change_the_output():
    torch.manual_seed(0)
    model = create_tiny("wavenet", global_classes=2, local_channels=3)
    ids, local = torch.randint(0, 8, (2, 12)), torch.randn(2, 3, 12)
    base = model(ids, global_condition=torch.tensor([0, 0]), local_condition=local)
    other_speaker = model(ids, global_condition=torch.tensor([1, 0]), local_condition=local)
    assert not torch.allclose(base[0], other_speaker[0]) and torch.allclose(base[1], other_speaker[1])
    other_local = model(ids, global_condition=torch.tensor([0, 0]), local_condition=local + 1)
    assert not torch.allclose(base, other_local)
    with pytest.raises(ValueError, match="local_condition must have shape"):
        model(ids, global_condition=torch.tensor([0, 0]), local_condition=local[:, :, :5])
    with pytest.raises(ValueError, match="global_condition must be"):
        model(ids, local_condition=local)


def test_upsample_condition_repeats_frames():
    c = torch.arange(6.0).reshape(1, 2, 3)
    assert upsample_condition(c, 2).tolist() == [[[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]]


def test_bad_inputs_are_named():
    model = create_tiny("wavenet")
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 8\)"):
        model(torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match=r"\(B, 8, T\) float"):
        model(torch.randn(1, 5, 4))
    with pytest.raises(ValueError, match="gate_channels must be even"):
        WaveNetConfig(gate_channels=5)
