"""The graph a model streams through (atrous/streaming/graph.py): its node kinds, the geometry of
windows against PyTorch's own ops, the folding of pads and crops, and the rates, delay and
lookahead that the timing analysis reads off it."""

import inspect
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from atrous.ops.layers import CausalConv1d
from atrous.streaming.graph import Geometry, Kind, StreamGraph, build_graph


def graph_of(model: nn.Module, channels: int = 2, **kwargs) -> StreamGraph:
    """The graph of ``model`` for (1, channels, T) inputs, the other arguments fixed to ``kwargs``."""
    lengths, first = (16, 35), next(iter(inspect.signature(model.forward).parameters))
    generator = torch.Generator().manual_seed(0)
    examples = {first: tuple(torch.randn(1, channels, n, generator=generator) for n in lengths)}
    examples.update({name: (value, value) for name, value in kwargs.items()})
    return build_graph(model.eval(), examples, {}, {first}, lengths)


def kinds(graph: StreamGraph) -> list[str]:
    return [node.kind.value for node in graph.nodes]


def window_output(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """The offline window: pad, a conv of ones (a sum over each window), crop."""
    padded = F.pad(x, (g.pad_left, g.pad_right))
    if padded.shape[-1] < g.extent:
        return x[..., :0]
    y = F.conv1d(padded, torch.ones(1, 1, g.kernel_size, dtype=x.dtype), stride=g.stride, dilation=g.dilation)
    return y[..., g.crop_left : max(0, y.shape[-1] - g.crop_right)]


def transposed_output(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    padded = F.pad(x, (g.pad_left, 0))
    weight = torch.arange(1, g.kernel_size + 1, dtype=x.dtype).view(1, 1, -1)
    y = F.conv_transpose1d(padded, weight, stride=g.stride, dilation=g.dilation)
    return y[..., g.crop_left : max(0, y.shape[-1] - g.crop_right)]


geometries = st.builds(
    Geometry, kernel_size=st.integers(1, 4), dilation=st.integers(1, 3), stride=st.integers(1, 3),
    pad_left=st.integers(-2, 6), pad_right=st.integers(-2, 4), crop_left=st.integers(0, 3),
    crop_right=st.integers(0, 3))


@settings(max_examples=150, deadline=None)
@given(geometry=geometries, transposed=st.booleans(), seen=st.integers(1, 30), more=st.integers(1, 12))
def test_counts_are_the_offline_lengths_and_the_outputs_that_later_input_cannot_change(geometry, transposed, seen,
                                                                                    more):
    """``end`` is the length PyTorch gives for ``seen`` inputs; the first ``ready`` of those outputs
    are the same whatever comes next."""
    if transposed:
        geometry = Geometry(geometry.kernel_size, geometry.dilation, geometry.stride,
                            pad_left=max(geometry.pad_left, 0), crop_left=geometry.crop_left,
                            crop_right=geometry.crop_right)
    assume(seen + min(geometry.pad_left, 0) + min(geometry.pad_right, 0) >= 1)  # PyTorch cannot crop more
    offline = transposed_output if transposed else window_output
    x = torch.randn(1, 1, seen + more, generator=torch.Generator().manual_seed(seen), dtype=torch.float64)
    ready, end = geometry.counts(transposed, seen, seen)
    now, later = offline(x[..., :seen], geometry), offline(x, geometry)
    assert now.shape[-1] == end
    torch.testing.assert_close(now[..., :ready], later[..., :ready])


def test_a_causal_stack_is_windows_and_pointwise_nodes():
    model = nn.Sequential(CausalConv1d(2, 3, 2, dilation=2), nn.Tanh(), nn.Conv1d(3, 2, 1), nn.Dropout(0.5))
    graph = graph_of(model)
    assert kinds(graph) == ["input", "window", "pointwise", "window"]  # dropout (eval) is an alias
    assert graph.nodes[1].geometry == Geometry(2, 2, pad_left=2) and graph.nodes[1].op == "conv"
    assert graph.nodes[1].target is model[0] and graph.nodes[1].label == "layer '0' (CausalConv1d)"
    assert graph.nodes[3].geometry == Geometry() and graph.nodes[3].inputs == [2]
    assert [label for label, _ in graph.eval_only] == ["layer '3' (Dropout)"]
    assert (graph.timing.rate, graph.timing.delay, graph.timing.lookahead, graph.timing.period) == (1, 0, 0, 1)


class PadConvChomp(nn.Module):
    def __init__(self):
        super().__init__()
        self.padded = nn.Conv1d(2, 2, 3, dilation=2)
        self.chomped = nn.Conv1d(2, 2, 3, padding=2)
        self.zero = nn.ZeroPad1d((1, 0))
        self.pair = nn.Conv1d(2, 2, 2)
        self.weight = nn.Parameter(torch.randn(2, 2, 2))

    def forward(self, x):
        y = self.padded(F.pad(x, (4, 0)))  # pad then conv
        y = self.chomped(y)[:, :, : y.size(2)]  # padding= then slicing off the right end, by the length
        y = self.pair(self.zero(y))
        return F.conv1d(F.pad(y, (1, 0)), self.weight)  # a functional conv with a parameter


def test_pads_fold_into_the_window_after_them_and_crops_into_the_window_before():
    graph = graph_of(PadConvChomp())
    windows = [(node.op, node.geometry) for node in graph.nodes if node.kind is Kind.WINDOW]
    assert windows == [("conv", Geometry(3, 2, pad_left=4)), ("conv", Geometry(3, 1, pad_left=2)),
                       ("conv", Geometry(2, 1, pad_left=1)), ("conv", Geometry(2, 1, pad_left=1))]
    functional = graph.nodes[-1]
    assert functional.target is None and graph.nodes[functional.inputs[1]].kind is Kind.STATIC
    assert graph.timing.delay == 0


def test_a_transposed_conv_with_its_causal_trim_needs_no_future():
    class Up(nn.Module):  # pytorch-tcn's causal TemporalConvTranspose1d: pad one input, crop a stride each end
        def __init__(self):
            super().__init__()
            self.conv = nn.ConvTranspose1d(2, 2, 6, stride=3)

        def forward(self, x):
            return self.conv(F.pad(x, (1, 0)))[:, :, 3:-3]

    graph = graph_of(Up())
    assert kinds(graph) == ["input", "transposed"]
    assert graph.nodes[1].geometry == Geometry(6, 1, 3, crop_right=3)  # the pad and the left crop cancel
    assert (graph.timing.rate, graph.timing.delay) == (3, 0)
    untrimmed = graph_of(nn.ConvTranspose1d(2, 2, 6, stride=3))
    assert (untrimmed.timing.delay, untrimmed.timing.lookahead, untrimmed.timing.sources) == (3, 1, [(1, 1)])


def test_rates_multiply_along_the_graph_and_the_period_is_their_common_frame():
    model = nn.Sequential(nn.Conv1d(2, 2, 4, stride=2), nn.MaxPool1d(3), nn.ConvTranspose1d(2, 2, 2, stride=2))
    graph = graph_of(model)
    assert [node.rate for node in graph.nodes] == [1, Fraction(1, 2), Fraction(1, 6), Fraction(1, 3)]
    assert (graph.timing.rate, graph.timing.period, graph.timing.delay) == (Fraction(1, 3), 6, 0)


def test_lookahead_is_the_future_the_output_needs_and_names_its_layers():
    model = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv1d(2, 2, 5, padding="same", dilation=2))
    graph = graph_of(model)
    assert (graph.timing.delay, graph.timing.lookahead) == (1 + 4, 1 + 4)
    assert graph.timing.sources == [(1, 1), (3, 4)]  # (node, samples of its own input)
    valid = graph_of(nn.Conv1d(2, 2, 3))  # no padding: a shorter output, but nothing waits
    assert (valid.timing.delay, valid.timing.lookahead) == (0, 0)


def test_a_standalone_left_pad_computes_ahead_of_its_input():
    class Delayed(nn.Module):
        def forward(self, x):
            return x + F.pad(x, (2, 0))[:, :, :-2]  # x[t] + x[t - 2]: a delay line

    graph = graph_of(Delayed())
    assert graph.timing.delay == 0 and graph.nodes[graph.timing.lead].kind is Kind.WINDOW


def test_sizes_and_constants_along_time():
    class Sized(nn.Module):
        def forward(self, x, bias):
            y = x[:, :, 1 : x.shape[-1]]  # a SIZE-bounded slice: drop the first sample
            return y + bias.unsqueeze(2).expand(-1, -1, y.shape[2])  # a constant spread over a chunk's length

    graph = graph_of(Sized(), bias=torch.randn(1, 2))
    assert Kind.SIZE in {node.kind for node in graph.nodes}
    crop = next(node for node in graph.nodes if node.kind is Kind.WINDOW)
    assert crop.geometry == Geometry(crop_left=1) and graph.timing.delay == 0


def test_node_descriptions_and_users():
    graph = graph_of(nn.Sequential(CausalConv1d(2, 2, 2), nn.ReLU()))
    assert graph.users() == [[1], [2], []]
    assert "window" in graph.describe() and "layer '1' (ReLU)" in graph.describe()


@pytest.mark.parametrize("stride", [2, 3])
def test_same_padding_at_a_stride_depends_on_the_length_and_is_refused(stride):
    from atrous.ops.layers import DilatedConv1d

    with pytest.raises(ValueError, match=rf"layer '0' \(DilatedConv1d\): its padding='same' depends on the input's "
                                         rf"length at stride {stride}"):
        graph_of(nn.Sequential(DilatedConv1d(2, 2, 4, stride=stride, padding="same")))
