"""torchvision as a test oracle for the models (never a dependency of atrous itself)."""

import importlib.util

import pytest
import torch

# The C++ ops torchvision registers fake kernels for on import; a CPU wheel without its compiled
# extension never defines them, and ``import torchvision.models`` then fails.
_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


@pytest.fixture(scope="session")
def torchvision_models():
    """``torchvision.models``, importable on a torchvision build without its C++ extension."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    for qualname, schema in _SCHEMAS.items():
        namespace, name = qualname.split("::")
        if not hasattr(getattr(torch.ops, namespace), name):
            torch.library.define(qualname, schema)
    import torchvision.models

    return torchvision.models
