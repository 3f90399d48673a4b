"""A model's forward as a list of typed nodes with their time geometry: what streaming needs to know.

:func:`build_graph` traces a model with ``torch.fx`` on two example inputs of different lengths
(:mod:`atrous.streaming.tracing`), reads from them which axis of every value is time, turns the
fx nodes into the :class:`Node` list below (:mod:`atrous.streaming.normalise`, the ops along time
in :mod:`atrous.streaming.time_ops`), folds padding into the window that follows it and crops
into the window that precedes it (:mod:`atrous.streaming.folding`), and analyses the sample
rates, delays and lookahead (:mod:`atrous.streaming.timing`). The PyTorch
:class:`~atrous.streaming.Streamer` executes the list (:mod:`atrous.streaming.plan`); a lowering
to fused ops can read it too.

Node kinds (:class:`Kind`):

* ``INPUT``: an argument of ``forward``; a time input (the chunk, or a tensor argument of three
  or more dims, time last) or a per-stream constant (``axis`` is ``None``).
* ``STATIC``: a value with no time axis computed from parameters and constants only (a
  parameter, a weight-norm weight, a speaker embedding). Recomputed at every step, so the
  streamer uses the model's current weights.
* ``POINTWISE``: an op that maps each time step on its own: activations, sums, products and
  gates, concatenation and slicing along channels, 1x1 maps and ``Linear`` over channels, norms
  over channels, ``transpose``. ``target``/``args``/``kwargs`` say how to run it (``op`` is the
  fx op: ``call_function``, ``call_method``, ``call_module``); inputs with a time axis are
  aligned sample by sample.
* ``WINDOW``: a window sliding along time (``geometry``): ``op`` is ``"conv"`` (a ``Conv1d``
  leaf in ``target``, or ``F.conv1d`` with the weight and bias in ``args[1:3]``), ``"avg_pool"``,
  ``"max_pool"`` or ``"identity"`` (padding, cropping, decimation ``x[..., ::s]``).
* ``TRANSPOSED``: a transposed convolution along time (``op`` ``"conv_transpose"``; upsampling).
* ``SIZE``: an int computed from the length of a chunk (``x.size(-1)`` and arithmetic on it).
* ``OPAQUE``: a ``streamable = True`` module whose forward cannot be traced, run as a whole with
  its ``CausalConv1d`` layers routed through ring buffers (``target`` is the module).

:class:`Geometry` of a window: output ``m`` is computed from the samples ``[m s, m s + K)`` of
the input with ``pad_left`` and ``pad_right`` samples of ``pad_value`` added at its ends (``K`` the
kernel extent ``(k - 1) d + 1``, ``s`` the stride; a negative pad drops input samples), then
``crop_left`` and ``crop_right`` outputs are dropped at the two ends. A transposed convolution
adds the contribution of padded input ``i`` to outputs ``i s + j d``, then crops. A causal
convolution is ``pad_left = (k - 1) d`` and nothing else; a "same" one also pads on the right,
which is lookahead.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

from torch import nn


class Kind(enum.Enum):
    INPUT = "input"
    STATIC = "static"
    POINTWISE = "pointwise"
    WINDOW = "window"
    TRANSPOSED = "transposed"
    SIZE = "size"
    OPAQUE = "opaque"


class Ref(NamedTuple):
    """The value of node ``index``, as it appears in a node's ``args`` and ``kwargs``."""

    index: int


@dataclass(frozen=True)
class Geometry:
    """Time geometry of a ``WINDOW`` or ``TRANSPOSED`` node (see the module docstring)."""

    kernel_size: int = 1
    dilation: int = 1
    stride: int = 1
    pad_left: int = 0
    pad_right: int = 0
    crop_left: int = 0
    crop_right: int = 0
    pad_value: float = 0.0

    @property
    def extent(self) -> int:
        """Input samples one output spans: ``(k - 1) d + 1``."""
        return (self.kernel_size - 1) * self.dilation + 1

    def window_raw(self, samples: int, *, final: bool) -> int:
        """Raw window outputs (before cropping) computable from ``samples`` inputs."""
        total = self.pad_left + samples + (self.pad_right if final else 0)
        return 0 if total < self.extent else (total - self.extent) // self.stride + 1

    def transposed_raw(self, samples: int, *, final: bool) -> int:
        """Raw transposed outputs: complete ones after ``samples`` inputs, or all at the end."""
        padded = self.pad_left + samples
        if not final:
            return padded * self.stride
        return 0 if padded < 1 else (padded - 1) * self.stride + self.extent

    def early(self, transposed: bool, samples: int) -> int:
        """Raw outputs the input gives before the offline forward is sure to have them, at most over
        a stride of input lengths from ``samples`` on: those a crop at the end removes beyond what
        the right padding adds, and those a transposed kernel shorter than its stride leaves out."""
        raw = self.transposed_raw if transposed else self.window_raw
        return max(0, *(raw(a, final=False) - (raw(a, final=True) - self.crop_right)
                        for a in range(samples, samples + self.stride)))

    def counts(self, transposed: bool, ready_in: int, final_in: int) -> tuple[int, int]:
        """(outputs ready, outputs in the end) from the input's (ready, in the end) counts."""
        raw = self.transposed_raw if transposed else self.window_raw
        end = raw(final_in, final=True) - self.crop_right
        ready = min(raw(ready_in, final=False), end)
        return max(0, ready - self.crop_left), max(0, end - self.crop_left)


