"""The small context networks (``context_net`` and its ablations): equal parameters, the fields of
Yu & Koltun's arithmetic, and the narrower decoder of version-1 runs."""

import torch
from probes import support_width

import atrous
from atrous.models import create, narrow_decoder_widths


def test_context_networks_share_parameter_count_and_differ_in_field():
    counts = {name: sum(p.numel() for p in create(name, num_classes=11).parameters())
              for name in ("context_net", "plain_net", "hdc_net", "gridding_net")}
    assert len(set(counts.values())) == 1
    # front end: field 23 at stride 8; each 3x3 at rate r adds 2 * r * 8 pixels (Yu & Koltun's arithmetic)
    expected = {"context_net": 23 + 16 * 33, "plain_net": 23 + 16 * 7, "hdc_net": 23 + 16 * 33,
                "gridding_net": 23 + 16 * 33}
    for name, field in expected.items():
        model = create(name, num_classes=3, width_multiplier=1 / 8)
        assert model.receptive_field == field
        assert atrous.receptive_field(model.stem, (3, 64, 64)).size == (15, 15)
        assert atrous.receptive_field(torch.nn.Sequential(model.stem, model.down), (3, 64, 64)).size == (23, 23)


def test_context_net_feature_field_by_gradient_probe():
    model = create("context_net", num_classes=3, width_multiplier=1 / 8).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.zero_() if name.endswith("bias") else p.uniform_(0.01, 1.0)
    features = torch.nn.Sequential(model.stem, model.down, model.context)
    assert support_width(features, torch.rand(1, 3, 640, 640)) == 23 + 16 * 33


def test_narrow_decoder_widths_rebuild_version_1_models():
    # C = 96 * 0.25 = 24: the first release's decoder was C/4 and C/2 wide, today's C/2 and 2C/3.
    for name in ("context_net", "plain_net", "hdc_net", "gridding_net"):
        widths = narrow_decoder_widths(name, {"width_multiplier": 0.25})
        assert widths == {"skip_channels": 6, "fuse_channels": 12}
        model = create(name, num_classes=3, width_multiplier=0.25, **widths)
        assert (model.skip[0].out_channels, model.fuse[0].out_channels) == (6, 12)
        default = create(name, num_classes=3, width_multiplier=0.25)
        assert (default.skip[0].out_channels, default.fuse[0].out_channels) == (12, 16)
    assert narrow_decoder_widths("context_net", {}) == {"skip_channels": 24, "fuse_channels": 48}
    assert narrow_decoder_widths("context_net", {"decoder": False}) == {}
    assert narrow_decoder_widths("deeplabv3_resnet50", {"width_multiplier": 0.25}) == {}
