"""Segmentation on dilated convolutions, grouped by what each part is:

- ``backbones``: dilated ResNets, VGG-16 trunks and ``make_dilated`` (feature extractors);
- ``blocks``: conv-BN-ReLU, separable convs, ASPP and the context module (layers the rest is built of);
- ``heads``: ``FCNHead``, ``DeepLabHead`` and the v3+ decoder (features in, logits out);
- one module per model family, with its registered builders: ``deeplab`` (DeepLab v3/v3+),
  ``dilation_net`` (Dilation8, DeepLab-LargeFOV), ``fcn`` (FCN-8s, FCN-ResNet), ``context_net`` (``context_net``
  and its ablations).

Importing this package registers the backbones and the segmentation models with ``atrous.models``.
"""

from atrous.models.segmentation.backbones import ResNet, ResNetConfig, VGG16Trunk, make_dilated
from atrous.models.segmentation.blocks import (
    ASPP,
    ContextModule,
    ConvBNReLU,
    NormalizedASPPPooling,
    RateWarning,
    SeparableConv2d,
    check_aspp_rates,
    paper_rates,
)
from atrous.models.segmentation.context_net import ContextNet, narrow_decoder_widths
from atrous.models.segmentation.deeplab import DeepLabV3, DeepLabV3Plus
from atrous.models.segmentation.dilation_net import DilationNet
from atrous.models.segmentation.fcn import FCN8s, FCNResNet
from atrous.models.segmentation.heads import DeepLabHead, DeepLabV3PlusDecoder, FCNHead

__all__ = [
    "ASPP",
    "ContextModule",
    "ContextNet",
    "ConvBNReLU",
    "DeepLabHead",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "DilationNet",
    "FCN8s",
    "FCNHead",
    "FCNResNet",
    "NormalizedASPPPooling",
    "RateWarning",
    "ResNet",
    "ResNetConfig",
    "SeparableConv2d",
    "VGG16Trunk",
    "check_aspp_rates",
    "make_dilated",
    "narrow_decoder_widths",
    "paper_rates",
]
