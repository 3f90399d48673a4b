"""ASPP: the branches, training at batch size 1, and the rate warnings of DeepLab v3."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_models import SEGMENTATION, create_tiny

from atrous.models import create
from atrous.models.segmentation import ASPP, RateWarning, check_aspp_rates, paper_rates
from atrous.models.segmentation.blocks import ASPPConv


def test_paper_rates_double_at_output_stride_8():
    assert paper_rates(16) == (6, 12, 18)
    assert paper_rates(8) == (12, 24, 36)


def test_aspp_trains_at_batch_size_1():
    torch.manual_seed(0)
    aspp = ASPP(8, 16, rates=(1, 2, 3)).train()
    head = torch.nn.Conv2d(16, 3, 1)
    optimizer = torch.optim.SGD([*aspp.parameters(), *head.parameters()], lr=0.1)
    x, target = torch.randn(1, 8, 9, 9), torch.randint(0, 3, (1, 9, 9))
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(head(aspp(x)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in aspp.parameters())


def test_deeplab_trains_at_batch_size_1():
    model = create_tiny("deeplabv3_resnet18").train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RateWarning)
        out = model(torch.randn(1, 3, 64, 64))
    F.cross_entropy(out, torch.randint(0, 3, (1, 64, 64))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_branches_and_shapes():
    aspp = ASPP(8, 4, rates=(2, 3), separable=True)
    assert [b.rate for b in aspp.convs if isinstance(b, ASPPConv)] == [2, 3]
    assert len(aspp.convs) == 4  # 1x1, two atrous, image pooling
    assert aspp(torch.randn(2, 8, 7, 5)).shape == (2, 4, 7, 5)
    assert len(ASPP(8, 4, rates=(2, 3), image_pooling=False).convs) == 3


def test_separable_branch_has_depthwise_plus_pointwise_parameters():
    plain = ASPPConv(16, 8, 2)
    separable = ASPPConv(16, 8, 2, separable=True)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(plain) == 16 * 8 * 9 + 2 * 8
    assert count(separable) == 16 * 9 + 2 * 16 + 16 * 8 + 2 * 8


def test_image_pooling_branch_is_constant_over_space():
    aspp = ASPP(4, 3, rates=(1,)).eval()
    pooled = aspp.convs[-1](torch.randn(2, 4, 6, 5))
    assert torch.equal(pooled, pooled[:, :, :1, :1].expand_as(pooled))


def test_rates_off_the_paper_convention_warn():
    with pytest.warns(RateWarning, match=r"\(12, 24, 36\)"):
        ASPP(4, 4, rates=(6, 12, 18), output_stride=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ASPP(4, 4, rates=(12, 24, 36), output_stride=8)
        create("deeplabv3_resnet18", **SEGMENTATION, output_stride=8)
    with pytest.warns(RateWarning):
        create("deeplabv3_resnet18", **SEGMENTATION, output_stride=16, rates=(12, 24, 36))


def test_rate_past_the_feature_map_warns_and_really_degenerates():
    aspp = ASPP(2, 2, rates=(3, 8)).eval()
    with pytest.warns(RateWarning, match=r"\[8\].*6x7"):
        aspp(torch.randn(1, 2, 6, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aspp(torch.randn(1, 2, 9, 9))
    # The warning's claim: at rate >= size only the centre tap ever touches data.
    branch = aspp.convs[2]
    conv = branch[0]
    x = torch.randn(1, 2, 6, 7)
    centre_only = F.conv2d(x, conv.weight[:, :, 1:2, 1:2])
    torch.testing.assert_close(conv(x), centre_only)


def test_check_aspp_rates_partial_axis():
    with pytest.warns(RateWarning, match="along one axis"):
        check_aspp_rates((6,), feature_size=(5, 20))


@pytest.mark.parametrize("kwargs, match", [
    ({"in_channels": 0}, "in_channels"), ({"out_channels": 0}, "out_channels"), ({"rates": (0,)}, "rates"),
    ({"dropout": 1.0}, "dropout"),
])
def test_aspp_rejects_bad_arguments(kwargs, match):
    args = {"in_channels": 4, "out_channels": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        ASPP(**args)
