"""Every registered model under ``torch.compile`` (one graph, no breaks) and ``torch.jit.trace``,
against the eager forward; traces are replayed at sizes they were not traced at, odd ones
included, and a dynamic-shape compile serves several sizes without recompiling.

The ``aot_eager`` backend captures the graph as inductor would (dynamo, then AOT autograd) but
runs it without generating code, so every model is covered in seconds; it runs in float64,
where any difference from eager beyond rounding is a real one (in float32 the decomposed
BatchNorm and interpolation round differently, and 100 layers amplify that to ~1e-3).
"""

import warnings

import pytest
import torch
from tiny_models import calibrated, create_tiny, resnet101_twins
from torch import nn

from atrous.models import list_models
from atrous.ops import CausalConv1d, DilatedConv1d, DilatedConv2d, DilatedStack

pytestmark = [
    # Tiny inputs are smaller than ASPP's rates; eager forwards warn so (captured ones do not).
    pytest.mark.filterwarnings("ignore::atrous.models.RateWarning"),
    # torch.jit.trace and the script methods it builds are deprecated since torch 2.9.
    pytest.mark.filterwarnings("ignore:`torch\\.jit:DeprecationWarning"),
]

# A ResNet-101 twin runs its ResNet-50 twin's code with 17 more blocks (tiny_models.resnet101_twins):
# compiling and tracing both twins cost ~20 s of CPU and covered no code path the ResNet-50
# models do not.
TWINS = resnet101_twins(list_models("segmentation"))
SEGMENTATION = [pytest.param(name, marks=pytest.mark.skip(reason="its ResNet-50 twin runs the same code"))
                if name in TWINS else name for name in list_models("segmentation")]


def tiny_segmentation(name: str) -> nn.Module:
    """A registered model built tiny, with random BatchNorm scales and shifts (so residual branches
    that start at zero take part) and statistics of random images (O(1) outputs)."""
    torch.manual_seed(0)
    return calibrated(create_tiny(name), torch.randn(2, 3, 64, 64))


