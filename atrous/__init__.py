"""atrous: dilated (atrous) convolutions and the networks built on them.

``import atrous`` loads only the ops; analysis and models load on first use.
"""

from __future__ import annotations

import importlib

from atrous.ops import (
    CausalConv1d,
    DilatedConv1d,
    DilatedConv2d,
    DilatedConv3d,
    DilatedStack,
    atrous_conv2d,
    batch_to_space,
    dilated_conv,
    space_to_batch,
)

__version__ = "0.1.0"

# Public names that live in heavier sub-packages, imported when first touched.
_LAZY = {
    "ReceptiveField": "atrous.analysis",
    "receptive_field": "atrous.analysis",
    "empirical_receptive_field": "atrous.analysis",
    "effective_receptive_field": "atrous.analysis",
    "gridding": "atrous.analysis",
    "hdc_check": "atrous.analysis",
    "suggest_rates": "atrous.analysis",
    "ContextModule": "atrous.models",
    "ASPP": "atrous.models",
    "make_dilated": "atrous.models",
    "HDCBlock": "atrous.models",
    "FCNHead": "atrous.models",
    "DeepLabV3PlusDecoder": "atrous.models",
    "SeparableConv2d": "atrous.models",
    "RateWarning": "atrous.models",
    "models": "atrous.models",
    "analysis": "atrous.analysis",
    "export_onnx": "atrous.export",
}

__all__ = [
    "CausalConv1d",
    "DilatedConv1d",
    "DilatedConv2d",
    "DilatedConv3d",
    "DilatedStack",
    "atrous_conv2d",
    "batch_to_space",
    "dilated_conv",
    "space_to_batch",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"atrous.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atrous' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
