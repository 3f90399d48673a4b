"""What reproducible training costs: the default ``atrous train`` step with the backend's choices
timed afresh, replayed from a record (what every run after the first on a machine does), and
with ``deterministic_backend()`` (plain PyTorch convolutions, no timing at all).

Each arm owns a copy of the same model and optimizer and steps on the same pre-rendered batches
(so data loading is left out), in interleaved rounds in one process. Prints markdown.

    python benchmarks/reproducibility.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

from atrous.data import DigitsScenes
from atrous.engine.config import TrainConfig
from atrous.engine.finetune import build_optimizer
from atrous.engine.trainer import autocast_dtype, build_model, poly_lr, train_step
from atrous.ops.backend import clear_backend_cache, deterministic_backend, export_choices, replay_choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per arm per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(device="cpu")
    autocast = autocast_dtype(config.precision, torch.device("cpu"))
    data = DigitsScenes("train", num_images=8 * args.steps, seed=0)
    batches = [
        tuple(torch.stack(part) for part in zip(*(data[i] for i in range(b * 8, b * 8 + 8)))) for b in range(args.steps)
    ]
    torch.manual_seed(0)
    base = build_model(config, 11)
    arms = {}
    for name in ("timed afresh", "replayed", "deterministic_backend"):
        model = copy.deepcopy(base)
        arms[name] = (model, build_optimizer(config, model))
    times: dict[str, list[float]] = {name: [] for name in arms}
    record: dict[str, str] = {}
    for round_ in range(args.rounds + 1):
        for name, (model, optimizer) in arms.items():
            if name == "timed afresh":
                clear_backend_cache()  # this arm times every key again in each round
            elif name == "replayed":
                clear_backend_cache()
                replay_choices(record)
            context = deterministic_backend() if name == "deterministic_backend" else contextlib.nullcontext()
            with context:
                start = time.perf_counter()
                for step, (images, masks) in enumerate(batches):
                    train_step(model, optimizer, images, masks, poly_lr(config, step, 10**6), autocast,
                               config.background_weight)
                seconds = (time.perf_counter() - start) / len(batches)
            if name == "timed afresh":
                record = export_choices()
            if round_ > 0:  # the first round warms every arm up
                times[name].append(seconds)
    native = statistics.median(times["deterministic_backend"])
    print(f"\n{args.threads} thread(s), batch 8, 128 x 128, {config.model}, {len(record)} timed choices\n")
    print("| backend | median step (ms) | vs deterministic_backend |")
    print("|---|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {1000 * median:.1f} | {median / native:.2f}x |")


if __name__ == "__main__":
    main()
