"""Models of the common causal families, written from plain PyTorch modules, through the one
lowering of the traced graph (atrous/streaming/lowering.py): those it expresses stream through
FusedStreamer (both backends) like their offline forward with random chunking and resets of
single streams; the others are refused naming the node, and sampling falls back to Streamer."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stream_checks import check_streaming
from fused_models import Activations, Pooled, multirate_stacks, StridedLookahead, gated_concat, locuslab_tcn, norm_glu
from test_families import SameTCN, SkipTCN, TasNet, UNetSkip, codec
from torch import nn

from atrous.ops.layers import CausalConv1d
from atrous.streaming import FusedStreamer, Streamer, sample_autoregressive
from atrous.streaming.program import lower


def check_fused(model: nn.Module, x: torch.Tensor, backend: str, *, seed: int = 0, allow_lookahead: bool = False,
                longest: int = 9) -> FusedStreamer:
    """Stream ``x`` in random chunks, resetting random streams now and then; compare every sequence
    of every stream with the offline forward of what it was fed since its last reset (the last one
    completed by ``flush``)."""
    def make(model, batch, allow_lookahead):
        return FusedStreamer(model, batch, backend=backend, allow_lookahead=allow_lookahead)

    return check_streaming(model, x, seed=seed, allow_lookahead=allow_lookahead, longest=longest, shortest=8,
                           make=make)


def pytorch_tcn(**options) -> nn.Module:
    module = pytest.importorskip("pytorch_tcn")
    torch.manual_seed(0)
    return module.TCN(num_inputs=3, **{"num_channels": [4, 4, 5], "kernel_size": 3, "dropout": 0.1, **options}).eval()


FUSED = {
    "locuslab-tcn": (locuslab_tcn, 3),
    "pytorch-tcn": (pytorch_tcn, 3),
    "pytorch-tcn-batch-norm-skips": (lambda: pytorch_tcn(use_norm="batch_norm", use_skip_connections=True,
                                                         num_channels=[4, 5, 6]), 3),
    "pytorch-tcn-layer-norm": (lambda: pytorch_tcn(use_norm="layer_norm"), 3),
    "pytorch-tcn-gate-layer-norm-elu": (lambda: pytorch_tcn(use_gate=True, use_norm="layer_norm", activation="elu"), 3),
    "pytorch-tcn-leaky-relu-skips": (lambda: pytorch_tcn(activation="leaky_relu", use_skip_connections=True), 3),
    "gated-concat": (gated_concat, 4),
    "norm-glu": (norm_glu, 4),
    "pytorch-tcn-selu": (lambda: pytorch_tcn(activation="selu"), 3),
    "activations-softmax": (lambda: Activations().eval(), 4),
}


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning:pytorch_tcn")  # its initializer gain with ELU
@pytest.mark.parametrize("name", list(FUSED))
def test_family_streams_fused_like_its_offline_forward(backend, name):
    build, channels = FUSED[name]
    model = build()
    x = torch.randn(3, channels, 50, generator=torch.Generator().manual_seed(1))
    check_fused(model, x, backend)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_the_locuslab_program_folds_chomps_and_weight_norm():
    program = lower(locuslab_tcn())
    assert [context for context, _ in program.rings] == [2, 2, 4, 4, 8, 8]  # padded and chomped: causal rings


# strided, transposed and lookahead windows: the ops run on clocks of their own ---------------------
MULTIRATE = {  # name: (build, input channels, length, lookahead, (rate, fused delay))
    "codec-encoder": (lambda: codec()[0], 1, 96, False, (Fraction(1, 6), 0)),
    "codec-decoder": (lambda: codec()[1], 3, 16, False, (6, 0)),
    "codec": (codec, 1, 96, False, (1, 5)),  # the decoder's frames come out one sample per tick
    "conv-tasnet": (lambda: TasNet().eval(), 1, 60, True, (1, 3)),
    "same-padded-tcn": (lambda: SameTCN().eval(), 3, 50, True, (1, 9)),
    "strided-lookahead": (lambda: StridedLookahead().eval(), 2, 48, True, (1, None)),
    "pooling": (lambda: Pooled().eval(), 2, 96, True, (Fraction(1, 4), 1)),
    "u-net-skip": (lambda: UNetSkip().eval(), 2, 48, True, (1, 1)),
    "transposed-shorter-than-stride": (lambda: nn.Sequential(
        nn.ConvTranspose1d(2, 2, 3, stride=3, padding=1), nn.Conv1d(2, 3, 2, stride=3), nn.ConstantPad1d((0, 3), 0.0),
        nn.Conv1d(3, 3, 4)).eval(), 2, 40, True, (1, 3)),
}


@pytest.mark.parametrize("name", list(MULTIRATE))
def test_strided_upsampling_and_lookahead_models_stream_fused_like_offline(backend, name):
    build, channels, length, lookahead, (rate, delay) = MULTIRATE[name]
    model = build()
    x = torch.randn(3, channels, length, generator=torch.Generator().manual_seed(2))
    streamer = check_fused(model, x, backend, allow_lookahead=lookahead, longest=13)
    reference = Streamer(model, 1, allow_lookahead=lookahead)
    assert streamer.rate == reference.rate == rate and streamer.period == reference.period
    assert streamer.delay >= reference.delay  # the fused step never emits an output earlier
    if delay is not None:
        assert streamer.delay == delay


@settings(max_examples=10, deadline=None)
@given(model=multirate_stacks(), length=st.sampled_from([36, 48, 60]), batch=st.sampled_from([1, 3]),
       longest=st.sampled_from([1, 4, 13]), seed=st.integers(0, 2**16))
def test_random_multirate_stacks_stream_fused_like_offline(backend, model, length, batch, longest, seed):
    x = torch.randn(batch, 2, length, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assume(model(x).shape[-1] > 0)  # strides can leave no output at all
    check_fused(model, x, backend, seed=seed, allow_lookahead=True, longest=longest)


def test_fused_outputs_come_delay_late_and_flush_gives_the_rest(backend):
    torch.manual_seed(0)
    model, x = SameTCN().eval(), torch.randn(2, 3, 40)
    with pytest.raises(ValueError, match=r"layer 'convs\.0' \(Conv1d\) needs 1 later sample.*allow_lookahead=True"):
        FusedStreamer(model, 2, backend=backend)
    streamer = FusedStreamer(model, 2, backend=backend, allow_lookahead=True)
    expected = model(x).detach()
    for t in range(40):  # one sample a step: the output of step t is the offline output at t - delay
        out = streamer.step(x[:, :, t : t + 1])
        assert out.shape[2] == (t >= streamer.delay)
        if out.shape[2]:
            torch.testing.assert_close(out[:, :, 0], expected[:, :, t - streamer.delay], atol=1e-5, rtol=0)
    torch.testing.assert_close(streamer.flush(), expected[:, :, 40 - streamer.delay :], atol=1e-5, rtol=0)
    assert streamer.samples_seen == 0
    with pytest.raises(ValueError, match="nothing to flush"):
        streamer.flush()


def test_single_streams_of_a_strided_model_restart_only_on_a_frame(backend):
    streamer = FusedStreamer(codec()[0], 2, backend=backend)
    streamer.step(torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match=r"multiple of 6 samples"):
        streamer.reset([1])
    streamer.reset()  # all streams: always possible
    assert streamer.samples_seen == 0


# a model's own inputs besides the chunk: a per-stream constant, a second sequence ---------------
class Conditioned(nn.Module):
    """A causal conv of the signal plus a 1x1 conv of a conditioning sequence, scaled per stream."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, dilation=2)
        self.condition = nn.Conv1d(2, 4, 1)
        self.scale = nn.Linear(5, 4)

    def forward(self, x, condition, style):
        h = self.conv(F.pad(x, (4, 0))) + self.condition(condition)
        return torch.tanh(h) * self.scale(style).unsqueeze(2) + self.scale(style)[..., None]


