"""ONNX export of atrous models with dynamic batch and spatial sizes, checked with onnxruntime.

The graph is captured with ``torch.export`` (the capture behind PyTorch's dynamo-based ONNX
exporter), which keeps input sizes symbolic. The atrous layers compute their "same" padding
from the input size with Python integers, and some of that arithmetic (``math.ceil(n /
stride)``, ``if pad_low == pad_high``, ``if any(padding)``, ASPP's ``int(size)`` for its
warning) makes ``torch.export`` pin the size it was shown or guard on it, and ONNX has no
guards. :func:`shape_polymorphic` therefore swaps, for the duration of an export, the forward of
every ``DilatedConvNd``, ``DilatedStack`` and ``ASPP`` for one that writes the same arithmetic
in a form that stays symbolic: stride-1 layers get constant pads, strided ones a ``Pad`` node
whose amounts follow the input size, and space_to_batch runs always pad and mask, by amounts
that may be zero. After the capture the exported program is run once more at a size one larger
on every dynamic axis, so a forward that still branches on the size is refused instead of
exported wrong. The tests check onnxruntime against PyTorch at sizes other than the example's,
odd ones included.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import types
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atrous.ops.layers import DilatedStack, _DilatedConvMixin
from atrous.ops.padding import causal_padding, kernel_extent

CONV_BY_NDIM = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # plain convolutions: one formulation to export
DEFAULT_OPSET = 18
MAX_OPSET = 23
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}
_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def require(module: str) -> types.ModuleType:
    """Import an optional export dependency, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the {module!r} package: pip install 'atrous[onnx]'") from None


def _same_padding(size, kernel_size: int, stride: int, dilation: int) -> tuple:
    """``same_padding`` of :mod:`atrous.ops.padding` without ``ceil`` and, where it can never
    bite, without ``max``, so a symbolic ``size`` stays symbolic and raises no guard:
    total = ``max(extent - 1 - (size - 1) % stride, 0)``, never negative when ``extent >= stride``."""
    extent = kernel_extent(kernel_size, dilation)
    if stride == 1:
        total = extent - 1
    elif extent >= stride:
        total = extent - 1 - (size - 1) % stride
    else:
        total = torch.sym_max(extent - 1 - (size - 1) % stride, 0)
    return total // 2, total - total // 2


def _explicit_padding(layer: _DilatedConvMixin, sizes: Sequence) -> list[tuple]:
    spec, kernel, stride, dilation = layer.padding, layer.kernel_size, layer.stride, layer.dilation
    if spec == "same":
        return [_same_padding(n, k, s, d) for n, k, s, d in zip(sizes, kernel, stride, dilation)]
    if spec == "valid":
        return [(0, 0)] * len(kernel)
    if spec == "causal":
        return [causal_padding(kernel[0], dilation[0])]
    return [(p, p) for p in spec]


def _conv_forward(self: _DilatedConvMixin, x: torch.Tensor) -> torch.Tensor:
    """``DilatedConvNd.forward`` with symbolic-friendly padding (no input checks: eager does them)."""
    conv = CONV_BY_NDIM[x.ndim - 2]
    pads = _explicit_padding(self, x.shape[2:])
    static = all(isinstance(p, int) for pair in pads for p in pair)
    if static and self.padding_mode == "zeros" and all(lo == hi for lo, hi in pads):
        return conv(x, self.weight, self.bias, self.stride, tuple(lo for lo, _ in pads), self.dilation, self.groups)
    if not static or any(p for pair in pads for p in pair):
        x = F.pad(x, [p for lo_hi in reversed(pads) for p in lo_hi], mode=_PAD_MODES[self.padding_mode])
    return conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _space_to_batch(x: torch.Tensor, rate: int, grid: Sequence) -> torch.Tensor:
    """``space_to_batch(x, rate)`` after padding the high side to ``grid * rate`` (maybe by 0)."""
    ndim = x.ndim - 2
    x = F.pad(x, [p for n, g in zip(reversed(x.shape[2:]), reversed(grid)) for p in (0, g * rate - n)])
    split = [x.shape[0], x.shape[1]]
    for g in grid:
        split += [g, rate]
    x = x.reshape(split).permute(*[3 + 2 * i for i in range(ndim)], 0, 1, *[2 + 2 * i for i in range(ndim)])
    return x.reshape(rate**ndim * split[0], split[1], *grid)


