"""Export atrous models for deployment: ONNX files that onnxruntime runs at any input size,
and streaming steps with their ring-buffer state as explicit inputs and outputs."""

from atrous.export.onnx import OnnxExport, export_onnx, onnx_max_abs_diff, onnx_session, run_onnx
from atrous.export.streaming import StreamingOnnxExport, export_streaming_onnx

__all__ = [
    "OnnxExport",
    "StreamingOnnxExport",
    "export_onnx",
    "export_streaming_onnx",
    "onnx_max_abs_diff",
    "onnx_session",
    "run_onnx",
]
