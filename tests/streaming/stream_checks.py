"""Stream a model in random chunks with random resets of single streams and compare every stream
with the offline forward of what it was fed since its last reset (the independent oracle)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from atrous.streaming import Streamer


def stream(streamer: Streamer, x: torch.Tensor, lengths: list[int], **kwargs) -> torch.Tensor:
    """Feed ``x`` in chunks of the given lengths (time is the last dim); concatenate the outputs."""
    outs, t = [], 0
    for length in lengths:
        chunk_kwargs = {k: v[..., t : t + length] for k, v in kwargs.items()}
        outs.append(streamer.step(x[..., t : t + length], **chunk_kwargs))
        t += length
    assert t == x.shape[-1]
    return torch.cat(outs, dim=-1)


def random_lengths(total: int, generator: torch.Generator, longest: int = 9) -> list[int]:
    lengths, t = [], 0
    while t < total:
        lengths.append(min(int(torch.randint(1, longest + 1, (1,), generator=generator)), total - t))
        t += lengths[-1]
    return lengths


def check_streaming(model: torch.nn.Module, x: torch.Tensor, *, seed: int = 0, allow_lookahead: bool = False,
                    resets: bool = True, atol: float = 1e-5, longest: int = 9, shortest: int = 12,
                    make: Callable[..., Any] = Streamer) -> Any:
    """Stream ``x`` (``(B, ..., T)``) through ``model`` in random chunks, resetting random streams
    now and then (every sequence at least ``shortest`` samples long), and check each stream
    against the offline forward of its sequences. ``make(model, batch, allow_lookahead=...)``
    builds the streamer (a :class:`Streamer` or a :class:`~atrous.streaming.FusedStreamer`).

    A stream reset after ``p`` input samples starts a new sequence whose outputs begin at output
    position ``p * rate``. Each finished sequence must match the offline forward on all outputs
    that did not wait for later input (all but ``delay``); the last one, completed by
    :meth:`~atrous.streaming.Streamer.flush`, must match entirely.

    Returns:
        The streamer, for checks of its properties.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, total = x.shape[0], x.shape[-1]
    streamer = make(model, batch, allow_lookahead=allow_lookahead)
    starts = [[0] for _ in range(batch)]
    outs, t = [], 0
    for length in random_lengths(total, generator, longest):
        outs.append(streamer.step(x[..., t : t + length]))
        t += length
        graph = getattr(streamer, "graph", None)
        last = max(begins[-1] for begins in starts)
        if (resets and (graph is None or graph.timing.lead is None) and t - last >= shortest and total - t >= shortest
                and t % streamer.period == 0
                and torch.rand(1, generator=generator) < 0.2):
            rows = [i for i in range(batch) if torch.rand(1, generator=generator) < 0.5] or [0]
            streamer.reset(rows)
            for i in rows:
                starts[i].append(t)
    delay, rate = streamer.delay, streamer.rate
    outs.append(streamer.flush())
    got = torch.cat(outs, dim=-1)
    with torch.no_grad():
        for i in range(batch):
            bounds = starts[i] + [total]
            for k, (begin, end) in enumerate(itertools.pairwise(bounds)):
                expected = model(x[i : i + 1, ..., begin:end])
                position = int(begin * rate)
                if end == total:
                    assert got.shape[-1] - position == expected.shape[-1], (i, begin, got.shape, expected.shape)
                    n = expected.shape[-1]
                else:
                    n = max(0, expected.shape[-1] - delay)
                where = f"stream {i}, sequence {k}"
                torch.testing.assert_close(got[i : i + 1, ..., position : position + n], expected[..., :n],
                                           atol=atol, rtol=0, msg=lambda m, where=where: f"{where}: {m}")
    return streamer
