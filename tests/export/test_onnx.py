"""ONNX export: registered models exported at one size, run by onnxruntime at other sizes (odd
ones included) and compared with the PyTorch forward, the independent reference.

An export costs 5-20 s of CPU whatever the width (it scales with the number of layers), so the
segmentation test exports the fewest registered models that together contain every module
class and every kind of convolution padding in the registry (a greedy set cover, recomputed
from the registry: a model with a new block or head joins automatically). ``torch.compile`` and
``torch.jit.trace`` run every model in ``test_compile_trace.py``.
"""

import copy
import sys
import warnings

import numpy as np
import pytest
import torch
from tiny_models import SEGMENTATION, calibrated, create_tiny, resnet101_twins
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from atrous.export import export_onnx, onnx_session, run_onnx
from atrous.models import list_models
from atrous.ops import CausalConv1d, DilatedConv1d, DilatedConv2d, DilatedStack

TOLERANCE = 1e-4


def assert_parity(path, model: nn.Module, shapes) -> None:
    """onnxruntime is as close to the float64 forward as float32 PyTorch is, or within TOLERANCE,
    at each input shape: deep random networks amplify float32 rounding in either runtime
    (ResNet-101 at 1/16 width: ~5e-3 on logits of 70), shallow ones stay near 1e-6."""
    session = onnx_session(path, threads=1, spin=False)
    exact_model = copy.deepcopy(model).double()
    generator = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exact, pytorch = exact_model(x.double()).numpy(), model(x).numpy()
        actual = run_onnx(session, x)
        assert actual.shape == exact.shape, f"input {shape}"
        onnx_error, pytorch_error = np.abs(actual - exact).max(), np.abs(pytorch - exact).max()
        assert onnx_error <= max(TOLERANCE, 4 * pytorch_error), (shape, onnx_error, pytorch_error)


def _ingredients(model: nn.Module) -> set:
    found = set()
    for module in model.modules():
        found.add(f"{type(module).__module__}.{type(module).__qualname__}")
        if isinstance(module, nn.modules.conv._ConvNd):
            kind = module.padding if isinstance(module.padding, str) else "explicit"
            found.add(("conv", kind, max(module.stride) > 1, module.groups > 1))
    return found


def covering_models() -> list[str]:
    """Registered segmentation models that together hold every module class and conv kind,
    picked greedily (most new ingredients first, then fewest modules).

    The ResNet-101 twins of ResNet-50 models are never picked: they run their twin's code with 17
    more blocks (see ``tiny_models.resnet101_twins``), so exporting one costs more and covers
    nothing new. Their ingredients still count, so a twin that ever held something of its own
    would stop the collection here rather than go untested.
    """
    models = {name: create_tiny(name) for name in list_models("segmentation")}
    ingredients = {name: _ingredients(model) for name, model in models.items()}
    sizes = {name: sum(1 for _ in model.modules()) for name, model in models.items()}
    candidates = sorted(set(models) - resnet101_twins(models))
    missing, chosen = set().union(*ingredients.values()), []
    while missing:
        best = max(candidates, key=lambda name: (len(ingredients[name] & missing), -sizes[name]))
        if not ingredients[best] & missing:
            raise AssertionError(f"only ResNet-101 twins hold {sorted(map(str, missing))}; export one of them")
        chosen.append(best)
        missing -= ingredients[best]
    return sorted(chosen)


@pytest.mark.parametrize("name", covering_models())
def test_segmentation_model_follows_any_input_size_in_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    model = calibrated(create_tiny(name), torch.randn(2, 3, 64, 64))
    result = export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 33, 47), optimize=False)
    assert result.input_shape == ("batch", 3, "height", "width")
    assert result.output_shape == ("batch", SEGMENTATION["num_classes"], "height", "width")
    assert_parity(result.path, model, [(2, 3, 97, 131), (1, 3, 40, 36)])


@pytest.mark.parametrize("name", list_models("sequence"))
def test_sequence_model_follows_any_length_in_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    model = create_tiny(name).eval()
    channels = model.in_channels
    result = export_onnx(model, tmp_path / "m.onnx", torch.randn(1, channels, 37), optimize=False)
    assert result.input_shape == ("batch", channels, "length")
    assert_parity(result.path, model, [(2, channels, 50), (3, channels, 23)])


