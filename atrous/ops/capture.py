"""Whether code runs where atrous must not time, or branch on, the tensors it is given.

While a graph is traced, compiled or exported (``torch.jit.trace``, ``torch.jit.script``,
``torch.compile``, ``torch.export``, ONNX export), a timing or a branch on an input size would be
baked into the graph (or guard on the size), so ops, layers and models ask :func:`capturing`
first and take their fixed, traceable path. Inside ``torch.func`` transforms tensors are
wrappers whose memory layout cannot be queried and that timing cannot copy
(:func:`functorch_wrapped`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["capturing", "functorch_wrapped"]


def capturing() -> bool:
    """Whether a graph is being traced, compiled or exported (no timing, no data-dependent choice)."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or _onnx_exporting()
    )


def _onnx_exporting() -> bool:
    """``torch.onnx.is_in_onnx_export()``, which imports two modules on every call (a third of an
    eager dilated conv's Python overhead): on first use, replaced by a check of the same two flags
    (imported then, not with atrous: the exporter package is slow to import)."""
    global _onnx_exporting
    _onnx_exporting = _onnx_flags()
    return _onnx_exporting()


def _onnx_flags() -> Callable[[], bool]:
    """A check of the flags ``torch.onnx.is_in_onnx_export`` reads, or that function itself where
    this PyTorch keeps them elsewhere."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    if not (hasattr(GLOBALS, "in_onnx_export") and hasattr(_flags, "_is_onnx_exporting")):
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


def functorch_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` wrapper or a batched tensor of the older vmap behind
    ``jacobian(vectorize=True)`` (under vmap a layout cannot be queried)."""
    functorch = torch._C._functorch
    legacy = getattr(functorch, "is_legacy_batchedtensor", None)
    return functorch.is_functorch_wrapped_tensor(t) or functorch.is_batchedtensor(t) or bool(legacy and legacy(t))
