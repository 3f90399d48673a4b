"""Streaming speed of the default WaveNet: Streamer.step vs recomputing the receptive field.

Generating one sample naively means a forward over the last ``receptive_field`` (3070) samples;
the streamer (van den Oord et al. 2016; Paine et al. 2016, "Fast WaveNet generation algorithm")
does one sample's work per layer from its ring buffers. Prints a markdown table of samples per
second (per stream times the batch) at batch 1 and 64.

    python benchmarks/streaming_speed.py            # 200 streamed / 5 naive steps per batch size
    python benchmarks/streaming_speed.py --quick    # fewer steps, for a shared machine
"""

from __future__ import annotations

import argparse
import time

import torch

from atrous.models import create
from atrous.streaming import Streamer


def time_streamer(model, batch: int, steps: int) -> float:
    streamer = Streamer(model, batch)
    ids = torch.randint(0, 256, (batch, steps + 5))
    for t in range(5):  # warm-up
        streamer.step(ids[:, t : t + 1])
    start = time.perf_counter()
    for t in range(5, steps + 5):
        streamer.step(ids[:, t : t + 1])
    return batch * steps / (time.perf_counter() - start)


@torch.no_grad()
def time_naive(model, batch: int, steps: int) -> float:
    window = model.receptive_field
    ids = torch.randint(0, 256, (batch, window + steps))
    model(ids[:, :window])  # warm-up
    start = time.perf_counter()
    for t in range(1, steps + 1):
        model(ids[:, t : t + window])[:, :, -1]
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="streamed single-sample steps per batch size")
    parser.add_argument("--naive-steps", type=int, default=5, help="naive window recomputations per batch size")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="50 streamed and 2 naive steps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.naive_steps = 50, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create("wavenet").eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"default WaveNet: {params} parameters, receptive field {model.receptive_field}, "
          f"{args.threads} threads, {args.steps} streamed / {args.naive_steps} naive steps\n")
    print("| batch | streamer (samples/s) | naive window (samples/s) | speed-up |")
    print("|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        fast = time_streamer(model, batch, args.steps)
        slow = time_naive(model, batch, args.naive_steps)
        print(f"| {batch} | {fast:,.0f} | {slow:,.1f} | {fast / slow:,.0f}x |", flush=True)


if __name__ == "__main__":
    main()
