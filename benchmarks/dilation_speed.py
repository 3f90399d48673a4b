"""Speed of dilated convolutions: atrous (``backend="auto"``) against native PyTorch and the undilated conv.

Layer level: 2D shapes from the models (ASPP branches, DeepLab ResNet stages, the context module,
DeepLab-LargeFOV's fc6, same-rate ``DilatedStack`` runs) and 1D shapes from WaveNet and TCN. For
each shape, forward (``torch.no_grad``) and forward+backward (gradients of input and weight) are
timed interleaved in one process for three versions of the same layer: atrous ``dilated_conv``
(its first call, which times the formulations, is reported apart), native PyTorch at the same
dilation (``F.convNd(padding=...)``, or ``F.pad`` first for causal padding), and the undilated
conv of the same shape and FLOPs. Each round gives the ratios atrous / undilated and atrous /
native; the table shows their medians, the throughput of atrous at the dense FLOP count and its
fraction of the dense-GEMM peak measured here (a large ``torch.mm`` at the same thread count).
Model level: DeepLabV3-ResNet50 (output stride 8) inference at 512x512 and a ``context_net``
training step, each against a copy whose every ``DilatedConv2d`` is an equivalent ``nn.Conv2d``.

    python benchmarks/dilation_speed.py --threads 2 --write-docs              # full suite into docs/speed.md
    python benchmarks/dilation_speed.py --threads 1 --clock thread --write-docs
    python benchmarks/dilation_speed.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _docs import DOCS, read_section, write_section  # benchmarks/_docs.py, beside this script
from torch import nn

PAGE = "speed.md"  # the docs page that holds the tables, between the ``dilation-speed`` markers


@dataclass(frozen=True)
class Case:
    """One layer (or same-rate stack) of the suite."""

    source: str
    batch: int
    c_in: int
    c_out: int
    sizes: tuple[int, ...]
    kernel: int
    rates: tuple[int, ...]  # one per layer; several: a DilatedStack run
    padding: str = "same"


CASES = [
    Case("context module (256 px scenes)", 8, 96, 96, (32, 32), 3, (4,)),
    Case("context module (256 px scenes)", 8, 96, 96, (32, 32), 3, (16,)),
    Case("generic 2D layer", 8, 32, 32, (128, 128), 3, (2,)),
    Case("generic 2D layer", 1, 128, 128, (64, 64), 3, (6,)),
    Case("DeepLabV3 OS8 layer3", 1, 256, 256, (64, 64), 3, (2,)),
    Case("DeepLabV3 OS8 layer4", 1, 512, 512, (64, 64), 3, (4,)),
    Case("ASPP OS8 branch", 1, 2048, 256, (64, 64), 3, (12,)),
    Case("ASPP OS8 branch", 1, 2048, 256, (64, 64), 3, (24,)),
    Case("ASPP OS16 branch", 1, 2048, 256, (32, 32), 3, (6,)),
    Case("ASPP OS16 branch", 1, 2048, 256, (32, 32), 3, (18,)),
    Case("ASPP OS16 branch (256 px crops)", 1, 2048, 256, (16, 16), 3, (18,)),  # taps beyond the map: a 1x1
    Case("LargeFOV fc6", 1, 512, 1024, (32, 32), 3, (12,)),
    Case("DilatedStack same-rate run", 4, 64, 64, (128, 128), 3, (2, 2, 2)),
    Case("DilatedStack same-rate run", 1, 32, 32, (256, 256), 3, (4, 4, 4)),
    Case("WaveNet dilated conv", 4, 64, 128, (4096,), 2, (2,), "causal"),
    Case("WaveNet dilated conv", 4, 64, 128, (4096,), 2, (64,), "causal"),
    Case("WaveNet dilated conv", 4, 64, 128, (4096,), 2, (512,), "causal"),
    Case("TCN adding, level 5", 32, 24, 24, (600,), 8, (16,), "causal"),
    Case("TCN adding, level 8", 32, 24, 24, (600,), 8, (128,), "causal"),
    Case("TCN non-causal", 8, 64, 64, (2048,), 3, (64,), "same"),
]
QUICK = [CASES[0], CASES[2], CASES[12], CASES[15], CASES[17]]


CLOCK = time.perf_counter  # --clock thread: CPU time of this thread, robust to other load on the machine
DEVICE = torch.device("cpu")  # --device


def now() -> float:
    """The clock, after the device has finished its queued work."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return CLOCK()


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` rounds in rotating order."""
    names, times = list(fns), {name: [] for name in fns}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = now()
            fns[name]()
            times[name].append(now() - start)
    return times


def gemm_peak(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 3) -> float:
    """Best fp32 GFLOP/s of a square ``torch.mm`` at the current thread count."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
        a @ b
        best = max(best, 2 * size**3 / min(interleaved({"mm": lambda: a @ b}, repeats)["mm"]) / 1e9)
    return best


def layer_fns(case: Case, rate_scale: int) -> tuple[Callable, list[torch.Tensor]]:
    """``forward(x, *weights)`` of the case at rates x ``rate_scale`` (0: undilated), and its weights."""
    from atrous.ops.layers import DilatedStack

    ndim, k = len(case.sizes), case.kernel
    conv = {1: F.conv1d, 2: F.conv2d}[ndim]
    widths = [case.c_in] * (len(case.rates) - 1) + [case.c_out]
    weights = [torch.randn(width, case.c_in, *([k] * ndim), device=DEVICE) * 0.05 for width in widths]
    if rate_scale < 0:  # atrous
        if len(case.rates) > 1:
            stack = DilatedStack(case.c_in, case.rates, k, dims=ndim, bias=False).to(DEVICE)
            for conv_layer, w in zip(stack.convs, weights):
                conv_layer.weight = nn.Parameter(w)
            return lambda x, *ws: stack(x), list(stack.parameters())
        from atrous import dilated_conv

        return lambda x, w: dilated_conv(x, w, dilation=case.rates[0], padding=case.padding), weights

    def forward(x, *ws):
        for w, rate in zip(ws, case.rates):
            d = max(rate * rate_scale, 1)
            if case.padding == "causal":
                x = conv(F.pad(x, ((k - 1) * d, 0)), w, dilation=d)
            else:
                x = conv(x, w, padding=(k - 1) * d // 2, dilation=d)
            x = torch.relu(x) if len(ws) > 1 else x
        return x

    return forward, weights


def time_case(case: Case, backward: bool, budget_s: float) -> dict:
    """Interleaved times of atrous / native / undilated for one direction."""
    from atrous.ops import backend_choices

    x = torch.randn(case.batch, case.c_in, *case.sizes, device=DEVICE, requires_grad=backward)
    versions = {"atrous": layer_fns(case, -1), "native": layer_fns(case, 1), "undilated": layer_fns(case, 0),
                "control": layer_fns(case, 1)}  # native again: the ratio of identical work is the harness's noise

    def runner(forward, weights):
        if not backward:
            return lambda: forward(x, *weights)
        for w in weights:
            w.requires_grad_(True)
        inputs = [x, *weights]

        def step():
            y = forward(x, *weights)
            torch.autograd.grad(y, inputs, torch.ones_like(y))

        return step

    fns = {name: runner(*v) for name, v in versions.items()}
    with torch.set_grad_enabled(backward):
        before = set(backend_choices())
        start = now()
        fns["atrous"]()  # the first call times the formulations
        first = now() - start
        choices = [v for k, v in backend_choices().items() if k not in before]
        one = interleaved(fns, 1)
        per_round = sum(v[0] for v in one.values())
        rounds = max(3, min(15, int(budget_s / per_round)))
        times = interleaved(fns, rounds)
    atrous = statistics.median(times["atrous"])
    macs = case.batch * math.prod(case.sizes) * sum(w.numel() for w in versions["native"][1])
    return {
        "vs_undilated": statistics.median(a / u for a, u in zip(times["atrous"], times["undilated"])),
        "vs_native": statistics.median(a / n for a, n in zip(times["atrous"], times["native"])),
        "control": statistics.median(n / c for n, c in zip(times["native"], times["control"])),
        "gflops": (6 if backward else 2) * macs / atrous / 1e9,
        "tuning_s": max(first - atrous, 0.0),
        "choice": "+".join(dict.fromkeys(choices)) or "native",
    }


def layer_table(cases: list[Case], budget_s: float, peak: float) -> list[str]:
    rows = [
        "| layer | input (N, C_in -> C_out, size) | k | rate | chosen (fwd / fwd+bwd) | fwd: / undilated "
        "| fwd: / native "
        "| fwd GFLOP/s (% peak) | fwd+bwd: / undilated | fwd+bwd: / native | fwd+bwd GFLOP/s (% peak) | tuning (s) "
        "| control: native / native (fwd, fwd+bwd) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    speedups: dict[bool, list[float]] = {False: [], True: []}
    controls: list[float] = []
    for case in cases:
        r = {b: time_case(case, b, budget_s) for b in (False, True)}
        for b in r:
            speedups[b].append(1 / r[b]["vs_native"])
            controls.append(r[b]["control"])
        size = "x".join(map(str, case.sizes))
        rates = ",".join(map(str, case.rates)) + (" causal" if case.padding == "causal" else "")
        cells = [f"{r[b]['vs_undilated']:.2f} | {r[b]['vs_native']:.2f} | {r[b]['gflops']:.0f} "
                 f"({100 * r[b]['gflops'] / peak:.0f}%)" for b in (False, True)]
        rows.append(f"| {case.source} | {case.batch}, {case.c_in} -> {case.c_out}, {size} | {case.kernel} | {rates} "
                    f"| {r[False]['choice']} / {r[True]['choice']} | {cells[0]} | {cells[1]} "
                    f"| {r[False]['tuning_s'] + r[True]['tuning_s']:.1f} "
                    f"| {r[False]['control']:.2f}, {r[True]['control']:.2f} |")
        print(rows[-1], flush=True)
    geo = {b: math.exp(statistics.fmean(math.log(s) for s in v)) for b, v in speedups.items()}
    worst = {b: max(1 / s for s in v) for b, v in speedups.items()}
    rows += ["", f"Geometric-mean speedup of atrous over native PyTorch: {geo[False]:.2f}x forward, "
             f"{geo[True]:.2f}x forward+backward (worst shape: {worst[False]:.2f}x and {worst[True]:.2f}x "
             "native's time). Control: native PyTorch timed against an identical copy of itself in the same "
             f"rounds gives ratios from {min(controls):.2f} to {max(controls):.2f}, the harness's noise; where atrous "
             "runs native (the `chosen` column), its ratio to native differs from 1 by about that much."]
    return rows


def plain_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every ``DilatedConv2d`` replaced by an ``nn.Conv2d`` holding the same
    weights (after an ``nn.ZeroPad2d`` where the padding for ``example``'s sizes is asymmetric)."""
    from atrous.ops.layers import DilatedConv2d

    sizes: dict[str, tuple[int, ...]] = {}
    probe = copy.deepcopy(model).eval()
    for name, m in probe.named_modules():
        if isinstance(m, DilatedConv2d):
            m.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, args[0].shape[2:]))
    with torch.no_grad():
        probe(example)
    plain = copy.deepcopy(model)
    for name, m in list(plain.named_modules()):
        if not isinstance(m, DilatedConv2d):
            continue
        (top, bottom), (left, right) = m.explicit_padding(sizes[name])
        symmetric = top == bottom and left == right
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, (top, left) if symmetric else 0,
                         m.dilation, m.groups, m.bias is not None)
        conv.load_state_dict(m.state_dict())
        parent, _, attr = name.rpartition(".")
        new = conv if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        setattr(plain.get_submodule(parent) if parent else plain, attr, new)
    return plain


def model_table(quick: bool, budget_s: float) -> list[str]:
    from atrous.models import create
    from atrous.ops import clear_backend_cache

    rows = ["| model | workload | atrous (ms) | nn.Conv2d copy (ms) | atrous / nn.Conv2d | tuning (s) |",
            "| --- | --- | --- | --- | --- | --- |"]
    size = 256 if quick else 512
    deeplab = create("deeplabv3_resnet50", num_classes=21, output_stride=8).eval().to(DEVICE)
    image = torch.randn(1, 3, size, size, device=DEVICE)
    net = create("context_net", num_classes=11).to(DEVICE)
    scenes = torch.randn(8, 3, 128, 128, device=DEVICE)
    labels = torch.randint(0, 11, (8, 128, 128), device=DEVICE)

    def train_step(model: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(scenes), labels).backward()
            optimizer.step()

        return step

    workloads = [
        ("DeepLabV3-ResNet50, OS 8", f"inference, 1x3x{size}x{size}", deeplab, image, None),
        ("`context_net`", "training step, 8x3x128x128", net, scenes, train_step),
    ]
    for name, what, model, x, make in workloads:
        plain = plain_copy(model, x)
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(x), model.eval()(x), rtol=1e-3, atol=1e-3)
        model.train(make is not None)
        plain.train(make is not None)
        fns = {"atrous": make(model) if make else lambda: model(x), "plain": make(plain) if make else lambda: plain(x)}
        clear_backend_cache()  # the layer suite timed some of these shapes already
        with torch.set_grad_enabled(make is not None):
            start = now()
            fns["atrous"]()
            first = now() - start
            fns["plain"]()
            times = interleaved(fns, 1 if quick else max(3, min(9, int(budget_s / sum(interleaved(fns, 1)["atrous"])))))
        a, p = statistics.median(times["atrous"]), statistics.median(times["plain"])
        ratio = statistics.median(x / y for x, y in zip(times["atrous"], times["plain"]))
        rows.append(f"| {name} | {what} | {a * 1e3:.0f} | {p * 1e3:.0f} | {ratio:.2f} | {max(first - a, 0):.1f} |")
        print(rows[-1], flush=True)
    return rows


def docs_block(table: str, section: str, page: Path) -> str:
    """The ``dilation-speed`` block of ``page`` with this setting's ``#### section`` replaced, CPU sections first."""
    old = read_section(page, "dilation-speed")
    sections = {name: body.strip() for name, body in re.findall(r"(?ms)^#### (.+?)\n(.*?)(?=^#### |\Z)", old)}
    sections[section] = table.strip()
    order = sorted(sections, key=lambda name: name.startswith("GPU"))  # stable: CPU sections keep their order
    return "\n\n".join(f"#### {name}\n\n{sections[name]}" for name in order)


def main() -> None:
    global CLOCK, DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes, small inputs: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (then the docs page gets a GPU section)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timed rounds per shape and direction")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: CPU time of the one compute thread (needs --threads 1), for a busy machine")
    parser.add_argument("--write-docs", action="store_true", help=f"write the tables into docs/{PAGE}")
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    thread_clock = args.clock == "thread"
    if thread_clock:
        if args.threads != 1 or DEVICE.type != "cpu":
            parser.error(f"--clock thread needs --threads 1 on the CPU, got --threads {args.threads} --device {DEVICE}")
        CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = gemm_peak()
    cases = QUICK if args.quick else CASES
    flags = [("--quick", args.quick), (f"--device {args.device}", DEVICE.type != "cpu"),
             (f"--threads {args.threads}", True), ("--clock thread", thread_clock)]
    flags = "".join(f" {flag}" for flag, on in flags if on)
    where = (torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda"
             else f"{args.threads} CPU thread{'s' if args.threads > 1 else ''}")
    clock = (" Times are CPU time of the one compute thread, which other jobs on the machine do not inflate."
             if thread_clock else "")
    lines = [f"Measured with `python benchmarks/dilation_speed.py{flags}` on {where}, PyTorch {torch.__version__}; "
             f"dense fp32 GEMM peak {peak:.0f} GFLOP/s.{clock} "
             "Ratios are medians over interleaved rounds (below 1: atrous is faster). GFLOP/s count the dense "
             "work of the layer, every tap at every output (forward+backward: 3x), so a formulation that skips "
             "taps reading only padding can pass the GEMM peak. Tuning: the one-off cost of atrous's first "
             "calls (forward and forward+backward), when it times the formulations.", ""]
    from atrous.ops import tuning_settings

    with tuning_settings(timer=CLOCK):  # atrous's own timing (backend="auto") reads the same clock
        lines += layer_table(cases, args.budget / (4 if args.quick else 1), peak)
        lines += ["", *model_table(args.quick, 4 * args.budget)]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        section = ("GPU" if DEVICE.type == "cuda" else "CPU, 1 thread, CPU time" if thread_clock
                   else f"CPU, {args.threads} thread{'s' if args.threads > 1 else ''}, wall clock")
        write_section(DOCS / PAGE, "dilation-speed", docs_block(table, section, DOCS / PAGE))


if __name__ == "__main__":
    main()
