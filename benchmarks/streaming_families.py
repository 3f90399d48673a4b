"""Streaming speed of the common causal families, side by side in one run (``--families`` of
``streaming_speed.py``).

Per model and batch (1, 8, 64), one sample per stream per call (a frame's worth of samples for
the strided models), samples/s of

* ``FusedStreamer`` (C++; every model here lowers to the fused ops);
* ``Streamer`` (the traced graph as PyTorch ops);
* pytorch-tcn's own streaming (``TCN.inference``, batch 1 only), for its ``TCN``;
* recomputing the receptive-field window (a forward over the last ``rf`` samples per call);

and the fraction of this machine's limit the best row reaches: weight bytes per step against
measured memory bandwidth at batch 1 (a step reads every weight once), FLOPs (``2 x`` the
multiply-adds per sample, counted from the model's convolutions at their sample rates) against
measured single-thread GEMM peak at batch 64. Models: the default WaveNet, a 30-layer x
64-channel TCN (CausalConv1d + ReLU, dilations 1..512 three times), a locuslab-style TCN
(padding + ``Chomp1d``, weight norm, 8 levels of 32 channels), pytorch-tcn's ``TCN`` (8 levels of
32), a causal Conv-TasNet-style separator (hop 8) and a codec-style encoder/decoder (hop 40).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from atrous.models import create
from atrous.ops.layers import CausalConv1d
from atrous.streaming import FusedStreamer, Streamer


class Chomp(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x):
        return x[:, :, : -self.size].contiguous()


class LocuslabBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, d: int) -> None:
        super().__init__()
        p = (k - 1) * d
        self.net = nn.Sequential(weight_norm(nn.Conv1d(cin, cout, k, padding=p, dilation=d)), Chomp(p), nn.ReLU(),
                                 weight_norm(nn.Conv1d(cout, cout, k, padding=p, dilation=d)), Chomp(p), nn.ReLU())
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        return torch.relu(self.net(x) + (x if self.downsample is None else self.downsample(x)))


class ChannelNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class TasBlock(nn.Module):
    def __init__(self, b: int, h: int, d: int) -> None:
        super().__init__()
        self.inp, self.act1, self.norm1 = nn.Conv1d(b, h, 1), nn.PReLU(), ChannelNorm(h)
        self.pad = 2 * d
        self.depthwise = nn.Conv1d(h, h, 3, dilation=d, groups=h)
        self.act2, self.norm2 = nn.PReLU(), ChannelNorm(h)
        self.res, self.skip = nn.Conv1d(h, b, 1), nn.Conv1d(h, b, 1)

    def forward(self, x):
        y = self.norm1(self.act1(self.inp(x)))
        y = self.norm2(self.act2(self.depthwise(F.pad(y, (self.pad, 0)))))
        return x + self.res(y), self.skip(y)


class TasNet(nn.Module):
    """Causal Conv-TasNet (Luo & Mesgarani 2019): encoder of length 16 and hop 8, 8 blocks."""

    def __init__(self, n: int = 64, b: int = 32, h: int = 64, speakers: int = 2) -> None:
        super().__init__()
        self.encoder = nn.Conv1d(1, n, 16, stride=8, bias=False)
        self.bottleneck = nn.Sequential(ChannelNorm(n), nn.Conv1d(n, b, 1))
        self.blocks = nn.ModuleList(TasBlock(b, h, 2**i) for i in range(8))
        self.mask = nn.Sequential(nn.PReLU(), nn.Conv1d(b, speakers * n, 1))
        self.decoder = nn.ConvTranspose1d(n, 1, 16, stride=8, bias=False)
        self.speakers = speakers

    def forward(self, x):
        w = F.relu(self.encoder(x))
        y, skips = self.bottleneck(w), 0
        for block in self.blocks:
            y, skip = block(y)
            skips = skips + skip
        masks = torch.sigmoid(self.mask(skips)).chunk(self.speakers, dim=1)
        return torch.cat([self.decoder(w * mask) for mask in masks], dim=1)  # the overlap: a delay of 8


class CausalConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation))
        self.padding = (k - 1) * dilation - (stride - 1)

    def forward(self, x):
        return self.conv(F.pad(x, (self.padding, 0)))


class CausalUp(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride))
        self.trim = stride

    def forward(self, x):
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim]


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ELU(), CausalConv(channels, channels // 2, 3, dilation=dilation), nn.ELU(),
                                   CausalConv(channels // 2, channels, 1))

    def forward(self, x):
        return x + self.block(x)


def codec(channels: int = 16, strides: tuple[int, ...] = (2, 4, 5), latent: int = 32) -> nn.Module:
    """A SEANet/EnCodec-style encoder/decoder (Zeghidour et al. 2021; Défossez et al. 2022), hop 40."""
    encoder, width = [CausalConv(1, channels, 7)], channels
    for stride in strides:
        encoder += [*(ResidualUnit(width, d) for d in (1, 3, 9)), nn.ELU(),
                    CausalConv(width, 2 * width, 2 * stride, stride=stride)]
        width *= 2
    encoder += [nn.ELU(), CausalConv(width, latent, 3)]
    decoder = [CausalConv(latent, width, 7)]
    for stride in reversed(strides):
        decoder += [nn.ELU(), CausalUp(width, width // 2, stride), *(ResidualUnit(width // 2, d) for d in (1, 3, 9))]
        width //= 2
    decoder += [nn.ELU(), CausalConv(width, 1, 7)]
    return nn.Sequential(nn.Sequential(*encoder), nn.Sequential(*decoder))


def macs_per_sample(model: nn.Module, channels: int, ids: bool, length: int = 4096) -> float:
    """Multiply-adds per input sample of the offline forward, counted with hooks on every
    convolution and Linear (each at its own rate)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        weight = module.weight
        if isinstance(module, nn.ConvTranspose1d):
            total += inputs[0].shape[0] * inputs[0].shape[-1] * weight.numel()
        elif isinstance(module, nn.Conv1d):
            total += output.shape[0] * output.shape[-1] * weight.numel()
        else:
            total += output.numel() // output.shape[-1] * weight.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear))]
    x = torch.randint(0, channels, (1, length)) if ids else torch.randn(1, channels, length)
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total / length


