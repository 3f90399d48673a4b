"""The exported streaming step, driven by onnxruntime with its states fed back, must equal the
offline PyTorch forward over 500 steps."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from atrous.models import create
from atrous.ops.layers import CausalConv1d
from atrous.streaming import FusedStreamer
from atrous.streaming.functional import StreamingStep

sys.path.insert(0, str(Path(__file__).parents[1] / "streaming"))  # the shared model builders
from fused_models import gated_concat, locuslab_tcn, norm_glu  # noqa: E402
from test_fused_families import MULTIRATE, Conditioned  # noqa: E402

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from atrous.export.streaming import export_streaming_onnx

# torch.export's pytree code warns about its own deprecated LeafSpec while exporting
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def stream_onnx(path, feeds_per_step: list[dict], states: dict) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = []
    for feeds in feeds_per_step:
        y, *new_states = session.run(None, {**feeds, **states})
        states = dict(zip(states, new_states))  # the outputs follow the state inputs' order
        outs.append(y)
    return np.stack(outs, axis=2) if outs[0].ndim == 2 else np.concatenate(outs, axis=2)  # (B, C_out, T)


def test_wavenet_with_conditioning_streams_500_steps_through_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = create("wavenet", classes=16, blocks=2, layers=3, residual_channels=4, gate_channels=6,
                   skip_channels=5, global_classes=3, local_channels=2).eval()
    result = export_streaming_onnx(model, tmp_path / "wavenet_step.onnx", optimize=False)  # faster to export
    assert result.input_names == ("x", "global_condition", "local_condition", *(f"state_{i}" for i in range(6)))
    assert result.output_names == ("y", *(f"new_state_{i}" for i in range(6)))
    assert result.state_shapes[-1] == (4, 4)  # residual channels, dilation 4 x (kernel 2 - 1)
    batch, steps = 3, 500  # a batch the graph was not traced with: the batch axis is symbolic
    ids, speakers, local = torch.randint(0, 16, (batch, steps)), torch.tensor([2, 0, 1]), torch.randn(batch, 2, steps)
    with torch.no_grad():
        expected = model(ids, global_condition=speakers, local_condition=local).numpy()
    feeds = [{"x": ids[:, t].numpy(), "global_condition": speakers.numpy(), "local_condition": local[:, :, t].numpy()}
             for t in range(steps)]
    got = stream_onnx(result.path, feeds, result.initial_states(batch))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_tcn_streams_500_steps_through_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = create("tcn", in_channels=3, out_channels=2, hidden=6, levels=3, kernel_size=3).eval()
    result = export_streaming_onnx(model, tmp_path / "tcn_step.onnx")
    assert len(result.state_shapes) == 6 and result.state_shapes[0] == (3, 2)  # level 0: k=3, d=1, 3 inputs
    assert result.state_shapes[-1] == (6, 8)  # level 2: d=4, (k - 1) d = 8
    x = torch.randn(2, 3, 500)
    with torch.no_grad():
        expected = model(x).numpy()
    got = stream_onnx(result.path, [{"x": x[:, :, t].numpy()} for t in range(500)], result.initial_states(2))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("build, channels", [(locuslab_tcn, 3), (gated_concat, 4), (norm_glu, 4)])
def test_any_fusable_graph_streams_through_onnxruntime(tmp_path, build, channels):
    """A locuslab-style TCN (padding + chomp, old weight_norm), a gated block with concatenation,
    batch norm, a Linear over channels and slicing, and a block with PReLU, channel LayerNorm, GLU,
    ELU and LeakyReLU, all from plain nn modules."""
    model = build()
    result = export_streaming_onnx(model, tmp_path / "step.onnx", optimize=False)
    assert result.input_names[0] == "x" and len(result.state_shapes) == len(result.input_names) - 1
    x = torch.randn(3, channels, 200, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    got = stream_onnx(result.path, [{"x": x[:, :, t].numpy()} for t in range(200)], result.initial_states(3))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("name", ["codec", "conv-tasnet", "strided-lookahead"])
def test_strided_upsampling_and_lookahead_graphs_stream_through_onnxruntime(tmp_path, name):
    """A codec (strided convs down, transposed convs up), a Conv-TasNet-style separator and a
    strided model with lookahead, a delay line and a product: one block of input a call."""
    build, channels, length, lookahead, _ = MULTIRATE[name]
    model = build()
    result = export_streaming_onnx(model, tmp_path / "step.onnx", optimize=False, allow_lookahead=lookahead)
    assert result.input_names[-2:] == ("work", "time") and result.output_names[-2:] == ("new_work", "new_time")
    x = torch.randn(2, channels, length, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    block = result.block
    feeds = [{"x": x[:, :, t : t + block].numpy()} for t in range(0, length, block)]
    got = stream_onnx(result.path, feeds, result.initial_states(2))[:, :, result.leading :]
    assert expected.shape[2] - result.delay <= got.shape[2] <= expected.shape[2]  # all but the held-back ones
    assert result.delay == FusedStreamer(model, 1, allow_lookahead=lookahead).delay
    np.testing.assert_allclose(got, expected[:, :, : got.shape[2]], atol=1e-4, rtol=0)


def test_a_model_with_its_own_inputs_besides_the_chunk_exports_them_by_name(tmp_path):
    """A per-stream constant (B, D) and a second sequence (B, C, T) become inputs of the step."""
    torch.manual_seed(0)
    model, x, condition, style = Conditioned().eval(), torch.randn(2, 3, 30), torch.randn(2, 2, 30), torch.randn(2, 5)
    result = export_streaming_onnx(model, tmp_path / "step.onnx", optimize=False, example=(x, condition, style))
    assert result.input_names[:3] == ("x", "style", "condition")
    feeds = [{"x": x[:, :, t].numpy(), "style": style.numpy(), "condition": condition[:, :, t].numpy()}
             for t in range(30)]
    got = stream_onnx(result.path, feeds, result.initial_states(2))
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x, condition, style).numpy(), atol=1e-4, rtol=0)


def test_functional_step_matches_offline_and_rejects_bad_arguments(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(CausalConv1d(2, 4, 3, dilation=2), nn.GELU(), CausalConv1d(4, 1, 2, dilation=5)).eval()
    step = StreamingStep(model)
    states, outs, x = step.initial_states(2), [], torch.randn(2, 2, 30)
    with torch.no_grad():
        for t in range(30):
            y, *states = step(x[:, :, t], *states)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs, 2), model(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"expected 2 tensors after x \(state_0, state_1\), got 1"):
        step(x[:, :, 0], states[0])
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        export_streaming_onnx(model, tmp_path / "step.onnx", batch_size=0)
    with pytest.raises(ValueError, match=r"cannot fuse .*layer '1' \(LSTM\)"):
        export_streaming_onnx(nn.Sequential(CausalConv1d(2, 2, 2), nn.LSTM(2, 2)), tmp_path / "step.onnx")
