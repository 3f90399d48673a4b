"""Backbones for dense prediction: dilated ResNets, VGG-16 trunks, and ``make_dilated`` for any CNN.

Importing this package registers ``resnet18/34/50/101`` and ``vgg16_dilation_frontend``.
"""

from atrous.models.segmentation.backbones.dilate import make_dilated
from atrous.models.segmentation.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNetConfig,
    build_resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
from atrous.models.segmentation.backbones.vgg import VGG16Trunk, vgg16_dilation_frontend

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNetConfig",
    "VGG16Trunk",
    "build_resnet",
    "make_dilated",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vgg16_dilation_frontend",
]
