"""Every registered model under ``torch.compile`` (one graph, no breaks) and ``torch.jit.trace``,
against the eager forward; the trace is replayed at sizes it was not traced at.

The ``aot_eager`` backend captures the graph as inductor would (dynamo, then AOT autograd) but
runs it without generating code, so every model is covered in seconds; it runs in float64,
where any difference from eager beyond rounding is a real one (in float32 the decomposed
BatchNorm and interpolation round differently, and 100 layers amplify that to ~1e-3).
"""

import warnings

import pytest
import torch
from torch import nn

from atrous.models import create, list_models
from atrous.models.segmentation.aspp import ASPP
from atrous.ops import DilatedStack
from atrous.ops.layers import _DilatedConvMixin

pytestmark = [
    # Tiny inputs are smaller than ASPP's rates; the warning saying so is expected here.
    pytest.mark.filterwarnings("ignore::atrous.models.segmentation.aspp.RateWarning"),
    # torch.jit.trace and the script methods it builds are deprecated since torch 2.9.
    pytest.mark.filterwarnings("ignore:`torch\\.jit:DeprecationWarning"),
]

SEGMENTATION = list_models("segmentation")
SEQUENCE_TINY = {
    "tcn": {"in_channels": 3, "out_channels": 2, "hidden": 4, "levels": 3, "kernel_size": 3},
    "wavenet": {"classes": 8, "blocks": 2, "layers": 3, "residual_channels": 4, "gate_channels": 6, "skip_channels": 3},
}


def tiny_segmentation(name: str) -> nn.Module:
    """A registered model at 1/16 width with random BatchNorm scales and shifts (so residual
    branches that start at zero take part) and statistics of random images (O(1) outputs)."""
    torch.manual_seed(0)
    model = create(name, num_classes=3, width_multiplier=1 / 16)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
            module.momentum = None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train()(torch.randn(2, 3, 64, 64))
    return model.eval()


def quiet_size(model: nn.Module) -> tuple[int, int]:
    """An odd input size at which ASPP's rates fit its feature map: smaller maps make ASPP warn,
    and ``warnings.warn`` is a graph break under ``torch.compile``."""
    rates = [rate for module in model.modules() if isinstance(module, ASPP) for rate in module.rates]
    if not rates:
        return 33, 47
    side = model.output_stride * (max(rates) + 1) + 1
    return side, side + 2


def size_dependent_padding(model: nn.Module) -> bool:
    """Whether a layer's padding depends on the input size ("same" with stride > 1), which
    ``torch.jit.trace`` records wrongly: ``same_padding`` mixes ``math.ceil`` (a constant in the
    trace) with the traced size, so the replayed pads are right at the traced size only."""
    return any(
        isinstance(m, _DilatedConvMixin) and m.padding == "same" and max(m.stride) > 1 for m in model.modules()
    )


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
    assert_matches_eager(compiled, model, torch.randn(2, 3, *quiet_size(model), dtype=torch.float64))


@pytest.mark.parametrize("name", list_models("sequence"))
def test_sequence_model_compiles_to_one_graph(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create(name, **SEQUENCE_TINY[name]).eval().double()
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
    model = create("context_net", width_multiplier=0.25).eval()
    compiled = torch.compile(model, fullgraph=True)
    assert_matches_eager(compiled, model, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_model_traces_and_replays_at_new_sizes(name):
    model = tiny_segmentation(name)
    traced = trace(model, torch.randn(1, 3, 33, 47))
    assert_matches_eager(traced, model, torch.randn(2, 3, 33, 47))  # a new batch size
    # A trace keeps "same" padding of strided layers at what the traced size needed, so only
    # the models without such layers replay at a new size (the others: see size_dependent_padding).
    if not size_dependent_padding(model):
        assert_matches_eager(traced, model, torch.randn(1, 3, 64, 50))


@pytest.mark.parametrize("name", list_models("sequence"))
def test_sequence_model_traces_and_replays_at_new_lengths(name):
    torch.manual_seed(0)
    model = create(name, **SEQUENCE_TINY[name]).eval()
    traced = trace(model, torch.randn(1, model.in_channels, 37))
    assert_matches_eager(traced, model, torch.randn(3, model.in_channels, 50))


def test_space_to_batch_stack_traces_and_replays_at_multiples_of_its_rates():
    """Traced at a multiple of every rate (no padding), the fused runs replay at other such sizes;
    the trace fixes whether they pad, so other sizes need their own trace."""
    torch.manual_seed(0)
    stack = DilatedStack(4, (1, 2, 2, 2, 4, 4)).eval()
    traced = trace(stack, torch.randn(1, 4, 32, 32))
    assert_matches_eager(traced, stack, torch.randn(2, 4, 32, 32))
    assert_matches_eager(traced, stack, torch.randn(2, 4, 40, 36))  # also multiples of 4: same (zero) padding
