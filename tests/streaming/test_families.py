"""Unmodified models of the common causal families, written from plain PyTorch modules (not atrous
layers), streamed in random chunks with random resets of single streams on a batch, and compared
with their offline forward (:func:`stream_checks.check_streaming`)."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from stream_checks import check_streaming
from torch import nn
from torch.nn.utils import weight_norm as old_weight_norm
from torch.nn.utils.parametrizations import weight_norm

from atrous.streaming import Streamer
from atrous.streaming.graph import Geometry, Kind


def windows(streamer: Streamer) -> list[Geometry]:
    return [node.geometry for node in streamer.graph.nodes if node.kind is Kind.WINDOW and node.geometry.extent > 1]


# locuslab/TCN (Bai et al. 2018): padding=(k-1)d on both sides, Chomp1d, old weight_norm -----
class Chomp1d(nn.Module):
    def __init__(self, chomp_size):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, : -self.chomp_size].contiguous()


class LocuslabBlock(nn.Module):
    def __init__(self, n_inputs, n_outputs, kernel_size, dilation, dropout=0.2):
        super().__init__()
        padding = (kernel_size - 1) * dilation
        self.conv1 = old_weight_norm(nn.Conv1d(n_inputs, n_outputs, kernel_size, padding=padding, dilation=dilation))
        self.conv2 = old_weight_norm(nn.Conv1d(n_outputs, n_outputs, kernel_size, padding=padding, dilation=dilation))
        self.net = nn.Sequential(self.conv1, Chomp1d(padding), nn.ReLU(), nn.Dropout(dropout),
                                 self.conv2, Chomp1d(padding), nn.ReLU(), nn.Dropout(dropout))
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_locuslab_tcn_streams_and_its_chomped_convs_become_causal():
    torch.manual_seed(0)
    blocks = [LocuslabBlock(3 if i == 0 else 4, 4 if i < 2 else 5, 3, 2**i) for i in range(3)]
    model = nn.Sequential(*blocks).eval()
    streamer = check_streaming(model, torch.randn(3, 3, 60), seed=1)
    assert streamer.delay == 0
    assert windows(streamer) == [Geometry(3, d, pad_left=2 * d) for d in (1, 1, 2, 2, 4, 4)]  # pad + chomp = causal
    # every step reads the current weights (the old weight_norm computes them in a forward pre-hook)
    streamer, x = Streamer(model, 1), torch.randn(1, 3, 10)
    with torch.no_grad():
        blocks[0].conv1.weight_g.mul_(2.0)
        blocks[1].conv2.bias.add_(1.0)
    torch.testing.assert_close(streamer.step(x), model(x), atol=1e-5, rtol=0)


# a pytorch-tcn-like TCN: a padding module before each conv, parametrised weight norm, channel
# LayerNorm through transposes, a GLU gate, skip connections stacked and summed, a constant embedding
class TemporalPad(nn.Module):
    def __init__(self, padding):
        super().__init__()
        self.pad = nn.ConstantPad1d((padding, 0), 0.0)

    def forward(self, x):
        return self.pad(x)


class PaddedConv(nn.Conv1d):
    def __init__(self, cin, cout, kernel_size, dilation):
        super().__init__(cin, cout, kernel_size, dilation=dilation)
        self.padder = TemporalPad((kernel_size - 1) * dilation)

    def forward(self, x):
        return super().forward(self.padder(x))


class GatedBlock(nn.Module):
    def __init__(self, cin, cout, kernel_size, dilation, embedding):
        super().__init__()
        self.conv1 = weight_norm(PaddedConv(cin, 2 * cout, kernel_size, dilation))
        self.norm1 = nn.LayerNorm(2 * cout)
        self.gate = nn.GLU(dim=1)
        self.conv2 = weight_norm(PaddedConv(cout, cout, kernel_size, dilation))
        self.embedding = nn.Conv1d(embedding, cout, 1)
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x, embedding):
        out = self.norm1(self.conv1(x).transpose(1, 2)).transpose(1, 2)
        out = self.gate(out)
        out = out + self.embedding(embedding.unsqueeze(2).repeat(1, 1, out.shape[2]))
        out = torch.relu(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + res), out


class SkipTCN(nn.Module):
    def __init__(self, cin=3, channels=(4, 4, 4), embedding=2):
        super().__init__()
        self.blocks = nn.ModuleList(GatedBlock(cin if i == 0 else channels[i - 1], c, 3, 2**i, embedding)
                                    for i, c in enumerate(channels))

    def forward(self, x, embedding):
        skips = []
        for block in self.blocks:
            x, skip = block(x, embedding)
            skips.append(skip)
        return torch.stack(skips, dim=0).sum(dim=0)


def test_gated_tcn_with_skip_connections_and_a_constant_embedding_streams():
    torch.manual_seed(0)
    model, x, embedding = SkipTCN().eval(), torch.randn(2, 3, 40), torch.randn(2, 2)
    streamer = Streamer(model, 2)
    assert streamer.graph is None  # forward needs the embedding: the graph is built at the first step
    got = torch.cat([streamer.step(x[:, :, t : t + 5], embedding) for t in range(0, 40, 5)], dim=2)
    torch.testing.assert_close(got, model(x, embedding), atol=1e-5, rtol=0)
    assert windows(streamer) == [Geometry(3, d, pad_left=2 * d) for d in (1, 1, 2, 2, 4, 4)]
    with pytest.raises(ValueError, match=r"differ from those of the earlier steps"):
        streamer.step(x[:, :, :1], torch.randn(2, 3))


@pytest.mark.parametrize("options", [
    {},
    {"use_norm": "layer_norm", "use_gate": True},
    {"use_norm": "batch_norm", "use_skip_connections": True, "num_channels": [4, 5, 6]},
    {"causal": False},
])
def test_pytorch_tcn_streams(options):
    pytorch_tcn = pytest.importorskip("pytorch_tcn")
    torch.manual_seed(0)
    arguments = {"num_inputs": 3, "num_channels": [4, 4, 5], "kernel_size": 3, "dropout": 0.1, **options}
    model = pytorch_tcn.TCN(**arguments).eval()
    causal = arguments.get("causal", True)
    streamer = check_streaming(model, torch.randn(3, 3, 40), allow_lookahead=not causal)
    assert streamer.delay == (0 if causal else 2 * (1 + 2 + 4))  # "same" padding: d on the right, twice a block


# Conv-TasNet (Luo & Mesgarani 2019), causal: a strided encoder, 1x1 bottleneck, depthwise dilated
# convs with PReLU and a channel-wise LayerNorm (cLN), masks, an overlap-add decoder --------------
class ChannelNorm(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class TasBlock(nn.Module):
    def __init__(self, b, h, kernel_size, dilation, norm):
        super().__init__()
        self.inp, self.act1, self.norm1 = nn.Conv1d(b, h, 1), nn.PReLU(), norm(h)
        self.pad = (kernel_size - 1) * dilation
        self.depthwise = nn.Conv1d(h, h, kernel_size, dilation=dilation, groups=h)
        self.act2, self.norm2 = nn.PReLU(), norm(h)
        self.res, self.skip = nn.Conv1d(h, b, 1), nn.Conv1d(h, b, 1)

    def forward(self, x):
        y = self.norm1(self.act1(self.inp(x)))
        y = self.norm2(self.act2(self.depthwise(F.pad(y, (self.pad, 0)))))
        return x + self.res(y), self.skip(y)


class TasNet(nn.Module):
    def __init__(self, norm=ChannelNorm, n=6, b=4, h=6, length=4, speakers=2):
        super().__init__()
        self.encoder = nn.Conv1d(1, n, length, stride=length // 2, bias=False)
        self.bottleneck = nn.Sequential(norm(n), nn.Conv1d(n, b, 1))
        self.blocks = nn.ModuleList(TasBlock(b, h, 3, 2**i, norm) for i in range(3))
        self.mask = nn.Sequential(nn.PReLU(), nn.Conv1d(b, speakers * n, 1))
        self.decoder = nn.ConvTranspose1d(n, 1, length, stride=length // 2, bias=False)
        self.speakers = speakers

    def forward(self, x):
        w = F.relu(self.encoder(x))
        y, skips = self.bottleneck(w), 0
        for block in self.blocks:
            y, skip = block(y)
            skips = skips + skip
        masks = torch.sigmoid(self.mask(skips)).chunk(self.speakers, dim=1)
        return torch.cat([self.decoder(w * mask) for mask in masks], dim=1)


def test_conv_tasnet_streams_with_the_overlap_of_its_decoder_as_delay():
    torch.manual_seed(0)
    model = TasNet().eval()
    with pytest.raises(ValueError, match=r"layer 'decoder' \(ConvTranspose1d\) needs 1 later sample of its input"
                                         r".*delay of 2 output samples"):
        Streamer(model, 1)
    streamer = check_streaming(model, torch.randn(3, 1, 90), allow_lookahead=True, longest=11)
    assert (streamer.delay, streamer.rate, streamer.graph.timing.period) == (2, 1, 2)  # the frame overlap, hop 2


def test_conv_tasnet_with_global_layer_norm_is_refused_by_node():
    # GroupNorm(1, C) normalises over channels *and* time: the non-causal gLN of Conv-TasNet
    with pytest.raises(ValueError, match=r"layer 'bottleneck\.0' \(GroupNorm\): it normalises over channels and time"
                                         r" together.*channels of each time step"):
        Streamer(TasNet(norm=lambda c: nn.GroupNorm(1, c)).eval(), 1, allow_lookahead=True)


# a SEANet/EnCodec-style codec (Zeghidour et al. 2021; Défossez et al. 2022): residual units at
# dilations 1, 3, 9, causal strided convs down, ConvTranspose1d up with the right end trimmed ------
class CausalConv(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, dilation=1):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(cin, cout, kernel_size, stride=stride, dilation=dilation))
        self.padding = (kernel_size - 1) * dilation - (stride - 1)

    def forward(self, x):
        return self.conv(F.pad(x, (self.padding, 0)))


class CausalUp(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride))
        self.trim = stride

    def forward(self, x):
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim]


class ResidualUnit(nn.Module):
    def __init__(self, channels, dilation):
        super().__init__()
        self.block = nn.Sequential(nn.ELU(), CausalConv(channels, channels // 2, 3, dilation=dilation), nn.ELU(),
                                   CausalConv(channels // 2, channels, 1))

    def forward(self, x):
        return x + self.block(x)


def codec(channels=4, strides=(2, 3), latent=3):
    encoder, width = [CausalConv(1, channels, 7)], channels
    for stride in strides:
        encoder += [*(ResidualUnit(width, d) for d in (1, 3, 9)), nn.ELU(), CausalConv(width, 2 * width, 2 * stride,
                                                                                       stride=stride)]
        width *= 2
    encoder += [nn.ELU(), CausalConv(width, latent, 3)]
    decoder = [CausalConv(latent, width, 7)]
    for stride in reversed(strides):
        decoder += [nn.ELU(), CausalUp(width, width // 2, stride), *(ResidualUnit(width // 2, d) for d in (1, 3, 9))]
        width //= 2
    decoder += [nn.ELU(), CausalConv(width, 1, 7)]
    return nn.Sequential(nn.Sequential(*encoder), nn.Sequential(*decoder)).eval()


def test_codec_encoder_streams_its_frames_and_the_decoder_its_samples():
    torch.manual_seed(0)
    model = codec()
    encoder, decoder = model
    streamer = check_streaming(encoder, torch.randn(3, 1, 120), longest=13)
    assert (streamer.rate, streamer.graph.timing.period, streamer.delay) == (Fraction(1, 6), 6, 0)
    frames = Streamer(encoder, 1)
    assert [frames.step(torch.randn(1, 1, 5)).shape[2] for _ in range(3)] == [0, 1, 1]  # a frame per 6 samples
    streamer = check_streaming(decoder, torch.randn(3, 3, 20), longest=3)
    assert (streamer.rate, streamer.delay) == (6, 0)
    x = torch.randn(2, 3, 7)
    assert Streamer(decoder, 2).step(x).shape[2] == 42  # 6 samples per latent frame, none held back


def test_codec_round_trip_streams_at_the_sample_rate():
    torch.manual_seed(0)
    model = codec()
    streamer = check_streaming(model, torch.randn(3, 1, 120), seed=2, longest=13)
    assert (streamer.rate, streamer.delay) == (1, 0)
    streamer.step(torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match=r"multiple of 6 samples"):
        streamer.reset([1])  # mid-frame: a restarted stream would be out of step with the frames
    streamer.reset()  # all streams: always possible


class UNetSkip(nn.Module):
    """A skip connection around a strided conv and a transposed conv: defined for even lengths only."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv1d(2, 3, 2, stride=2)
        self.up = nn.ConvTranspose1d(3, 2, 2, stride=2)

    def forward(self, x):
        return x + self.up(torch.relu(self.down(x)))


