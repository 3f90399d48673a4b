"""Streaming must equal the offline forward for any causal stack, batch, chunking and reset."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from stream_checks import check_streaming, stream
from torch import nn

from atrous.models import create
from atrous.ops.layers import CausalConv1d, DilatedConv1d
from atrous.streaming import Streamer


def split(total: int, draw_sizes: list[int]) -> list[int]:
    lengths, t = [], 0
    for size in draw_sizes:
        if t >= total:
            break
        lengths.append(min(size, total - t))
        t += lengths[-1]
    if t < total:
        lengths.append(total - t)
    return lengths


@st.composite
def causal_sequentials(draw):
    """A random nn.Sequential of CausalConv1d, 1x1 convs and activations."""
    channels = draw(st.sampled_from([2, 4]))
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["causal", "causal", "pointwise", "act"]))
        if kind == "causal":
            groups = draw(st.sampled_from([1, 2]))
            kernel, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 5))
            layers.append(CausalConv1d(channels, channels, kernel, dilation=dilation, groups=groups))
        elif kind == "pointwise":
            layers.append(nn.Conv1d(channels, channels, 1))
        else:
            layers.append(draw(st.sampled_from([nn.Tanh, nn.ReLU, nn.GELU, nn.Identity]))())
    layers.append(CausalConv1d(channels, 3, 2, dilation=draw(st.integers(1, 8))))
    return nn.Sequential(*layers).eval()


@settings(max_examples=25, deadline=None)
@given(model=causal_sequentials(), batch=st.integers(1, 3), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=40),
       seed=st.integers(0, 2**16))
def test_random_sequential_streams_exactly(model, batch, sizes, seed):
    x = torch.randn(batch, model[-1].in_channels, 40, generator=torch.Generator().manual_seed(seed))
    expected = model(x)
    got = stream(Streamer(model, batch), x, split(40, sizes))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


class Windowed(nn.Module):
    """A pad, a window op (conv, transposed conv, pooling) and a crop, then a pointwise op."""

    def __init__(self, kind, kernel, dilation, stride, pads, crops):
        super().__init__()
        self.pads, self.crops = pads, crops
        if kind == "conv":
            self.op = nn.Conv1d(2, 3, kernel, stride=stride, dilation=dilation, groups=1)
        elif kind == "transposed":
            self.op = nn.ConvTranspose1d(2, 3, kernel, stride=stride, dilation=dilation)
            self.pads = (max(pads[0], 0), 0)
        elif kind == "avg":
            self.op = nn.AvgPool1d(kernel, stride)
        else:
            self.op = nn.MaxPool1d(kernel, stride, dilation=dilation)

    def forward(self, x):
        y = self.op(F.pad(x, self.pads))
        return torch.tanh(y[:, :, self.crops[0] : y.shape[2] - self.crops[1]])


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["conv", "transposed", "avg", "max"]), kernel=st.integers(1, 4),
       dilation=st.integers(1, 3), stride=st.integers(1, 3), pads=st.tuples(st.integers(-1, 5), st.integers(-1, 4)),
       crops=st.tuples(st.integers(0, 3), st.integers(0, 3)), seed=st.integers(0, 2**16))
def test_any_window_streams_exactly_with_its_delay_and_resets(kind, kernel, dilation, stride, pads, crops, seed):
    """Every geometry of a window, with the runtime's own buffers, against the offline forward."""
    torch.manual_seed(seed)
    model = Windowed(kind, kernel, dilation if kind != "avg" else 1, stride, pads, crops).eval()
    check_streaming(model, torch.randn(3, 2, 64), seed=seed, allow_lookahead=True, shortest=30)


def tiny_tcn() -> nn.Module:
    return create("tcn", in_channels=3, out_channels=2, hidden=5, levels=3, kernel_size=3, dropout=0.1).eval()


def tiny_wavenet(**kwargs) -> nn.Module:
    return create("wavenet", classes=16, blocks=2, layers=3, residual_channels=4, gate_channels=6,
                  skip_channels=5, **kwargs).eval()


