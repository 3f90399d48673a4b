"""Latency of ``context_net`` in onnxruntime (CPU) versus PyTorch eager and ``torch.jit.trace``.

The default ``atrous train`` model (11 classes, width 1) on 3x128x128 images at batch 1 and 8,
with 1 and 2 threads in every runtime. The ONNX file comes from ``atrous.export_onnx`` (dynamic
batch, height and width); the trace is taken at each batch's own shape. Timings are interleaved
(each round runs every runtime in turn, so drifts in machine load hit all alike) and the median
over rounds is reported, after warm-up calls; within a round each runtime makes one untimed
call before its timed one. onnxruntime's worker threads do not spin between calls (by default
they busy-wait, which on 2 cores takes the CPU from the PyTorch call that follows and makes it
look up to 10x slower). Each runtime's outputs are checked against eager first.

    python benchmarks/onnx_latency.py            # the table in docs/deploy.md
    python benchmarks/onnx_latency.py --quick    # smoke run: few rounds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def runtimes(model: torch.nn.Module, onnx_path: Path, x: torch.Tensor, threads: int) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per runtime, each computing the logits of ``x``."""
    from atrous.export import onnx_session

    session = onnx_session(onnx_path, threads=threads, spin=False)  # spinning threads would slow the others
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated, and the ops' size checks read Python values
        traced = torch.jit.trace(model, x)

    def eager():
        with torch.no_grad():
            return model(x)

    def trace():
        with torch.no_grad():
            return traced(x)

    return {"PyTorch eager": eager, "torch.jit.trace": trace, "onnxruntime": lambda: session.run(None, feed)[0]}


def measure(calls: dict[str, Callable[[], object]], *, rounds: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each callable, interleaved over ``rounds``."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def main() -> None:
    from atrous import export_onnx
    from atrous.models import create

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image height and width (default 128)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per setting (default 30)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, 1 warm-up")
    args = parser.parse_args()
    rounds, warmup = (3, 1) if args.quick else (args.rounds, 5)
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]

    torch.manual_seed(0)
    model = create("context_net", num_classes=11).eval()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "context_net.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation notes
            export_onnx(model, onnx_path, torch.randn(1, 3, args.size, args.size))
        for batch in batches:
            x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
            for threads in thread_counts:
                torch.set_num_threads(threads)
                calls = runtimes(model, onnx_path, x, threads)
                reference = calls["PyTorch eager"]().numpy()
                for name, call in calls.items():
                    output = call()
                    output = output.numpy() if isinstance(output, torch.Tensor) else output
                    diff = float(np.abs(output - reference).max())
                    if diff > 1e-4:
                        raise SystemExit(f"{name} differs from eager by {diff:.2e} at batch {batch}")
                times = measure(calls, rounds=rounds, warmup=warmup)
                rows.append((batch, threads, times))
    names = list(rows[0][2])
    print(f"`context_net` (11 classes, {sum(p.numel() for p in model.parameters()):,} parameters), "
          f"3x{args.size}x{args.size} float32, median of {rounds} interleaved rounds, ms per batch:\n")
    print("| batch | threads | " + " | ".join(names) + " | onnxruntime speed-up vs eager |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " | --- |")
    for batch, threads, times in rows:
        cells = " | ".join(f"{times[name]:.1f}" for name in names)
        print(f"| {batch} | {threads} | {cells} | {times['PyTorch eager'] / times['onnxruntime']:.2f}x |")
    print(f"\ntorch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")


if __name__ == "__main__":
    main()
