"""Streaming (incremental) inference for causal dilated models: :class:`Streamer`, sampling."""

from atrous.streaming.sampling import sample_autoregressive
from atrous.streaming.streamer import Streamer

__all__ = ["Streamer", "sample_autoregressive"]
