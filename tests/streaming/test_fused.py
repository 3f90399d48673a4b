"""The fused streamer (C++ and PyTorch backends) must equal the offline forward for any stack,
batch, chunking and reset, like the Streamer it speeds up."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from fused_models import causal_stacks
from torch import nn

from atrous.models import create
from atrous.ops.layers import CausalConv1d
from atrous.streaming import FusedStreamer, Streamer, kernel_cache

# `backend` (tests/streaming/conftest.py): "cpp" and "torch"; "cpp" is skipped only without a compiler


def stream(streamer, x: torch.Tensor, lengths: list[int], local: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    outs, t = [], 0
    for length in lengths:
        if local is not None:
            kwargs["local_condition"] = local[..., t : t + length]
        outs.append(streamer.step(x[..., t : t + length], **kwargs))
        t += length
    assert t == x.shape[-1]
    return torch.cat(outs, dim=-1)


def chunks(total: int, seed: int, longest: int = 9) -> list[int]:
    """Random chunk lengths summing to ``total``, single samples included."""
    generator, lengths = torch.Generator().manual_seed(seed), []
    while sum(lengths) < total:
        lengths.append(min(int(torch.randint(1, longest + 1, (1,), generator=generator)), total - sum(lengths)))
    return lengths


@settings(max_examples=20, deadline=None)
@given(model=causal_stacks(), batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_random_stacks_stream_exactly(backend, model, batch, seed):
    torch.manual_seed(seed)
    x = torch.randn(batch, model[-1].in_channels, 40)
    with torch.no_grad():
        expected = model(x)
    streamer = FusedStreamer(model, batch, backend=backend)
    assert streamer.backend == backend
    torch.testing.assert_close(stream(streamer, x, chunks(40, seed)), expected, atol=1e-5, rtol=0)


def tiny_wavenet(**kwargs) -> nn.Module:
    return create("wavenet", classes=16, blocks=2, layers=4, residual_channels=4, gate_channels=6,
                  skip_channels=5, **kwargs).eval()


@pytest.mark.parametrize("lengths", [[1] * 60, [3, 1, 20, 1, 1, 34], [60]])
def test_wavenet_with_conditioning_streams_exactly(backend, lengths):
    torch.manual_seed(0)
    model = tiny_wavenet(global_classes=3, local_channels=2)
    ids, speakers, local = torch.randint(0, 16, (3, 60)), torch.tensor([2, 0, 1]), torch.randn(3, 2, 60)
    with torch.no_grad():
        expected = model(ids, global_condition=speakers, local_condition=local)
    got = stream(FusedStreamer(model, 3, backend=backend), ids, lengths, local, global_condition=speakers)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_default_wavenet_streams_past_its_receptive_field(backend):
    """3 blocks of dilations 1..512: the rings wrap (many times in C++); single steps after chunks."""
    torch.manual_seed(0)
    model = create("wavenet").eval()
    total = 3300 if backend == "cpp" else 700  # the PyTorch backend is ~50x slower per step
    ids = torch.randint(0, 256, (2, total))
    with torch.no_grad():
        expected = model(ids)[:, :, -40:]
    streamer = FusedStreamer(model, 2, backend=backend)
    stream(streamer, ids[:, : total - 40], chunks(total - 40, 1, longest=400))
    got = stream(streamer, ids[:, total - 40 :], [1] * 40)
    assert streamer.samples_seen == total and streamer.context == model.receptive_field - 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def tiny_tcn() -> nn.Module:
    return create("tcn", in_channels=3, out_channels=2, hidden=5, levels=3, kernel_size=3, dropout=0.1).eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_tcn_streams_exactly_and_matches_the_streamer(backend, seed):
    torch.manual_seed(seed)
    model, x = tiny_tcn(), torch.randn(4, 3, 50)
    lengths = chunks(50, seed)
    got = stream(FusedStreamer(model, 4, backend=backend), x, lengths)
    torch.testing.assert_close(got, model(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(got, stream(Streamer(model, 4), x, lengths), atol=1e-5, rtol=0)


def test_per_stream_reset_restarts_only_those_streams(backend):
    torch.manual_seed(0)
    model, x = tiny_tcn(), torch.randn(3, 3, 50)
    streamer = FusedStreamer(model, 3, backend=backend)
    first = stream(streamer, x[:, :, :20], [5, 15])
    streamer.reset([1])
    second = stream(streamer, x[:, :, 20:], [1, 29])
    full = model(x)
    torch.testing.assert_close(torch.cat([first, second], dim=2)[[0, 2]], full[[0, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(second[1:2], model(x[1:2, :, 20:]), atol=1e-5, rtol=0)
    streamer.reset()
    assert streamer.samples_seen == 0
    torch.testing.assert_close(stream(streamer, x, [50]), full, atol=1e-5, rtol=0)


def test_state_lives_outside_the_model_and_weights_are_copied(backend):
    model = tiny_tcn()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 6)
    streamer = FusedStreamer(model, 2, backend=backend)
    other = FusedStreamer(model, 2, backend=backend)
    streamer.step(torch.randn(2, 3, 4))
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    torch.testing.assert_close(other.step(x), model(x), atol=1e-5, rtol=0)  # no state shared


def test_unsupported_layers_and_bad_inputs_give_clear_errors(backend):
    with pytest.raises(ValueError, match=r"cannot fuse .*layer '1' \(LSTM\)"):
        FusedStreamer(nn.Sequential(CausalConv1d(2, 2, 2), nn.LSTM(2, 2)), 1, backend=backend)
    with pytest.raises(ValueError, match=r"cannot fuse .*layer '1' \(Conv1d\) needs 1 later sample"):
        FusedStreamer(nn.Sequential(CausalConv1d(2, 2, 2), nn.Conv1d(2, 2, 3, padding=1)), 1, backend=backend)
    with pytest.raises(ValueError, match=r"cannot fuse layer '1' \(Mish\): no fused op for Mish.*Streamer"):
        FusedStreamer(nn.Sequential(CausalConv1d(2, 2, 2), nn.Mish()), 1, backend=backend)
    with pytest.raises(ValueError, match=r"blocks\.0\.net\.2.*model\.eval\(\)"):
        FusedStreamer(tiny_tcn().train(), 1, backend=backend)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        FusedStreamer(tiny_tcn(), 1, backend="cuda")
    model = tiny_wavenet(global_classes=3)
    streamer = FusedStreamer(model, 2, backend=backend)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 16\)"):
        streamer.step(torch.tensor([[3], [16]]), global_condition=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"global_condition ids must lie in \[0, 3\)"):
        streamer.step(torch.tensor([[3], [4]]), global_condition=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"global_condition must be \(2,\)"):
        streamer.step(torch.tensor([[3], [4]]))
    with pytest.raises(ValueError, match=r"batch_size=2"):
        streamer.step(torch.tensor([[3]]), global_condition=torch.tensor([0]))
    assert streamer.samples_seen == 0  # nothing ran


def test_auto_backend_falls_back_to_pytorch_ops_without_a_compiler(monkeypatch):
    monkeypatch.setattr(kernel_cache, "_load", lambda: "no C++ compiler (c++, g++ or clang++) on PATH")
    model, x = tiny_tcn(), torch.randn(2, 3, 5)
    with pytest.warns(UserWarning, match=r"no C\+\+ compiler.*backend='torch'"):
        streamer = FusedStreamer(model, 2)
    assert streamer.backend == "torch"
    torch.testing.assert_close(streamer.step(x), model(x), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match=r"could not be built: no C\+\+ compiler"):
        FusedStreamer(tiny_tcn(), 1, backend="cpp")


def test_streams_split_across_threads_stream_exactly(backend):
    """At 2 threads and 8 streams the C++ step runs two halves of the batch in parallel."""
    torch.manual_seed(0)
    model, x = tiny_tcn(), torch.randn(8, 3, 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = stream(FusedStreamer(model, 8, backend=backend), x, chunks(40, 2))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, model(x), atol=1e-5, rtol=0)
