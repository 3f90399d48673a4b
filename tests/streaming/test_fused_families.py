"""Models of the common causal families, written from plain PyTorch modules, through the one
lowering of the traced graph (atrous/streaming/lowering.py): those it expresses stream through
FusedStreamer (both backends) like their offline forward with random chunking and resets of
single streams; the others are refused naming the node, and sampling falls back to Streamer."""

import pytest
import torch
import torch.nn.functional as F
from stream_checks import random_lengths
from fused_models import gated_concat, locuslab_tcn, norm_glu
from test_families import SkipTCN, TasNet, codec
from torch import nn

from atrous.ops.layers import CausalConv1d
from atrous.streaming import FusedStreamer, sample_autoregressive
from atrous.streaming.program import lower


def check_fused(model: nn.Module, x: torch.Tensor, backend: str, *, seed: int = 0) -> FusedStreamer:
    """Stream ``x`` in random chunks, resetting random streams now and then; compare every sequence
    of every stream with the offline forward of what it was fed since its last reset."""
    generator = torch.Generator().manual_seed(seed)
    batch, total = x.shape[0], x.shape[-1]
    streamer = FusedStreamer(model, batch, backend=backend)
    starts = [[0] for _ in range(batch)]
    outs, t = [], 0
    for length in random_lengths(total, generator):
        outs.append(streamer.step(x[..., t : t + length]))
        t += length
        if 8 <= t - max(s[-1] for s in starts) and total - t >= 8 and torch.rand(1, generator=generator) < 0.3:
            rows = [i for i in range(batch) if torch.rand(1, generator=generator) < 0.5] or [0]
            streamer.reset(rows)
            for i in rows:
                starts[i].append(t)
    got = torch.cat(outs, dim=-1)
    with torch.no_grad():
        for i in range(batch):
            bounds = starts[i] + [total]
            for begin, end in zip(bounds, bounds[1:]):
                torch.testing.assert_close(got[i : i + 1, :, begin:end], model(x[i : i + 1, :, begin:end]),
                                           atol=1e-5, rtol=0, msg=lambda m, i=i, b=begin: f"stream {i} from {b}: {m}")
    return streamer


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


@pytest.mark.parametrize("build, message", [
    (lambda: nn.Sequential(CausalConv1d(2, 2, 2), nn.ELU(alpha=0.5)), r"layer '1' \(ELU\): only alpha=1"),
    (codec, r"layer '0\.5\.conv' \(ParametrizedConv1d\): it changes the sample rate"),
    (lambda: TasNet().eval(), r"layer 'decoder' \(ConvTranspose1d\) needs 1 later sample"),
    (lambda: SkipTCN().eval(), r"takes one \(B, C, T\) input"),
])
def test_what_the_fused_step_cannot_express_is_refused_by_node(build, message):
    with pytest.raises(ValueError, match=rf"cannot fuse.*{message}.*"):
        lower(build())


def test_sampling_falls_back_to_the_streamer_when_the_model_does_not_fuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 4, 1), CausalConv1d(4, 4, 2), nn.Softplus(), nn.Conv1d(4, 4, 1)).eval()
    with pytest.raises(ValueError, match=r"Softplus"):
        lower(model)

    class Ids(nn.Module):  # class ids in, logits out, through the unfusable stack
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(F.one_hot(x, 4).transpose(1, 2).float())

    out = sample_autoregressive(Ids().eval(), 5, classes=4, batch_size=2, temperature=0)
    assert out.shape == (2, 5)
