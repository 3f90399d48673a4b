"""FCN-8s upsampling, the v3+ decoder, the HDC block and the VGG-16 trunks."""

import math

import pytest
import torch
import torch.nn.functional as F

import atrous
from atrous.models import create
from atrous.models._features import FeatureExtractor
from atrous.models.segmentation import DeepLabV3PlusDecoder, FCNHead, HDCBlock, RateWarning, VGG16Trunk, make_dilated
from atrous.models.segmentation.fcn import _upsample2x


def test_fcn_upsampler_starts_as_bilinear_interpolation():
    up = _upsample2x(3)
    x = torch.randn(1, 3, 8, 10)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # Equal away from the border, where the transposed conv sees zero padding instead of a clamp.
    torch.testing.assert_close(up(x)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def test_fcn8s_starts_as_fcn32s():
    # The skip scorers start at zero (Long et al.), so the skips contribute nothing at init.
    model = create("fcn8s_vgg16", num_classes=2, width_multiplier=1 / 16).eval()
    assert model.score_pool3.weight.abs().sum() == 0 and model.score_pool4.weight.abs().sum() == 0


def test_decoder_output_is_at_low_level_resolution():
    decoder = DeepLabV3PlusDecoder(6, 8, 3, reduce_channels=4, channels=8)
    out = decoder(torch.randn(2, 6, 16, 12), torch.randn(2, 8, 4, 3))
    assert out.shape == (2, 3, 16, 12)


def test_fcn_head_shape():
    assert FCNHead(16, 5)(torch.randn(1, 16, 7, 9)).shape == (1, 5, 7, 9)


def test_hdc_block_field_and_gridding_warning():
    block = HDCBlock(2, (1, 2, 5))
    assert block.receptive_field == 17
    assert atrous.receptive_field(block, (2, 40, 40)).size == (17, 17)
    with pytest.warns(RateWarning, match="factor 2"):
        HDCBlock(2, (2, 4, 8))


def test_feature_extractor_returns_named_maps():
    backbone = create("resnet18", output_stride=8, width_multiplier=1 / 16)
    features = FeatureExtractor(backbone, {"layer1": "low", "layer4": "out"})(torch.randn(1, 3, 64, 64))
    assert features["low"].shape[-2:] == (16, 16) and features["out"].shape[-2:] == (8, 8)
    with pytest.raises(ValueError, match="return_layers"):
        FeatureExtractor(backbone, {"layer9": "x"})


def test_dilation_frontend_is_make_dilated_vgg16():
    # Yu & Koltun: removing pool4/pool5 and dilating conv5 by 2 and fc6 by 4 is exactly the
    # stride -> dilation conversion of the stride-32 network.
    torch.manual_seed(0)
    frontend = create("vgg16_dilation_frontend", width_multiplier=1 / 16).eval()
    converted = make_dilated(VGG16Trunk("fcn", width_multiplier=1 / 16), 8).eval()
    converted.load_state_dict(frontend.state_dict())
    assert isinstance(converted.pool4, torch.nn.Identity) and isinstance(converted.pool5, torch.nn.Identity)
    assert converted.conv5[0].dilation == (2, 2) and converted.fc6[0].dilation == (4, 4)
    x = torch.randn(1, 3, 48, 40)
    torch.testing.assert_close(converted(x), frontend(x))
    assert frontend(x).shape[-2:] == (6, 5)


def test_vgg_trunk_fields():
    # fc6 7x7 at jump 32 on VGG-16's 212-pixel pool5 field: 212 + 6 * 32 = 404. The front end
    # drops the 2x2 pool4 (1 tap at jump 8) and pool5 (1 tap at jump 16): 404 - 8 - 16 = 380.
    for trunk, size in (("fcn", 404), ("frontend", 380)):
        field = atrous.receptive_field(VGG16Trunk(trunk, width_multiplier=1 / 16), (3, 256, 256))
        assert field.size == (size, size), trunk
    largefov = create("deeplabv1_largefov_vgg16", width_multiplier=1 / 16)
    fc6 = largefov.trunk.fc6[0]
    assert (fc6.kernel_size, fc6.dilation, largefov.output_stride) == ((3, 3), (12, 12), 8)


def test_vgg16_parameter_count():
    # torchvision's vgg16 has 138,357,544 parameters; fc8 (4096 * 1000 + 1000) is not in the trunk.
    with torch.device("meta"):
        trunk = VGG16Trunk("frontend")
    assert sum(p.numel() for p in trunk.parameters()) == 138_357_544 - 4_097_000


def test_vgg_output_strides():
    x = torch.randn(1, 3, 70, 50)
    for name in ("dilation8_vgg16", "deeplabv1_largefov_vgg16", "fcn8s_vgg16"):
        assert create(name, num_classes=2, width_multiplier=1 / 16)(x).shape == (1, 2, 70, 50)
    trunk = VGG16Trunk("fcn", width_multiplier=1 / 16)
    assert trunk(x).shape[-2:] == (math.ceil(70 / 32), math.ceil(50 / 32))


def test_vgg_models_match_the_papers_parameter_counts():
    # DeepLab v1 (Chen et al. 2015, Table 2): LargeFOV has 20.5M parameters; FCN-VGG16 (Long et
    # al. 2015, Table 1) has 134M. Both for the 21 PASCAL VOC classes.
    with torch.device("meta"):
        largefov = create("deeplabv1_largefov_vgg16", num_classes=21)
        fcn = create("fcn8s_vgg16", num_classes=21)
    assert round(sum(p.numel() for p in largefov.parameters()) / 1e5) == 205
    assert round(sum(p.numel() for p in fcn.parameters()) / 1e6) == 134
