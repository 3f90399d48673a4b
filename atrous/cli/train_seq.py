"""``atrous train-seq``: train a TCN or WaveNet on the adding problem, copy memory or WAV audio.

Writes a run folder holding the checkpoint (``model.safetensors``, ``optimizer.safetensors``,
``checkpoint.json`` with the model's registry name and arguments) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from atrous.engine.checkpoint import atomic_write, save_checkpoint
from atrous.engine.sequence import OPTIMIZERS, TASKS, SequenceTrainConfig, train_sequence
from atrous.models import create

METRICS_FILE = "metrics.json"


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="train a TCN/WaveNet on a sequence task",
        description="Train on the adding problem or copy memory (Bai et al. 2018), or on mu-law audio "
        "from a folder of mono 8/16-bit WAV files (e.g. Debian's asterisk-core-sounds-en-wav: "
        "/usr/share/asterisk/sounds/en_US_f_Allison, 568 files, 25 minutes of 8 kHz speech).",
    )
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing run folder")
    parser.add_argument("--data", help="folder of WAV files (task audio)")
    parser.add_argument("--model", choices=("tcn", "wavenet"), help="default: tcn for adding/copy, wavenet for audio")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=None,
                        help="T for adding (default 600) and copy (default 1000); scored samples per audio window "
                        "(default 256)")
    parser.add_argument("--lr", type=float, default=None, help="default 2e-3 (adding, audio), 5e-4 (copy)")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                        help="default adam (adding, audio), rmsprop (copy)")
    parser.add_argument("--grad-clip", type=float, default=None, help="max grad norm; default 0 (off), 1.0 for copy")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    tcn = parser.add_argument_group("TCN (defaults: the paper's adding model; copy uses 10 hidden)")
    tcn.add_argument("--hidden", type=int, default=None)
    tcn.add_argument("--levels", type=int, default=8)
    tcn.add_argument("--kernel-size", type=int, default=8)
    tcn.add_argument("--dropout", type=float, default=None, help="default 0 (adding), 0.05 (copy)")
    tcn.add_argument("--init-std", type=float, default=0.01, help="normal init std of the 1x1 projection and head (the weight-normalised convs keep PyTorch's default, as in the paper's code); 0: PyTorch default")
    wavenet = parser.add_argument_group("WaveNet")
    wavenet.add_argument("--blocks", type=int, default=3)
    wavenet.add_argument("--layers", type=int, default=10)
    wavenet.add_argument("--channels", type=int, default=64, help="residual and skip channels; gate = 2x")
    parser.set_defaults(run=run)


_TASK_DEFAULTS = {
    # Bai et al. (2018): adding T=600 (k=8, 8 levels, 24 hidden, Adam 2e-3); copy T=1000 (k=8, 8 levels,
    # 10 hidden, dropout 0.05, RMSprop 5e-4, clip 1.0).
    "adding": {"length": 600, "lr": 2e-3, "optimizer": "adam", "grad_clip": 0.0, "hidden": 24, "dropout": 0.0},
    "copy": {"length": 1000, "lr": 5e-4, "optimizer": "rmsprop", "grad_clip": 1.0, "hidden": 10, "dropout": 0.05},
    "audio": {"length": 256, "lr": 2e-3, "optimizer": "adam", "grad_clip": 0.0, "hidden": 24, "dropout": 0.0},
}


def _model_spec(args: argparse.Namespace, defaults: dict) -> tuple[str, dict]:
    name = args.model or ("wavenet" if args.task == "audio" else "tcn")
    if name == "wavenet":
        if args.task != "audio":
            raise ValueError(f"--model wavenet models audio classes; use --task audio, got --task {args.task}")
        return name, {"blocks": args.blocks, "layers": args.layers, "residual_channels": args.channels,
                      "gate_channels": 2 * args.channels, "skip_channels": args.channels}
    if args.task == "audio":
        raise ValueError("--task audio needs --model wavenet (a TCN does not output mu-law classes)")
    channels = 2 if args.task == "adding" else 10
    return name, {
        "in_channels": channels, "out_channels": 1 if args.task == "adding" else 10,
        "hidden": args.hidden or defaults["hidden"], "levels": args.levels, "kernel_size": args.kernel_size,
        "dropout": defaults["dropout"] if args.dropout is None else args.dropout, "init_std": args.init_std,
    }


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"run folder {str(out)!r} already exists and is not empty; pass --overwrite to reuse it")
    defaults = _TASK_DEFAULTS[args.task]
    config = SequenceTrainConfig(
        task=args.task, steps=args.steps, batch_size=args.batch_size, length=args.length or defaults["length"],
        lr=defaults["lr"] if args.lr is None else args.lr, optimizer=args.optimizer or defaults["optimizer"],
        grad_clip=defaults["grad_clip"] if args.grad_clip is None else args.grad_clip,
        eval_size=args.eval_size, log_every=args.log_every, seed=args.seed,
    )
    name, model_kwargs = _model_spec(args, defaults)
    torch.manual_seed(args.seed)
    model = create(name, **model_kwargs)
    meta = {"model": name, "model_kwargs": model_kwargs, "task": args.task, "train": asdict(config),
            "receptive_field": model.receptive_field}
    audio_batches = None
    if args.task == "audio":
        if not args.data:
            raise ValueError("--task audio needs --data, a folder of mono WAV files")
        from atrous.data.sequence import WavFolderDataset

        window = model.receptive_field - 1 + config.length
        dataset = WavFolderDataset(args.data, window, items=config.steps * config.batch_size, seed=args.seed)
        meta["sample_rate"] = dataset.sample_rate
        audio_batches = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"train-seq: {name} ({params} parameters, receptive field {model.receptive_field}) on {args.task}")

    def log(record: dict) -> None:
        extra = f" eval {record['eval_loss']:.4g}" if "eval_loss" in record else ""
        print(f"step {record['step']:>6}  loss {record['loss']:.4g}{extra}  ({record['seconds']:.1f} s)", flush=True)

    history, optimizer = train_sequence(model, config, audio_batches=audio_batches, on_log=log)
    meta["final"] = history[-1]
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, optimizer=optimizer, meta=meta)
    metrics = {"task": args.task, "model": name, "parameters": params, "history": history, "final": history[-1]}
    text = json.dumps(metrics, indent=1)
    atomic_write(out / METRICS_FILE, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {out}")
    return 0
