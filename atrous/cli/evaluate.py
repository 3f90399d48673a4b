"""``atrous eval``: score a checkpoint or a weights file: confusion matrix, per-class IoU, mIoU, pixel accuracy."""

from __future__ import annotations

import argparse
import json
import math
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

MAX_SCALE = 4.0  # a larger test-time scale multiplies the memory of a forward by its square
MAX_BATCH = 65_536  # as TrainConfig.batch_size


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name, help="evaluate a checkpoint on a dataset split",
        description="Score a checkpoint of `atrous train`, or --model NAME --weights PATH (a released or saved "
                    "state_dict, ImageNet-normalised by default), on a dataset split: per-class IoU, mIoU, pixel "
                    "accuracy and the confusion matrix (rows: true class, columns: predicted class), optionally "
                    "averaging the predictions over flipped and rescaled inputs. Images larger than --tile run in "
                    "overlapping tiles.",
    )
    parser.add_argument("--data", default=None,
                        help="'digits' or a dataset folder (default: the checkpoint's training data; needed with "
                             "--weights)")
    parser.add_argument("--split", default="val", help="split to score")
    parser.add_argument("--flip", action="store_true", help="average with horizontally flipped input")
    parser.add_argument("--scales", default="1",
                        help=f"input scales to average, e.g. 0.75,1,1.25 (each > 0 and <= {MAX_SCALE:g})")
    parser.add_argument("--batch-size", type=int, default=8, help=f"images per forward, 1 to {MAX_BATCH:,}")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--max-pixels", type=int, default=None, metavar="N",
        help="refuse images and masks with more pixels, from their headers, before decoding them "
             "(default: atrous.data.folders.DEFAULT_MAX_PIXELS, 100 million)",
    )
    add_device_argument(parser)
    add_model_arguments(parser, what="score")
    add_tile_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from atrous.engine.distributed import resolve_device
    from atrous.models import WeightsWarning

    check_model_arguments(args)
    if args.checkpoint is None and args.data is None:
        raise ValueError("--weights needs --data: 'digits' or a dataset folder to score on")
    check_int(args.batch_size, "--batch-size", low=1, high=MAX_BATCH)
    scales = parse_floats(args.scales, "--scales", maximum=MAX_SCALE)
    if args.max_pixels is not None:
        check_int(args.max_pixels, "--max-pixels", low=1)
    tiles = tile_options(args)
    if args.checkpoint is not None:
        require("safetensors", "train", "reading a checkpoint")
    device = resolve_device(args.device)
    with one_line_warnings(skip=(WeightsWarning,)):
        model, meta = load_model(args, device=device)
        return _score(args, model, meta, scales=scales, device=device, tiles=tiles)


def _score(args: argparse.Namespace, model, meta: dict, *, scales, device, tiles: dict) -> int:
    from atrous.data import build_dataset
    from atrous.engine.evaluate import evaluate

    config = meta.get("config", {})
    data = args.data or meta.get("data", "digits")
    if data != "digits":
        require("PIL", "train", "reading an image folder")
    kwargs = {}
    if args.max_pixels is not None and data != "digits":  # digits are drawn, not read from files
        kwargs["max_pixels"] = args.max_pixels
    if data == "digits":
        kwargs["seed"] = config.get("seed", 0)
        size = config.get({"train": "train_images", "val": "val_images"}.get(args.split, ""))
        if size:
            kwargs["num_images"] = size
    dataset = build_dataset(data, args.split, num_classes=meta["num_classes"], **kwargs)
    if dataset.num_classes != meta["num_classes"]:
        source = "the checkpoint" if args.checkpoint is not None else f"--model {args.model} --weights"
        raise ValueError(f"{source} predicts {meta['num_classes']} classes but {data} has {dataset.num_classes}")
    result = evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        device=device,
        flip=args.flip,
        scales=scales,
        mean=meta.get("mean"),
        std=meta.get("std"),
        progress=not args.json and sys.stderr.isatty(),
        **tiles,
    )
    names = meta.get("class_names") or getattr(dataset, "class_names", None) or [
        str(i) for i in range(meta["num_classes"])]
    if args.json:
        clean = [None if math.isnan(v) else v for v in result["iou"]]
        print(json.dumps({**result, "iou": clean, "class_names": names, "images": len(dataset)}))
        return 0
    width = max(len(n) for n in names)
    print(f"{len(dataset)} images from {data} ({args.split}), scales {list(scales)}, flip {args.flip}")
    print(f"{'class'.ljust(width)}  IoU")
    for name, value in zip(names, result["iou"]):
        print(f"{name.ljust(width)}  {'n/a' if math.isnan(value) else f'{value:.4f}'}")
    print(f"{'mIoU'.ljust(width)}  {result['miou']:.4f}")
    print(f"{'pixel acc'.ljust(width)}  {result['pixel_acc']:.4f}")
    print("confusion matrix (pixels; rows: true class, columns: predicted class):")
    print(confusion_table(result["confusion"], names))
    return 0


def confusion_table(confusion: list[list[int]], names: list[str]) -> str:
    """The confusion matrix with a header row of predicted classes and a first column of true ones.

    Args:
        confusion: ``confusion[t][p]`` pixels of true class ``t`` predicted as ``p``.
        names: one name per class.
    """
    corner = "true \\ predicted"
    first = max([len(corner), *map(len, names)])
    widths = [max([len(name), *(len(str(row[c])) for row in confusion)]) for c, name in enumerate(names)]
    lines = [corner.ljust(first) + "  " + "  ".join(name.rjust(w) for name, w in zip(names, widths))]
    for name, row in zip(names, confusion):
        lines.append(name.ljust(first) + "  " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)
