"""Autoregressive sampling through a :class:`~atrous.streaming.FusedStreamer` or :class:`~atrous.streaming.Streamer`.

WaveNet generation (van den Oord et al. 2016): draw sample ``t + 1`` from the softmax the model
outputs at step ``t`` and feed it back in. With a streamer each step costs one sample's worth
of computation per layer instead of a forward over the whole receptive field (Paine et al.
2016, "Fast WaveNet generation algorithm"); the fused one also avoids PyTorch's per-operator
overhead, which dominates a single sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from atrous.streaming.fused import FusedStreamer
from atrous.streaming.streamer import Streamer


def sample_autoregressive(
    model: nn.Module,
    steps: int,
    *,
    batch_size: int = 1,
    temperature: float = 1.0,
    first: int | None = None,
    global_condition: torch.Tensor | None = None,
    local_condition: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """Draw ``steps`` class ids per stream from a model over classes (e.g. WaveNet).

    Args:
        model: takes ``(B, L)`` int64 class ids and returns ``(B, classes, L)`` logits, where
            the logits at ``t`` predict the class at ``t + 1``; it must be streamable.
        steps: number of samples to draw per stream.
        batch_size: number of independent streams.
        temperature: softmax temperature, finite and >= 0 (``0`` takes the most likely class).
        first: the class fed at the first step, in ``[0, classes)`` (default ``classes // 2``,
            mu-law silence).
        global_condition: ``(B,)`` ids passed to every step.
        local_condition: ``(B, C_cond, steps)`` at the sample rate; step ``t`` gets column ``t``.
        generator: random generator for reproducible draws.
        progress: called with the number of samples done after each step (e.g. ``bar.update``).
        fused: stream with :class:`~atrous.streaming.FusedStreamer` (``True``), with
            :class:`~atrous.streaming.Streamer` (``False``), or with the fused one whenever the
            model can be lowered to it (``None``: WaveNet, TCN, causal ``nn.Sequential``).

    Returns:
        ``(B, steps)`` int64 class ids.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 takes the most likely class), "
                         f"got {temperature!r}")
    if local_condition is not None and (local_condition.ndim != 3 or local_condition.shape[2] < steps):
        raise ValueError(
            f"local_condition must be (B, C_cond, >= steps={steps}), got {tuple(local_condition.shape)}"
        )
    classes = getattr(model, "in_channels", None) or 256
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < classes):
        raise ValueError(f"first must be a class id in [0, {classes}), got {first!r}")
    model.eval()
    device = next(model.parameters()).device
    streamer = None
    if fused or (fused is None and device.type == "cpu"):
        try:
            streamer = FusedStreamer(model, batch_size)
        except ValueError:  # a layer the fused step does not know
            if fused:
                raise
    streamer = streamer or Streamer(model, batch_size)
    current = torch.full((batch_size, 1), classes // 2 if first is None else first, dtype=torch.long, device=device)
    out = torch.empty(batch_size, steps, dtype=torch.long, device=device)
    kwargs = {}
    if global_condition is not None:
        kwargs["global_condition"] = global_condition
    for t in range(steps):
        if local_condition is not None:
            kwargs["local_condition"] = local_condition[:, :, t : t + 1]
        logits = streamer.step(current, **kwargs)[:, :, -1]  # (B, classes)
        if temperature == 0:
            current = logits.argmax(dim=1, keepdim=True)
        else:
            # shifted first, so a tiny temperature cannot overflow the scaled logits to inf (and the
            # softmax to nan): the most likely class then gets all the probability
            probs = torch.softmax((logits - logits.amax(dim=1, keepdim=True)) / temperature, dim=1)
            current = torch.multinomial(probs, 1, generator=generator)
        out[:, t] = current[:, 0]
        if progress is not None:
            progress(1)
    return out