def test_space_to_batch_stack_exports(tmp_path):
    torch.manual_seed(0)
    stack = DilatedStack(4, (1, 2, 2, 2, 4, 4)).eval()
    assert [fused for *_, fused in stack.groups_of_layers()] == [False, True, True]
    result = export_onnx(stack, tmp_path / "s.onnx", torch.randn(1, 4, 33, 47), optimize=False)
    # 31 x 30: padded to multiples of 2 and 4 on the high side; 32 x 32: no padding at all.
    assert_parity(result.path, stack, [(2, 4, 31, 30), (1, 4, 32, 32)])


class EveryPadding(nn.Module):
    """Layers of every padding kind side by side, their flattened outputs concatenated: strided
    and unstrided, odd and even kernels, several dilations, "valid", explicit, replicate and
    reflect modes, and 1D "same" and causal layers run on the flattened image."""

    def __init__(self) -> None:
        super().__init__()
        planar = [  # strided "same" padding follows the size; at stride 1 it is a constant
            DilatedConv2d(2, 3, kernel, stride=stride, dilation=dilation)
            for stride in (2, 3)
            for kernel in (1, 2, 3, 4)
            for dilation in (1, 3)
        ]
        planar += [
            DilatedConv2d(2, 3, 2, dilation=3),
            DilatedConv2d(2, 3, 3, dilation=2),
            DilatedConv2d(2, 3, (3, 2), stride=(1, 2), dilation=2, padding="valid"),
            DilatedConv2d(2, 3, 3, stride=(2, 1), dilation=(1, 2), padding=(1, 2)),
            DilatedConv2d(2, 3, 4, stride=2, dilation=2, padding_mode="replicate"),
        ]
        self.planar = nn.ModuleList(planar)
        self.sequence = nn.ModuleList([
            DilatedConv1d(2, 3, 4, stride=3, dilation=2, padding_mode="reflect"),
            CausalConv1d(2, 3, 3, dilation=2, stride=2),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 2, H, W) -> (N, sum of output sizes)
        outputs = [layer(x) for layer in self.planar] + [layer(x.flatten(2)) for layer in self.sequence]
        return torch.cat([y.flatten(1) for y in outputs], dim=1)


def test_every_padding_follows_the_input_size_in_onnxruntime(tmp_path):
    """Exported at 13 x 16, run at sizes of every remainder modulo the strides 2 and 3. ONNX's
    integer Div truncates where Python's // floors, so a negative dividend anywhere in the
    padding arithmetic shows here, not in PyTorch."""
    torch.manual_seed(0)
    model = EveryPadding().eval()
    result = export_onnx(model, tmp_path / "p.onnx", torch.randn(1, 2, 13, 16), optimize=False)
    assert_parity(result.path, model, [(2, 2, size, size + 3) for size in range(12, 18)])


def test_a_forward_that_branches_on_the_size_is_refused(tmp_path):
    class EvenOnly(nn.Module):
        def forward(self, x):
            return x * 2 if x.shape[-1] % 2 == 0 else x

    with pytest.raises(ValueError, match="branches on the input size"):
        export_onnx(EvenOnly(), tmp_path / "e.onnx", torch.randn(1, 2, 8, 8), optimize=False)
    assert not (tmp_path / "e.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [({"example_input": torch.randn(3, 4)}, ValueError, "example_input"), ({"opset": 17}, ValueError, "opset"),
     ({"opset": True}, (TypeError, ValueError), "opset")],  # a bool is not an int: either error names it
)
def test_bad_arguments_are_named(kwargs, error, message, tmp_path):
    arguments = {"example_input": torch.randn(1, 2, 8, 8), **kwargs}
    with pytest.raises(error, match=message):
        export_onnx(nn.Identity(), tmp_path / "x.onnx", **arguments)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(nn.Identity(), tmp_path / "no" / "x.onnx", torch.randn(1, 2, 8, 8))


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'atrous\[onnx\]'"):
        export_onnx(nn.Identity(), tmp_path / "x.onnx", torch.randn(1, 2, 8, 8))


def test_export_onnx_is_a_lazy_top_level_name():
    import atrous

    assert atrous.export_onnx is export_onnx


def test_import_atrous_stays_light():
    import subprocess

    code = "import sys, atrous, atrous.export; print(sorted({'onnx', 'onnxruntime', 'onnxscript'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