def trace(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` without its expected warnings (it is deprecated in torch 2.9+, and the
    size checks of the ops read sizes as Python values)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(model, x)


def assert_matches_eager(compiled, model, x, atol=1e-5):
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=atol)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_model_compiles_to_one_graph(name):
    torch._dynamo.reset()
    model = tiny_segmentation(name).double()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    assert_matches_eager(compiled, model, torch.randn(2, 3, 33, 47, dtype=torch.float64))


@pytest.mark.parametrize("name", list_models("sequence"))
def test_sequence_model_compiles_to_one_graph(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_tiny(name).eval().double()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_matches_eager(compiled, model, torch.randn(2, model.in_channels, 37, dtype=torch.float64))


def test_space_to_batch_stack_compiles_to_one_graph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    stack = DilatedStack(4, (1, 2, 2, 2, 4, 4)).eval().double()
    assert any(fused for *_, fused in stack.groups_of_layers())
    compiled = torch.compile(stack, backend="aot_eager", fullgraph=True)
    assert_matches_eager(compiled, stack, torch.randn(2, 4, 31, 30, dtype=torch.float64))


@pytest.mark.slow
def test_inductor_compiles_context_net():
    """The default backend once, generating and compiling C++ (tens of seconds on 2 cores)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_tiny("context_net", width_multiplier=0.25).eval()
    compiled = torch.compile(model, fullgraph=True)
    assert_matches_eager(compiled, model, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_model_traces_and_replays_at_new_sizes(name):
    """Strided "same" padding, space_to_batch padding, ASPP's pooling and the decoders' resizes
    (FCN-8s's are no-ops at 64 x 64) all follow the size."""
    model = tiny_segmentation(name)
    traced = trace(model, torch.randn(1, 3, 64, 64))
    for shape in [(2, 3, 72, 80), (1, 3, 33, 47)]:
        assert_matches_eager(traced, model, torch.randn(shape))


@pytest.mark.parametrize("name", list_models("sequence"))
def test_sequence_model_traces_and_replays_at_new_lengths(name):
    torch.manual_seed(0)
    model = create_tiny(name).eval()
    traced = trace(model, torch.randn(1, model.in_channels, 37))
    assert_matches_eager(traced, model, torch.randn(3, model.in_channels, 50))


def test_space_to_batch_stack_traces_and_replays_at_any_size():
    """Traced at a multiple of every rate (no padding needed), the fused runs still pad, re-zero
    and crop by amounts that follow the size, so sizes that need padding replay too."""
    torch.manual_seed(0)
    stack = DilatedStack(4, (1, 2, 2, 2, 4, 4)).eval()
    traced = trace(stack, torch.randn(1, 4, 32, 32))
    for shape in [(2, 4, 32, 32), (2, 4, 31, 30), (1, 4, 33, 47)]:
        assert_matches_eager(traced, stack, torch.randn(shape))


def layers_of_every_padding() -> list[nn.Module]:
    """Strided and unstrided, odd and even kernels, several dilations, every padding spec."""
    torch.manual_seed(0)
    planar = [
        DilatedConv2d(2, 3, kernel, stride=stride, dilation=dilation)
        for stride in (1, 2, 3)
        for kernel in (1, 2, 3, 4)
        for dilation in (1, 2, 3)
    ]
    planar += [
        DilatedConv2d(2, 3, (3, 2), stride=(1, 2), dilation=2, padding="valid"),
        DilatedConv2d(2, 3, 3, stride=(2, 1), dilation=(1, 2), padding=(1, 2)),
        DilatedConv2d(2, 3, 4, stride=2, dilation=2, padding_mode="replicate"),
    ]
    sequence = [
        DilatedConv1d(2, 3, 4, stride=3, dilation=2, padding_mode="reflect"),
        CausalConv1d(2, 3, 3, dilation=2, stride=2),
    ]
    return [layer.eval() for layer in planar + sequence]


@pytest.mark.parametrize("layer", layers_of_every_padding(), ids=repr)
def test_traced_layer_replays_at_every_size_parity(layer):
    """Traced at 64 x 64, replayed at sizes of every remainder modulo the strides."""
    spatial = layer.weight.ndim - 2
    traced = trace(layer, torch.randn(1, 2, *[64, 64][:spatial]))
    for height in [72, 33, *range(12, 18)]:
        assert_matches_eager(traced, layer, torch.randn(2, 2, *[height, height + 7][:spatial]))


@pytest.mark.parametrize("backend", ["border_split", "space_to_batch", "fold", "gemm", "mixed_layout"])
def test_a_size_dependent_backend_traces_as_native(backend):
    """Formulations whose Python reads the input size (and mixed_layout, a custom autograd
    function exporters cannot see into) give way to native under capture, so a layer pinned to
    one still traces into a graph that is right at other sizes."""
    torch.manual_seed(0)
    layer = (DilatedConv1d(2, 3, 3, dilation=5, backend=backend) if backend in ("fold", "gemm")
             else DilatedConv2d(2, 3, 3, dilation=5, backend=backend)).eval()
    spatial = layer.weight.ndim - 2
    traced = trace(layer, torch.randn(1, 2, *[20, 20][:spatial]))
    for size in (13, 31):
        assert_matches_eager(traced, layer, torch.randn(2, 2, *[size, size + 3][:spatial]))


def test_dynamic_compile_serves_every_size_with_one_graph():
    """``dynamic=True``: the padding is symbolic arithmetic on the size, not a guard on it, so
    heights and widths of every parity run through the first graph (a recompile raises; the
    batch stays, as PyTorch's convolutions guard on it)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(
        DilatedConv2d(2, 4, 3, stride=2), DilatedConv2d(4, 4, 2, stride=3, dilation=2), DilatedStack(4, (2, 2))
    ).eval().double()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for height, width in [(64, 50), (33, 47), (72, 80), (41, 40)]:
            assert_matches_eager(compiled, model, torch.randn(2, 2, height, width, dtype=torch.float64))
