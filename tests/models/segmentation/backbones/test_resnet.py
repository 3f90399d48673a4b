"""Dilated ResNets: output stride, receptive field kept at 427 (ResNet-50), torchvision layout,
multi-grid, and ``make_dilated`` agreeing with the natively dilated build."""

import math

import pytest
import torch
from tiny_models import create_tiny
from torch import nn

import atrous
from atrous.models import create
from atrous.models.segmentation import make_dilated


def _main_path_field(model):
    """Closed form ``1 + sum (k - 1) * d * jump`` over the stem and each block's main-path 3x3s."""
    layers = [(7, 1, 2), (3, 1, 2)]  # conv1 7x7/2, maxpool 3x3/2: (kernel, dilation, stride)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            for conv in (block.conv1, block.conv2, getattr(block, "conv3", None)):
                if conv is not None:
                    layers.append((conv.kernel_size[0], conv.dilation[0], conv.stride[0]))
    size, jump = 1, 1
    for kernel, dilation, stride in layers:
        size += (kernel - 1) * dilation * jump
        jump *= stride
    return size, jump


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet50_field_is_427_at_every_output_stride(output_stride):
    model = create_tiny("resnet50", output_stride=output_stride)
    # Closed form: stem 11 at jump 4, then 3, 4, 6, 3 blocks add 2 * jump each (He et al. layout).
    assert _main_path_field(model) == (427, output_stride)
    field = atrous.receptive_field(model, (3, 224, 224))
    assert field.size == (427, 427)
    assert field.stride == (output_stride, output_stride)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_changes_only_the_map_size(name, output_stride):
    base = create_tiny(name, output_stride=32)
    model = create_tiny(name, output_stride=output_stride)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, model.out_channels, math.ceil(64 / output_stride), math.ceil(96 / output_stride))
    # Every block's field stays that of the OS 32 net: the first 3x3 after a removed stride keeps
    # the old dilation (dilating it too would change the field, e.g. 427 -> 459 at OS 16).
    assert _main_path_field(model)[0] == _main_path_field(base)[0]


def test_first_block_of_dilated_stage_keeps_previous_dilation():
    model = create_tiny("resnet50", output_stride=8)
    assert [b.conv2.dilation[0] for b in model.layer3] == [1] + [2] * 5
    assert [b.conv2.dilation[0] for b in model.layer4] == [2, 4, 4]
    assert all(b.conv2.stride == (1, 1) for b in model.layer4)
    basic = create_tiny("resnet18", output_stride=16)
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in basic.layer4] == [(1, 2), (2, 2)]


def test_multi_grid_multiplies_the_last_stage_rate():
    # DeepLab v3: unit rates (1, 2, 4) at output stride 16 give block4 rates 2 * (1, 2, 4).
    model = create_tiny("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in model.layer4] == [2, 4, 8]
    model = create_tiny("resnet101", output_stride=8, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in model.layer4] == [4, 8, 16]


def test_torchvision_layout_and_parameter_counts():
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in fc (2048 * 1000 + 1000);
    # resnet18 has 11,689,512 with 513,000 in fc; resnet101 44,549,160.
    expected = {"resnet18": 11_689_512 - 513_000, "resnet34": 21_797_672 - 513_000,
                "resnet50": 25_557_032 - 2_049_000, "resnet101": 44_549_160 - 2_049_000}
    for name, count in expected.items():
        with torch.device("meta"):
            model = create(name)
        assert sum(p.numel() for p in model.parameters()) == count, name
        stages = (64, 128, 256, 512) if name in ("resnet18", "resnet34") else (256, 512, 1024, 2048)
        assert model.stage_channels == stages and model.out_channels == stages[-1], name
    keys = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight",
            "layer3.22.bn2.num_batches_tracked"} <= keys


def test_make_dilated_matches_native_dilation():
    torch.manual_seed(0)
    for name in ("resnet18", "resnet50"):
        for output_stride in (16, 8):
            native = create_tiny(name, output_stride=output_stride).eval()
            converted = create_tiny(name, output_stride=32).eval()
            converted.load_state_dict(native.state_dict())
            assert make_dilated(converted, output_stride) is converted
            x = torch.randn(1, 3, 40, 56)
            torch.testing.assert_close(converted(x), native(x))


def test_make_dilated_on_a_plain_cnn_keeps_field_and_lowers_stride():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
    )
    before = atrous.receptive_field(net, (3, 64, 64))
    make_dilated(net, 2)
    after = atrous.receptive_field(net, (3, 64, 64))
    assert after.size == before.size and after.stride == (2, 2)
    assert (net[4].stride, net[4].dilation, net[6].dilation) == ((1, 1), (1, 1), (2, 2))
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 4, 32, 32)


def test_make_dilated_keeps_training_mode_and_statistics():
    model = create_tiny("resnet18").train()
    stats = model.bn1.running_mean.clone()
    make_dilated(model, 8)
    assert model.training and model.layer4[0].training
    torch.testing.assert_close(model.bn1.running_mean, stats)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (12, ValueError), (7.0, TypeError), (True, TypeError)])
def test_make_dilated_rejects_bad_output_stride(bad, error):
    with pytest.raises(error, match="output_stride"):
        make_dilated(nn.Conv2d(1, 1, 3), bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"output_stride": 4}, "output_stride"), ({"multi_grid": ()}, "multi_grid"), ({"multi_grid": (0,)}, "multi_grid"),
    ({"in_channels": 0}, "in_channels"),
])
def test_resnet_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_tiny("resnet18", **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"output_stride": 8.0}, "output_stride"), ({"multi_grid": (1, 2.0)}, "multi_grid")])
def test_resnet_refuses_arguments_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        create_tiny("resnet18", **kwargs)
