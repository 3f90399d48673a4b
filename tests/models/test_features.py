"""Named intermediate feature maps of a backbone."""

import pytest
import torch
from tiny_models import create_tiny

from atrous.models._features import FeatureExtractor, run_children


def test_feature_extractor_returns_named_maps():
    backbone = create_tiny("resnet18", output_stride=8)
    extractor = FeatureExtractor(backbone, {"layer1": "low", "layer4": "out"})
    x = torch.randn(1, 3, 64, 64)
    features = extractor(x)
    assert list(features) == ["low", "out"]
    assert features["low"].shape[-2:] == (16, 16) and features["out"].shape[-2:] == (8, 8)
    torch.testing.assert_close(features["out"], backbone(x))
    assert "layer2" not in dict(FeatureExtractor(backbone, {"layer1": "low"}).body.named_children())
    with pytest.raises(ValueError, match="return_layers"):
        FeatureExtractor(backbone, {"layer9": "x"})


def test_run_children_stops_after_the_last_requested_child():
    ran = []
    children = [(name, torch.nn.Identity()) for name in ("a", "b", "c")]
    for name, module in children:
        module.register_forward_hook(lambda m, args, out, name=name: ran.append(name))
    x = torch.randn(2)
    out = run_children(children, x, {"b": "middle"})
    assert list(out) == ["middle"] and out["middle"] is x
    assert ran == ["a", "b"]
