"""``atrous rf``: receptive field, cost and gridding of a dilated stack or a registered model.

``--rates 1,2,4,8`` prints the per-layer table of a stack of dilated convolutions (Yu & Koltun
2016: fields 3, 7, 15, 31 for 3x3 kernels) with parameters and multiply-adds per layer;
``--model NAME`` does the same for any model in the registry; ``--check-hdc`` applies the
Hybrid Dilated Convolution rule of Wang et al. 2018.
"""

from __future__ import annotations

import argparse
import json

from torch import nn

from atrous.cli._common import parse_ints
from atrous.ops.padding import kernel_extent


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(name, help="receptive field, cost and gridding of a dilated stack or model")
    parser.add_argument("--rates", default="1,2,4,8", help="dilation of each layer (default 1,2,4,8)")
    parser.add_argument("--kernel", type=int, default=3, help="kernel size of every layer (default 3)")
    parser.add_argument("--dims", type=int, default=2, choices=(1, 2), help="spatial axes of the stack (default 2)")
    parser.add_argument("--channels", type=int, default=64, help="channels of every layer, for the cost (default 64)")
    parser.add_argument("--model", help="a registered model name (see atrous.models.list_models())")
    parser.add_argument("--input", help="input shape C,H,W or C,T (default: the model's channels at 512 or 16384)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the coverage map (rates) or the ERF heatmap (model)")
    parser.add_argument("--check-hdc", metavar="RATES", help="print the HDC verdict for these rates")
    parser.set_defaults(run=run)


def _stack(rates: list[int], kernel: int, dims: int, channels: int) -> nn.Module:
    from atrous.ops.layers import DilatedConv1d, DilatedConv2d

    conv = DilatedConv1d if dims == 1 else DilatedConv2d
    return nn.Sequential(*(conv(channels, channels, kernel, padding="same", dilation=rate) for rate in rates))


def _model(name: str) -> nn.Module:
    from atrous.models import create

    return create(name)


def _default_input(model: nn.Module) -> tuple[int, ...]:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            dims = module.weight.ndim - 2
            return (module.in_channels, *((16384,) if dims == 1 else (512,) * dims))
    raise ValueError("cannot guess the input of a model without convolutions; pass --input C,H,W")


def run(args: argparse.Namespace) -> int:
    from atrous.analysis import gridding, hdc_check, receptive_field

    if args.check_hdc:
        verdict = hdc_check(parse_ints(args.check_hdc, "--check-hdc"), args.kernel)
        if args.json:
            print(json.dumps({"valid": verdict.valid, "explanation": verdict.explanation,
                              "max_distances": list(verdict.max_distances), "common_factor": verdict.common_factor}))
        else:
            print(("valid: " if verdict.valid else "invalid: ") + verdict.explanation)
        return 0
    if args.kernel < 1:
        raise ValueError(f"--kernel must be >= 1, got {args.kernel}")
    if args.channels < 1:
        raise ValueError(f"--channels must be >= 1, got {args.channels}")
    if args.model:
        model = _model(args.model)
        shape = tuple(parse_ints(args.input, "--input")) if args.input else _default_input(model)
    else:
        rates = parse_ints(args.rates, "--rates")
        channels = parse_ints(args.input, "--input")[0] if args.input else args.channels
        shape = tuple(parse_ints(args.input, "--input")) if args.input else (channels, *(64,) * args.dims)
        if len(shape) != args.dims + 1:
            raise ValueError(f"--input must be C plus {args.dims} spatial sizes for --dims {args.dims}, got {args.input!r}")
        model = _stack(rates, args.kernel, args.dims, channels)
    field = receptive_field(model, shape)
    if args.json:
        print(json.dumps(field.as_dict()))
    elif args.model:
        print(f"{args.model} at input {','.join(map(str, shape))}: receptive field "
              f"{'x'.join(map(str, field.size))}, stride {'x'.join(map(str, field.stride))}"
              + (" (whole input: global pooling)" if any(field.whole) else ""))
        print(field.table())
    else:
        print(_rates_table(rates, args.kernel, field))
    if args.plot:
        from atrous.viz import plot_coverage

        if args.model:
            from atrous.analysis import effective_receptive_field

            erf = effective_receptive_field(model, shape, plot=args.plot)
            print(f"wrote the effective receptive field ({'x'.join(map(str, erf.shape))}) to {args.plot}")
        else:
            plot_coverage(gridding(rates, args.kernel), args.plot, dims=args.dims)
            print(f"wrote the coverage map to {args.plot}")
    return 0


def _rates_table(rates: list[int], kernel: int, field) -> str:
    from atrous.analysis.receptive_field import markdown_table

    rows, previous = [], 1
    for i, (rate, row) in enumerate(zip(rates, field.layers), 1):
        size = row.size[0]
        rows.append((str(i), str(rate), f"{kernel - 1}x{rate} = {kernel_extent(kernel, rate) - 1}", str(size),
                     f"{row.params:,}", f"{row.macs:,}"))
        previous = size
    rows.append(("total", "", "", str(previous), f"{field.params:,}", f"{field.macs:,}"))
    header = ("Layer", "Dilation", "Adds to RF", "Cumulative RF", "Params", "MACs")
    return markdown_table(header, rows)