def test_a_skip_around_down_and_upsampling_streams_with_the_skip_waiting():
    """Output 0 needs input 1 (its frame): the skip path waits for the frame."""
    torch.manual_seed(0)
    streamer = check_streaming(UNetSkip().eval(), torch.randn(3, 2, 48), seed=4, allow_lookahead=True)
    assert (streamer.rate, streamer.period, streamer.delay) == (1, 2, 1)  # traced on even lengths
    skip = UNetSkip()
    skip.down, skip.up = nn.Conv1d(2, 3, 2, stride=13), nn.ConvTranspose1d(3, 2, 13, stride=13)  # no length tried fits
    with pytest.raises(ValueError, match=r"every example length tried failed \(16, .*40320, and about twice each\)"):
        Streamer(skip.eval(), 1).step(torch.randn(1, 2, 26))


# gates, concatenation and slicing along channels, Linear over channels, conditioning -------------
class GatedResidual(nn.Module):
    def __init__(self, channels=4, speakers=3, local=2):
        super().__init__()
        self.conv = nn.Conv1d(channels, 2 * channels, 2, dilation=2)
        self.speaker = nn.Embedding(speakers, 2 * channels)
        self.local = nn.Conv1d(local, 2 * channels, 1, bias=False)
        self.mix = nn.Linear(2 * channels, channels)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x, speaker, local):
        h = self.conv(F.pad(x, (2, 0))) + self.speaker(speaker).unsqueeze(2) + self.local(local)
        half = h.shape[1] // 2
        z = torch.tanh(h[:, :half]) * torch.sigmoid(h[:, half:])
        both = torch.cat([z, x], dim=1)
        return self.norm(x[:, :2].repeat(1, 2, 1) + self.mix(both.transpose(1, 2)).transpose(1, 2))


