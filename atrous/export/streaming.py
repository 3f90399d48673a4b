"""ONNX export of the streaming step of sequence models (any model the fused lowering takes).

The exported graph is :class:`~atrous.streaming.functional.StreamingStep`: one time step with
the state of every causal convolution as an explicit input and output (``state_i`` ->
``new_state_i``, ``(batch, C_i, (k_i - 1) d_i)``, the layer's last inputs, oldest first), so
any ONNX runtime can stream the model by feeding the new states back in, one sample per call,
at the cost of one sample's work per layer: the queues of Paine et al. (2016), "Fast WaveNet
generation algorithm", made graph inputs. New streams start from zero states. A model with
strided or upsampling layers or lookahead steps one block of input samples per call, with two
more states (``work``, ``time``) and outputs that begin ``leading`` samples late (see
:mod:`atrous.streaming.functional`). The graph is captured with ``torch.export`` (PyTorch's
dynamo-based ONNX exporter) with a symbolic batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from atrous._checks import check_bool, check_int
from atrous._files import atomic_write, check_output_file
from atrous.export.onnx import require
from atrous.streaming.functional import StreamingStep

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class StreamingOnnxExport:
    """What :func:`export_streaming_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        opset: the ONNX opset of the default domain.
        input_names: ``x``, then ``global_condition`` / ``local_condition`` when the model has
            them, then ``state_0``, ``state_1``, ... (and ``work``, ``time`` for a block step).
        output_names: ``y``, ``new_state_0``, ``new_state_1``, ... (``new_work``, ``new_time``).
        state_shapes: ``(channels, length)`` of each ring state; a state is ``(batch, *shape)``.
        block: input samples per call: ``x`` is ``(batch, C_in)`` when 1, else
            ``(batch, C_in, block)``.
        outputs_per_block: output samples per call (``y``'s last dim for a block step).
        leading: outputs at the start of a stream that come before its first output sample
            (drop them).
        delay: output samples still held back after the last input (they need the right
            padding, which the exported step does not apply).
        work_width: columns of the ``work`` state of a block step (0 otherwise).
    """

    path: Path
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    state_shapes: tuple[tuple[int, int], ...]
    block: int = 1
    outputs_per_block: int = 1
    leading: int = 0
    delay: int = 0
    work_width: int = 0

    def initial_states(self, batch_size: int) -> dict[str, numpy.ndarray]:  # noqa: F821
        """Zero states for ``batch_size`` new streams, keyed by input name (NumPy)."""
        import numpy as np

        states = {f"state_{i}": np.zeros((batch_size, *shape), np.float32) for i, shape in enumerate(self.state_shapes)}
        if "work" in self.input_names:
            states |= {"work": np.zeros((batch_size, self.work_width), np.float32),
                       "time": np.zeros(batch_size, np.int64)}
        return states


@contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    """Set the logger ``name`` to ``level`` inside the block, and back to its own level after."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _example_inputs(step: StreamingStep, batch: int) -> tuple[torch.Tensor, ...]:
    program = step.program
    if program.input is None:
        x = torch.zeros(batch, dtype=torch.long)
    else:
        x = torch.zeros(batch, program.input.width, *([step.block] if step.clocked else []))
    inputs = [x] + [torch.zeros(batch, dtype=torch.long)] * bool(program.global_classes)
    inputs += [torch.zeros(batch, span.width, *([step.block] if along_time and step.clocked else []))
               for _, span, along_time in step.float_inputs()]
    return (*inputs, *step.initial_states(batch))


def export_streaming_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    allow_lookahead: bool = False,
    example: tuple = (),
) -> StreamingOnnxExport:
    """Write the streaming step of ``model`` as an ONNX graph with explicit state.

    Args:
        model: a WaveNet, or any model whose traced graph the fused lowering expresses (see
            :mod:`atrous.streaming.lowering`), float32, on the CPU; exported in eval mode.
        path: the ``.onnx`` file; its folder must exist. Checked before the export starts (a
            folder or a symbolic link is refused) and written atomically (a temporary name in the
            same folder, then renamed onto ``path``).
        batch_size: the batch of the graph when ``dynamic_batch`` is false.
        dynamic_batch: keep the batch axis of every input and output symbolic (``"batch"``).
        opset: ONNX opset version, 18 to 23.
        optimize: fold constants with onnxscript's optimizer.
        allow_lookahead: export a model that looks ahead (its outputs come ``leading`` late).
        example: ``(chunk, *args)``, example inputs of a model whose forward takes more than the
            chunk; its per-stream constants and second sequence become inputs of the step, by name.

    Returns:
        A :class:`StreamingOnnxExport`; feed ``x`` ``(batch, C_in)`` float (``(batch,)`` int64
        class ids for a WaveNet; ``(batch, C_in, block)`` for a block step) and the states, get
        ``y`` ``(batch, C_out)`` (``(batch, C_out, outputs_per_block)``) and the new states.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing.
        ValueError: a layer that cannot be streamed (named), or an argument out of range.
        TypeError: an argument of the wrong type (``opset=18.0``, ``batch_size=True``).
        FileNotFoundError, IsADirectoryError: ``path`` has no folder, or is one.
    """
    require("onnx")
    require("onnxscript")
    check_int(batch_size, "batch_size", low=1)
    check_int(opset, "opset", low=18, high=23)
    check_bool(dynamic_batch, "dynamic_batch")
    check_bool(optimize, "optimize")
    check_bool(allow_lookahead, "allow_lookahead")
    path = check_output_file(path, overwrite=True, name="path")
    was_training = model.training
    model.eval()
    try:
        step = StreamingStep(model, allow_lookahead=allow_lookahead, example=example).eval()
    finally:
        model.train(was_training)
    input_names = step.input_names
    output_names = ["y"] + [f"new_{name}" for name in step.state_names]
    # torch.export specialises sizes 0 and 1, so a symbolic batch is traced at 2
    inputs = _example_inputs(step, max(batch_size, 2) if dynamic_batch else batch_size)
    batch = torch.export.Dim("batch")
    # forward(x, *inputs): the specs follow the signature, x then the tuple of the rest
    shapes = ({0: batch}, tuple({0: batch} for _ in inputs[1:])) if dynamic_batch else None
    # the exporter logs a note per torchvision op it registers; quiet for this export only
    with torch.no_grad(), _logger_level("torch.onnx._internal.exporter._registration", logging.ERROR):
        exported = torch.export.export(step, inputs, dynamic_shapes=shapes, strict=False)
        onnx_program = torch.onnx.export(exported, dynamo=True, opset_version=opset, input_names=input_names,
                                         output_names=output_names, optimize=optimize, verbose=False)
    if dynamic_batch:
        symbol = exported.graph_signature.user_inputs[0]
        node = next(n for n in exported.graph.nodes if n.name == symbol)
        onnx_program.rename_axes({str(node.meta["val"].shape[0]): "batch"})
    atomic_write(path, lambda tmp: onnx_program.save(tmp, external_data=False))
    shapes_out = tuple((channels, length) for length, channels in step.program.rings)
    return StreamingOnnxExport(path, opset, tuple(input_names), tuple(output_names), shapes_out, step.block,
                               step.outputs_per_block, step.leading, step.delay,
                               step.program.width if step.clocked else 0)
