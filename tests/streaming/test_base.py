"""Both streamers share one set of checks and one reset (atrous/streaming/base.py): the same
arguments are refused with the same messages, and a reset stream restarts like a new sequence."""

import pytest
import torch

from atrous.models import create
from atrous.streaming import FusedStreamer, Streamer


def tiny_tcn():
    return create("tcn", in_channels=3, out_channels=2, hidden=4, levels=2, kernel_size=3).eval()


@pytest.fixture(params=["Streamer", "FusedStreamer-cpp", "FusedStreamer-torch"])
def make(request, compiler):
    """A streamer factory: ``make(model, batch_size)``."""
    if request.param == "Streamer":
        return Streamer
    backend = request.param.split("-")[1]
    if backend == "cpp" and compiler is None:
        pytest.skip("no C++ compiler on PATH: the compiled step cannot be built here")
    return lambda model, batch_size: FusedStreamer(model, batch_size, backend=backend)


@pytest.mark.parametrize("batch_size", [0, -1, 1.0, True, "2"])
def test_a_bad_batch_size_is_refused(make, batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be an int >= 1, got {batch_size!r}"):
        make(tiny_tcn(), batch_size)


def test_a_model_that_is_not_a_module_is_refused(make):
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got function"):
        make(lambda x: x, 1)


@pytest.mark.parametrize("indices, error, message", [
    (1.5, TypeError, r"indices must be an int, a sequence of ints or an integer tensor"),
    (["a"], TypeError, r"indices must be an int"),
    (torch.tensor([True, False]), TypeError, r"indices must be an int"),
    ([0, 2], ValueError, r"indices must lie in \[0, 2\) \(batch_size=2\), got \[0, 2\]"),
    (-1, ValueError, r"indices must lie in \[0, 2\)"),
])
def test_bad_reset_indices_are_refused(make, indices, error, message):
    streamer = make(tiny_tcn(), 2)
    with pytest.raises(error, match=message):
        streamer.reset(indices)


def test_chunks_must_carry_one_row_per_stream(make):
    streamer = make(tiny_tcn(), 2)
    with pytest.raises(TypeError, match=r"chunk must be a torch.Tensor, got list"):
        streamer.step([[0.0]])
    for shape in [(3, 3, 4), (2, 3, 0), (2,)]:
        with pytest.raises(ValueError, match=r"chunk must have shape \(batch_size=2, \.\.\., L >= 1\)"):
            streamer.step(torch.zeros(shape))
    assert streamer.samples_seen == 0


@pytest.mark.parametrize("indices", [1, [1], torch.tensor([1]), (1,)])
def test_a_reset_stream_restarts_and_the_others_go_on(make, indices):
    torch.manual_seed(0)
    model, x = tiny_tcn(), torch.randn(2, 3, 30)
    streamer = make(model, 2)
    first = streamer.step(x[:, :, :12])
    streamer.reset(indices)
    assert streamer.samples_seen == 12  # time goes on for the streams not reset
    second = streamer.step(x[:, :, 12:])
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([first, second], dim=2)[0], model(x)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(second[1:], model(x[1:, :, 12:]), atol=1e-5, rtol=0)
    streamer.reset()
    assert streamer.samples_seen == 0
    with torch.no_grad():
        torch.testing.assert_close(streamer.step(x), model(x), atol=1e-5, rtol=0)
    assert streamer.context == 2 * (2 + 4)  # (k - 1) d of two convs at dilations 1 and 2
