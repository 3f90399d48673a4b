"""FCN-8s (Long et al. 2015): learned upsamplers that start bilinear, and a start from FCN-32s."""

import torch
import torch.nn.functional as F
from tiny_models import BACKBONE, create_tiny

from atrous.models.segmentation import VGG16Trunk
from atrous.models.segmentation.fcn import _upsample2x


def _bilinear_up2(x: torch.Tensor) -> torch.Tensor:
    """2x upsampling by a stride-2 transposed conv with the 4-tap bilinear kernel, channel by channel."""
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    channels = x.shape[1]
    kernel = torch.outer(taps, taps).expand(channels, 1, 4, 4)
    return F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=channels)


def test_fcn_upsampler_starts_as_bilinear_interpolation():
    up = _upsample2x(3)
    x = torch.randn(1, 3, 8, 10)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # Equal away from the border, where the transposed conv sees zero padding instead of a clamp.
    torch.testing.assert_close(up(x)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
    torch.testing.assert_close(up(x), _bilinear_up2(x))


def test_fcn8s_starts_as_fcn32s():
    """At init the pool3/pool4 scorers are zero (Long et al.), so FCN-8s predicts what FCN-32s does:
    class scores of fc7 alone (stride 32), brought to the input size by the bilinear upsamplers."""
    torch.manual_seed(0)
    model = create_tiny("fcn8s_vgg16", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)

    # FCN-32s, computed apart: a separate stride-32 trunk with the same weights and a 1x1 scorer.
    trunk = VGG16Trunk("fcn", **BACKBONE).eval()
    trunk.load_state_dict(model.features.body.state_dict())
    coarse = F.conv2d(trunk(x), model.score_fr.weight, model.score_fr.bias)  # (2, 4, 2, 3)
    fcn32s = F.interpolate(_bilinear_up2(_bilinear_up2(coarse)), size=(64, 96), mode="bilinear", align_corners=False)

    with torch.no_grad():
        torch.testing.assert_close(model(x), fcn32s, rtol=1e-5, atol=1e-6)
        # The skips are wired in: once their scorers learn anything the prediction moves off FCN-32s.
        for skip in (model.score_pool4, model.score_pool3):
            skip.weight.normal_()
            assert not torch.allclose(model(x), fcn32s, rtol=1e-3, atol=1e-3)
            skip.weight.zero_()