@pytest.mark.parametrize("lengths", [[1] * 30, [7, 1, 13, 2, 7], [30]])
def test_tcn_streams_exactly(lengths):
    torch.manual_seed(0)
    model, x = tiny_tcn(), torch.randn(4, 3, 30)
    torch.testing.assert_close(stream(Streamer(model, 4), x, lengths), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("lengths", [[1] * 40, [3, 1, 20, 16]])
def test_wavenet_with_conditioning_streams_exactly(lengths):
    torch.manual_seed(0)
    model = tiny_wavenet(global_classes=3, local_channels=2)
    ids, speakers, local = torch.randint(0, 16, (2, 40)), torch.tensor([2, 0]), torch.randn(2, 2, 40)
    expected = model(ids, global_condition=speakers, local_condition=local)
    streamer = Streamer(model, 2)
    outs, t = [], 0
    for length in lengths:
        outs.append(streamer.step(ids[:, t : t + length], global_condition=speakers,
                                  local_condition=local[:, :, t : t + length]))
        t += length
    torch.testing.assert_close(torch.cat(outs, dim=2), expected, atol=1e-5, rtol=0)


def test_per_stream_reset_restarts_only_those_streams():
    torch.manual_seed(0)
    model, x = tiny_tcn(), torch.randn(3, 3, 50)
    streamer = Streamer(model, 3)
    first = stream(streamer, x[:, :, :20], [5, 15])
    streamer.reset([1])
    second = stream(streamer, x[:, :, 20:], [1, 29])
    full = model(x)
    restarted = model(x[1:2, :, 20:])  # stream 1 starts afresh at t = 20
    torch.testing.assert_close(torch.cat([first, second], dim=2)[[0, 2]], full[[0, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(second[1:2], restarted, atol=1e-5, rtol=0)
    streamer.reset()
    torch.testing.assert_close(stream(streamer, x, [50]), full, atol=1e-5, rtol=0)


def test_state_lives_outside_the_model():
    model = tiny_tcn()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    streamer = Streamer(model, 2)
    streamer.step(torch.randn(2, 3, 4))
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    assert all("forward" not in m.__dict__ for m in model.modules())  # the routing is undone after the step
    # two streamers on one model do not share state
    other = Streamer(model, 2)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(other.step(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "layer, name, why",
    [
        (DilatedConv1d(2, 2, 3, padding="same", dilation=2), "1", r"needs 2 later samples of its input"),
        (nn.Conv1d(2, 2, 3, padding=1), "1", r"needs 1 later sample of its input"),
        (nn.Softmax(dim=-1), "1", r"mixes samples along the time axis"),
        (nn.AdaptiveAvgPool1d(1), "1", r"pools over the whole time axis"),
        (nn.GroupNorm(1, 2), "1", r"normalises over channels and time together"),
        (nn.ReflectionPad1d((2, 0)), "1", r"pads with the sequence's own samples"),
    ],
)
def test_layers_that_need_the_future_or_the_whole_sequence_are_rejected_by_name(layer, name, why):
    model = nn.Sequential(CausalConv1d(2, 2, 2), layer).eval()
    with pytest.raises(ValueError, match=rf"layer '{name}' \({type(layer).__name__}\).*{why}"):
        Streamer(model, 1)


def test_a_layer_that_cannot_run_on_the_chunk_is_rejected_by_name_at_the_first_step():
    model = nn.Sequential(CausalConv1d(2, 2, 2), nn.LSTM(2, 2))  # the LSTM takes (T, B, C): not the chunk
    streamer = Streamer(model, 1)
    with pytest.raises(ValueError, match=r"layer '1' \(LSTM\)"):
        streamer.step(torch.randn(1, 2, 3))


def test_strided_causal_conv_and_pooling_stream_their_complete_frames():
    torch.manual_seed(0)
    model = nn.Sequential(CausalConv1d(2, 3, 3, stride=2), nn.ReLU(), nn.AvgPool1d(2)).eval()
    x = torch.randn(2, 2, 37)
    streamer = Streamer(model, 2)
    assert streamer.rate == Fraction(1, 4) and streamer.delay == 0
    outs = [streamer.step(x[:, :, t : t + 3]) for t in range(0, 37, 3)]
    assert [out.shape[2] for out in outs][:4] == [1, 0, 1, 1]  # frames of 4 samples, the first at sample 1
    torch.testing.assert_close(torch.cat(outs, dim=2), model(x), atol=1e-5, rtol=0)


def test_non_causal_tcn_is_rejected_by_layer_or_streamed_with_its_delay():
    torch.manual_seed(0)
    model = create("tcn", in_channels=2, hidden=3, levels=2, kernel_size=3, causal=False)  # training mode
    with pytest.raises(ValueError, match=r"blocks\.0\.net\.0.*needs 1 later sample.*needs 6 future input samples"
                                         r".*allow_lookahead=True"):
        Streamer(model, 1)
    model.eval()
    streamer = Streamer(model, 2, allow_lookahead=True)
    assert streamer.delay == streamer.lookahead == 6  # 2 convs x (k - 1) d / 2 at dilations 1 and 2
    x = torch.randn(2, 2, 20)
    got = stream(streamer, x, [3, 1, 16])
    assert got.shape[2] == 20 - 6
    torch.testing.assert_close(torch.cat([got, streamer.flush()], dim=2), model(x), atol=1e-5, rtol=0)


def test_a_time_mixing_custom_module_is_rejected_by_node():
    class Shift(nn.Module):
        streamable = True  # a promise the trace does not need: the roll is seen and refused

        def forward(self, x):
            return torch.roll(x, 1, dims=2)

    with pytest.raises(ValueError, match=r"node 'roll' \(roll in layer '1' \(Shift\)\): it mixes samples"):
        Streamer(nn.Sequential(CausalConv1d(2, 2, 2), Shift()), 1)


def test_bad_chunks_and_modes_give_clear_errors():
    model = tiny_tcn()
    streamer = Streamer(model, 2)
    with pytest.raises(ValueError, match=r"5 channels but the model expects in_channels=3"):
        streamer.step(torch.randn(2, 5, 1))
    with pytest.raises(ValueError, match=r"batch_size=2"):
        streamer.step(torch.randn(3, 3, 1))
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        Streamer(model, 0)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        streamer.reset([2])
    model.train()
    with pytest.raises(ValueError, match=r"Dropout.*model\.eval\(\)"):
        streamer.step(torch.randn(2, 3, 1))


def test_a_layer_called_twice_per_step_keeps_one_state_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = CausalConv1d(2, 2, 2)

        def forward(self, x):
            return self.conv(self.conv(x))

    torch.manual_seed(0)
    model, x = Twice(), torch.randn(2, 2, 12)
    torch.testing.assert_close(stream(Streamer(model, 2), x, [1, 4, 7]), model(x), atol=1e-5, rtol=0)


def test_a_streamable_module_that_cannot_be_traced_runs_whole_with_its_causal_layers_routed():
    class Checked(nn.Module):
        streamable = True

        def __init__(self):
            super().__init__()
            self.conv = CausalConv1d(2, 2, 3, dilation=2)

        def forward(self, x):
            if x.abs().max() > 1e6:  # a check on the values: no single graph, so the module runs whole
                raise ValueError("too large")
            return torch.tanh(self.conv(x))

    torch.manual_seed(0)
    model, x = Checked(), torch.randn(2, 2, 20)
    streamer = Streamer(model, 2)
    assert [node.kind.value for node in streamer.graph.nodes] == ["input", "opaque"]
    torch.testing.assert_close(stream(streamer, x, [1, 6, 13]), model(x), atol=1e-5, rtol=0)

    class NotPromised(Checked):
        streamable = False

    with pytest.raises(ValueError, match=r"node 'gt' \(gt in layer '<root>' \(NotPromised\)\) is used in a branch"):
        Streamer(NotPromised(), 1)


def test_no_drift_over_100k_steps():
    """After 100k samples (single steps and chunks), the output still equals an offline forward
    over the last receptive field: the ring buffers neither drift nor lose alignment."""
    torch.manual_seed(0)
    model = nn.Sequential(CausalConv1d(1, 2, 2, dilation=1), nn.Tanh(), CausalConv1d(2, 2, 3, dilation=7),
                          nn.ReLU(), CausalConv1d(2, 1, 2, dilation=16)).eval()
    field = 1 + 1 + 14 + 16
    total = 100_000
    x = torch.randn(2, 1, total)
    streamer = Streamer(model, 2)
    t, generator = 0, torch.Generator().manual_seed(1)
    while t < total - 2000:  # most of the run in random chunks, to keep the test fast
        length = int(torch.randint(1, 400, (1,), generator=generator))
        streamer.step(x[:, :, t : t + length])
        t += length
    outs = [streamer.step(x[:, :, i : i + 1]) for i in range(t, total)]  # then single steps
    assert streamer.samples_seen == total
    for back in (1, 2, 500):
        end = total - back + 1
        expected = model(x[:, :, end - field : end])[:, :, -1]
        torch.testing.assert_close(outs[-back][:, :, 0], expected, atol=1e-5, rtol=0)


def test_dilated_conv_with_causal_padding_streams_like_causal_conv():
    torch.manual_seed(0)
    model = nn.Sequential(DilatedConv1d(2, 3, 3, padding="causal", dilation=4), nn.SiLU(), nn.Conv1d(3, 2, 1)).eval()
    x = torch.randn(2, 2, 30)
    torch.testing.assert_close(stream(Streamer(model, 2), x, [1] * 10 + [20]), model(x), atol=1e-5, rtol=0)
