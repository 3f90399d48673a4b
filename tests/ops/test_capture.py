"""capturing() and functorch_wrapped() see what PyTorch itself reports."""

import pytest
import torch

from atrous.ops import capturing
from atrous.ops.capture import functorch_wrapped


def test_capturing_sees_the_onnx_export_flags(monkeypatch):
    # capturing() checks the flags torch.onnx.is_in_onnx_export reads without calling it each time
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    assert not capturing() and not torch.onnx.is_in_onnx_export()
    monkeypatch.setattr(GLOBALS, "in_onnx_export", True)
    assert torch.onnx.is_in_onnx_export() and capturing()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_capturing_while_tracing():
    seen = []

    def record(x):
        seen.append((capturing(), torch.jit.is_tracing()))
        return x + 1

    record(torch.zeros(2))
    torch.jit.trace(record, torch.zeros(2), check_trace=False)
    assert seen == [(False, False), (True, True)]


def test_functorch_wrapped_inside_transforms_only():
    seen = []

    def probe(x):
        seen.append(functorch_wrapped(x))
        return x.sum()

    x = torch.randn(3, 2)
    probe(x)
    torch.func.grad(probe)(x)
    torch.func.vmap(probe)(x)
    assert seen == [False, True, True]
