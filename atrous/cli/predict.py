"""``atrous predict``: label images with a checkpoint or a weights file; palette PNGs of class indices and overlays."""

from __future__ import annotations

import argparse
import sys

from atrous._checks import check_int
from atrous.cli._common import (
    add_device_argument,
    add_model_arguments,
    add_tile_arguments,
    check_model_arguments,
    load_model,
    one_line_warnings,
    parse_floats,
    require,
    tile_options,
)
from atrous.cli.evaluate import MAX_SCALE


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name, help="predict segmentation masks for images",
        description="Label images with a checkpoint of `atrous train`, or with --model NAME --weights PATH (a "
                    "released or saved state_dict, ImageNet-normalised by default). Images larger than --tile run "
                    "in overlapping tiles with bounded memory. Every image is decoded and every output path checked "
                    "before anything is written, so a missing, corrupt or oversized image writes nothing; each "
                    "output is written to a temporary name in --out and renamed into place, and outputs that are "
                    "symbolic links are refused.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any Pillow format)")
    parser.add_argument("--out", required=True,
                        help="folder for STEM.png (class indices) and STEM_overlay.png (made if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--flip", action="store_true", help="average with horizontally flipped input")
    parser.add_argument("--scales", default="1",
                        help=f"input scales to average, e.g. 0.75,1,1.25 (each > 0 and <= {MAX_SCALE:g})")
    parser.add_argument(
        "--max-pixels", type=int, default=None, metavar="N",
        help="refuse images with more pixels, from their headers, before decoding them "
             "(default: atrous.data.folders.DEFAULT_MAX_PIXELS, 100 million)",
    )
    add_device_argument(parser)
    add_model_arguments(parser, what="predict with")
    add_tile_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from atrous.engine.distributed import resolve_device
    from atrous.engine.predict import predict_files
    from atrous.models import WeightsWarning

    check_model_arguments(args)
    scales = parse_floats(args.scales, "--scales", maximum=MAX_SCALE)
    if args.max_pixels is not None:
        check_int(args.max_pixels, "--max-pixels", low=1)
    tiles = tile_options(args)
    if args.checkpoint is not None:
        require("safetensors", "train", "reading a checkpoint")
    require("PIL", "train", "predict")
    limit = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    device = resolve_device(args.device)
    with one_line_warnings(skip=(WeightsWarning,)):
        model, meta = load_model(args, device=device)
        written = predict_files(
            model,
            meta,
            args.images,
            args.out,
            overwrite=args.overwrite,
            flip=args.flip,
            scales=scales,
            device=device,
            progress=sys.stderr.isatty(),
            **tiles,
            **limit,
        )
    print(f"wrote {len(written)} files to {args.out}")
    return 0
