"""Heads: FCNHead and DeepLabHead against torchvision's heads of the same names, the v3+ decoder."""

import pytest
import torch
from torch import nn

from atrous.models.segmentation import ASPP, DeepLabHead, DeepLabV3PlusDecoder, FCNHead


def _eval_with_random_statistics(*models: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for model in models:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                with torch.no_grad():
                    module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
        model.eval()


def test_fcn_head_is_torchvisions(torchvision_models):
    torch.manual_seed(0)
    theirs = torchvision_models.segmentation.fcn.FCNHead(16, 5)
    ours = FCNHead(16, 5)
    _eval_with_random_statistics(theirs, ours)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys and shapes
    x = torch.randn(2, 16, 7, 9)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(x).shape == (2, 5, 7, 9)


def test_deeplab_head_keeps_torchvisions_indices():
    plain = DeepLabHead(8, 3, channels=4, rates=(1, 2))
    assert list(dict(plain.named_children())) == ["0", "4"]
    assert isinstance(plain[0], ASPP) and plain[1].out_channels == 3  # position 1 is the classifier
    extra = DeepLabHead(8, 3, channels=4, rates=(1, 2), extra_conv=True)
    assert list(dict(extra.named_children())) == ["0", "1", "2", "3", "4"]
    assert extra[1].kernel_size == (3, 3) and extra[4].out_channels == 3
    x = torch.randn(2, 8, 6, 5)
    assert plain(x).shape == extra(x).shape == (2, 3, 6, 5)


def test_deeplab_head_with_extra_conv_is_torchvisions(torchvision_models):
    """Same weights, same logits; torchvision's pooling branch has a BatchNorm that atrous folds
    into its conv (exact in eval mode), the one difference in keys."""
    torch.manual_seed(0)
    theirs = torchvision_models.segmentation.deeplabv3.DeepLabHead(16, 3, atrous_rates=(1, 2, 3))
    ours = DeepLabHead(16, 3, rates=(1, 2, 3), extra_conv=True)
    _eval_with_random_statistics(theirs, ours)
    state = dict(theirs.state_dict())
    pooling_bn = [state.pop(f"0.convs.4.2.{key}") for key in ("weight", "bias", "running_mean", "running_var")]
    state.pop("0.convs.4.2.num_batches_tracked")
    gamma, beta, mean, var = pooling_bn
    scale = gamma / torch.sqrt(var + 1e-5)
    state["0.convs.4.conv.weight"] = state.pop("0.convs.4.1.weight") * scale[:, None, None, None]
    state["0.convs.4.conv.bias"] = beta - mean * scale
    ours.load_state_dict(state)
    x = torch.randn(2, 16, 9, 11)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [({"dropout": 1.5}, "dropout"), ({"hidden_channels": 0}, "hidden_channels")])
def test_fcn_head_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FCNHead(16, 5, **kwargs)


def test_decoder_output_is_at_low_level_resolution():
    decoder = DeepLabV3PlusDecoder(6, 8, 3, reduce_channels=4, channels=8)
    out = decoder(torch.randn(2, 6, 16, 12), torch.randn(2, 8, 4, 3))
    assert out.shape == (2, 3, 16, 12)
