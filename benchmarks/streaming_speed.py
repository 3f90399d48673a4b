"""Streaming speed of the default WaveNet: Streamer, FusedStreamer and naive recomputation.

Generating one sample naively means a forward over the last ``receptive_field`` (3070) samples;
streaming does one sample's work per layer from queues of past activations (van den Oord et al.
2016; Paine et al. 2016, "Fast WaveNet generation algorithm"). Compared, per single-sample step
(what autoregressive generation needs) at batch 1 and 64 with 1 and 2 torch threads:

* ``Streamer``: the model's own forward routed through ring buffers (PyTorch ops);
* ``FusedStreamer(backend="torch")``: the lowered program as PyTorch ops on preallocated buffers;
* ``FusedStreamer(backend="cpp")``: the whole step in one C++ call;
* ``--compile``: ``torch.compile`` of the explicit-state step that the ONNX export uses;
* ``--onnx``: that step exported to ONNX and run by onnxruntime (states fed back each step);
* naive recomputation of the receptive field.

Chunked rows feed 16/64/256 samples per call at batch 1 (fine for known inputs, not for
sampling). Variants are timed in interleaved rounds in one process and the median round is
reported, so background load hits them alike; "per CPU s" divides by the process CPU time
instead of the wall time (for 1 thread, what a quiet machine would give). Prints markdown.

    python benchmarks/streaming_speed.py --compile --onnx   # the table in docs/streaming.md
    python benchmarks/streaming_speed.py            # 1 and 2 threads, batch 1 and 64
    python benchmarks/streaming_speed.py --quick    # shorter rounds
    python benchmarks/streaming_speed.py --families --write-docs  # the families table (streaming_families.py)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch

from atrous.models import create
from atrous.streaming import FusedStreamer, Streamer
from atrous.streaming.functional import StreamingStep

Step = Callable[[int], None]  # runs the next window of steps; the argument is the round


def streamer_steps(factory, batch: int, steps: int, chunk: int = 1) -> Step:
    streamer = factory()
    ids = torch.randint(0, 256, (batch, steps * chunk))
    chunks = [ids[:, t : t + chunk] for t in range(0, steps * chunk, chunk)]
    streamer.step(chunks[0])  # warm-up: first-call allocations

    def run(_: int) -> None:
        for piece in chunks:
            streamer.step(piece)

    return run


def explicit_state_steps(step: StreamingStep, step_fn, batch: int, steps: int) -> Step:
    states = step.initial_states(batch)
    ids = torch.randint(0, 256, (batch, steps))

    def run(_: int) -> None:
        nonlocal states
        with torch.no_grad():
            for t in range(steps):
                _, *states = step_fn(ids[:, t], *states)

    run(0)  # warm-up (compiles)
    return run


def onnx_steps(path: str, batch: int, steps: int, state_shapes) -> Step:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    states = {f"state_{i}": np.zeros((batch, *shape), np.float32) for i, shape in enumerate(state_shapes)}
    ids = torch.randint(0, 256, (batch, steps)).numpy()

    def run(_: int) -> None:
        nonlocal states
        for t in range(steps):
            _, *new = session.run(None, {"x": ids[:, t], **states})
            states = {f"state_{i}": state for i, state in enumerate(new)}

    run(0)
    return run


@torch.no_grad()
def naive_steps(model, batch: int, steps: int) -> Step:
    window = model.receptive_field
    ids = torch.randint(0, 256, (batch, window + steps))

    def run(_: int) -> None:
        with torch.no_grad():
            for t in range(steps):
                model(ids[:, t : t + window])[:, :, -1]

    run(0)
    return run


def measure(variants: dict[str, tuple[Step, int]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median over interleaved rounds of (samples/s by wall time, samples/s by process CPU time)."""
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, (run, samples) in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(r)
            wall[name].append(samples / (time.perf_counter() - start))
            cpu[name].append(samples / max(time.process_time() - start_cpu, 1e-9))
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="C++ single steps per round at batch 1")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--threads", default="1,2", help="torch threads to try, e.g. 1,2")
    parser.add_argument("--chunks", default="16,64,256", help="chunk lengths for the chunked rows at batch 1")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd explicit-state step")
    parser.add_argument("--onnx", action="store_true", help="add onnxruntime running the exported step")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive recomputation")
    parser.add_argument("--quick", action="store_true", help="fewer steps and 3 rounds")
    parser.add_argument("--families", action="store_true",
                        help="the causal families side by side at batch 1, 8, 64 (benchmarks/streaming_families.py)")
    parser.add_argument("--write-docs", action="store_true",
                        help="with --families: write the table into docs/streaming.md")
    args = parser.parse_args()
    if args.families:
        from _docs import DOCS, write_section  # benchmarks/, beside this script
        from streaming_families import families_table

        table = families_table(rounds=3 if args.quick else args.rounds, budget=0.15 if args.quick else 0.4)
        print(table)
        if args.write_docs:
            write_section(DOCS / "streaming.md", "streaming-families", table)
        return
    if args.quick:
        args.steps, args.rounds = 100, 3
    torch.manual_seed(0)
    model = create("wavenet").eval()
    params = sum(p.numel() for p in model.parameters())
    onnx_file = None
    if args.onnx:
        from atrous.export.streaming import export_streaming_onnx

        warnings.filterwarnings("ignore")
        onnx_file = tempfile.NamedTemporaryFile(suffix=".onnx")
        exported = export_streaming_onnx(model, onnx_file.name)
    print(f"default WaveNet: {params:,} parameters, receptive field {model.receptive_field}; "
          f"median of {args.rounds} interleaved rounds\n")
    print("| batch | threads | method | samples/s | per CPU s | us per call | vs Streamer |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for batch in (int(b) for b in args.batches.split(",")):
            # steps per round so that each variant runs for a comparable time
            fast = max(args.steps // batch * 4, 20) if batch > 1 else args.steps
            slow = max(fast // 40, 5)
            variants = {
                "Streamer": (streamer_steps(lambda: Streamer(model, batch), batch, slow), batch * slow),
                "FusedStreamer torch": (
                    streamer_steps(lambda: FusedStreamer(model, batch, backend="torch"), batch, slow), batch * slow),
                "FusedStreamer cpp": (
                    streamer_steps(lambda: FusedStreamer(model, batch, backend="cpp"), batch, fast), batch * fast),
            }
            if args.compile:
                step = StreamingStep(model).eval()
                compiled = torch.compile(step, dynamic=False)
                variants["torch.compile step"] = (explicit_state_steps(step, compiled, batch, slow), batch * slow)
            if onnx_file is not None:
                variants["onnxruntime step"] = (
                    onnx_steps(onnx_file.name, batch, fast // 4, exported.state_shapes), batch * (fast // 4))
            if batch == 1 and not args.no_naive:
                variants["naive window"] = (naive_steps(model, batch, 2), 2)
            if batch == 1:
                for chunk in (int(c) for c in args.chunks.split(",")):
                    n = max(fast // chunk, 2)
                    variants[f"Streamer, chunks of {chunk}"] = (
                        streamer_steps(lambda: Streamer(model, 1), 1, n, chunk), n * chunk)
                    variants[f"FusedStreamer cpp, chunks of {chunk}"] = (
                        streamer_steps(lambda: FusedStreamer(model, 1, backend="cpp"), 1, n, chunk), n * chunk)
            results = measure(variants, args.rounds)
            base = results["Streamer"][0]
            for name, (rate, cpu_rate) in results.items():
                chunk = int(name.rsplit(" ", 1)[1]) if "chunks of" in name else 1
                latency = 1e6 * batch * chunk / rate
                print(f"| {batch} | {threads} | {name} | {rate:,.0f} | {cpu_rate:,.0f} | {latency:,.0f} | "
                      f"{rate / base:,.1f}x |", flush=True)


if __name__ == "__main__":
    main()