def _batch_to_space(y: torch.Tensor, rate: int, batch, sizes: Sequence) -> torch.Tensor:
    """``batch_to_space(y, rate)`` cropped to ``sizes``, the crop written as a negative pad
    (slicing would guard on whether the crop is empty)."""
    ndim, channels, grid = y.ndim - 2, y.shape[1], y.shape[2:]
    y = y.reshape(*([rate] * ndim), batch, channels, *grid)
    order = [ndim, ndim + 1]
    for i in range(ndim):
        order += [ndim + 2 + i, i]
    y = y.permute(*order).reshape(batch, channels, *(g * rate for g in grid))
    return F.pad(y, [p for n, g in zip(reversed(sizes), reversed(grid)) for p in (0, n - g * rate)])


def _stack_forward(self: DilatedStack, x: torch.Tensor) -> torch.Tensor:
    """``DilatedStack.forward`` whose fused runs always pad and re-zero the padding (amounts may
    be 0), instead of branching on whether the size is a multiple of the rate. Sizes are written
    as ``grid * rate`` with ``grid = ceil(size / rate)``, which keeps the symbolic arithmetic small."""
    for start, stop, fused in self.groups_of_layers():
        if not fused:
            for i in range(start, stop):
                x = self.activations[i](self.convs[i](x))
            continue
        rate, batch, sizes = self.rates[start], x.shape[0], x.shape[2:]
        grid = [(n + rate - 1) // rate for n in sizes]
        conv = CONV_BY_NDIM[x.ndim - 2]
        y = _space_to_batch(x, rate, grid)  # (rate**n * N, C, *grid)
        mask = _space_to_batch(torch.ones_like(x[:1, :1]), rate, grid).unsqueeze(1)  # (rate**n, 1, 1, *grid)
        for i in range(start, stop):
            layer = self.convs[i]
            padding = tuple((k - 1) // 2 for k in layer.kernel_size)
            y = self.activations[i](conv(y, layer.weight, layer.bias, 1, padding, 1, layer.groups))
            y = (y.reshape(rate ** len(grid), batch, *y.shape[1:]) * mask).reshape(y.shape)
        x = _batch_to_space(y, rate, batch, sizes)
    return x


def _aspp_forward(self, x: torch.Tensor) -> torch.Tensor:
    """``ASPP.forward`` without its rate-versus-feature-size warning, whose ``int(size)`` would
    pin the size."""
    return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


@contextlib.contextmanager
def shape_polymorphic(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every atrous layer of ``model`` runs a forward that ``torch.export``
    can capture with symbolic sizes; the original forwards come back afterwards.

    Args:
        model: any module; its ``DilatedConv1d/2d/3d``, ``CausalConv1d``, ``DilatedStack`` and
            ``ASPP`` layers are affected, nothing else. The swapped forwards compute the same
            values (padding and space_to_batch with plain ``F.convNd``, whatever ``backend``).
    """
    from atrous.models.segmentation.aspp import ASPP

    forwards = {_DilatedConvMixin: _conv_forward, DilatedStack: _stack_forward, ASPP: _aspp_forward}
    replaced = []
    for module in model.modules():
        forward = next((f for cls, f in forwards.items() if isinstance(module, cls)), None)
        if forward is None:
            continue
        replaced.append((module, module.__dict__.get("forward")))
        module.forward = types.MethodType(forward, module)
    try:
        yield model
    finally:
        for module, previous in replaced:
            del module.forward
            if previous is not None:
                module.forward = previous


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        opset: the ONNX opset of the default domain.
        input_name, output_name: graph input and output names.
        input_shape, output_shape: dims as ints or names of dynamic axes, e.g. ``("batch", 3, "height", "width")``.
        max_abs_diff: largest ``|onnxruntime - PyTorch|`` on the example input when checked, else ``None``.
    """

    path: Path
    opset: int
    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]
    output_shape: tuple[int | str, ...]
    max_abs_diff: float | None = None


def _graph_shape(value_info) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _capture(model: nn.Module, example_input: torch.Tensor, axes: dict[int, str]) -> torch.export.ExportedProgram:
    """``torch.export`` with ``axes`` symbolic; errors when the forward pins one of them or
    branches on it in a way an ONNX graph cannot express."""
    if 0 in axes and example_input.shape[0] == 1:
        example_input = torch.cat([example_input, example_input])  # torch.export pins sizes 0 and 1
    dims = {axis: torch.export.Dim.DYNAMIC for axis in axes}
    try:
        with shape_polymorphic(model), torch.no_grad():
            program = torch.export.export(model, (example_input,), dynamic_shapes=(dims,), strict=False)
    except torch._dynamo.exc.UserError as error:
        first = str(error).strip().splitlines()[:3]
        raise ValueError(f"the model's forward fixes an input size that was asked to be dynamic "
                         f"({', '.join(axes.values())}): {' '.join(first)}; export with fixed sizes instead") from None
    # Guards the size must satisfy besides a minimum (say, an even height) are checked by the
    # exported program but lost in ONNX; one more size of the other parity finds them.
    probe = list(example_input.shape)
    for axis in axes:
        probe[axis] += 1
    try:
        with torch.no_grad():
            program.module()(torch.randn(probe, dtype=example_input.dtype, device=example_input.device))
    except Exception as error:  # noqa: BLE001 - any failure means the sizes are not free
        raise ValueError(f"the exported graph does not accept input {tuple(probe)} after tracing "
                         f"{tuple(example_input.shape)} (the forward branches on the input size: "
                         f"{str(error).strip().splitlines()[0]}); export with fixed sizes instead") from None
    return program


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    dynamic_spatial: bool = True,
    input_name: str = "input",
    output_name: str = "output",
    optimize: bool = True,
    check: bool = False,
) -> OnnxExport:
    """Export ``model`` (one tensor in, one tensor out) to an ONNX file with symbolic sizes.

    Args:
        model: exported in eval mode (its mode is restored afterwards).
        path: the ``.onnx`` file; written atomically (a temporary name, then renamed).
        example_input: ``(N, C, *S)``, e.g. ``(1, 3, 128, 128)`` for an image model.
        opset: ONNX opset version, >= 18.
        dynamic_batch: keep ``N`` symbolic (named ``"batch"``).
        dynamic_spatial: keep the spatial axes ``S`` symbolic (``"height"``, ``"width"``; 1D:
            ``"length"``; 3D: ``"depth"``, ``"height"``, ``"width"``).
        input_name, output_name: names of the graph's input and output.
        optimize: fold constants and fuse nodes with onnxscript's optimizer (about half the
            export time; onnxruntime optimises the graph again when it loads it).
        check: run the file with onnxruntime on ``example_input`` and record the largest
            absolute difference from the PyTorch forward in ``max_abs_diff``.

    Returns:
        An :class:`OnnxExport` describing the file.

    Raises:
        ImportError: ``onnx``, ``onnxscript`` (or, with ``check``, ``onnxruntime``) is missing.
        ValueError: bad arguments, or a forward whose output cannot follow a dynamic size.
    """
    from atrous.engine.checkpoint import atomic_write

    if not isinstance(example_input, torch.Tensor) or example_input.ndim < 3:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ValueError(f"example_input must be a tensor (batch, channels, *spatial), got {shape}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int from 18 to {MAX_OPSET} (the torch.export-based exporter's range), "
                         f"got {opset!r}")
    onnx = require("onnx")
    require("onnxscript")
    if check:
        require("onnxruntime")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of path {str(path)!r} does not exist")
    axes = {0: "batch"} if dynamic_batch else {}
    if dynamic_spatial:
        spatial = example_input.ndim - 2
        names = _AXIS_NAMES.get(spatial, tuple(f"spatial{i}" for i in range(spatial)))
        axes.update(zip(range(2, example_input.ndim), names))
    was_training = model.training
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    model.eval()
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes, one per torchvision op
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)  # torch.export's own deprecation
            program = _capture(model, example_input, axes)
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=[input_name],
                                             output_names=[output_name], optimize=optimize, verbose=False)
    finally:
        model.train(was_training)
        registry_log.setLevel(level)
    user_input = next(n for n in program.graph.nodes if n.name == program.graph_signature.user_inputs[0])
    symbols = {str(user_input.meta["val"].shape[axis]): name for axis, name in axes.items()}
    onnx_program.rename_axes(symbols)
    atomic_write(path, lambda tmp: onnx_program.save(tmp, external_data=False))
    graph = onnx.load(str(path), load_external_data=False).graph
    result = OnnxExport(path, opset, input_name, output_name, _graph_shape(graph.input[0]),
                        _graph_shape(graph.output[0]))
    if check:
        result = replace(result, max_abs_diff=onnx_max_abs_diff(path, model, example_input))
    return result


def onnx_session(path: str | Path, *, threads: int | None = None, spin: bool = True):
    """An ``onnxruntime.InferenceSession`` on the CPU for an exported file.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        spin: let idle worker threads spin between calls (onnxruntime's default, lowest
            latency); ``False`` frees the cores for other work between calls.
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """The single output of an exported file (or a session from :func:`onnx_session`) for ``inputs``."""
    session = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    array = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def onnx_max_abs_diff(path_or_session, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest ``|onnxruntime(inputs) - model(inputs)|``; the model runs in eval mode, no grad.

    Raises:
        ValueError: the two outputs differ in shape.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(inputs).cpu().numpy()
    finally:
        model.train(was_training)
    actual = run_onnx(path_or_session, inputs)
    if actual.shape != expected.shape:
        raise ValueError(f"onnxruntime returned shape {actual.shape}, PyTorch {expected.shape} for input "
                         f"{tuple(inputs.shape)}")
    return float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
