"""``atrous train-seq``: train a TCN or WaveNet on the adding problem, copy memory or WAV audio.

The recipes are :func:`atrous.engine.sequence.sequence_config`'s; the run folder, checkpoints
and ``--resume`` are the run engine's, as for ``atrous train``.
"""

from __future__ import annotations

import argparse
import sys

from atrous.cli._common import add_checkpoint_arguments, checkpoint_every, check_resume

TASKS = ("adding", "copy", "audio")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
# what a resumed run may be told: how long to train, and how to run (not what to train)
RESUME_OPTIONS = {"steps", "resume", "out", "no_progress", "checkpoint_minutes", "checkpoint_steps", "run", "command",
                  "overwrite"}


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="train a TCN/WaveNet on a sequence task",
        description="Train on the adding problem or copy memory (Bai et al. 2018), or on mu-law audio "
        "from a folder of mono 8/16-bit WAV files (e.g. Debian's asterisk-core-sounds-en-wav: "
        "/usr/share/asterisk/sounds/en_US_f_Allison, 568 files, 25 minutes of 8 kHz speech).",
    )
    parser.add_argument("--task", choices=TASKS, help="the task; required for a new run")
    parser.add_argument("--out", help="run folder to create; required for a new run")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing atrous run folder")
    parser.add_argument("--data", help="folder of WAV files (task audio)")
    parser.add_argument("--model", choices=("tcn", "wavenet"),
                        help="model (default: tcn for adding/copy, wavenet for audio)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 1000; with --resume: "
                        "train up to this many)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: 32)")
    parser.add_argument("--length", type=int, default=None,
                        help="T for adding and copy; scored samples per audio window "
                        "(default: 600 adding, 1000 copy, 256 audio)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: 2e-3 adding and audio, 5e-4 copy)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help="optimizer (default: adam for adding and audio, rmsprop for copy)")
    parser.add_argument("--grad-clip", type=float, default=None,
                        help="max grad norm, 0 for none (default: 0 adding and audio, 1.0 copy)")
    parser.add_argument("--log-every", type=int, default=None, help="steps between evaluations (default: 100)")
    parser.add_argument("--eval-size", type=int, default=None, help="sequences in the evaluation batch (default: 256)")
    parser.add_argument("--seed", type=int, default=None, help="seeds initialisation and batches (default: 0)")
    tcn = parser.add_argument_group("TCN (defaults: the paper's adding model; copy uses 10 hidden)")
    tcn.add_argument("--hidden", type=int, default=None, help="channels of every level (default: 24 adding, 10 copy)")
    tcn.add_argument("--levels", type=int, default=None, help="residual blocks (default: 8)")
    tcn.add_argument("--kernel-size", type=int, default=None, help="kernel size (default: 8)")
    tcn.add_argument("--dropout", type=float, default=None, help="dropout (default: 0 adding, 0.05 copy)")
    tcn.add_argument("--init-std", type=float, default=None,
                     help="normal init std of the 1x1 projection and head (the weight-normalised convs keep PyTorch's"
                     " default, as in the paper's code); 0: PyTorch's init (default: 0.01)")
    wavenet = parser.add_argument_group("WaveNet")
    wavenet.add_argument("--blocks", type=int, default=None,
                         help="stacks of dilations 1, 2, ..., 2^(layers-1) (default: 3)")
    wavenet.add_argument("--layers", type=int, default=None, help="layers per block (default: 10)")
    wavenet.add_argument("--channels", type=int, default=None,
                         help="residual and skip channels; gate = 2x (default: 64)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict:
    return {key: getattr(args, attr) for key, attr in names.items() if getattr(args, attr) is not None}


def config_from_args(args: argparse.Namespace):
    from atrous.engine.sequence import sequence_config

    if args.task is None:
        raise ValueError("--task is required for a new run (adding, copy or audio); use --resume RUN_DIR to continue one")
    model_kwargs = _given(args, {"hidden": "hidden", "levels": "levels", "kernel_size": "kernel_size",
                                 "dropout": "dropout", "init_std": "init_std", "blocks": "blocks", "layers": "layers"})
    if args.channels is not None:
        model_kwargs.update(residual_channels=args.channels, gate_channels=2 * args.channels, skip_channels=args.channels)
    overrides = _given(args, {"steps": "steps", "batch_size": "batch_size", "length": "length", "lr": "lr",
                              "optimizer": "optimizer", "grad_clip": "grad_clip", "log_every": "log_every",
                              "eval_size": "eval_size", "seed": "seed", "model": "model", "data": "data"})
    try:
        return sequence_config(args.task, model_kwargs=model_kwargs, **overrides)
    except ValueError as error:  # name the option, not the config field
        field = str(error).split(" ", 1)[0]
        raise ValueError(f"--{field.replace('_', '-')}{str(error)[len(field):]}") from None


def run(args: argparse.Namespace) -> int:
    from atrous.engine.sequence import SequenceTrainConfig, train_sequence_run

    if args.resume is not None:
        check_resume(args, RESUME_OPTIONS)
        out, config = args.resume, SequenceTrainConfig()
    else:
        if not args.out:
            raise ValueError("--out is required for a new run: the run folder to create")
        out, config = args.out, config_from_args(args)
    history = train_sequence_run(config, out, resume=args.resume is not None, overwrite=args.overwrite,
                                 progress=not args.no_progress and sys.stderr.isatty(),
                                 steps=args.steps if args.resume is not None else None, every=checkpoint_every(args))
    print(f"wrote {out}: {history[-1]}" if history else f"wrote {out}")
    return 0