@dataclass(eq=False)
class Node:
    """One value of the model's forward (see the module docstring for the kinds)."""

    name: str
    kind: Kind
    label: str
    op: str = ""
    target: Any = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    axis: int | None = None
    timed: bool = False
    rate: Fraction = Fraction(1)
    geometry: Geometry | None = None
    examples: tuple = (None, None)

    @property
    def inputs(self) -> list[int]:
        """Indices of the nodes this one reads, in order."""
        return refs_in((self.args, self.kwargs))



def refs_in(value: Any) -> list[int]:
    """Indices of the :class:`Ref` in ``value`` (nested in tuples, lists, dicts and slices), in order."""
    found: list[int] = []
    _collect(value, found)
    return found


def _collect(value: Any, found: list[int]) -> None:
    if isinstance(value, Ref):
        found.append(value.index)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _collect(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, slice):
        _collect((value.start, value.stop, value.step), found)


@dataclass
class Timing:
    """Sample rates and delays of a graph, from :func:`atrous.streaming.timing.analyse`.

    ``rate``: output samples per input sample. ``period``: input samples after which every
    node's rate pattern repeats (the product of strides, reduced). ``delay``: output samples
    that wait for later input (the offline output's tail that depends on the right padding;
    :meth:`~atrous.streaming.Streamer.flush` returns them). ``lookahead``: future input samples
    the output needs. ``sources``: the nodes that look ahead, with their own lookahead in
    samples of their input. ``waiting``: per node, the samples it holds back at most. ``lead``:
    a node that computes samples ahead of the input (a left pad not folded into a window), which
    rules out resetting single streams.
    """

    rate: Fraction = Fraction(1)
    period: int = 1
    delay: int = 0
    lookahead: int = 0
    sources: list[tuple[int, int]] = field(default_factory=list)
    lead: int | None = None
    waiting: list[int] = field(default_factory=list)


@dataclass
class StreamGraph:
    """A traced, normalised and analysed model (see :func:`build_graph`).

    Attributes:
        nodes: the nodes in execution order.
        output: index of the output node.
        inputs: per argument name of ``forward``, the index of its ``INPUT`` node.
        eval_only: ``(label, module)`` of the layers that must stay in eval mode.
        timing: rates, delay and lookahead.
    """

    nodes: list[Node]
    output: int
    inputs: dict[str, int]
    eval_only: list[tuple[str, nn.Module]]
    timing: Timing = field(default_factory=Timing)

    def users(self) -> list[list[int]]:
        """Per node, the nodes that read it."""
        result: list[list[int]] = [[] for _ in self.nodes]
        for index, node in enumerate(self.nodes):
            for source in set(node.inputs):
                result[source].append(index)
        return result

    def describe(self) -> str:
        """One line per node: index, kind, label, rate and geometry (for debugging and docs)."""
        lines = []
        for index, node in enumerate(self.nodes):
            extra = f" {node.geometry}" if node.geometry else ""
            lines.append(f"{index:3d} {node.kind.value:10s} {node.label} axis={node.axis} rate={node.rate} "
                         f"inputs={node.inputs}{extra}")
        return "\n".join(lines)


def lcm_of_denominators(rates: list[Fraction]) -> int:
    """The smallest number of input samples after which every rate gives whole samples."""
    return math.lcm(*(rate.denominator for rate in rates)) if rates else 1


def build_graph(model: nn.Module, examples: dict[str, tuple[Any, Any]], concrete: dict[str, Any],
                time_inputs: set[str], lengths: tuple[int, int]) -> StreamGraph:
    """Trace, normalise and analyse ``model`` for streaming.

    Args:
        model: the model.
        examples: per tensor argument of ``forward``, its value in two examples that differ in
            length along time (the same value twice for a per-stream constant).
        concrete: the other arguments, fixed (defaults and non-tensor values).
        time_inputs: the names in ``examples`` that have a time axis (time last).
        lengths: the lengths of the two examples along time.

    Returns:
        The :class:`StreamGraph`.

    Raises:
        ValueError: a node that cannot be streamed; the message names it and says why.
    """
    from atrous.streaming.normalise import normalise
    from atrous.streaming.timing import analyse
    from atrous.streaming.tracing import eval_mode, trace

    with eval_mode(model):
        graph = normalise(trace(model, examples, concrete), model, time_inputs)
    graph.timing = analyse(graph, lengths)
    return graph
