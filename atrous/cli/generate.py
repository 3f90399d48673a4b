"""``atrous generate``: sample audio from a trained WaveNet (:mod:`atrous.engine.generate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from atrous._checks import check_float, check_int
from atrous._files import check_output_file
from atrous.cli._common import require

MAX_SECONDS = 3600.0  # an hour per clip: about 29 million single-sample steps at 8 kHz
MAX_SAMPLES = 2**28  # samples of all clips together, held in memory until they are written
MAX_RATE = 768_000  # atrous.engine.generate.MAX_SAMPLE_RATE, which imports torch (--help must not); a test keeps them equal
MAX_COUNT = 1024
MAX_TEMPERATURE = 100.0  # far past the point where the draws are uniform noise


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name, help="sample audio from a trained WaveNet (train-seq --task audio)",
        description="Sample mu-law audio from a WaveNet checkpoint. Outputs are checked before sampling "
                    "starts, written to a temporary name beside --out and renamed into place; symbolic links "
                    "are refused and existing files are kept unless --overwrite is given.",
    )
    parser.add_argument("--checkpoint", required=True, help="run folder written by `atrous train-seq --task audio`")
    parser.add_argument("--seconds", type=float, required=True,
                        help=f"length of each clip, > 0 and <= {MAX_SECONDS:g}")
    parser.add_argument("--out", required=True, help="output .wav; with --count N > 1, NAME_0.wav ... NAME_{N-1}.wav")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--count", type=int, default=1,
                        help=f"clips sampled together as a batch of streams, 1 to {MAX_COUNT} (default: 1)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help=f"softmax temperature, 0 to {MAX_TEMPERATURE:g}; 0 = most likely (default: 1)")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help=f"Hz written in the WAV header, 1 to {MAX_RATE:,} (default: the training data's rate)")
    parser.add_argument("--seed", type=int, default=0, help=f"random seed, 0 to {2**32 - 1} (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, 1 to 1024 (default: 1; single-sample steps are too small to split, and "
                        "extra threads slow them down several-fold on a busy machine)")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> list[Path]:
    """Every option and output path, checked before the checkpoint is read."""
    check_float(args.seconds, "--seconds", low=0.0, high=MAX_SECONDS, low_open=True)
    check_int(args.count, "--count", low=1, high=MAX_COUNT)
    check_float(args.temperature, "--temperature", low=0.0, high=MAX_TEMPERATURE)
    if args.sample_rate is not None:
        check_int(args.sample_rate, "--sample-rate", low=1, high=MAX_RATE)
    check_int(args.seed, "--seed", low=0, high=2**32 - 1)  # as the seeds of train and train-seq
    check_int(args.threads, "--threads", low=1, high=1024)
    out = Path(args.out)
    if out.is_dir() or not out.name:  # NAME_i.wav needs a name to number
        raise IsADirectoryError(f"--out {args.out!r} is a folder; expected a file name such as clip.wav")
    paths = [out] if args.count == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.count)]
    return [check_output_file(path, overwrite=args.overwrite, name="--out") for path in paths]


def run(args: argparse.Namespace) -> int:
    import torch

    from atrous.data.sequence import write_wav
    from atrous.engine.generate import DEFAULT_SAMPLE_RATE, audio_checkpoint_meta, generate_audio, load_audio_model

    paths = _check_args(args)
    require("safetensors", "train", "reading a checkpoint")
    try:
        folder, meta = audio_checkpoint_meta(args.checkpoint)
    except ValueError as error:
        raise ValueError(f"--{error}") from None  # "--checkpoint ...": the option the user gave
    rate = args.sample_rate or meta.get("sample_rate") or DEFAULT_SAMPLE_RATE
    samples = max(1, round(args.seconds * rate))
    if samples * args.count > MAX_SAMPLES:
        raise ValueError(f"--seconds {args.seconds:g} at {rate} Hz for --count {args.count} clips is "
                         f"{samples * args.count:,} samples; at most {MAX_SAMPLES:,} are generated at once")
    model = load_audio_model(folder, meta)
    torch.set_num_threads(args.threads)
    bar = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm comes with the "train" extra; generation works without it
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=samples, unit="sample", desc="generate")
    try:
        audio = generate_audio(model, samples, count=args.count, temperature=args.temperature, seed=args.seed,
                               progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    for path, clip in zip(paths, audio):
        write_wav(path, clip.numpy(), rate)  # a temporary name, then renamed: whole or absent
        print(f"wrote {path} ({samples} samples at {rate} Hz)")
    return 0
