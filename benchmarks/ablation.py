"""Does dilation pay? Train networks that differ only in their dilation rates on ``digits``.

``plain_net`` (every rate 1), ``context_net`` (Yu & Koltun rates 1,1,2,4,8,16,1),
``gridding_net`` (rates sharing a factor of 3) and ``hdc_net`` (hybrid dilated rates,
Wang et al. 2018) have the same layers and parameter count; only the rates differ. Each is
trained with the same recipe and seed, then the table (parameters, receptive field, val mIoU,
training time: the sum of the epochs' wall times) is printed and, with ``--write-docs``, written
into docs/digits.md between the ``ablation`` markers.

    python benchmarks/ablation.py --write-docs --keep runs/ablation --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _docs import DOCS, write_section  # benchmarks/_docs.py, beside this script

from atrous.engine.config import TrainConfig

MODELS = ("plain_net", "context_net", "gridding_net", "hdc_net")
PAGE = "digits.md"  # the docs page that holds the table, between the ``ablation`` markers


def run(args: argparse.Namespace) -> str:
    import atrous
    from atrous.cli.main import build_parser
    from atrous.cli.train import config_from_args
    from atrous.engine.run_dir import is_run_dir
    from atrous.engine.trainer import autocast_dtype, train
    from atrous.models import create

    rows = []
    for name in args.models:
        model = create(name, num_classes=11)
        params = sum(p.numel() for p in model.parameters())
        field = atrous.receptive_field(model, (3, 128, 128)).size[0]
        # `atrous train`'s own recipe for digits, from its own argument parser
        argv = ["train", "--model", name, "--epochs", args.epochs, "--train-images", args.train_images,
                "--val-images", args.val_images, "--batch-size", args.batch_size, "--seed", args.seed, "--device", "cpu"]
        config = config_from_args(build_parser().parse_args([str(a) for a in argv]))
        with tempfile.TemporaryDirectory() as scratch:
            run_dir = Path(args.keep or scratch) / name
            # A kept run is continued where it stopped (or just read back when finished), so an
            # interrupted ablation picks up.
            resume = is_run_dir(run_dir)
            if resume:
                _check_kept(run_dir, config)
            result = train(config, run_dir, progress=False, resume=resume, overwrite=bool(args.keep) and not resume,
                           epochs=args.epochs if resume else None)
        seconds = sum(row["seconds"] for row in result["history"])
        best = result["best"]
        rows.append((name, params, field, result["history"][-1]["val_miou"], best["val_miou"], seconds))
        print(f"{name}: params {params:,}, RF {field}, final mIoU {rows[-1][3]:.4f}, {seconds:.0f} s", flush=True)
    precision = "bf16 autocast" if autocast_dtype("auto", torch.device("cpu")) else "fp32"
    threads = torch.get_num_threads()
    lines = [
        (
            f"Trained on `digits` ({args.train_images} train / {args.val_images} val scenes, {args.epochs} epochs, "
            f"batch {args.batch_size}, AdamW, background weight {config.background_weight}, {precision}, seed {args.seed}); "
            f"runs trained by this call: {threads} CPU thread{'s' if threads > 1 else ''}, kept runs as they were trained:"
        ),
        "",
        "| model | rates | params | receptive field (px) | val mIoU (last) | val mIoU (best) | train time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, params, field, last, best, seconds in rows:
        rates = ",".join(str(r) for r in create(name, num_classes=11).context.rates)
        lines.append(f"| `{name}` | {rates} | {params:,} | {field} | {last:.3f} | {best:.3f} | {seconds / 60:.1f} min |")
    return "\n".join(lines)


# Settings that may differ between a kept run and this ablation without changing what was learned:
# every other TrainConfig field is part of the recipe and must match.
_NOT_RECIPE = ("epochs", "device", "workers", "train_images", "val_images")


def _check_kept(run_dir: Path, config) -> None:
    """Refuse to reuse a kept run trained with another recipe than ``config``."""
    from dataclasses import fields

    from atrous.data.digits import DEFAULT_NUM_IMAGES
    from atrous.engine.config import TrainConfig

    kept = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    differ = [f.name for f in fields(TrainConfig)
              if f.name not in _NOT_RECIPE and getattr(kept, f.name) != getattr(config, f.name)]
    for split in ("train", "val"):  # None means the dataset's default count
        name = f"{split}_images"
        if (getattr(kept, name) or DEFAULT_NUM_IMAGES[split]) != (getattr(config, name) or DEFAULT_NUM_IMAGES[split]):
            differ.append(name)
    if differ:
        raise SystemExit(f"{run_dir} was trained with other settings ({', '.join(differ)}); move it away or pick another --keep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="default: atrous train's for digits")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--write-docs", action="store_true", help=f"write the table into docs/{PAGE}")
    parser.add_argument("--keep", default=None,
                        help="keep the runs in KEEP/MODEL and continue or reuse those already there (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = run(args)
    print(table)
    if args.write_docs:
        write_section(DOCS / PAGE, "ablation", table)


if __name__ == "__main__":
    main()
