"""Time between optimizer steps of the default ``atrous train`` run, fed three ways, against compute alone.

The default run trains ``context_net`` (11 classes) with AdamW at lr 1.5e-3 (weight decay 1e-4),
background weight 0.3, bf16 autocast where the CPU runs it natively, on batches of 8 digits
scenes of 128 x 128 (10,000 training scenes, seed 0). Each arm owns a copy of the same initial
model and optimizer and runs the same step; only the source of its batches differs:

* ``compute only``: 4 batches rendered beforehand and cycled from memory (a plain PyTorch loop);
* ``batch_stream(workers=0)``: :func:`atrous.data.loader.batch_stream` over a digits dataset, as
  the trainer calls it by default (it draws in this thread when torch's threads fill the cores,
  else in a worker process; the row says which);
* ``batch_stream(workers=1)``: the same in one worker process, whatever the cores;
* ``DataLoader(num_workers=0)``: the loader the trainer used before, drawing in the main thread.

"first epoch" rows start from datasets that hold no scene (each scene is drawn while the run
waits for it, or alongside the step); "later epochs" rows read a dataset whose cache
:meth:`~atrous.data.DigitsScenes.fill_cache` filled beforehand (timed), as epochs 2 and on of a
run do, and every epoch after a ``fill_cache`` before training. The arms run in interleaved rounds in one process,
so background load hits them alike; the first 3 steps of each round are left out (a worker
prepares 2 batches while the other arms run, taking CPU from their first steps to do it).
Reported per arm: the median interval between consecutive optimizer steps, the median time
inside the step, and the median over rounds of the interval divided by the compute-only
interval of the same round. Prints markdown.

    python benchmarks/step_interval.py                             # 2 threads, about 3 minutes
    python benchmarks/step_interval.py --write docs/data_loading.md
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from atrous.data import DigitsScenes
from atrous.data.loader import batch_stream, spare_cpu
from atrous.engine.allocator import reuse_freed_memory
from atrous.engine.preprocess import normalize
from atrous.models import create

BATCH = 8
SKIP = 3  # steps left out at the start of each round
MARKERS = ("<!-- step_interval table -->", "<!-- /step_interval table -->")


class Arm:
    """A copy of the model and an AdamW optimizer, and the iterator its batches come from."""

    def __init__(self, model: torch.nn.Module, batches: Iterator, autocast: torch.dtype | None):
        self.model = copy.deepcopy(model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1.5e-3, weight_decay=1e-4)
        self.batches, self.autocast = batches, autocast
        self.class_weight = torch.ones(11)
        self.class_weight[0] = 0.3  # the default background weight on digits

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
            logits = self.model(normalize(images))
        loss = F.cross_entropy(logits.float(), masks, weight=self.class_weight, ignore_index=255)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """``steps`` steps; the interval from the previous step's end to each step's end, and the time inside each."""
        intervals, inside = [], []
        previous = time.perf_counter()
        for _ in range(steps):
            images, masks = next(self.batches)
            start = time.perf_counter()
            self.step(images, masks)
            end = time.perf_counter()
            intervals.append(end - previous)
            inside.append(end - start)
            previous = end
        return intervals, inside


def cycle(batches: list) -> Iterator:
    while True:
        yield from batches


def measure(arms: dict[str, Arm], rounds: int, steps: int) -> dict[str, tuple[float, float, float]]:
    """Per arm: median interval, median time inside the step, median over rounds of the interval ratio."""
    intervals: dict[str, list[float]] = {name: [] for name in arms}
    inside: dict[str, list[float]] = {name: [] for name in arms}
    ratios: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds):
        medians = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:  # who goes first rotates
            gaps, times = arms[name].run(SKIP + steps)
            intervals[name] += gaps[SKIP:]
            inside[name] += times[SKIP:]
            medians[name] = statistics.median(gaps[SKIP:])
        for name in names:
            ratios[name].append(medians[name] / medians["compute only"])
    return {name: (statistics.median(intervals[name]), statistics.median(inside[name]), statistics.median(ratios[name]))
            for name in names}


def draw_time(order: list[int], threads: int) -> float:
    """Median seconds to draw one scene as a worker does (one torch thread, tensor conversion included)."""
    dataset = DigitsScenes("train", seed=0, cache=False)
    torch.set_num_threads(1)
    times = []
    for index in order[:200]:
        start = time.perf_counter()
        dataset[index]
        times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return statistics.median(times)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workers", default="0,1", help="batch_stream's workers arguments, one arm each")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per arm and round")
    parser.add_argument("--write", help="markdown file whose table between the step_interval markers is replaced")
    args = parser.parse_args()
    reuse_freed_memory()  # as the atrous command does
    torch.set_num_threads(args.threads)
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    autocast = torch.bfloat16 if native else None
    torch.manual_seed(0)
    model = create("context_net", num_classes=11)
    held = list(DataLoader(DigitsScenes("train", seed=0, num_images=4 * BATCH, cache=False), batch_size=BATCH))
    count = (args.rounds * (SKIP + args.steps) + 2) * BATCH
    order = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:count].tolist()
    draw = draw_time(order, args.threads)
    where = "a worker process" if spare_cpu() else "this thread"
    names = {int(w): f"batch_stream(workers={w})" + (f", {where}" if int(w) == 0 else "")
             for w in args.workers.split(",")}
    filled = DigitsScenes("train", seed=0)
    start = time.perf_counter()
    filled.fill_cache()
    fill_seconds = time.perf_counter() - start
    rows = []
    for phase in ("first epoch", "later epochs"):
        if phase == "first epoch":  # a dataset each, none holding a scene
            datasets = {name: DigitsScenes("train", seed=0) for name in [*names.values(), "old"]}
        else:  # all reading the one filled cache
            datasets = {name: filled for name in [*names.values(), "old"]}
        arms = {"compute only": Arm(model, cycle(held), autocast)}
        for workers, name in names.items():
            arms[name] = Arm(model, batch_stream(datasets[name], order, BATCH, workers=workers), autocast)
        old = DataLoader(datasets["old"], batch_size=BATCH, sampler=order)
        arms["DataLoader(num_workers=0)"] = Arm(model, iter(old), autocast)
        for arm in arms.values():
            arm.run(2)  # first-call allocations, the worker's start
        for name, (interval, inside, ratio) in measure(arms, args.rounds, args.steps).items():
            rows.append(f"| {phase} | {name} | {interval * 1e3:.1f} | {inside * 1e3:.1f} | {ratio:.3f}x |")
        for name in names.values():
            arms[name].batches.close()
    table = "\n".join([
        f"`{' '.join(['python', *sys.argv])}`: {args.threads} torch threads, bf16 autocast "
        f"{'on' if autocast is not None else 'off'}, batch {BATCH}, {args.rounds} rounds of {args.steps} measured "
        f"steps per arm; medians. Drawing one scene takes {draw * 1e3:.2f} ms ({BATCH * draw * 1e3:.1f} ms a batch); "
        f"`fill_cache()` drew all 10,000 in {fill_seconds:.1f} s with {_cores()} processes.",
        "",
        "| data | fed by | ms between steps | ms inside the step | interval / compute-only interval |",
        "|---|---|---:|---:|---:|",
        *rows,
    ])
    print(table, flush=True)
    if args.write:
        path = Path(args.write)
        text = path.read_text()
        pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{path} has no {MARKERS[0]} ... {MARKERS[1]} block to replace")
        path.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{table}\n{MARKERS[1]}", text))


if __name__ == "__main__":
    main()
