"""Every registered segmentation model and backbone, built tiny: forward at two sizes, backward,
no NaN, every parameter reached by the gradient, logits at input size, backbones at 1/OS."""

import math
import warnings

import pytest
import torch
from tiny_models import create_tiny, tiny_kwargs

from atrous.models import create, list_models

SEGMENTATION = list_models("segmentation")
BACKBONES = list_models("backbone")
SIZES = [(64, 64), (49, 71)]


def _build(name, **kwargs):
    torch.manual_seed(0)
    return create_tiny(name, **kwargs)


def _forward_backward(model, size):
    x = torch.randn(2, 3, *size, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    return out


def test_registry_lists_the_required_models():
    required = {
        "deeplabv3_resnet18", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3plus_resnet18",
        "deeplabv3plus_resnet50", "dilation8_vgg16", "deeplabv1_largefov_vgg16", "fcn8s_vgg16", "context_net",
        "plain_net",
    }
    assert required <= set(SEGMENTATION)
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "vgg16_dilation_frontend"} <= set(BACKBONES)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_model_trains(name):
    model = _build(name)
    model.train()
    for size in SIZES:
        model.zero_grad()
        out = _forward_backward(model, size)
        assert out.shape == (2, tiny_kwargs(name)["num_classes"], *size)
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"parameters without a finite gradient: {missing}"


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_trains_and_downsamples_by_its_output_stride(name):
    model = _build(name)
    stride = model.output_stride
    for size in SIZES:
        model.zero_grad()
        out = _forward_backward(model, size)
        assert out.shape[0] == 2 and out.shape[1] == model.out_channels
        assert tuple(out.shape[2:]) == tuple(math.ceil(s / stride) for s in size)
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_builder_rejects_bad_num_classes(name):
    with pytest.raises(ValueError, match="num_classes"):
        create(name, **{**tiny_kwargs(name), "num_classes": 0})


@pytest.mark.parametrize("name", SEGMENTATION + BACKBONES)
def test_builder_rejects_bad_width(name):
    with pytest.raises(ValueError, match="width_multiplier"):
        create(name, **{**tiny_kwargs(name), "width_multiplier": 0})
