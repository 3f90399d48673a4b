"""Building blocks of the segmentation networks: conv-BN-ReLU, separable convs, ASPP and the context module."""

from atrous.models.segmentation.blocks.aspp import (
    ASPP,
    ASPPConv,
    ASPPPooling,
    NormalizedASPPPooling,
    PAPER_OUTPUT_STRIDE,
    PAPER_RATES,
    RateWarning,
    check_aspp_rates,
    paper_rates,
)
from atrous.models.segmentation.blocks.context import ContextModule
from atrous.models.segmentation.blocks.conv import ConvBNReLU, SeparableConv2d

__all__ = [
    "ASPP",
    "ASPPConv",
    "ASPPPooling",
    "PAPER_OUTPUT_STRIDE",
    "PAPER_RATES",
    "ContextModule",
    "ConvBNReLU",
    "NormalizedASPPPooling",
    "RateWarning",
    "SeparableConv2d",
    "check_aspp_rates",
    "paper_rates",
]
