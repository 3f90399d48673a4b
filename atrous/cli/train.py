"""``atrous train``: train a segmentation model (with no arguments: context_net on digits)."""

from __future__ import annotations

import argparse
import sys

from atrous.cli._common import (
    add_checkpoint_arguments,
    checkpoint_every,
    parse_floats,
    parse_key_values,
    check_resume,
)

def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="train a segmentation model",
        description="Train a segmentation model. With no arguments, trains context_net on the built-in digits data.",
    )
    parser.add_argument("--data", default=None,
                        help="'digits' (built in) or a VOC / {train,val}/{images,masks} folder (default: digits)")
    parser.add_argument("--model", default=None,
                        help="registered segmentation model, listed by `atrous rf --help` (default: context_net)")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                        help="extra model builder argument; repeat for more")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: 6 for digits, 20 for folders; "
                        "with --resume: train up to this many)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: 8)")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default=None,
                        help="optimizer; sgd uses momentum 0.9, the DeepLab recipe (default: adamw)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate, decayed by the poly schedule "
                        "(default: 1.5e-3 for adamw, 0.01 for sgd)")
    parser.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: 1e-4)")
    parser.add_argument(
        "--background-weight", type=float, default=None,
        help="loss weight of class 0 against 1 for the others (default: 0.3 for digits, 1 for folders)",
    )
    parser.add_argument("--crop-size", type=int, default=None,
                        help="random training crop (default: 320 for folders, none for digits)")
    parser.add_argument("--scale", default=None,
                        help="random scale range LOW,HIGH (default: 0.5,2 for folders, 1,1 for digits)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="random horizontal flips (default: on for folders, off for digits)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes (default: inferred from the data)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="digits: number of training scenes (default: 10000)")
    parser.add_argument("--val-images", type=int, default=None,
                        help="digits: number of validation scenes (default: 200)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes drawing training batches; 0 chooses: between steps when torch's threads fill the "
                        "cores, else one worker (default: 0 for digits, 2 for folders)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seeds data order, augmentation and initialisation (default: 0)")
    parser.add_argument("--device", default=None, help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default=None,
        help="training forward in bfloat16 autocast; auto: where the CPU or GPU has native bf16 (default: auto)",
    )
    add_finetuning_arguments(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/MODEL_DATA, numbered if taken)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing atrous run folder")
    add_checkpoint_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def add_finetuning_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fine-tuning from released weights (docs/training.md)")
    files = group.add_mutually_exclusive_group()
    files.add_argument("--weights", metavar="PATH", default=None,
                       help="start from this whole model's weights (.pth or .safetensors): torchvision's DeepLab v3 "
                       "or FCN checkpoints, or an atrous model's; read when the run starts (default: none)")
    files.add_argument("--backbone-weights", metavar="PATH", default=None,
                       help="start the backbone from ImageNet weights (.pth or .safetensors) of torchvision's or "
                       "timm's ResNet or VGG-16 (default: none)")
    group.add_argument("--freeze-bn", action="store_true",
                       help="keep every BatchNorm layer's statistics, scale and shift as they start (the usual "
                       "choice for small batches)")
    group.add_argument("--backbone-lr-scale", type=float, default=None, metavar="X",
                       help="the backbone learns at X times --lr, e.g. 0.1 under a new head (default: 1)")
    group.add_argument("--aux-weight", type=float, default=None, metavar="X",
                       help="weight of the auxiliary head's loss, for models built with --model-arg aux_loss=True "
                       "(default: 0.5, torchvision's)")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of these arguments: :func:`~atrous.engine.config.train_config`'s preset for
    ``--data`` with every option given on the command line taking precedence."""
    from pathlib import Path

    from atrous.engine.config import train_config
    from atrous.engine.finetune import check_weights_file

    data = args.data or "digits"
    if data != "digits" and not Path(data).exists():
        raise FileNotFoundError(f"--data {data!r}: no such folder (the built-in dataset is 'digits')")
    for name in ("weights", "backbone_weights"):
        if getattr(args, name) is not None:
            check_weights_file(getattr(args, name), "--" + name.replace("_", "-"))
    given = {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
        "lr": args.lr, "weight_decay": args.weight_decay, "background_weight": args.background_weight,
        "crop_size": args.crop_size, "flip": args.flip, "num_classes": args.num_classes,
        "train_images": args.train_images, "val_images": args.val_images, "workers": args.workers,
        "seed": args.seed, "device": args.device, "precision": args.precision, "weights": args.weights,
        "backbone_weights": args.backbone_weights, "freeze_bn": args.freeze_bn or None,
        "backbone_lr_scale": args.backbone_lr_scale, "aux_weight": args.aux_weight,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    if args.scale is not None:
        overrides["scale_range"] = parse_floats(args.scale, "--scale")
        if len(overrides["scale_range"]) != 2:
            raise ValueError(f"--scale must be two numbers LOW,HIGH, got {args.scale!r}")
    if args.model_arg:
        overrides["model_kwargs"] = parse_key_values(args.model_arg, "--model-arg")
    try:
        return train_config(data, **overrides)
    except ValueError as error:  # name the option, not the config field
        field = str(error).split(" ", 1)[0]
        raise ValueError(f"--{field.replace('_', '-')}{str(error)[len(field):]}") from None


# what a resumed run may be told: how long to train, and how to run (not what to train)
RESUME_OPTIONS = {"epochs", "resume", "out", "no_progress", "checkpoint_minutes", "checkpoint_steps", "run",
                  "command", "overwrite"}


def run(args: argparse.Namespace) -> int:
    import os

    from atrous.engine.run_dir import next_run_dir
    from atrous.engine.trainer import train

    if args.resume is not None:
        check_resume(args, RESUME_OPTIONS)
        result = train(None, args.resume, resume=True, progress=not args.no_progress and sys.stderr.isatty(),
                       epochs=args.epochs, every=checkpoint_every(args))
        out = args.resume
    else:
        config = config_from_args(args)
        out = args.out
        if out is None:
            data = config.data
            data_name = "digits" if data == "digits" else os.path.basename(os.path.normpath(data))
            default = os.path.join("runs", f"{config.model}_{data_name}")
            out = str(next_run_dir("runs", f"{config.model}_{data_name}"))
            if out != default:
                print(f"{default} is taken (continue it with --resume {default}); this run goes to {out}")
        result = train(config, out, overwrite=args.overwrite, progress=not args.no_progress and sys.stderr.isatty(),
                       every=checkpoint_every(args))
    if int(os.environ.get("RANK", "0")) == 0 and result["best"] is not None:
        best = result["best"]
        print(f"best val mIoU {best['val_miou']:.4f} at epoch {best['epoch']}; run folder: {out}")
    return 0
