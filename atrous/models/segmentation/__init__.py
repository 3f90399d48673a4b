"""Segmentation backbones, blocks, heads and presets on dilated convolutions.

Importing this package registers the backbones (``resnet18/34/50/101``,
``vgg16_dilation_frontend``) and the segmentation models (DeepLab v1/v3/v3+, Dilation8, FCN-8s,
``context_net`` and its ablations) with ``atrous.models``.
"""

from atrous.models.segmentation import context_net, deeplab, dilation_net, fcn, resnet, vgg  # noqa: F401
from atrous.models.segmentation.aspp import ASPP, RateWarning, SeparableConv2d, check_aspp_rates, paper_rates
from atrous.models.segmentation.context import ContextModule
from atrous.models.segmentation.context_net import ContextNet
from atrous.models.segmentation.deeplab import DeepLabV3, DeepLabV3Plus
from atrous.models.segmentation.dilate import make_dilated
from atrous.models.segmentation.dilation_net import DilationNet
from atrous.models.segmentation.fcn import FCN8s
from atrous.models.segmentation.heads import DeepLabV3PlusDecoder, FCNHead, HDCBlock
from atrous.models.segmentation.resnet import ResNet, ResNetConfig
from atrous.models.segmentation.vgg import VGG16Trunk

__all__ = [
    "ASPP",
    "ContextModule",
    "ContextNet",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "DilationNet",
    "FCN8s",
    "FCNHead",
    "HDCBlock",
    "RateWarning",
    "ResNet",
    "ResNetConfig",
    "SeparableConv2d",
    "VGG16Trunk",
    "check_aspp_rates",
    "make_dilated",
    "paper_rates",
]
