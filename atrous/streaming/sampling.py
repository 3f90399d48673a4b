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
    classes: int | None = None,
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
            model can be lowered to it (``None``; see :mod:`atrous.streaming.lowering`).
        classes: the number of classes the model takes and predicts (default: its
            ``in_channels``, which a WaveNet sets to its classes).

    Returns:
        ``(B, steps)`` int64 class ids. The model runs in eval mode; each of its modules is
        left in the training mode it had.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a bad argument (named), no ``classes`` given for a model without an int
            ``in_channels``, or logits over another number of classes than ``classes``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
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
    classes = _classes(model, classes)
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < classes):
        raise ValueError(f"first must be a class id in [0, {classes}), got {first!r}")
    modes = [(module, module.training) for module in model.modules()]  # each one's own, restored after
    model.eval()
    try:
        return _sample(model, steps, classes=classes, batch_size=batch_size, temperature=temperature,
                       first=classes // 2 if first is None else first, global_condition=global_condition,
                       local_condition=local_condition, generator=generator, progress=progress, fused=fused)
    finally:
        for module, training in modes:
            module.training = training


def _classes(model: nn.Module, classes: int | None) -> int:
    if classes is None:
        classes = getattr(model, "in_channels", None)
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ValueError(f"classes must be given for a {type(model).__name__}: it has no int in_channels to read "
                             f"the number of classes from (got in_channels={classes!r})")
    elif isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be an int >= 1, got {classes!r}")
    return classes


def _sample(model: nn.Module, steps: int, *, classes: int, batch_size: int, temperature: float, first: int,
            global_condition: torch.Tensor | None, local_condition: torch.Tensor | None,
            generator: torch.Generator | None, progress: Callable[[int], None] | None,
            fused: bool | None) -> torch.Tensor:
    """The sampling loop of :func:`sample_autoregressive`, arguments checked, model in eval mode."""
    parameter = next(model.parameters(), None)
    device = torch.device("cpu") if parameter is None else parameter.device
    streamer = None
    if fused or (fused is None and device.type == "cpu"):
        try:
            streamer = FusedStreamer(model, batch_size)
        except ValueError:  # a layer the fused step does not know
            if fused:
                raise
    streamer = streamer or Streamer(model, batch_size)
    if (streamer.rate is not None and streamer.rate != 1) or streamer.delay:
        raise ValueError(f"sampling feeds each output back in as the next input, so the model must give one output "
                         f"per input sample at once; this one gives {streamer.rate} per input sample with a delay of "
                         f"{streamer.delay}")
    current = torch.full((batch_size, 1), first, dtype=torch.long, device=device)
    out = torch.empty(batch_size, steps, dtype=torch.long, device=device)
    kwargs = {}
    if global_condition is not None:
        kwargs["global_condition"] = global_condition
    for t in range(steps):
        if local_condition is not None:
            kwargs["local_condition"] = local_condition[:, :, t : t + 1]
        logits = streamer.step(current, **kwargs)[:, :, -1]  # (B, classes)
        if logits.shape[1] != classes:
            raise ValueError(f"the model predicts {logits.shape[1]} classes per step but takes classes={classes}; "
                             "sampling feeds each draw back in, so the two must agree")
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
