"""Page faults and time of a WaveNet dilated layer with glibc's defaults and with ``reuse_freed_memory``.

With glibc's defaults every call maps its large buffers afresh (a 4.5 MiB padded copy, an 8 MiB
output, oneDNN's scratch) and the kernel zero-fills each page on first touch; with freed memory
kept (``atrous.engine.allocator.reuse_freed_memory``) the same buffers are reused. Each setting
runs in a fresh process on 1 thread; page faults are counted by the kernel
(``getrusage``'s minor faults), time is the median call. Prints a markdown table for
docs/backends.md.

    python benchmarks/allocator_page_faults.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

from atrous.engine.allocator import OPT_OUT

_CHILD = textwrap.dedent("""
    import resource, statistics, sys, time
    import torch
    import torch.nn.functional as F
    from atrous.engine.allocator import reuse_freed_memory
    changed = reuse_freed_memory()
    torch.set_num_threads(1)
    x, w = torch.randn(4, 64, 4096), torch.randn(128, 64, 2)
    for _ in range(3):  # warm up: the heap grows
        F.conv1d(F.pad(x, (512, 0)), w, dilation=512)
    calls = int(sys.argv[1])
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):  # a WaveNet layer at rate 512
        start = time.perf_counter()
        F.conv1d(F.pad(x, (512, 0)), w, dilation=512)
        times.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(changed, faults / calls, statistics.median(times) * 1e3)
""")


def measure(env: dict[str, str], calls: int) -> tuple[str, float, float]:
    """(settings changed, page faults per call, median ms per call) in a fresh process."""
    user_settings = (OPT_OUT, "GLIBC_TUNABLES")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in user_settings}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(calls)], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    return out[0], float(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="timed calls per process (default 20)")
    args = parser.parse_args()
    print("| allocator | settings changed | page faults per call | ms per call |")
    print("| --- | --- | ---: | ---: |")
    for name, env in (("glibc defaults (`ATROUS_MALLOC=system`)", {OPT_OUT: "system"}),
                      ("freed memory kept (`reuse_freed_memory()`)", {})):
        changed, faults, ms = measure(env, args.calls)
        print(f"| {name} | {changed} | {faults:,.0f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