def machine_limits() -> tuple[float, float]:
    """(memory bandwidth in bytes/s, single-thread float32 GEMM peak in FLOP/s), measured."""
    big = torch.empty(64 * 2**20)  # 256 MB: far beyond the caches
    out = torch.empty_like(big)
    out.copy_(big)
    start = time.perf_counter()
    for _ in range(5):
        out.copy_(big)
    bandwidth = 5 * 2 * big.numel() * 4 / (time.perf_counter() - start)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    peak = 20 * 2 * 512**3 / (time.perf_counter() - start)
    return bandwidth, peak


def models() -> list[dict]:
    torch.manual_seed(0)
    found = [
        {"name": "WaveNet (default)", "model": create("wavenet"), "channels": 256, "ids": True, "hop": 1},
        {"name": "TCN 30 x 64", "channels": 64, "ids": False, "hop": 1, "model": nn.Sequential(*[
            m for i in range(30) for m in (CausalConv1d(64, 64, 2, dilation=2 ** (i % 10)), nn.ReLU())])},
        {"name": "locuslab TCN", "channels": 32, "ids": False, "hop": 1,
         "model": nn.Sequential(*[LocuslabBlock(32, 32, 3, 2**i) for i in range(8)])},
    ]
    try:
        import pytorch_tcn

        found.append({"name": "pytorch-tcn TCN", "channels": 32, "ids": False, "hop": 1, "own": True,
                      "model": pytorch_tcn.TCN(num_inputs=32, num_channels=[32] * 8, kernel_size=3, causal=True)})
    except ImportError:
        pass
    found += [
        {"name": "Conv-TasNet-style", "model": TasNet(), "channels": 1, "ids": False, "hop": 8},
        {"name": "codec-style enc/dec", "model": codec(), "channels": 1, "ids": False, "hop": 40},
    ]
    for entry in found:
        entry["model"].eval()
    return found