def test_gates_concatenation_slicing_and_conditioning_stream():
    torch.manual_seed(0)
    model = GatedResidual().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
        model.norm.running_var.uniform_(0.5, 2)
    x, speaker, local = torch.randn(3, 4, 30), torch.tensor([2, 0, 1]), torch.randn(3, 2, 30)
    streamer = Streamer(model, 3)
    got = torch.cat([streamer.step(x[:, :, t : t + 4], speaker, local[:, :, t : t + 4]) for t in range(0, 30, 4)], 2)
    torch.testing.assert_close(got, model(x, speaker, local), atol=1e-5, rtol=0)
    assert {node.kind for node in streamer.graph.nodes} >= {Kind.STATIC, Kind.POINTWISE, Kind.WINDOW}
    model.train()
    with pytest.raises(ValueError, match=r"layer 'norm' \(BatchNorm1d\) in training mode.*model\.eval\(\)"):
        streamer.step(x[:, :, :1], speaker, local[:, :, :1])


# lookahead: "same" padding and non-causal convolutions stream delayed ----------------------------
class SameTCN(nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding="same", dilation=d) for d in (1, 2, 4))
        self.head = nn.Conv1d(channels, 2, 5, padding=2)

    def forward(self, x):
        for conv in self.convs:
            x = x + torch.relu(conv(x))
        return self.head(x)


