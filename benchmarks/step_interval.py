"""Time between optimizer steps of the default ``atrous train`` run, fed three ways, against compute alone.

The default run trains ``context_net`` (11 classes) with AdamW at 1.5e-3, background weight 0.3,
bf16 autocast where the CPU runs it natively, batches of 8 digits scenes of 128 x 128 (seed 0).
Each arm owns a copy of the same initial model and optimizer and runs the same step; they differ
only in where the batch comes from:

* ``compute only``: batches rendered beforehand and held in memory (a plain PyTorch loop);
* ``batch_stream``: :func:`atrous.data.loader.batch_stream` over a digits dataset;
* ``DataLoader(num_workers=0)``: the loader the trainer used, rendering in the main thread.

Rows "first epoch" start from datasets that have rendered nothing (every scene is drawn during
the step); rows "later epochs" from datasets that have seen the indices once (what epochs 2 and
on of a run see). The arms run in interleaved rounds in one process, so background load hits them
alike, and the first steps of each round (which a prefetcher had prepared while the other arms
ran) are left out. Reported: median interval between consecutive optimizer steps, and its ratio
to the compute-only arm. Prints markdown.

    python benchmarks/step_interval.py                     # 2 threads, about 3 minutes
    python benchmarks/step_interval.py --write docs/data_loading.md
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from atrous.data import DigitsScenes
from atrous.data.loader import batch_stream
from atrous.engine.allocator import reuse_freed_memory
from atrous.engine.preprocess import normalize
from atrous.models import create

BATCH = 8
BACKGROUND_WEIGHT = 0.3


class Arm:
    """One model + optimizer and its batch source; ``run(steps)`` returns the step-to-step intervals."""

    def __init__(self, model: torch.nn.Module, batches: Iterator, autocast: torch.dtype | None):
        self.model = copy.deepcopy(model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1.5e-3, weight_decay=1e-4)
        self.batches, self.autocast = batches, autocast
        self.weight = torch.ones(11)
        self.weight[0] = BACKGROUND_WEIGHT

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
            logits = self.model(normalize(images))
        loss = F.cross_entropy(logits.float(), masks, weight=self.weight, ignore_index=255)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Intervals between consecutive step ends, and the time inside each step, for ``steps`` steps."""
        intervals, computes = [], []
        previous = time.perf_counter()
        for _ in range(steps):
            images, masks = next(self.batches)
            start = time.perf_counter()
            self.step(images, masks)
            end = time.perf_counter()
            intervals.append(end - previous)
            computes.append(end - start)
            previous = end
        return intervals, computes


def arms_for(order: list[int], workers: int, model, autocast, held: list) -> dict[str, Arm]:
    stream_set, loader_set = DigitsScenes("train", seed=0), DigitsScenes("train", seed=0)
    return {
        "compute only": Arm(model, _cycle(held), autocast),
        f"batch_stream(workers={workers})": Arm(model, batch_stream(stream_set, order, BATCH, workers=workers), autocast),
        "DataLoader(num_workers=0)": Arm(
            model, iter(DataLoader(loader_set, batch_size=BATCH, sampler=order, drop_last=True)), autocast),
    }, (stream_set, loader_set)


def _cycle(batches: list) -> Iterator:
    while True:
        yield from batches


def measure(arms: dict[str, Arm], rounds: int, steps: int, skip: int) -> dict[str, tuple[float, float]]:
    intervals: dict[str, list[float]] = {name: [] for name in arms}
    computes: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            gaps, inside = arms[name].run(skip + steps)
            intervals[name] += gaps[skip:]
            computes[name] += inside[skip:]
    return {name: (statistics.median(intervals[name]), statistics.median(computes[name])) for name in arms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=0, help="batch_stream's workers")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16, help="measured steps per arm and round")
    parser.add_argument("--write", help="a markdown file whose table (between the marker comments) is replaced")
    args = parser.parse_args()
    reuse_freed_memory()  # as the atrous command does
    torch.set_num_threads(args.threads)
    skip = 3  # a prefetcher prepares up to 2 batches while the other arms run: drop them and one more
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    autocast = torch.bfloat16 if native else None
    torch.manual_seed(0)
    model = create("context_net", num_classes=11)
    held_set = DigitsScenes("train", seed=0, num_images=4 * BATCH)
    held = list(iter(DataLoader(held_set, batch_size=BATCH)))
    total = (args.rounds * (skip + args.steps) + 2) * BATCH
    order = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:total].tolist()
    rows = []
    for phase in ("first epoch", "later epochs"):
        arms, datasets = arms_for(order, args.workers, model, autocast, held)
        if phase == "later epochs":
            for dataset in datasets:
                for index in order:
                    dataset.scene(index)
        for arm in arms.values():
            arm.run(2)  # warm-up: first-call allocations, worker start
        results = measure(arms, args.rounds, args.steps, skip)
        base = results["compute only"][0]
        for name, (interval, compute) in results.items():
            rows.append(f"| {phase} | {name} | {interval * 1e3:.1f} | {compute * 1e3:.1f} | {interval / base:.3f}x |")
        for arm in arms.values():
            close = getattr(arm.batches, "close", None)
            if close is not None:
                close()
    header = [
        f"{torch.get_num_threads()} torch threads, bf16 autocast: {autocast is not None}, batch {BATCH}, "
        f"{args.rounds} rounds x {args.steps} steps per arm, medians",
        "",
        "| data | fed by | ms between steps | ms inside the step | interval vs compute only |",
        "|---|---|---:|---:|---:|",
    ]
    table = "\n".join(header + rows)
    print(table, flush=True)


if __name__ == "__main__":
    main()
