"""What every streamer shares: ``batch_size`` independent streams, the samples seen so far, the
check that a chunk carries one row per stream, and :meth:`~StreamerBase.reset` of chosen streams.

A causal stack streamed one chunk at a time keeps, per causal convolution, the last
``(k - 1) * d`` inputs of each stream (the queues of Paine et al. 2016, "Fast WaveNet generation
algorithm"). Starting a stream afresh sets its past to zeros, the causal padding of the offline
forward, so a reset stream continues exactly as a new sequence would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from atrous._checks import is_int


class StreamerBase(ABC):
    """State and checks shared by :class:`~atrous.streaming.Streamer` and
    :class:`~atrous.streaming.FusedStreamer`.

    Args:
        model: the causal model to stream.
        batch_size: number of independent streams, the first dim of every chunk.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``batch_size`` is not an int >= 1.
    """

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not is_int(batch_size) or batch_size < 1:  # a ValueError for every bad batch size, as always
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.samples_seen = 0

    @property
    @abstractmethod
    def context(self) -> int:
        """Total past samples held across layers (for causal convolutions, the sum of ``(k - 1) * d``)."""

    @abstractmethod
    def step(self, chunk: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Feed the next ``L`` samples of every stream; return the outputs now complete."""

    @abstractmethod
    def _zero_streams(self, rows: torch.Tensor | None) -> None:
        """Zero the past of the streams ``rows`` (int64 indices), or of all when ``None``."""

    def _check_batch(self, chunk: torch.Tensor) -> None:
        """``chunk`` is a tensor ``(batch_size, ..., L >= 1)``, time last."""
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"chunk must be a torch.Tensor, got {type(chunk).__name__}")
        if chunk.ndim < 2 or chunk.shape[0] != self.batch_size or chunk.shape[-1] < 1:
            raise ValueError(
                f"chunk must have shape (batch_size={self.batch_size}, ..., L >= 1) with time last, "
                f"got {tuple(chunk.shape)}"
            )

    def reset(self, indices: int | Sequence[int] | torch.Tensor | None = None) -> None:
        """Forget the past of some streams (all when ``indices`` is ``None``).

        A reset stream continues as if it started now: its past is zeros, the causal padding
        of the offline forward. Resetting all streams also sets :attr:`samples_seen` to 0.

        Args:
            indices: stream indices in ``[0, batch_size)``: an int, a sequence of ints or an
                integer tensor.

        Raises:
            TypeError: ``indices`` is not an int, a sequence of ints or an integer tensor.
            ValueError: an index outside ``[0, batch_size)``.
        """
        if indices is None:
            self._zero_streams(None)
            self.samples_seen = 0
            return
        self._zero_streams(stream_rows(indices, self.batch_size))


def stream_rows(indices: int | Sequence[int] | torch.Tensor, batch_size: int) -> torch.Tensor:
    """``indices`` as a flat int64 tensor of stream indices in ``[0, batch_size)``."""
    try:
        rows = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError):
        rows = None
    if rows is None or rows.numel() and (rows.dtype == torch.bool or rows.is_floating_point() or rows.is_complex()):
        raise TypeError(f"indices must be an int, a sequence of ints or an integer tensor of stream indices "
                        f"in [0, {batch_size}), got {indices!r}")
    rows = rows.to(torch.long).reshape(-1)
    if rows.numel() and (rows.min() < 0 or rows.max() >= batch_size):
        raise ValueError(f"indices must lie in [0, {batch_size}) (batch_size={batch_size}), got {rows.tolist()}")
    return rows
