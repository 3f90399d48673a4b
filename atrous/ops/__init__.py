"""Exact dilated convolutions: functional ops, drop-in layers, space_to_batch and a NumPy reference."""

from atrous.ops.autotune import TuningSettings, deterministic_backend, tuning_settings
from atrous.ops.backend import BACKENDS, backend_choices, clear_backend_cache, export_choices, replay_choices
from atrous.ops.capture import capturing
from atrous.ops.functional import atrous_conv2d, dilated_conv
from atrous.ops.layers import (
    CausalConv1d,
    DilatedConv1d,
    DilatedConv2d,
    DilatedConv3d,
    DilatedConvNd,
    DilatedStack,
)
from atrous.ops.padding import kernel_extent, resolve_padding, same_padding
from atrous.ops.space_to_batch import batch_to_space, space_to_batch

__all__ = [
    "BACKENDS",
    "CausalConv1d",
    "DilatedConv1d",
    "DilatedConv2d",
    "DilatedConv3d",
    "DilatedConvNd",
    "DilatedStack",
    "TuningSettings",
    "atrous_conv2d",
    "backend_choices",
    "batch_to_space",
    "capturing",
    "clear_backend_cache",
    "deterministic_backend",
    "dilated_conv",
    "export_choices",
    "kernel_extent",
    "replay_choices",
    "resolve_padding",
    "same_padding",
    "space_to_batch",
    "tuning_settings",
]
