"""VGG-16 trunks: the dilation front end is the stride-32 net made dilated, fields and parameter counts."""

import math

import torch
from tiny_models import BACKBONE, create_tiny

import atrous
from atrous.models import create, make_dilated
from atrous.models.segmentation import VGG16Trunk


def test_dilation_frontend_is_make_dilated_vgg16():
    # Yu & Koltun: removing pool4/pool5 and dilating conv5 by 2 and fc6 by 4 is exactly the
    # stride -> dilation conversion of the stride-32 network.
    torch.manual_seed(0)
    frontend = create_tiny("vgg16_dilation_frontend").eval()
    converted = make_dilated(VGG16Trunk("fcn", **BACKBONE), 8).eval()
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
        field = atrous.receptive_field(VGG16Trunk(trunk, **BACKBONE), (3, 256, 256))
        assert field.size == (size, size), trunk
    largefov = create_tiny("deeplabv1_largefov_vgg16", num_classes=2)
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
        assert create_tiny(name, num_classes=2)(x).shape == (1, 2, 70, 50)
    trunk = VGG16Trunk("fcn", **BACKBONE)
    assert trunk(x).shape[-2:] == (math.ceil(70 / 32), math.ceil(50 / 32))


def test_vgg_models_match_the_papers_parameter_counts():
    # DeepLab v1 (Chen et al. 2015, Table 2): LargeFOV has 20.5M parameters; FCN-VGG16 (Long et
    # al. 2015, Table 1) has 134M. Both for the 21 PASCAL VOC classes.
    with torch.device("meta"):
        largefov = create("deeplabv1_largefov_vgg16", num_classes=21)
        fcn = create("fcn8s_vgg16", num_classes=21)
    assert round(sum(p.numel() for p in largefov.parameters()) / 1e5) == 205
    assert round(sum(p.numel() for p in fcn.parameters()) / 1e6) == 134
