"""Which formulation ``backend="auto"`` runs for one dilated convolution.

:func:`auto_formulation` runs ``native`` (plain PyTorch, no timing) when nothing is dilated, when
the call is too small to be worth timing, in a fixed mode (:func:`atrous.ops.deterministic_backend`,
``torch.use_deterministic_algorithms(True)``), inside ``torch.func`` transforms and while a graph
is captured, so captured graphs hold one fixed, traceable convolution. Otherwise it hands the
formulations :func:`candidates` deems worth timing on this device to
:func:`atrous.ops.autotune.autotune`, once per (shape, weight shape, geometry, which inputs need
gradients, dtype, device, layout, autocast, thread count).
"""

from __future__ import annotations

import torch

from atrous.ops.autotune import autotune, layout_key, timed_call, worth_timing
from atrous.ops.capture import capturing, functorch_wrapped
from atrous.ops.formulations import FORMULATIONS, applicable, border_plan
from atrous.ops.geometry import CHANNELS_LAST, ConvSpec
from atrous.ops.padding import conv_output_size

__all__ = ["auto_formulation", "candidates"]


def candidates(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec, training: bool = False) -> list[str]:
    """The formulations worth timing for this call, ``native`` first; duplicates left out.

    Args:
        x: ``(N, C_in, *S)``; weight: ``(C_out, C_in / groups, *K)``.
        spec: stride, dilation, resolved padding and groups.
        training: whether a gradient is wanted (``mixed_layout`` differs from ``channels_last``
            only in the backward pass; for a channels-last input, from ``native``).
    """
    names = ["native"]
    if spec.ndim == 1 or not x.is_contiguous(memory_format=CHANNELS_LAST[spec.ndim]):
        names.append("channels_last")
    if training:
        names.append("mixed_layout")
    if applicable("border_split", spec) and border_plan(x.shape[2:], weight.shape[2:], spec)[1] < 0.9:
        names.append("border_split")
    if applicable("fold", spec) and spec.dilation[0] > 1:
        names.append("fold")
    # On a 2-core AVX-512 CPU with oneDNN, padding first, a single-layer space_to_batch and the
    # per-tap GEMM never beat native on a benchmark shape (oneDNN's forward already skips taps
    # that read only padding), so only CUDA times them, against cuDNN's dilated kernels.
    if x.device.type == "cuda":
        if spec.symmetric and any(lo for lo, _ in spec.pads):
            names.append("pad")  # otherwise native already pads first
        if spec.unit_stride and any(d > 1 for d in spec.dilation):
            names.append("space_to_batch")
        if applicable("gemm", spec):
            names.append("gemm")
    return names


def auto_formulation(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: ConvSpec) -> str:
    """The formulation ``backend="auto"`` runs for this call.

    Args:
        x: ``(N, C_in, *S)``; weight: ``(C_out, C_in / groups, *K)``; bias: ``(C_out,)`` or None.
        spec: stride, dilation, resolved padding and groups.

    Returns:
        A name in :data:`atrous.ops.formulations.FORMULATIONS`.
    """
    if (
        capturing()  # first, so that a compiler or tracer never looks past it
        or all(d == 1 for d in spec.dilation)
        or functorch_wrapped(x)  # inside torch.func transforms: timing would need a graph of its own
        or functorch_wrapped(weight)
        or not worth_timing(x.device, _conv_macs(x, weight, spec))
    ):
        return "native"
    enabled = torch.is_grad_enabled()
    grads = tuple(enabled and t is not None and t.requires_grad for t in (x, weight, bias))
    key = ("conv", tuple(x.shape), tuple(weight.shape), bias is not None, spec, grads, *layout_key(x))

    def runs() -> dict:
        names = candidates(x, weight, spec, training=any(grads))
        return {name: timed_call(lambda *t, f=FORMULATIONS[name]: f(*t, spec), (x, weight, bias), grads)
                for name in names}  # fmt: skip

    return autotune(key, runs, x.device)


def _conv_macs(x: torch.Tensor, weight: torch.Tensor, spec: ConvSpec) -> int:
    """Multiply-adds of the dense convolution: every tap at every output."""
    macs = x.shape[0] * weight.numel()
    for n, k, s, d, (lo, hi) in zip(x.shape[2:], weight.shape[2:], spec.stride, spec.dilation, spec.pads):
        macs *= conv_output_size(n, k, s, d, lo, hi)
    return macs