def test_a_model_with_lookahead_streams_its_outputs_delayed():
    torch.manual_seed(0)
    model, x = SameTCN().eval(), torch.randn(2, 3, 50)
    with pytest.raises(ValueError, match=r"layer 'convs\.0' \(Conv1d\) needs 1 later sample of its input.*"
                                         r"layer 'head' \(Conv1d\) needs 2 later samples.*needs 9 future input"):
        Streamer(model, 2)
    streamer = Streamer(model, 2, allow_lookahead=True)
    assert streamer.delay == streamer.lookahead == 1 + 2 + 4 + 2
    expected = model(x).detach()
    emitted = 0
    for t in range(50):
        out = streamer.step(x[:, :, t : t + 1])  # output of step t is the offline output at t - delay
        assert out.shape[2] == (1 if t >= streamer.delay else 0)
        if out.shape[2]:
            torch.testing.assert_close(out[:, :, 0], expected[:, :, t - streamer.delay], atol=1e-5, rtol=0)
            emitted += 1
    tail = streamer.flush()  # the right padding of the offline forward
    torch.testing.assert_close(tail, expected[:, :, emitted:], atol=1e-5, rtol=0)
    assert streamer.samples_seen == 0  # flush starts every stream afresh
    check_streaming(model, torch.randn(3, 3, 60), allow_lookahead=True, seed=3)  # with resets of single streams


