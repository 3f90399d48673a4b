"""atrous: dilated (atrous) convolutions and the networks built on them.

``import atrous`` imports nothing heavy: every public name, the ops included, is imported
from its sub-package when first touched (PEP 562), so the ``atrous`` command answers
``--help`` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the sub-package it lives in, imported when the name is first touched
_LAZY = {
    "CausalConv1d": "atrous.ops",
    "DilatedConv1d": "atrous.ops",
    "DilatedConv2d": "atrous.ops",
    "DilatedConv3d": "atrous.ops",
    "DilatedStack": "atrous.ops",
    "atrous_conv2d": "atrous.ops",
    "batch_to_space": "atrous.ops",
    "dilated_conv": "atrous.ops",
    "space_to_batch": "atrous.ops",
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
    "FCNHead": "atrous.models",
    "DeepLabHead": "atrous.models",
    "DeepLabV3PlusDecoder": "atrous.models",
    "SeparableConv2d": "atrous.models",
    "RateWarning": "atrous.models",
    "ops": "atrous.ops",
    "models": "atrous.models",
    "analysis": "atrous.analysis",
    "export_onnx": "atrous.export",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # what the names are, for type checkers and editors; never run
    from atrous import analysis, models, ops
    from atrous.analysis import (
        ReceptiveField,
        effective_receptive_field,
        empirical_receptive_field,
        gridding,
        hdc_check,
        receptive_field,
        suggest_rates,
    )
    from atrous.export import export_onnx
    from atrous.models import (
        ASPP,
        ContextModule,
        DeepLabHead,
        DeepLabV3PlusDecoder,
        FCNHead,
        RateWarning,
        SeparableConv2d,
        make_dilated,
    )
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


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"atrous.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atrous' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
