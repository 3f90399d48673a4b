"""Streaming (incremental) inference for causal dilated models: :class:`Streamer` (any causal
model torch.fx can trace, strided and upsampling layers and bounded lookahead included; the
graph it streams is :mod:`atrous.streaming.graph`), :class:`FusedStreamer` (one fused call per
step), :class:`StreamingStep` (explicit state, for export) and autoregressive sampling."""

from atrous.streaming.functional import StreamingStep
from atrous.streaming.fused import FusedStreamer
from atrous.streaming.sampling import sample_autoregressive
from atrous.streaming.streamer import Streamer

__all__ = ["FusedStreamer", "Streamer", "StreamingStep", "sample_autoregressive"]
