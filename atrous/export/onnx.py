"""ONNX export of atrous models with dynamic batch and spatial sizes, checked with onnxruntime.

The graph is captured with ``torch.export`` (the capture behind PyTorch's dynamo-based ONNX
exporter), which keeps input sizes symbolic. The atrous layers compute their "same" padding
with ``+``, ``*`` and ``//`` on the input size and, while a graph is captured, never branch on it
(see ``ConvSpec.fixed_pads`` in :mod:`atrous.ops.formulations`), so the padding, and the
space_to_batch padding and crop of ``DilatedStack``, follow the size in the graph, with no
guard on it. After the capture
the exported program is run once more at a size one larger on every dynamic axis, so a forward
that still branches on the size is refused instead of exported wrong. The tests check
onnxruntime against PyTorch at sizes other than the example's, odd ones included.
"""

from __future__ import annotations

import importlib
import logging
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atrous._checks import check_int
from atrous._files import atomic_write, check_output_file

DEFAULT_OPSET = 18
MAX_OPSET = 23
_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def require(module: str) -> types.ModuleType:
    """Import an optional export dependency, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export needs the {module!r} package: pip install 'atrous[onnx]'") from None


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
        with torch.no_grad():
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
        path: the ``.onnx`` file; its folder must exist. Checked before the export starts (a
            folder or a symbolic link is refused) and written atomically (a temporary name in the
            same folder, then renamed onto ``path``, replacing a file there).
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
        FileNotFoundError, IsADirectoryError: ``path`` has no folder, or is one.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    if not isinstance(example_input, torch.Tensor) or example_input.ndim < 3:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ValueError(f"example_input must be a tensor (batch, channels, *spatial), got {shape}")
    check_int(opset, "opset", low=18, high=MAX_OPSET)  # the torch.export-based exporter's range
    onnx = require("onnx")
    require("onnxscript")
    if check:
        require("onnxruntime")
    path = check_output_file(path, overwrite=True, name="path")
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