def receptive_field(streamer: Streamer, hop: int) -> int:
    """Samples a recomputed window needs: the held context plus one frame."""
    return int(streamer.context) + hop


def timed(run: Callable[[], int], rounds: int) -> float:
    """Median samples/s of ``run`` (which returns the samples it processed) over ``rounds``."""
    run()  # warm-up
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        samples = run()
        rates.append(samples / (time.perf_counter() - start))
    return statistics.median(rates)


@torch.no_grad()
def families_table(batches: tuple[int, ...] = (1, 8, 64), rounds: int = 3, budget: float = 0.3) -> str:
    """The markdown table; each measurement runs about ``budget`` seconds."""
    torch.set_num_threads(1)
    bandwidth, peak = machine_limits()
    lines = [f"Measured limits (1 thread): memory bandwidth {bandwidth / 1e9:,.1f} GB/s, GEMM peak "
             f"{peak / 1e9:,.0f} GFLOP/s.", "",
             "| model | weights | MFLOP/sample | batch | FusedStreamer | Streamer | pytorch-tcn own | "
             "recompute window | best / limit |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in models():
        model, hop, channels, ids = entry["model"], entry["hop"], entry["channels"], entry["ids"]
        weight_bytes = 4 * sum(p.numel() for p in model.parameters())
        flops = 2 * macs_per_sample(model, channels, ids)
        for batch in batches:
            def feed(length: int) -> torch.Tensor:
                shape = (batch, length) if ids else (batch, channels, length)
                return torch.randint(0, channels, shape) if ids else torch.randn(shape)

            def stepping(streamer, calls: int) -> Callable[[], int]:
                chunk = feed(hop)

                def run() -> int:
                    for _ in range(calls):
                        streamer.step(chunk)
                    return calls * hop * batch
                return run

            rates = {}
            try:
                fused = FusedStreamer(model, batch, backend="cpp", allow_lookahead=True)
                probe = timed(stepping(fused, 5), 1)
                rates["fused"] = timed(stepping(fused, max(5, int(budget * probe / batch / hop))), rounds)
            except ValueError:
                rates["fused"] = None
            streamer = Streamer(model, batch, allow_lookahead=True)
            probe = timed(stepping(streamer, 3), 1)
            rates["streamer"] = timed(stepping(streamer, max(3, int(budget * probe / batch / hop))), rounds)
            rates["own"] = None
            if entry.get("own") and batch == 1:
                model.reset_buffers()
                chunk = feed(1)

                def own() -> int:
                    for _ in range(50):
                        model.inference(chunk)
                    return 50
                rates["own"] = timed(own, rounds)
            window = receptive_field(streamer, hop)
            x = feed(window)

            def recompute() -> int:
                model(x)
                return hop * batch
            rates["window"] = timed(recompute, 1 if batch > 8 else rounds)
            best = max(rate for rate in rates.values() if rate is not None)
            if batch == 1:  # a step (a frame for the strided models) reads every weight once
                fraction = f"{best / hop * weight_bytes / bandwidth:.0%} of bandwidth"
            else:
                fraction = f"{best * flops / peak:.0%} of GEMM peak"
            cells = ["-" if rates[key] is None else f"{rates[key]:,.0f}" for key in ("fused", "streamer", "own",
                                                                                     "window")]
            lines.append(f"| {entry['name']} | {weight_bytes / 1e6:.2f} MB | {flops / 1e6:.2f} | {batch} | "
                         + " | ".join(cells) + f" | {fraction} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)
