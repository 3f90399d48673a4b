"""``atrous rf``: receptive field, cost and gridding of a dilated stack or a registered model.

``--rates 1,2,4,8`` prints the per-layer table of a stack of dilated convolutions (Yu & Koltun
2016: fields 3, 7, 15, 31 for 3x3 kernels) with parameters and multiply-adds per layer;
``--model NAME`` does the same for any model in the registry; ``--check-hdc`` applies the
Hybrid Dilated Convolution rule of Wang et al. 2018 and exits 1 when the rates fail it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from atrous._checks import check_int
from atrous._files import check_output_file
from atrous.cli._common import parse_ints, require
from atrous.cli._names import MODEL_NAMES

if TYPE_CHECKING:
    from torch import nn

MAX_KERNEL = 1024
MAX_CHANNELS = 65_536
MAX_RATE = 2**20
MAX_INPUT_VALUES = 2**24  # C x spatial sizes: the analysis may run the model on a zero input of this size
MAX_COVERAGE = 10**6  # field size up to which --check-hdc and the coverage map are computed, one entry per offset


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    models = "; ".join(f"{task}: {', '.join(names)}" for task, names in MODEL_NAMES.items())
    parser = subparsers.add_parser(
        name, help="receptive field, cost and gridding of a dilated stack or model",
        description="Print the receptive field of every layer of a stack of dilated convolutions (--rates) "
                    "or of a registered model (--model), with its parameters and multiply-adds; check rates "
                    "against the Hybrid Dilated Convolution rule (--check-hdc); draw the coverage map or the "
                    "effective receptive field (--plot).",
    )
    parser.add_argument("--rates", default="1,2,4,8", help=f"dilation of each layer, each 1 to {MAX_RATE:,}")
    parser.add_argument("--kernel", type=int, default=3, help=f"kernel size of every layer, 1 to {MAX_KERNEL}")
    parser.add_argument("--dims", type=int, default=2, choices=(1, 2), help="spatial axes of the stack")
    parser.add_argument("--channels", type=int, default=64,
                        help=f"channels of every layer, for the cost, 1 to {MAX_CHANNELS:,}")
    parser.add_argument("--model", metavar="NAME",
                        help=f"a registered model, analysed with random weights instead of --rates ({models})")
    parser.add_argument("--input", help="input shape C,H,W or C,T (default: the model's channels at 512 or 16384), "
                        f"at most {MAX_INPUT_VALUES:,} values in all")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the coverage map (rates) or the ERF heatmap (model)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    parser.add_argument("--check-hdc", metavar="RATES",
                        help="print the HDC verdict for these rates (with --kernel); exit 1 when they fail the check")
    parser.set_defaults(run=run)


def _stack(rates: list[int], kernel: int, dims: int, channels: int) -> nn.Module:
    from torch import nn

    from atrous.ops.layers import DilatedConv1d, DilatedConv2d

    conv = DilatedConv1d if dims == 1 else DilatedConv2d
    return nn.Sequential(*(conv(channels, channels, kernel, padding="same", dilation=rate) for rate in rates))


def _model(name: str) -> nn.Module:
    from atrous.models import create, list_models, model_task

    if name not in list_models():
        raise ValueError(f"--model must be a registered model name, one of: {', '.join(list_models())}; got {name!r}")
    # The receptive field does not depend on the number of classes.
    return create(name, num_classes=2) if model_task(name) == "segmentation" else create(name)


def _input_shape(text: str) -> tuple[int, ...]:
    shape = tuple(parse_ints(text, "--input"))
    values = 1
    for size in shape:
        values *= size
    if values > MAX_INPUT_VALUES:
        raise ValueError(f"--input {text!r} holds {values:,} values; at most {MAX_INPUT_VALUES:,} are analysed")
    return shape


def _check_coverage(rates: list[int], kernel: int, option: str) -> None:
    from atrous.ops.padding import stack_receptive_field  # torch-free, like the rest of this check

    size = stack_receptive_field(kernel, rates)
    if size > MAX_COVERAGE:
        raise ValueError(f"{option} with --kernel {kernel} spans a field of {size:,} samples; the coverage is "
                         f"computed up to {MAX_COVERAGE:,}")


def _check_plot(args: argparse.Namespace) -> Path:
    path = Path(args.plot)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot must name a .png file, got {args.plot!r}")
    require("matplotlib", "plot", "rf --plot")
    return check_output_file(path, overwrite=args.overwrite, name="--plot")


def _default_input(model: nn.Module) -> tuple[int, ...]:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            dims = module.weight.ndim - 2
            return (module.in_channels, *((16384,) if dims == 1 else (512,) * dims))
    raise ValueError("cannot guess the input of a model without convolutions; pass --input C,H,W")


def run(args: argparse.Namespace) -> int:
    import torch

    from atrous.analysis import gridding, hdc_check, receptive_field

    check_int(args.kernel, "--kernel", low=1, high=MAX_KERNEL)
    check_int(args.channels, "--channels", low=1, high=MAX_CHANNELS)
    if args.check_hdc is not None:
        hdc_rates = parse_ints(args.check_hdc, "--check-hdc", maximum=MAX_RATE)
        _check_coverage(hdc_rates, args.kernel, "--check-hdc")
        verdict = hdc_check(hdc_rates, args.kernel)
        if args.json:
            print(json.dumps({"valid": verdict.valid, "explanation": verdict.explanation,
                              "max_distances": list(verdict.max_distances), "common_factor": verdict.common_factor}))
        else:
            print(("valid: " if verdict.valid else "invalid: ") + verdict.explanation)
        return 0 if verdict.valid else 1
    given_input = _input_shape(args.input) if args.input is not None else None
    if args.model is None:
        rates = parse_ints(args.rates, "--rates", maximum=MAX_RATE)
        if args.plot is not None:
            _check_coverage(rates, args.kernel, "--rates")
    plot = _check_plot(args) if args.plot is not None else None  # before any work
    if args.model is not None:
        model = _model(args.model)
        shape = given_input or _default_input(model)
    else:
        shape = given_input or (args.channels, *(64,) * args.dims)
        if len(shape) != args.dims + 1:
            raise ValueError(f"--input must be C plus {args.dims} spatial sizes for --dims {args.dims}, "
                             f"got {args.input!r}")
        check_int(shape[0], "--input channels", low=1, high=MAX_CHANNELS)
        with torch.device("meta"):  # the field and the cost need shapes only, never the weights
            model = _stack(rates, args.kernel, args.dims, shape[0])
    field = receptive_field(model, shape)
    if args.json:
        print(json.dumps(field.as_dict()))
    elif args.model is not None:
        print(f"{args.model} at input {','.join(map(str, shape))}: receptive field "
              f"{'x'.join(map(str, field.size))}, stride {'x'.join(map(str, field.stride))}"
              + (" (whole input: global pooling)" if any(field.whole) else ""))
        print(field.table())
    else:
        print(_rates_table(rates, args.kernel, field))
    if plot is not None:
        from atrous.viz import plot_coverage, plot_erf

        if args.model is not None:
            from atrous.analysis import effective_receptive_field

            erf = effective_receptive_field(model, shape)
            title = f"effective receptive field of {args.model} at {','.join(map(str, shape))}"
            plot_erf(erf, plot, title=title, weights="random init")
            print(f"wrote the effective receptive field ({'x'.join(map(str, erf.shape))}) to {plot}")
        else:
            coverage = gridding(rates, args.kernel)
            plot_coverage(coverage, plot, dims=args.dims)
            print(f"wrote the coverage map to {plot}")
    return 0


def _rates_table(rates: list[int], kernel: int, field) -> str:
    from atrous.analysis.receptive_field import markdown_table
    from atrous.ops.padding import kernel_extent

    rows, previous = [], 1
    for i, (rate, row) in enumerate(zip(rates, field.layers), 1):
        size = row.size[0]
        rows.append((str(i), str(rate), f"{kernel - 1}x{rate} = {kernel_extent(kernel, rate) - 1}", str(size),
                     f"{row.params:,}", f"{row.macs:,}"))
        previous = size
    rows.append(("total", "", "", str(previous), f"{field.params:,}", f"{field.macs:,}"))
    header = ("Layer", "Dilation", "Adds to RF", "Cumulative RF", "Params", "MACs")
    return markdown_table(header, rows)
