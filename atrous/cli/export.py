"""``atrous export``: a trained segmentation checkpoint (or a model and a weights file) as an ONNX file
for onnxruntime.

The graph takes ``image`` ``(batch, 3, height, width)`` float32 RGB in [0, 1], normalises it
with the mean and std the checkpoint was trained with (ImageNet's for ``--weights`` unless
``--mean``/``--std`` say otherwise), and returns ``logits``
``(batch, classes, height, width)``; batch, height and width are dynamic. ``--check`` runs the
file with onnxruntime and prints the largest difference from the PyTorch model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atrous._checks import check_int
from atrous._files import check_output_file
from atrous.cli._common import add_model_arguments, check_model_arguments, load_model, one_line_warnings, require

FORMATS = ("onnx",)
CHECK_TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| logit difference --check accepts
MAX_SIZE = 4096  # of the example traced; the graph itself takes any size


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name, help="export a trained segmentation model to ONNX",
        description="Write a trained segmentation checkpoint, or --model NAME --weights PATH, as an ONNX file: "
                    "input 'image' (batch, 3, height, width) float32 RGB in [0, 1], normalised inside the graph with "
                    "the checkpoint's mean and std (ImageNet's for --weights) "
                    "(unless --no-normalize), output 'logits' (batch, classes, height, width); batch, height and "
                    "width are dynamic. --check runs the file with onnxruntime and exits 1 when it differs from "
                    f"PyTorch by more than {CHECK_TOLERANCE:g}.",
    )
    parser.add_argument("--format", default="onnx", help="file format (only onnx)")
    parser.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 to 23")
    parser.add_argument("--height", type=int, default=128,
                        help=f"height of the example input traced, 8 to {MAX_SIZE}")
    parser.add_argument("--width", type=int, default=128,
                        help=f"width of the example input traced, 8 to {MAX_SIZE}")
    parser.add_argument("--no-normalize", action="store_true",
                        help="leave normalisation out: the graph takes already-normalised images")
    parser.add_argument("--check", action="store_true",
                        help="run the file with onnxruntime and print the max difference from PyTorch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_model_arguments(parser, what="export")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> Path:
    from atrous.export.onnx import MAX_OPSET

    check_model_arguments(args)
    if args.no_normalize and (args.mean is not None or args.std is not None):
        raise ValueError("--mean and --std set the normalisation that --no-normalize leaves out; give one or the other")
    if args.format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {args.format!r}")
    check_int(args.opset, "--opset", low=18, high=MAX_OPSET)
    check_int(args.height, "--height", low=8, high=MAX_SIZE)
    check_int(args.width, "--width", low=8, high=MAX_SIZE)
    return check_output_file(args.out, overwrite=args.overwrite, name="--out")


def run(args: argparse.Namespace) -> int:
    import torch

    from atrous.cli._normalized import Normalized
    from atrous.engine.preprocess import MEAN, STD
    from atrous.export.onnx import export_onnx
    from atrous.models import WeightsWarning

    out = _check_args(args)
    for package in ("onnx", "onnxscript", *(("onnxruntime",) if args.check else ())):
        require(package, "onnx", "atrous export" + (" --check" if package == "onnxruntime" else ""))
    if args.checkpoint is not None:
        require("safetensors", "train", "reading a checkpoint")
    with one_line_warnings(skip=(WeightsWarning,)):
        model, meta = load_model(args, device="cpu")
    if not args.no_normalize:
        model = Normalized(model, meta.get("mean") or MEAN, meta.get("std") or STD).eval()
    channels = meta.get("model_kwargs", {}).get("in_channels", 3)
    example = torch.rand(1, channels, args.height, args.width, generator=torch.Generator().manual_seed(0))
    result = export_onnx(model, out, example, opset=args.opset, input_name="image", output_name="logits",
                         check=args.check)
    shape = lambda dims: "(" + ", ".join(str(d) for d in dims) + ")"
    print(f"wrote {result.path} (ONNX opset {result.opset}, model {meta['model']}, {meta['num_classes']} classes)")
    print(f"input  {result.input_name} {shape(result.input_shape)} float32, "
          + ("RGB in [0, 1]" if not args.no_normalize else "normalised"))
    print(f"output {result.output_name} {shape(result.output_shape)} float32")
    if result.max_abs_diff is not None:
        verdict = "ok" if result.max_abs_diff <= CHECK_TOLERANCE else f"FAILED: above {CHECK_TOLERANCE:g}"
        print(f"check  onnxruntime vs PyTorch on a {args.height}x{args.width} image: "
              f"max abs diff {result.max_abs_diff:.2e} ({verdict})")
        return 0 if result.max_abs_diff <= CHECK_TOLERANCE else 1
    return 0