def test_models_with_inputs_besides_the_chunk_are_lowered_at_the_first_step(backend):
    torch.manual_seed(0)
    model, x, embedding = SkipTCN().eval(), torch.randn(2, 3, 40), torch.randn(2, 2)  # a (B, D) embedding
    streamer = FusedStreamer(model, 2, backend=backend)
    assert streamer.program is None and streamer.delay is None  # lowered from the first step's arguments
    got = torch.cat([streamer.step(x[:, :, t : t + 5], embedding) for t in range(0, 40, 5)], dim=2)
    torch.testing.assert_close(got, model(x, embedding), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"differ from those the streamer was built with"):
        streamer.step(x[:, :, :1], torch.randn(2, 3))
    model, condition, style = Conditioned().eval(), torch.randn(2, 2, 40), torch.randn(2, 5)
    streamer = FusedStreamer(model, 2, backend=backend)
    got = torch.cat([streamer.step(x[:, :, t : t + 8], condition[:, :, t : t + 8], style=style)
                     for t in range(0, 40, 8)], dim=2)
    torch.testing.assert_close(got, model(x, condition, style), atol=1e-5, rtol=0)
    assert streamer.program.local_name == "condition" and [n for n, _ in streamer.program.constants] == ["style"]
    with pytest.raises(ValueError, match=r"condition has 3 samples but the chunk has 4"):
        streamer.step(x[:, :, :4], condition[:, :, :3], style=style)


