"""Models built on dilated convolutions, created by name: ``atrous.models.create(name, ...)``, optionally
with local weights files (``weights=``, ``backbone_weights=``; see ``atrous.models.weights``)."""

from atrous.models import segmentation, sequence  # noqa: F401  (registers the models)
from atrous.models._registry import create, list_models, model_arguments, model_task, register_model
from atrous.models.segmentation import (
    ASPP,
    ContextModule,
    DeepLabHead,
    DeepLabV3PlusDecoder,
    FCNHead,
    RateWarning,
    SeparableConv2d,
    make_dilated,
    narrow_decoder_widths,
)
from atrous.models.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsReport,
    WeightsWarning,
    load_backbone_weights,
    load_weights,
    read_state_dict,
)

__all__ = [
    "ASPP",
    "ContextModule",
    "DeepLabHead",
    "DeepLabV3PlusDecoder",
    "FCNHead",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RateWarning",
    "SeparableConv2d",
    "WeightsReport",
    "WeightsWarning",
    "create",
    "list_models",
    "load_backbone_weights",
    "load_weights",
    "make_dilated",
    "model_arguments",
    "model_task",
    "narrow_decoder_widths",
    "read_state_dict",
    "register_model",
]
