"""A plain NumPy dilated convolution, written straight from the definition.

``y[n, o, i] = b[o] + sum_c sum_k xpad[n, g(o) * C_g + c, i * s + d * k] * w[o, c, k]``

It shares no code with :mod:`atrous.ops.functional` (not even the padding arithmetic), so the
tests can use it as an independent oracle. It is slow and meant for small inputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _pads(padding, sizes, kernel, stride, dilation):
    ndim = len(sizes)
    if padding == "valid":
        return [(0, 0)] * ndim
    if padding == "causal":
        return [((kernel[0] - 1) * dilation[0], 0)]
    if padding == "same":
        pads = []
        for n, k, s, d in zip(sizes, kernel, stride, dilation):
            out = math.ceil(n / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * ndim
    return [(p, p) for p in padding]


def dilated_conv_reference(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    dilation=1,
    stride=1,
    padding="same",
    groups: int = 1,
) -> np.ndarray:
    """Dilated convolution of ``x`` ``(N, C_in, *S)`` with ``weight`` ``(C_out, C_in/groups, *K)``.

    Arguments mean what they mean in :func:`atrous.dilated_conv`; only zero padding.
    """
    ndim = weight.ndim - 2
    dilation = (dilation,) * ndim if isinstance(dilation, int) else tuple(dilation)
    stride = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    kernel = weight.shape[2:]
    sizes = x.shape[2:]
    pads = _pads(padding, sizes, kernel, stride, dilation)
    xpad = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *pads])
    out_sizes = [
        (n + lo + hi - (k - 1) * d - 1) // s + 1 for n, (lo, hi), k, s, d in zip(sizes, pads, kernel, stride, dilation)
    ]
    n_batch, c_out = x.shape[0], weight.shape[0]
    c_in_group, c_out_group = weight.shape[1], c_out // groups
    y = np.zeros((n_batch, c_out, *out_sizes))
    for o in range(c_out):
        g = o // c_out_group
        for c in range(c_in_group):
            for taps in itertools.product(*(range(k) for k in kernel)):
                # Input positions i * s + d * k for every output position i, on each axis.
                index = tuple(
                    slice(d * k, d * k + (m - 1) * s + 1, s) for k, s, d, m in zip(taps, stride, dilation, out_sizes)
                )
                y[:, o] += xpad[(slice(None), g * c_in_group + c, *index)] * weight[(o, c, *taps)]
        if bias is not None:
            y[:, o] += bias[o]
    return y
