"""Peak memory and time of ``atrous predict`` on a 4000x3000 image, whole and in tiles.

Each configuration runs ``atrous predict --model NAME --weights FILE`` (random weights saved as a
``state_dict``; 21 classes, as VOC) in a fresh Python process, so its peak resident memory
(``ru_maxrss``) is its own: decoding the image, the forward passes, the two PNGs written. "whole"
is ``--tile 0``; "tiled" the default (2048-pixel tiles, the overlap from the model's receptive
field). Wall and CPU time are those of the command after its imports. The labels of both runs are
compared pixel by pixel: equal for models without global pooling, not for DeepLab (ASPP's
image-level branch sees only its tile).

    python benchmarks/tiled_predict.py --write-docs   # the table in docs/inference.md, written there
    python benchmarks/tiled_predict.py --quick        # smoke run: a 1200x896 image, tiles of 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _docs import DOCS, write_section  # benchmarks/_docs.py, beside this script

# (model, builder arguments as --model-arg): the ResNets at a quarter width keep the run near 5 minutes on 2 cores
MODELS = [
    ("context_net", ["width_multiplier=1.0"]),
    ("fcn_resnet50", ["width_multiplier=0.25"]),
    ("deeplabv3plus_resnet50", ["width_multiplier=0.25"]),
]
CLASSES = 21


def child(argv: list[str]) -> None:
    """Run ``atrous predict`` here and print the seconds it took and this process's peak memory."""
    import torch

    from atrous.cli.main import main

    torch.set_num_threads(int(argv.pop(0)))
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    code = main(argv)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds are less swayed than wall time by other jobs on the machine
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"code": code, "seconds": seconds, "cpu_seconds": cpu, "peak_mib": after.ru_maxrss / 1024}))


def scene(height: int, width: int) -> np.ndarray:
    """Smooth colour blobs plus noise, uint8 RGB: structure for the labels to follow."""
    import torch

    generator = torch.Generator().manual_seed(0)
    blobs = torch.nn.functional.interpolate(torch.rand(1, 3, height // 200, width // 200, generator=generator),
                                            size=(height, width), mode="bilinear", align_corners=False)[0]
    noise = torch.rand(3, height, width, generator=generator) * 0.1
    return ((blobs * 0.9 + noise).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def save_weights(name: str, model_args: list[str], path: Path) -> None:
    import torch

    from atrous.cli._common import parse_key_values
    from atrous.models import create

    torch.manual_seed(0)
    torch.save(create(name, num_classes=CLASSES, **parse_key_values(model_args, "model_args")).state_dict(), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1200x896 image and 1024-pixel tiles")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(name for name, _ in MODELS))
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/inference.md")
    args = parser.parse_args()
    from PIL import Image

    height, width = (896, 1200) if args.quick else (3000, 4000)  # multiples of 8: tiles can equal the whole
    tile = ["--tile", "1024"] if args.quick else []
    rows, load = [], os.getloadavg()[0]  # other jobs on the machine slow every row alike
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Image.fromarray(scene(height, width)).save(folder / "scene.png")
        for name, model_args in MODELS:
            if name not in args.models.split(","):
                continue
            weights = folder / f"{name}.pth"
            save_weights(name, model_args, weights)
            labels = {}
            for mode, flags in (("whole", ["--tile", "0"]), ("tiled", tile)):
                out = folder / f"{name}_{mode}"
                command = ["predict", "--model", name, *(a for arg in model_args for a in ("--model-arg", arg)),
                           "--weights", str(weights), str(folder / "scene.png"), "--out", str(out), *flags]
                result = subprocess.run([sys.executable, __file__, "--child", str(args.threads), *command],
                                        capture_output=True, text=True)
                if result.returncode != 0 or not result.stdout.strip():
                    raise SystemExit(f"{name} {mode} failed:\n{result.stderr}")
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                labels[mode] = np.array(Image.open(out / "scene.png"))
                rows.append((name, " ".join(model_args), mode, measured["seconds"], measured["cpu_seconds"],
                             measured["peak_mib"]))
                print(f"{name} {mode}: {measured['seconds']:.1f} s, {measured['cpu_seconds']:.1f} CPU s, "
                      f"{measured['peak_mib']:.0f} MiB", file=sys.stderr)
            same = float((labels["whole"] == labels["tiled"]).mean())
            rows[-1] += (same,)
            rows[-2] += (same,)
    command = "python benchmarks/tiled_predict.py" + (" --quick" if args.quick else "")
    lines = [f"`{command}`: `atrous predict` on one {width}x{height} PNG, {CLASSES} classes, random weights, "
             f"{args.threads} threads, a fresh process per row (time: wall and CPU seconds of the command after its "
             f"imports; memory: its peak resident set); load average {load:.1f} at the start and "
             f"{os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores.", "",
             "| model | arguments | mode | time (s) | CPU time (s) | peak memory (MiB) | labels equal to whole |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| `{name}` | `{model_args}` | {mode} | {seconds:.1f} | {cpu:.1f} | {peak:,.0f} | {same:.2%} |"
              for name, model_args, mode, seconds, cpu, peak, same in rows]
    print("\n".join(lines))
    if args.write_docs:
        write_section(DOCS / "inference.md", "tiled_predict", "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
