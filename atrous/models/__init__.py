"""Models built on dilated convolutions, created by name: ``atrous.models.create(name, ...)``."""

from atrous.models import segmentation, sequence  # noqa: F401  (registers the models)
from atrous.models._registry import create, list_models, model_task, register_model
from atrous.models.segmentation import (
    ASPP,
    ContextModule,
    DeepLabV3PlusDecoder,
    FCNHead,
    HDCBlock,
    RateWarning,
    SeparableConv2d,
    make_dilated,
)

__all__ = [
    "ASPP",
    "ContextModule",
    "DeepLabV3PlusDecoder",
    "FCNHead",
    "HDCBlock",
    "RateWarning",
    "SeparableConv2d",
    "create",
    "list_models",
    "make_dilated",
    "model_task",
    "register_model",
]
