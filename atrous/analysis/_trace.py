"""Walk a model's execution and apply the receptive-field rules to every operation.

Two walkers feed the same rules (:mod:`atrous.analysis._ops`):

* ``torch.fx``: the model is traced symbolically (atrous layers and ``DilatedStack`` kept as
  leaves) and interpreted node by node, so residual sums and concatenations written in a
  ``forward`` are seen as graph nodes; leaf modules are analysed through the functional calls
  they make.
* forward hooks: for models fx cannot trace (data-dependent control flow), one real forward
  pass under a ``TorchFunctionMode`` sees every functional call, and module hooks name them.

Both run on ``meta`` tensors when the model allows it, so a 512x512 ResNet costs nothing.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from atrous.analysis import _fields
from atrous.analysis._ops import Fields, Recorder, Ref, _flatten
from atrous.ops.layers import DilatedConvNd, DilatedStack
from atrous.ops.padding import conv_output_size


def _is_special(module: nn.Module) -> bool:
    return isinstance(module, (DilatedConvNd, DilatedStack))


def _func_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


class _State:
    """Fields of the live tensors (by identity) plus the recorder."""

    def __init__(self, ndim: int) -> None:
        self.recorder = Recorder(ndim)
        self.fields: dict[int, Fields] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while the walk runs
        self.names: list[tuple[str, bool]] = []
        self.suppress = 0

    def register(self, value: Any, fields: Fields | None) -> None:
        if fields is None:
            return
        for tensor in _flatten(value):
            if isinstance(tensor, torch.Tensor):
                self.fields[id(tensor)] = fields
                self.keep.append(tensor)

    def ref(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return Ref(self.fields.get(id(value)), tuple(value.shape))
        if isinstance(value, (list, tuple)):
            return type(value)(self.ref(v) for v in value) if not hasattr(value, "_fields") else value
        if isinstance(value, dict):
            return {k: self.ref(v) for k, v in value.items()}
        return value

    def current_name(self, func: str) -> str:
        if not self.names:
            return func
        path, leaf = self.names[-1]
        return path if leaf else f"{path}.{func}" if path else func

    def apply(self, name: str, func: str, args: tuple, kwargs: dict, result: Any) -> None:
        outputs = [t for t in _flatten(result) if isinstance(t, torch.Tensor)]
        if not outputs or (func.strip("_") == "getitem" and not isinstance(args[0], torch.Tensor)):
            return
        fields = self.recorder.function(name, func, self.ref(args), self.ref(kwargs), tuple(outputs[0].shape))
        self.register(outputs, fields)

    def special(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> None:
        ref = self.ref(x)
        if not ref.fields:
            return
        if isinstance(module, DilatedStack):
            fields, shape = ref.fields, ref.shape
            for i, conv in enumerate(module.convs):
                pads = conv.explicit_padding(shape[2:])
                spatial = [
                    conv_output_size(n, k, s, d, lo, hi)
                    for n, k, s, d, (lo, hi) in zip(shape[2:], conv.kernel_size, conv.stride, conv.dilation, pads)
                ]
                out_shape = (shape[0], conv.out_channels, *spatial)
                fields = self.recorder.dilated_conv(f"{name}.convs.{i}", conv, Ref(fields, shape), out_shape)
                shape = out_shape
        else:
            fields = self.recorder.dilated_conv(name, module, ref, tuple(output.shape))
        self.register(output, fields)


class _FieldMode(TorchFunctionMode):
    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self.state.suppress:
            name = _func_name(func)
            self.state.apply(self.state.current_name(name), name, args, kwargs, result)
        return result


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return _is_special(module) or super().is_leaf_module(module, qualified_name)


class _FieldInterpreter(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, state: _State) -> None:
        super().__init__(module)
        self.state = state

    def run_node(self, node: fx.Node) -> Any:
        if node.op in ("call_function", "call_method"):
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            result = super().run_node(node)
            self.state.apply(node.name, _func_name(node.target), args, kwargs, result)
            return result
        if node.op == "call_module":
            module = self.fetch_attr(node.target)
            if _is_special(module):
                args, _ = self.fetch_args_kwargs_from_env(node)
                result = super().run_node(node)
                self.state.special(node.target, module, args[0], result)
                return result
            self.state.names.append((node.target, not any(True for _ in module.children())))
            try:
                with _FieldMode(self.state):
                    return super().run_node(node)
            finally:
                self.state.names.pop()
        return super().run_node(node)


def _walk_fx(model: nn.Module, x: torch.Tensor, state: _State) -> Any:
    graph = _LeafTracer().trace(model)
    module = fx.GraphModule(model, graph)
    return _FieldInterpreter(module, state).run(x)


def _walk_hooks(model: nn.Module, x: torch.Tensor, state: _State) -> Any:
    handles, specials = [], []

    def pre(path: str, module: nn.Module, leaf: bool):
        def hook(_, inputs):
            state.names.append((path, leaf))
            if _is_special(module):
                specials.append(inputs[0] if not state.suppress else None)
                state.suppress += 1

        return hook

    def post(path: str, module: nn.Module):
        def hook(_, inputs, output):
            state.names.pop()
            if _is_special(module):
                state.suppress -= 1
                x_in = specials.pop()
                if x_in is not None:
                    state.special(path, module, x_in, output)

        return hook

    for path, module in model.named_modules():
        leaf = not any(True for _ in module.children())
        handles.append(module.register_forward_pre_hook(pre(path, module, leaf)))
        handles.append(module.register_forward_hook(post(path, module)))
    try:
        with _FieldMode(state):
            return model(x)
    finally:
        for handle in handles:
            handle.remove()


def probe_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device an input of ``model`` must have: its first floating-point parameter's
    (or buffer's), else the default dtype on the CPU."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def walk(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[_State, Fields, str]:
    """Run the model on ``(1, *input_shape)`` and return the state, output field and method.

    The walk runs on ``meta`` tensors, or on the model's own device when an operation has no
    meta kernel; the probe input takes the model's dtype, so a float64 or bfloat16 model runs.
    """
    ndim = len(input_shape) - 1
    dtype, own_device = probe_dtype_device(model)
    devices = ("meta",) if own_device.type == "meta" else ("meta", own_device)
    errors = []
    for method, walker in (("fx", _walk_fx), ("hooks", _walk_hooks)):
        for device in devices:
            state = _State(ndim)
            try:
                copied = copy.deepcopy(model).eval().to(device)
                x = torch.zeros((1, *input_shape), dtype=dtype, device=device)
                state.register(x, tuple(_fields.input_axis(n) for n in input_shape[1:]))
                with torch.no_grad():
                    output = walker(copied, x, state)
            except Exception as error:  # noqa: BLE001 - any failure moves on to the next walker
                errors.append(f"{method}/{device}: {type(error).__name__}: {error}")
                continue
            return state, _output_fields(state, output), method
    raise ValueError(
        f"model could not be run on input_shape {tuple(input_shape)} (channels, *spatial): {errors[-1]}"
    )


def _output_fields(state: _State, output: Any) -> Fields:
    tensors = [t for t in _flatten(output if not isinstance(output, dict) else list(output.values()))
               if isinstance(t, torch.Tensor) and id(t) in state.fields]
    if not tensors:
        raise ValueError("the model's output does not depend on its input; no receptive field to report")
    spatial = [t for t in tensors if state.recorder.is_spatial(tuple(t.shape))] or tensors
    fields = [state.fields[id(t)] for t in spatial]
    if len(fields) == 1:
        return fields[0]
    return tuple(_fields.union(list(axes))[0] for axes in zip(*fields))
