"""A run of same-rate dilated layers executed once in the space_to_batch domain.

Consecutive stride-1, odd-kernel layers that share a rate ``r`` act on the ``r**n`` interleaved
sub-grids of their input independently, so the sub-grids can move into the batch once, the
layers run there as dense convolutions, and the sub-grids move back once (the trick documented
with TensorFlow's ``atrous_conv2d``, Chen et al. 2017). :func:`same_rate_stack` does that exactly,
borders included; :func:`fuse_same_rate` decides, for ``DilatedStack``, whether a run goes that
way, timing it against layer by layer through :func:`atrous.ops.autotune.autotune`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from atrous.ops.autotune import autotune, layout_key, timed_call, worth_timing
from atrous.ops.capture import capturing
from atrous.ops.geometry import CONV_BY_NDIM, pad_high
from atrous.ops.space_to_batch import batch_to_space, space_to_batch

__all__ = ["STACK_CHOICES", "fuse_same_rate", "same_rate_stack"]

STACK_CHOICES = ("layers", "space_to_batch")  # the two ways of a same-rate run, the default first

Activation = Callable[[torch.Tensor], torch.Tensor]


def same_rate_stack(
    x: torch.Tensor, convs: Sequence[nn.modules.conv._ConvNd], activations: Sequence[Activation], rate: int
) -> torch.Tensor:
    """Run ``act(conv(x))`` for each layer of a same-rate, stride-1, odd-kernel stack in the
    space_to_batch domain; equal to running the dilated layers one by one with "same" padding.

    Sizes that are not multiples of ``rate`` are padded on the high side; those padded samples
    would become real data after the first layer, so they are re-zeroed after every layer, as
    the zero padding of the dilated layers would be. While a graph is captured, the sizes may be
    symbolic, so the padding, re-zeroing and final crop always run, by amounts that may be 0:
    the graph is then right at every size.

    Args:
        x: ``(N, C, *S)``.
        convs: the layers' convolutions (their weights, biases and groups are used; all at ``rate``).
        activations: one elementwise function per layer.
        rate: the dilation the layers share.

    Returns:
        ``(N, C_out, *S)``.
    """
    ndim, batch, sizes = x.ndim - 2, x.shape[0], x.shape[2:]
    grid = [(n + rate - 1) // rate for n in sizes]  # ceil(n / rate): samples per sub-grid
    highs = [g * rate - n for g, n in zip(grid, sizes)]
    padded = capturing() or any(highs)
    unpadded = [(0, 0)] * ndim  # already padded here, by amounts that may be symbolic
    y = space_to_batch(pad_high(x, highs) if padded else x, rate, paddings=unpadded)
    if padded:
        mask = space_to_batch(pad_high(torch.ones_like(x[:1, :1]), highs), rate, paddings=unpadded)  # (rate**n, 1, *G)
    conv_fn = CONV_BY_NDIM[ndim]
    for conv, act in zip(convs, activations):
        padding = tuple((k - 1) // 2 for k in conv.kernel_size)
        y = act(conv_fn(y, conv.weight, conv.bias, 1, padding, 1, conv.groups))
        if padded:
            y = (y.reshape(-1, batch, *y.shape[1:]) * mask.unsqueeze(1)).reshape(y.shape)
    y = batch_to_space(y, rate)
    return pad_high(y, [-high for high in highs]) if padded else y


def fuse_same_rate(
    x: torch.Tensor,
    convs: Sequence[nn.modules.conv._ConvNd],
    activations: Sequence[Activation],
    rate: int,
    *,
    tune: bool,
) -> bool:
    """Whether a fusable same-rate run goes through :func:`same_rate_stack` for this input.

    Always when ``tune`` is off, in a fixed mode (see :func:`atrous.ops.deterministic_backend`)
    or for a run too small to time; otherwise the faster of the two ways, timed once per input
    shape, layers, activations, directions, dtype, device and layout ("layers" is kept unless
    space_to_batch is clearly faster). Timing fires no module hooks of the convolutions, writes
    no ``.grad`` and leaves the random number generators as they were.

    Args:
        x: ``(N, C, *S)``, the run's input.
        convs, activations, rate: as for :func:`same_rate_stack`.
        tune: whether the owner's backend is ``"auto"``.
    """
    if not tune or capturing():  # first, so that a compiler or tracer never looks past it
        return True
    macs = x.shape[0] * math.prod(x.shape[2:]) * sum(conv.weight.numel() for conv in convs)
    if not worth_timing(x.device, macs):
        return True
    params = [p for conv in convs for p in conv.parameters() if p.requires_grad]
    grad = torch.is_grad_enabled() and (x.requires_grad or bool(params))
    layers = tuple((tuple(conv.weight.shape), conv.bias is not None, conv.backend) for conv in convs)
    acts = tuple(type(act).__name__ for act in activations)
    key = ("stack", rate, tuple(x.shape), layers, acts, grad, x.requires_grad, *layout_key(x))

    def runs() -> dict:
        ways = {
            "layers": lambda t: _layer_by_layer(t, convs, activations),
            "space_to_batch": lambda t: same_rate_stack(t, convs, activations, rate),
        }
        input_grad = (grad and x.requires_grad,)
        reached = params if grad else []
        return {name: timed_call(ways[name], (x,), input_grad, reached) for name in STACK_CHOICES}

    return autotune(key, runs, x.device) == "space_to_batch"


def _layer_by_layer(x: torch.Tensor, convs: Sequence[nn.Module], activations: Sequence[Activation]) -> torch.Tensor:
    for conv, act in zip(convs, activations):
        x = act(conv.forward(x))  # forward itself: the convolutions' hooks fire on real calls only
    return x