# what cannot stream is refused, naming the node and why ----------------------------------------
class Refused(nn.Module):
    def __init__(self, what):
        super().__init__()
        self.what = what
        self.conv = nn.Conv1d(2, 2, 1)
        self.attention = nn.MultiheadAttention(2, 1, batch_first=True)

    def forward(self, x):
        x = self.conv(x)
        if self.what == "pooling":
            return x - x.mean(dim=-1, keepdim=True)
        if self.what == "attention":
            y = x.transpose(1, 2)
            return self.attention(y, y, y)[0].transpose(1, 2)
        if self.what == "branch":
            return x * 2 if x.shape[-1] > 10 else x
        if self.what == "last":
            return x[..., -1:]
        if self.what == "time_cat":
            return torch.cat([x, x], dim=2)[..., : x.shape[2]]
        if self.what == "positions":
            return x + torch.arange(x.shape[2], dtype=x.dtype)
        if self.what == "flip":  # a symmetric cut of time would let this pass
            return x.flip(-1)
        if self.what == "by_length":  # inside a streamer the length is the chunk's
            return x / x.shape[-1]
        if self.what == "norm_over_time":
            return F.layer_norm(x, x.shape[1:])
        return torch.cumsum(x, dim=2)


@pytest.mark.parametrize("what, message", [
    ("pooling", r"node 'mean' \(mean in layer '<root>' \(Refused\)\): its output has no time axis"),
    ("attention", r"layer 'attention' \(MultiheadAttention\): it is a recurrent or attention layer"),
    ("branch", r"node 'gt' \(gt in layer '<root>' \(Refused\)\) is used in a branch"),
    ("last", r"node 'getitem' .* starts at a position counted from the end"),
    ("time_cat", r"node 'cat' .* concatenates along the time axis"),
    ("positions", r"node 'arange' .* builds a sequence from the input's length"),
    ("cumsum", r"node 'cumsum' .* mixes samples along the time axis"),
    ("flip", r"node 'flip' .* mixes samples along the time axis"),
    ("by_length", r"node 'truediv' .* mixes samples along the time axis"),
    ("norm_over_time", r"node 'layer_norm' .* mixes samples along the time axis"),
])
def test_what_needs_the_whole_sequence_is_refused_by_node(what, message):
    with pytest.raises(ValueError, match=rf"cannot stream .*{message}"):
        Streamer(Refused(what).eval(), 1)
