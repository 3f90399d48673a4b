"""What output stride costs: ResNet-50 at output stride 32, 16 and 8.

Multiply-adds come from ``atrous.receptive_field``'s per-layer table; activation memory is the
size of every conv and BatchNorm output (what autograd keeps for the backward pass); time is the
median of a few ``torch.no_grad()`` forwards at batch 1. The receptive field stays 427.

    python benchmarks/output_stride.py --repeats 7   # the table in docs/models.md (224 px, 2 threads)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def activation_mib(model: nn.Module, x: torch.Tensor) -> float:
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return total / 2**20


def main() -> None:
    import atrous
    from atrous.models import create

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, args.size, args.size)
    models = {os_: create("resnet50", output_stride=os_).eval() for os_ in (32, 16, 8)}
    times: dict[int, list[float]] = {os_: [] for os_ in models}
    with torch.no_grad():
        for model in models.values():  # warm-up: oneDNN picks and caches its kernels
            model(x)
            model(x)
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
            for output_stride, model in models.items():
                start = time.perf_counter()
                model(x)
                times[output_stride].append(time.perf_counter() - start)
    print("| output stride | GMACs | activations kept for backward (MiB per image, fp32) | CPU forward (ms) | receptive field |")
    print("| --- | --- | --- | --- | --- |")
    for output_stride, model in models.items():
        field = atrous.receptive_field(model, (3, args.size, args.size))
        print(
            f"| {output_stride} | {field.macs / 1e9:.2f} | {activation_mib(model, x):.0f} | "
            f"{statistics.median(times[output_stride]) * 1000:.0f} | {field.size[0]} |"
        )


if __name__ == "__main__":
    main()
