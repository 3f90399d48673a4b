"""The TCN paper's adding problem and copy memory task, with the paper's settings.

Bai, Kolter & Koltun (2018), "An empirical evaluation of generic convolutional and recurrent
networks for sequence modeling", Table 1: adding problem T=600, TCN MSE 5.8e-5 (about 70K
parameters); copy memory T=1000, TCN loss 3.5e-5 (about 16K parameters).

Settings (the paper's, as far as its text and appendix give them):

* adding: kernel 8, 8 levels, 24 hidden units (70,369 weights here), no dropout, Adam lr 2e-3,
  batch 32, MSE on the last step. The paper trains on 50,000 sequences for ~10 epochs
  (~15,600 steps); here every step draws a fresh batch.
* copy: kernel 8, 8 levels, 10 hidden units, dropout 0.05, RMSprop lr 5e-4, gradient clipping
  at 1.0, batch 32, one-hot symbols, cross-entropy over all T+20 steps (memoryless baseline
  ``10 ln 8 / (T + 20)`` = 0.0204 at T=1000); ~50 epochs of 10,000 sequences (~15,600 steps).

The full runs (``--steps 15625``) take about 55 min (adding) and 37 min (copy) on one CPU
core; ``--steps`` sets a smaller budget, and the table reports the wall time, the loss reached
and the projected time of the full run.

    python benchmarks/tcn_tasks.py --task both --steps 15625   # the table in docs/sequence_tasks.md
    python benchmarks/tcn_tasks.py --quick                     # 150 steps each
"""

from __future__ import annotations

import argparse
import time

import torch

from atrous.data.sequence import copy_memory_baseline
from atrous.engine.sequence import SequenceTrainConfig, train_sequence
from atrous.models import create

PAPER = {
    "adding": {
        "length": 600, "loss": 5.8e-5, "full_steps": 15_625, "baseline": 1 / 6,
        "model": {"in_channels": 2, "out_channels": 1, "hidden": 24, "levels": 8, "kernel_size": 8, "dropout": 0.0},
        "train": {"lr": 2e-3, "optimizer": "adam", "grad_clip": 0.0},
    },
    "copy": {
        "length": 1000, "loss": 3.5e-5, "full_steps": 15_625, "baseline": None,
        "model": {"in_channels": 10, "out_channels": 10, "hidden": 10, "levels": 8, "kernel_size": 8, "dropout": 0.05},
        "train": {"lr": 5e-4, "optimizer": "rmsprop", "grad_clip": 1.0},
    },
}


def run_task(task: str, steps: int, batch_size: int, length: int, eval_size: int, init_std: float, seed: int) -> dict:
    spec = PAPER[task]
    torch.manual_seed(seed)
    model = create("tcn", **spec["model"], init_std=init_std)
    config = SequenceTrainConfig(task=task, steps=steps, batch_size=batch_size, length=length, eval_size=eval_size,
                                 log_every=max(1, min(1000, steps // 5)), seed=seed, **spec["train"])
    start = time.perf_counter()
    history, _ = train_sequence(
        model, config, on_log=lambda r: print(f"  {task} step {r['step']}: loss {r['train_loss']:.4g} "
                                             f"eval {r['eval_loss']:.4g} ({r['seconds']:.0f} s)", flush=True)
    )
    seconds = time.perf_counter() - start
    baseline = spec["baseline"] if spec["baseline"] is not None else copy_memory_baseline(length)
    return {
        "task": task, "T": length, "params": sum(p.numel() for p in model.parameters()),
        "rf": model.receptive_field, "steps": steps, "seconds": seconds, "loss": history[-1]["eval_loss"],
        "best": min(r["eval_loss"] for r in history), "baseline": baseline, "paper": spec["loss"],
        "projected_h": seconds / steps * spec["full_steps"] / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("adding", "copy", "both"), default="both")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=None, help="T (default: the paper's 600 / 1000)")
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--init-std", type=float, default=0.01, help="N(0, std) init of the 1x1 projection and head, as in the paper's code; 0 = PyTorch default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="150 steps, eval on 64 sequences")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_size = 150, 64
    torch.set_num_threads(args.threads)
    tasks = ("adding", "copy") if args.task == "both" else (args.task,)
    rows = [run_task(t, args.steps, args.batch_size, args.length or PAPER[t]["length"], args.eval_size,
                     args.init_std, args.seed) for t in tasks]
    print(f"\n{args.threads} thread(s), batch {args.batch_size}, init std {args.init_std}\n")
    print("| task | T | params | RF | steps | wall time | eval loss (last / best) | trivial baseline | paper | "
          "projected full run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['T']} | {r['params']:,} | {r['rf']} | {r['steps']} | {r['seconds']:.0f} s | "
              f"{r['loss']:.3g} / {r['best']:.3g} | {r['baseline']:.3g} | {r['paper']:.1e} | "
              f"{r['projected_h']:.1f} h |")


if __name__ == "__main__":
    main()