class OptionalCondition(nn.Module):
    """A conditioning sequence that is optional, and a strided layer and an upsampling one after it."""

    def __init__(self):
        super().__init__()
        self.conv, self.condition = nn.Conv1d(3, 4, 3), nn.Conv1d(2, 4, 1)
        self.down, self.up = nn.Conv1d(4, 4, 4, stride=2), nn.ConvTranspose1d(4, 2, 2, stride=2)

    def forward(self, x, condition=None):
        h = self.conv(F.pad(x, (2, 0)))
        h = torch.tanh(h if condition is None else h + self.condition(condition))
        return self.up(torch.relu(self.down(F.pad(h, (2, 0)))))


def test_an_optional_input_given_at_the_first_step_is_lowered_and_flushed(backend):
    torch.manual_seed(0)
    model, x, condition = OptionalCondition().eval(), torch.randn(2, 3, 16), torch.randn(2, 2, 16)
    streamer = FusedStreamer(model, 2, backend=backend)  # lowered without the condition, again at the first step
    got = torch.cat([streamer.step(x[:, :, :6], condition=condition[:, :, :6]), streamer.step(x[:, :, 6:],
                     condition[:, :, 6:]), streamer.flush()], dim=2)  # by keyword, then by position
    assert streamer.program is not None and streamer.program.local_name == "condition"
    torch.testing.assert_close(got, model(x, condition), atol=1e-5, rtol=0)


@pytest.mark.parametrize("build, message", [
    (lambda: nn.Sequential(CausalConv1d(2, 2, 2), nn.Softplus(beta=2)), r"layer '1' \(Softplus\): only beta=1"),
    (lambda: nn.Sequential(nn.Conv1d(2, 2, 1), nn.MaxPool1d(3, 1, padding=1)),
     r"layer '1' \(MaxPool1d\): it pads with -inf, not zeros"),
    (lambda: TasNet().eval(), r"layer 'decoder' \(ConvTranspose1d\) needs 1 later sample.*allow_lookahead"),
    (lambda: SkipTCN().eval(), r"without an example step: its forward takes more than the chunk"),
])
def test_what_the_fused_step_cannot_express_is_refused_by_node(build, message):
    """Padding with -inf; lookahead without allow_lookahead; several inputs without an example."""
    with pytest.raises(ValueError, match=rf"cannot fuse.*{message}.*"):
        lower(build(), allow_lookahead="lookahead" not in message)


def test_sampling_falls_back_to_the_streamer_when_the_model_does_not_fuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 4, 1), CausalConv1d(4, 4, 2), nn.Mish(), nn.Conv1d(4, 4, 1)).eval()
    with pytest.raises(ValueError, match=r"Mish"):
        lower(model)

    class Ids(nn.Module):  # class ids in, logits out, through the unfusable stack
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(F.one_hot(x, 4).transpose(1, 2).float())

    out = sample_autoregressive(Ids().eval(), 5, classes=4, batch_size=2, temperature=0)
    assert out.shape == (2, 5)
