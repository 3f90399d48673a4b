"""``atrous generate``: sample audio from a trained WaveNet through the streamer.

Each step feeds one mu-law sample per stream and keeps the layers' past in ring buffers, so a
second of 8 kHz audio costs 8000 single-sample steps, not 8000 forwards over the receptive
field (van den Oord et al. 2016; Paine et al. 2016, "Fast WaveNet generation algorithm").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from atrous.data.sequence import mu_law_decode, write_wav
from atrous.engine.checkpoint import load_checkpoint
from atrous.models import create
from atrous.streaming.sampling import sample_autoregressive


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(name, help="sample audio from a trained WaveNet (train-seq --task audio)")
    parser.add_argument("--checkpoint", required=True, help="run folder written by `atrous train-seq --task audio`")
    parser.add_argument("--seconds", type=float, required=True, help="length of each clip")
    parser.add_argument("--out", required=True, help="output .wav; with --count N > 1, NAME_0.wav ... NAME_{N-1}.wav")
    parser.add_argument("--count", type=int, default=1, help="clips sampled together as a batch of streams")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = most likely")
    parser.add_argument("--sample-rate", type=int, default=None, help="default: the training data's rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: single-sample steps are too small to split, and extra "
                        "threads slow them down several-fold on a busy machine)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    meta = load_checkpoint(args.checkpoint)
    if meta.get("task") != "audio" or "model" not in meta:
        raise ValueError(
            f"--checkpoint {args.checkpoint!r} holds a {meta.get('task')!r} model; generate needs one trained with "
            "`atrous train-seq --task audio`"
        )
    rate = args.sample_rate or meta.get("sample_rate") or 8000
    if args.seconds <= 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    if args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    samples = max(1, round(args.seconds * rate))
    model = create(meta["model"], **meta.get("model_kwargs", {}))
    load_checkpoint(args.checkpoint, model)
    generator = torch.Generator().manual_seed(args.seed)
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm comes with the "train" extra; generation works without it
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=samples, unit="sample", desc="generate")
    try:
        ids = sample_autoregressive(
            model, samples, batch_size=args.count, temperature=args.temperature, generator=generator,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    audio = mu_law_decode(ids, model.config.classes)
    out = Path(args.out)
    paths = [out] if args.count == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.count)]
    for path, clip in zip(paths, audio):
        write_wav(path, clip.numpy(), rate)
        print(f"wrote {path} ({samples} samples at {rate} Hz)")
    return 0
